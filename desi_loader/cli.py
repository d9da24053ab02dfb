"""Command line: argparse + rich on top of the library; LoaderError -> one line and an exit code.

Exit codes: 0 success; 1 load failed (some files/tasks failed, nothing published);
2 user error (arguments, paths, catalog); 3 database error; 4 published without some
files (--allow-partial); 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import psycopg2
from rich.console import Console
from rich.markup import escape

from . import __version__
from .db import first_line
from .commands import (cmd_abort, cmd_bench, cmd_cone, cmd_coverage, cmd_load, cmd_sample, cmd_server, cmd_sql,
                       cmd_status, cmd_tap, cmd_void_membership, cmd_xmatch, write_samples)
from .errors import Interrupted, LoaderError

if TYPE_CHECKING:
    from .control.options import Faults
    from .report import NullReporter

__all__ = ["build_parser", "main", "write_samples"]     # write_samples: the tests' sample writer

EPILOG = """examples:
  desi-loader load --sample                      generate sample FastSpecFit files and load them
  desi-loader load /data/fastspecfit/ --workers 16 --dsn postgresql://me@dbhost/desi
  desi-loader load files/*.fits --catalog generic --prefix mycat
  desi-loader sql "SELECT count(*) FROM desi_dr1.fastspecfit_metadata"
  desi-loader server stop

Without --dsn (or DESI_LOADER_DSN, a [database] dsn in the config, PGHOST/PGSERVICE), the
loader starts its own PostgreSQL server with data in ~/.local/share/desi-loader/pgdata.
Passwords: use ~/.pgpass or PGPASSWORD; they are never printed."""


#: the page of the documentation (docs/, in the repository and on the site) that explains each
#: command: every --help ends with it
GUIDE = {"": "index", "load": "guide/loading", "sample": "getting-started", "sql": "guide/querying",
         "cone": "guide/sky", "xmatch": "guide/sky", "coverage": "guide/coverage",
         "void-membership": "guide/voids", "bench": "benchmarks/index",
         "status": "guide/failures", "abort": "guide/failures", "tap": "guide/tap", "server": "guide/target"}

#: the documentation site's address once one is published (then links point there, not to docs/)
DOCS_URL: Optional[str] = None


def guide_link(command: str) -> str:
    """Where ``command`` is explained: the site's page when DOCS_URL is set, else the page in
    this checkout's docs/ (readable offline), else its path in the repository."""
    page = GUIDE[command]
    if DOCS_URL:
        return f"{DOCS_URL.rstrip('/')}/{page}.html"
    local = Path(__file__).resolve().parents[1] / "docs" / f"{page}.md"
    return str(local) if local.is_file() else f"docs/{page}.md in the desi-loader repository"


def _target(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("database")
    g.add_argument("--dsn", help="libpq connection string or URI of the target database")
    g.add_argument("--data-dir", help="data directory of the embedded server "
                   "(default ~/.local/share/desi-loader/pgdata)")
    g.add_argument("--config", help="INI file with [database] and [catalog:NAME] sections")


def build_parser(guide_links: bool = True) -> argparse.ArgumentParser:
    """The ``desi-loader`` parser; with ``guide_links`` every help ends with its guide page."""
    top = argparse.ArgumentParser(
        prog="desi-loader", description="Load FITS catalogs (DESI DR1 FastSpecFit, DESIVAST, any FITS "
        "binary tables) into PostgreSQL: parallel, exact, published atomically.",
        epilog=EPILOG + (f"\n\ndocumentation: {guide_link('')}" if guide_links else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    top.add_argument("--version", action="version", version=f"desi-loader {__version__}")
    top.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    sub = top.add_subparsers(dest="command", metavar="COMMAND")

    for name, (add_parser, _run) in COMMANDS.items():
        p = add_parser(sub)
        if guide_links:
            link = f"guide: {guide_link(name)}"
            p.epilog = f"{p.epilog}\n\n{link}" if p.epilog else link
    return top


def docs_parser() -> argparse.ArgumentParser:
    """The parser as the documentation's command-line reference shows it (sphinx-argparse):
    without the links to the guide, which point into the page's own site."""
    return build_parser(guide_links=False)


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subs.choices[command]


def _parser_load(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("load", help="load FITS files into PostgreSQL",
                       description="Load FITS files (or directories of them) into PostgreSQL tables.")
    p.add_argument("paths", nargs="*", help="FITS files or directories holding them")
    _sample_options(p)
    p.add_argument("-w", "--workers", type=int, default=min(os.cpu_count() or 2, 16),
                   help="worker processes, each with its own connection (default: cores, at most 16)")
    p.add_argument("--catalog", help="fastspecfit (FastSpecFit Iron v3.0), desivast (DESIVAST v1.0 void "
                   "catalogs), or generic (any FITS binary tables: needs --prefix); default: detected from "
                   "the file names")
    p.add_argument("--prefix", help="table name prefix for --catalog generic (tables PREFIX_<extname>)")
    p.add_argument("--sky", metavar="RA,DEC",
                   help="for --catalog generic: the position columns (degrees) that get a sky index "
                        "(column hpx29, rows stored in sky order); presets name theirs")
    p.add_argument("--distribute", action="append", default=[], metavar="TABLE=SPEC",
                   help="on a Citus cluster: place TABLE as hash(COLUMN), reference or local, overriding "
                        "the preset (repeatable); ignored on a plain server")
    p.add_argument("--schema", help="target schema (default desi_dr1)")
    p.add_argument("--format", choices=("binary", "text"), default="binary", dest="fmt",
                   help="COPY format (default binary, faster and exact; text for comparison)")
    p.add_argument("--staging", choices=("auto", "unlogged", "logged"), default="auto",
                   help="how staging becomes durable: COPY into logged tables (the default, 'auto': measured "
                   "cheapest at every wal_level, and a server crash loses nothing), or UNLOGGED + SET LOGGED")
    p.add_argument("--unlogged", action="store_true",
                   help="skip SET LOGGED: faster, but a server crash empties the tables")
    p.add_argument("--dry-run", action="store_true", help="read headers, print the plan, load nothing")
    p.add_argument("--task-rows", type=int, help="rows per task (default: about 256 MB of FITS per task)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_const", const=True, dest="resume",
                   help="continue the unfinished load of these tables (also the default when one exists)")
    g.add_argument("--restart", action="store_const", const=False, dest="resume",
                   help="discard the unfinished load of these tables and start over")
    p.add_argument("--replace-all", action="store_true",
                   help="publish exactly these files, replacing the published tables (default when tables are "
                   "published: add new files, replace changed ones, keep the others)")
    p.add_argument("--join", action="store_true",
                   help="only join a load of these files that other processes (other nodes) are running")
    p.add_argument("--wait-timeout", type=float, default=3600, metavar="SECONDS",
                   help="longest wait for other processes of the same load: tasks they hold, their "
                   "finalize (default 3600)")
    p.add_argument("--allow-partial", action="store_true",
                   help="publish even if some files failed (they are listed; exit code 4)")
    p.add_argument("--no-verify-checksum", action="store_false", dest="verify_checksum",
                   help="do not check CHECKSUM/DATASUM cards (checked by default, at no extra read)")
    p.add_argument("--summary-json", help="write the summary figures to this JSON file")
    p.add_argument("--copy-out", metavar="DIR",
                   help="debugging: also write the exact COPY bytes of every task to DIR "
                   "(one file per task and table, with its COPY statement in FILE.sql; replay with "
                   "psql -c \"$(cat FILE.sql)\" < FILE)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary (errors still shown)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log details to stderr")
    _target(p)
    return p


def _sample_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sample", action="store_true",
                   help="load generated sample files: FastSpecFit (main and sv3) and the 8 DESIVAST files "
                   "(made in the cache directory if missing)")
    p.add_argument("--sample-rows", type=int, default=2000,
                   help="rows per sample FastSpecFit file (default 2000)")
    p.add_argument("--sample-files", type=int, default=3, help="number of sample FastSpecFit files (default 3)")
    p.add_argument("--sample-scale", type=float, default=None,
                   help="DESIVAST sample size as a fraction of the real row counts (default 0.002)")


def _parser_sample(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("sample", help="write sample FITS files with the real DESI DR1 layout",
                       description="Write sample files. With --catalog all, FastSpecFit goes to OUTDIR/fastspecfit "
                       "and DESIVAST to OUTDIR/desivast, with DESIVAST GALZONE.TARGET taken from the "
                       "FastSpecFit main-bright TARGETIDs so the two catalogs join.")
    s.add_argument("outdir", help="directory to write the files into (created if missing)")
    s.add_argument("--catalog", choices=("fastspecfit", "desivast", "all"), default="fastspecfit",
                   help="which catalog's files: FastSpecFit (main-bright and sv3-dark layouts), the 8 DESIVAST "
                   "files, or all of them (default fastspecfit)")
    s.add_argument("--rows", type=int, default=2000, help="FastSpecFit rows per file (default 2000)")
    s.add_argument("--files", type=int, default=3, help="number of FastSpecFit files (default 3)")
    s.add_argument("--scale", type=float, default=None,
                   help="DESIVAST rows as a fraction of the real counts (default 0.002; 1 = real size)")
    s.add_argument("--seed", type=int, default=1,
                   help="random seed: the same seed writes the same values (default 1)")
    return s


def _parser_sql(sub) -> argparse.ArgumentParser:
    q = sub.add_parser("sql", help="run SQL against the target database and print the result (or --output FILE)")
    q.add_argument("query", help="one SQL statement; quote it for the shell")
    _output(q)
    _target(q)
    _start(q)
    return q


def _start(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", action="store_true", dest="start_server",
                   help="start the embedded server if it is not running (without it, a stopped server is an error)")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="write the result to FILE instead of printing it: FITS (.fits), VOTable (.vot, .xml), "
                   "ECSV (.ecsv) or CSV (.csv), with each column's FITS dtype, unit and description; "
                   "streamed in chunks, so any size fits; with --format hats, a new directory")
    p.add_argument("--format", choices=("fits", "votable", "ecsv", "csv", "hats"), default=None,
                   help="the --output format, whatever its name's extension; hats: a HATS catalog for LSDB "
                   "(HEALPix-partitioned Parquet with a margin cache; needs pip install 'desi-loader[hats]')")
    p.add_argument("--sky", metavar="RA,DEC", default=None,
                   help="--format hats: the position columns (default: the result's ra and dec)")
    p.add_argument("--margin", metavar="ARCSEC", type=float, default=None,
                   help="--format hats: width of the margin cache in arcseconds, the largest separation an LSDB "
                   "cross-match finds at partition edges (default 10)")


def _parser_cone(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("cone", help="rows of a table within RADIUS degrees of (RA, DEC), nearest first",
                       description="Cone search on a table with a sky index (column hpx29; q3c where the "
                       "table has a q3c index). Exact: the same rows as a brute-force angular distance. "
                       "Prints tab-separated rows with a header, and the number found on stderr.")
    c.add_argument("ra", type=float, help="right ascension of the centre, degrees")
    c.add_argument("dec", type=float, help="declination of the centre, degrees")
    c.add_argument("radius", type=float, help="radius, degrees (1 arcmin = 0.016667)")
    c.add_argument("--table", help="table (default fastspecfit_metadata, else the first with a sky index)")
    c.add_argument("--columns", default=None,
                   help="comma-separated columns to print (default: key columns, ra, dec; '*' for all)")
    c.add_argument("--limit", type=int, default=None, help="at most this many rows")
    c.add_argument("--count", action="store_true", help="print only the number of rows")
    c.add_argument("--method", choices=("auto", "hpx", "q3c"), default="auto",
                   help="index to use: q3c when the table has one (auto), or the hpx29 B-tree")
    c.add_argument("--explain", action="store_true", help="print the SQL and the query plan instead of rows")
    c.add_argument("--schema", default=None, help="schema of the table (default desi_dr1)")
    _output(c)
    _target(c)
    _start(c)
    return c


def _parser_xmatch(sub) -> argparse.ArgumentParser:
    x = sub.add_parser("xmatch", help="nearest neighbour in table B within RADIUS degrees of each row of table A",
                       description="Cross-match two tables with sky indexes: for every row of A, the nearest "
                       "row of B within RADIUS (rows of A without one are left out). Prints tab-separated rows.")
    x.add_argument("table_a", help="the table whose rows are matched (TABLE, or SCHEMA.TABLE)")
    x.add_argument("table_b", help="the table searched for each row's nearest neighbour")
    x.add_argument("radius", type=float, help="match radius, degrees (1 arcsec = 0.000278)")
    x.add_argument("--columns-a", default=None, help="columns of A to print (default file_id,row_num)")
    x.add_argument("--columns-b", default=None, help="columns of B to print (default file_id,row_num)")
    x.add_argument("--explain", action="store_true", help="print the SQL and the query plan instead of rows")
    x.add_argument("--schema", default=None, help="schema of both tables (default desi_dr1; name a table "
                   "SCHEMA.TABLE to match across schemas)")
    _output(x)
    _target(x)
    _start(x)
    return x


def _parser_coverage(sub) -> argparse.ArgumentParser:
    c = sub.add_parser("coverage", help="the sky a table covers: its area, a MOC (.fits, .json) or a sky map "
                       "(.png, .pdf)",
                       description="The coverage of a table with a sky index, computed in the database from the "
                       "index (no row leaves the server): HEALPix cells at --order and the rows in each. Without "
                       "--output, the covered area in one line; with it, a MOC (IVOA MOC 2.0: .fits or .json, for "
                       "TOPCAT, Aladin and mocpy) or a sky map of the rows per square degree (.png or .pdf).",
                       epilog="examples:\n  desi-loader coverage fastspecfit_metadata\n"
                       "  desi-loader coverage fastspecfit_metadata -o fastspecfit.moc.fits\n"
                       "  desi-loader coverage desivast_voids --order 3 -o voids.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("table", help="a table with a sky index (TABLE or SCHEMA.TABLE)")
    c.add_argument("--order", type=int, default=None,
                   help="HEALPix order of the cells, 3 to 13 (default: about one row per cell of the whole sky: "
                   "order 4 for 6,000 rows, 10 for 18 million)")
    c.add_argument("--output", "-o", metavar="FILE", default=None,
                   help="write a MOC (.fits, .json) or a sky map (.png, .pdf) instead of printing the area")
    c.add_argument("--schema", default=None, help="schema of the table (default desi_dr1)")
    _target(c)
    _start(c)
    return c


def _parser_void_membership(sub) -> argparse.ArgumentParser:
    vm = sub.add_parser("void-membership", help="materialise desivast_void_membership for the four void finders",
                        description="Re-create SCHEMA.desivast_void_membership (algorithm, cap, void, targetid, "
                        "...) from the loaded DESIVAST and FastSpecFit tables: V2 algorithms from "
                        "GALZONE/ZONEVOID, VoidFinder geometrically (galaxies of the parent sample inside a "
                        "void's holes, comoving coordinates with the file's cosmology). See docs/VOIDS.md.")
    vm.add_argument("--schema", default=None, help="schema of the loaded catalogs (default desi_dr1)")
    _target(vm)
    return vm


def _parser_bench(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="benchmark against the server's ceiling and pandas (scripts/bench.py)",
                       description="Run scripts/bench.py of the source tree (pip install -e '.[bench]' first): "
                       "every argument goes to it. desi-loader bench --help lists them.", add_help=False)
    b.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="arguments of scripts/bench.py (desi-loader bench --help lists them)")
    return b


def _parser_status(sub) -> argparse.ArgumentParser:
    st = sub.add_parser("status", help="list loads and their tasks (done, pending, failed)")
    st.add_argument("--schema", default=None, help="schema of the loads (default desi_dr1)")
    _target(st)
    return st


def _parser_abort(sub) -> argparse.ArgumentParser:
    ab = sub.add_parser("abort", help="drop an unfinished load's staging tables")
    ab.add_argument("load_id", type=int, help="the load's id, as desi-loader status lists it")
    ab.add_argument("--schema", default=None, help="schema of the load (default desi_dr1)")
    _target(ab)
    return ab


def _parser_tap(sub) -> argparse.ArgumentParser:
    t = sub.add_parser("tap", help="serve the loaded tables over TAP/ADQL and cone search (GAVO DaCHS), "
                       "for TOPCAT, pyvo, astroquery",
                       description="Serve the published tables of a schema as a Virtual Observatory service: "
                       "TAP (ADQL, sync and async, table upload) and a Simple Cone Search per sky-indexed table, "
                       "with their units, UCDs and descriptions. Nothing is copied: GAVO DaCHS (Debian "
                       "gavodachs2-server) reads the tables where they are; the target server needs pgsphere. "
                       "Loads into a served schema keep the service in sync by themselves.",
                       epilog="actions:\n  publish  describe the schema to DaCHS, set privileges, start or reload the "
                       "server\n  url      print the TAP endpoint (one line)\n  status   what is served, and "
                       "whether it matches the published tables\n  stop     stop the server\n\nexamples:\n"
                       "  desi-loader tap publish --dsn postgresql://me@127.0.0.1/desi --admin-dsn "
                       "postgresql://postgres@127.0.0.1/desi\n"
                       "  desi-loader tap url --web      the web pages: tables, coverage, search forms\n"
                       "  topcat: File > Load Table > TAP, URL from desi-loader tap url",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("action", choices=("publish", "url", "status", "stop"), help="what to do (see actions below)")
    t.add_argument("--schema", default=None, help="schema to serve (default desi_dr1)")
    t.add_argument("--tap-dir", default=None, help="the DaCHS instance's directory (publish: default "
                   "~/.local/share/desi-loader/tap; url, status, stop: default the instance published last on this "
                   "machine; one instance serves one database)")
    t.add_argument("--host", default="127.0.0.1", help="address the server listens on (default 127.0.0.1)")
    t.add_argument("--port", type=int, default=8080, help="its port (default 8080)")
    t.add_argument("--admin-dsn", default=None, help="a superuser of the same database, needed once to set "
                   "DaCHS up in it (its roles, schemas and pgsphere) and to create q3c and the q3c indexes the "
                   "cone searches need (default: --dsn)")
    t.add_argument("--no-start", action="store_false", dest="start", help="publish without starting the server")
    t.add_argument("--web", action="store_true",
                   help="url: print the landing page of the schema (tables, coverage, search forms) instead")
    _target(t)
    return t


def _parser_server(sub) -> argparse.ArgumentParser:
    v = sub.add_parser("server", help="the embedded PostgreSQL server: start, stop, url, psql, shrink",
                       description="The PostgreSQL server the loader runs itself when no database is named "
                       "(data in ~/.local/share/desi-loader/pgdata). load starts it; queries only use it.",
                       epilog="actions:\n  start  start it (creating it on first use) and print its connection URI\n"
                       "  stop   stop it (the data stays)\n  url    print its connection URI, for psql or any "
                       "client (it must be running)\n  psql   open an interactive psql session on it\n"
                       "  shrink give the disk back the WAL files kept for the next load (up to 32 GB after a "
                       "large one)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("action", choices=("start", "stop", "url", "psql", "shrink"), help="what to do (see actions below)")
    v.add_argument("--data-dir", help="data directory (default ~/.local/share/desi-loader/pgdata)")
    return v


#: command -> (parser builder, function(args, console) returning the exit code), in --help order
COMMANDS = {"load": (_parser_load, cmd_load), "sample": (_parser_sample, cmd_sample),
            "sql": (_parser_sql, cmd_sql), "cone": (_parser_cone, cmd_cone), "xmatch": (_parser_xmatch, cmd_xmatch),
            "coverage": (_parser_coverage, cmd_coverage),
            "void-membership": (_parser_void_membership, cmd_void_membership),
            "bench": (_parser_bench, lambda args, console: cmd_bench(args.args)),
            "status": (_parser_status, cmd_status), "abort": (_parser_abort, cmd_abort),
            "tap": (_parser_tap, cmd_tap), "server": (_parser_server, cmd_server)}


def _stop_on_signals() -> None:
    """SIGTERM (a batch scheduler's time limit, scancel) and SIGHUP stop the load like Ctrl-C."""

    def stop(signum, _frame):
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:    # nohup: keep ignoring hang-ups
            signal.signal(sig, stop)


def _not_astropy(record: logging.LogRecord) -> bool:
    return not record.name.startswith("astropy")


def main(argv: Optional[Sequence[str]] = None, reporter: Optional[NullReporter] = None,
         faults: Optional[Faults] = None) -> int:
    """Entry point of ``desi-loader``; returns the exit code.  The fault tests' seam, for
    ``load`` only: ``reporter``, what it tells its progress to (instead of the bars or lines it
    chooses; it may stop the process at a point), and ``faults`` (control.options.Faults)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is not None and argv[first] == "bench":        # its options are scripts/bench.py's, --help too
        args = parser.parse_args(argv[:first + 1])
        args.args = argv[first + 1:]
    else:
        args, extra = parser.parse_known_args(argv)
        if extra:                                           # a typo: the command's own usage, not the top's
            (_subparser(parser, args.command) if args.command else parser).error(
                f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # astropy prints its own warnings: not twice.  A filter on our handlers, not its logger:
    # astropy is imported later (by the commands that need it), and a logger named "astropy"
    # made before that breaks its import (its logger class would not be AstropyLogger)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_astropy)             # once per handler however often main runs
    # batch logs and pipes: wide enough that tables and summaries do not wrap
    console = Console(stderr=False) if sys.stdout.isatty() else Console(stderr=False, width=200)
    err = Console(stderr=True)
    if args.command is None:
        parser.print_help()
        return 2
    _stop_on_signals()
    try:
        if (reporter is not None or faults is not None) and args.command == "load":
            return cmd_load(args, console, reporter, faults)
        return COMMANDS[args.command][1](args, console)
    except LoaderError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        if exc.hint:
            err.print(f"  hint: {escape(exc.hint)}", highlight=False, soft_wrap=True)
        return exc.exit_code
    except psycopg2.Error as exc:                     # a query of sql / cone / xmatch / void-membership
        code = f" (SQLSTATE {exc.pgcode})" if getattr(exc, "pgcode", None) else ""
        err.print(f"[red]error:[/red] {escape(first_line(exc))}{code}", highlight=False,
                  soft_wrap=True)
        return 1
    except KeyboardInterrupt as exc:
        sig = getattr(exc, "signum", signal.SIGINT)
        err.print(f"interrupted ({signal.Signals(sig).name}): nothing was published half-way and staging is "
                  "kept; rerun the same command to resume", soft_wrap=True)
        return 128 + sig


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
