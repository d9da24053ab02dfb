"""What each command does (the CLI's parser builders and dispatch are in cli.py): load with
progress and a summary, queries, status and abort, the embedded server, samples.

Each ``cmd_*`` takes the parsed arguments and a rich Console and returns the exit code; a
LoaderError it raises becomes one line and its exit code in cli.main.
"""
from __future__ import annotations

import json
import os
import runpy
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import psycopg2
from rich.table import Table

from . import api
from .servers import citus, embedded as server
from . import display
from .queries import checks, cone, coverage, export, voids
from .fits.config import load_settings
from .db import connect, first_line, mask_dsn
from .errors import DatabaseError, UsageError
from .control.ledger import Ledger, client_alive
from .progress import PlainReporter, QuietReporter, RichReporter
from .control.options import Faults, LoadOptions
from .samples.cache import write_samples
from .tap import dachs, rd, service as tap

if TYPE_CHECKING:
    from .db import Connection, Cursor
    from .report import NullReporter


def _dsn(args, start: bool = False) -> str:
    """The target database; the embedded server is started only for ``start`` (load, or a
    query command given --start): read-only commands never create or start one."""
    return server.target(args.dsn, getattr(args, "config", None), args.data_dir,
                         start_server=start or getattr(args, "start_server", False))


def _target_args(args) -> str:
    """The options that name this command's database, for the commands it suggests next."""
    given = [("--dsn", mask_dsn(args.dsn) if getattr(args, "dsn", None) else None),
             ("--data-dir", getattr(args, "data_dir", None)), ("--config", getattr(args, "config", None))]
    return "".join(f" {opt} {shlex.quote(str(v))}" for opt, v in given if v)


def _print_summary(console, summary, dsn: str, target: str = "") -> None:
    d = summary.as_dict()
    console.print(f"[bold]load {summary.load_id}: {summary.catalog} -> schema {summary.schema}", highlight=False)
    t = Table()
    t.add_column("table")
    t.add_column("rows", justify="right")
    for name, n in summary.rows.items():
        t.add_row(name, f"{n:,}")
    t.add_row("[bold]total", f"[bold]{d['total_rows']:,}")
    console.print(t)
    phases = "  ".join(f"{k} {v:.2f}s" for k, v in summary.phases.items() if k != "copy_stream")
    if "copy_stream" in summary.phases:
        phases += f"  (copy streaming {summary.phases['copy_stream']:.2f}s, the rest is worker start-up and exit)"
    console.print(f"named files: {len(summary.files_loaded)} loaded, {len(summary.files_unchanged)} unchanged "
                  f"(published before), {len(summary.files_failed)} not loaded")
    kind = "Parquet" if summary.catalog == "parquet" else "FITS"
    console.print(f"files {summary.files}  {kind} {summary.fits_bytes / 1e6:,.1f} MB  tasks {summary.tasks}  "
                  f"workers {summary.workers}  format {summary.fmt}")
    console.print(f"phases: {phases}", highlight=False)
    if d["copy_rows_per_s"]:
        cpu = (f" (client CPU: workers {summary.cpu['workers_s']:.2f}s reading, encoding and sending, "
               f"coordinator {summary.cpu['coordinator_s']:.2f}s)" if summary.cpu else "")
        console.print(f"copy: {d['copy_rows_per_s']:,.0f} rows/s, {d['copy_mb_per_s']:,.1f} MB/s of {kind}{cpu}",
                      highlight=False)
    elif summary.role != "nothing":
        console.print("copy: no rows copied in this run (the rows were copied before it)", highlight=False)
    if summary.memory:
        console.print("peak memory: " + ", ".join(f"{k.replace('_peak_mb', '')} {v:,.0f} MB"
                                                 for k, v in summary.memory.items()))
    if summary.incremental:
        console.print(f"incremental: {summary.files} new or changed file(s) merged into the published tables, "
                      f"{summary.unchanged_files} unchanged file(s) skipped"
                      + (f"; replaced rows: {summary.replaced_rows}" if summary.replaced_rows else ""))
    if summary.durable_path:
        console.print(f"durable path: {summary.durable_path}", highlight=False)
    if summary.cluster:
        console.print(f"{summary.cluster}: " + "; ".join(f"{t} {d}" for t, d in summary.distribution.items()))
    console.print(f"checksums {summary.checksums}; " +
                  (f"row counts verified against {'each file' if kind == 'Parquet' else 'NAXIS2 per file and HDU'}; "
                   if summary.verified else "") +
                  ("tables are durable (LOGGED)" if summary.durable else
                   "[yellow]tables are UNLOGGED: a server crash empties them[/yellow]"))
    if summary.resumed:
        console.print(summary.resumed)
    if summary.node_rows and summary.node_seconds:
        console.print(f"this process ({summary.process}): {summary.node_rows:,} rows at "
                      f"{summary.node_rows / summary.node_seconds:,.0f} rows/s")
    if summary.published_by and not summary.finalized:
        console.print(f"published by {summary.published_by} (this process copied and waited)")
    for name, reason in summary.left_out:
        console.print(f"[yellow]published WITHOUT {name}[/yellow]: {reason}")
    if summary.server:
        console.print("server: " + ", ".join(f"{k}={v}" for k, v in summary.server.items()))
    for line in _sky_coverage(summary, dsn):
        console.print(f"sky coverage: {line}", highlight=False, soft_wrap=True)
    console.print(f"connection: {mask_dsn(dsn)}")
    console.print(f'query it:   desi-loader sql "SELECT count(*) FROM {summary.schema}.'
                  f'{next(iter(summary.rows), "load_files")}"{target}', highlight=False, soft_wrap=True)


def _sky_coverage(summary, dsn: str) -> list:
    """The covered area of each sky-indexed table of a load (desi-loader coverage's line).

    Read after the load was published: a server that went away since (a restart) costs
    these lines, not the load's exit code."""
    tables = [entry["table"] for entry in summary.plan if entry.get("sky")]
    if not tables or not dsn:
        return []
    try:
        conn = connect(dsn)
        try:
            with conn.cursor() as cur:
                return [coverage.coverage(cur, summary.schema, t).line() for t in tables]
        finally:
            conn.close()
    except (DatabaseError, psycopg2.Error) as exc:
        return [f"not read ({first_line(exc)}); desi-loader coverage TABLE reads it later"]


def _reporter(args, console):
    """Rich bars on a terminal, plain lines in logs, nothing with --quiet."""
    if args.quiet:
        return QuietReporter()
    return RichReporter(console) if console.is_terminal else PlainReporter()


def load_options(args, faults: Optional[Faults] = None) -> LoadOptions:
    """The load command's arguments as LoadOptions: the one place they are mapped."""
    return LoadOptions(paths=tuple(args.paths), dsn="", schema=args.schema, catalog=args.catalog, prefix=args.prefix,
                       sky=args.sky, distribute=tuple(args.distribute), workers=args.workers, fmt=args.fmt,
                       unlogged=args.unlogged, dry_run=args.dry_run, task_rows=args.task_rows, config=args.config,
                       verify_checksum=args.verify_checksum, allow_partial=args.allow_partial,
                       resume=args.resume, copy_out=args.copy_out, join=args.join, staging_mode=args.staging,
                       replace_all=args.replace_all, wait_timeout=args.wait_timeout, faults=faults or Faults())


def cmd_load(args, console, reporter: Optional[NullReporter] = None,
             faults: Optional[Faults] = None) -> int:
    """desi-loader load: api.run (the load use case), then the summary, the JSON and the exit code."""
    sample = api.Sample(args.sample_rows, args.sample_files, args.sample_scale) if args.sample else None
    summaries = api.run(load_options(args, faults), dsn=args.dsn, data_dir=args.data_dir, sample=sample,
                        reporter=reporter or _reporter(args, console),    # a test's seam may stop the process
                        say=(lambda m: None) if args.quiet else console.print)
    if args.summary_json:
        loads = [s.as_dict() for s in summaries]
        Path(args.summary_json).write_text(json.dumps(
            {"loads": loads, "total_rows": sum(d["total_rows"] for d in loads)}, indent=2, default=str))
    code = 4 if any(s.left_out for s in summaries) else 0
    if args.dry_run and any(s.left_out for s in summaries) and not args.allow_partial:
        code = 1                       # the load would fail on these files
    if not args.quiet:
        dsn = "" if args.dry_run else _dsn(args)        # the database the load used (its server runs now)
        for summary in summaries:
            _print_outcome(console, summary, args, code, dsn)
    return code


def _print_outcome(console, summary, args, code: int, dsn: str) -> None:
    if summary.role == "nothing":
        console.print(f"{summary.catalog}: all {summary.unchanged_files} files are published and "
                      f"unchanged in schema {summary.schema}: nothing to load (--replace-all reloads them)")
        for name, reason in summary.left_out:
            console.print(f"[yellow]not loaded: {name}[/yellow]: {reason}")
    elif args.dry_run:
        _print_dry_run(console, summary, code)
    else:
        _print_summary(console, summary, dsn, _target_args(args))


def _print_dry_run(console, summary, code: int) -> None:
    for entry in summary.plan:
        sky = f", sky index hpx29 of ({', '.join(entry['sky'])})" if entry.get("sky") else ""
        console.print(f"{summary.schema}.{entry['table']}: {entry['columns']} columns, "
                      f"key ({', '.join(entry['key'])}){sky}, {summary.rows[entry['table']]:,} rows")
    for path, reason in summary.files_failed:
        console.print(f"[yellow]cannot load {os.path.basename(path)}[/yellow]: {reason}")
    failed = len(summary.files_failed)
    console.print(f"{summary.catalog}: {summary.files} files, {summary.tasks} tasks; dry run: nothing loaded"
                  + (f"; {failed} file(s) cannot be loaded (exit {code})" if failed else ""))


def cmd_tap(args, console) -> int:
    if args.action == "publish":
        inst = dachs.Instance(Path(args.tap_dir) if args.tap_dir else dachs.default_dir())
        result = tap.publish(_dsn(args), _schema(args), inst.root, args.host, args.port, args.admin_dsn, args.start)
        for note in result.notes:
            console.print(f"note: {note}", highlight=False, soft_wrap=True)
        columns = sum(len(t.columns) for t in result.tables)
        console.print(f"{result.schema}: {len(result.tables)} tables and views, {columns:,} columns served over TAP")
        for table, url in result.cone_services.items():
            console.print(f"cone search on {table}: {url}", highlight=False, soft_wrap=True)
        console.print(f"web pages: {result.web}", highlight=False, soft_wrap=True)
        console.print(f"TAP endpoint: {result.url}" + ("" if args.start else " (not started: --no-start)"),
                      highlight=False, soft_wrap=True)
        return 0
    inst = dachs.find(args.tap_dir)       # the last one published on this machine, without --tap-dir
    if not inst.exists():
        raise dachs.missing(inst)
    if args.action == "url":
        print(inst.url + rd.web_path(_schema(args)) if args.web else tap.tap_url(inst.url))
        return 0
    if args.action == "stop":
        console.print("stopped" if inst.stop() else "not running")
        return 0
    st = tap.status(inst, args.dsn or inst.state().get("dsn"))
    console.print(f"{st.url}: {'running' if st.running else 'stopped'}, serving {st.database}", highlight=False)
    for schema, (served, in_sync, differ) in st.schemas.items():
        state = "in sync with the published tables" if in_sync else \
            f"OUT OF SYNC ({', '.join(differ[:8])}{' ...' if len(differ) > 8 else ''}): run desi-loader tap publish"
        console.print(f"  {schema}: {served} tables, {state}", highlight=False, soft_wrap=True)
    return 0


def cmd_sql(args, console) -> int:
    out = _output(args)
    checks.output(out)
    conn = connect(_dsn(args))
    try:
        if out is not None:
            return _export(conn, args.query, out)
        with conn.cursor() as cur:
            try:
                cur.execute(args.query)
            except psycopg2.Error as exc:
                raise checks.explain_sql_error(exc, args.query, cur, _schema(args)) from exc
            if cur.description is None:
                conn.commit()
                console.print(cur.statusmessage, highlight=False)
                return 0
            display.show(console, [d.name for d in cur.description], cur)
    finally:
        conn.close()
    return 0


def _schema(args) -> str:
    return getattr(args, "schema", None) or load_settings(getattr(args, "config", None)).schema


def cmd_status(args, console) -> int:
    schema = _schema(args)
    ledger = Ledger(_dsn(args), schema, "status")
    try:
        if not ledger.exists():
            console.print(f"no loads in schema {schema}")
            return 0
        t = Table("load", "catalog", "status", "phase", "started", "finished", "host", "done", "pending", "failed",
                  title=f"loads in schema {schema}")
        running = []
        for row in ledger.loads():
            load_id, catalog, status, started, finished, host, done, pending, failed, _tables, phase = row
            t.add_row(*[("" if v is None else str(v)[:19]) for v in
                        (load_id, catalog, status, phase, started, finished, host, done, pending, failed)])
            if status == "running":
                running.append(load_id)
        console.print(t)
        for load_id in running:
            _print_processes(console, ledger.bind(load_id))
    finally:
        ledger.close()
    return 0


def _print_processes(console, ledger: Ledger) -> None:
    """Who works on a running load now, and how far each host got."""
    t = Table("host:pid", "role", "session", "since", "holds the load", "client",
              title=f"load {ledger.load_id}: processes now")
    for _pid, _tag, role, host, cpid, state, since, holds in sorted(ledger.sessions(), key=lambda r: r[3:5]):
        alive = {True: "running", False: "gone (session orphaned)", None: "other host"}[client_alive(host, cpid)]
        t.add_row(f"{host}:{cpid}", role, state or "", str(since)[:19], holds or "", alive)
    console.print(t)
    done = ledger.progress_by_host()
    if done:
        console.print("done so far: " + "; ".join(f"{h}: {n} tasks, {r:,} rows" for h, n, r in done))


def cmd_abort(args, console) -> int:
    schema = _schema(args)
    ledger = Ledger(_dsn(args), schema, "abort")
    try:
        if not ledger.exists():
            raise UsageError(f"no loads in schema {schema}", "see desi-loader status")
        if not ledger.bind(args.load_id).try_lock():
            raise UsageError(f"load {args.load_id} is being run by another process", "stop it first")
        dropped = ledger.abort()
    finally:
        ledger.close()
    console.print(f"load {args.load_id} aborted; dropped {', '.join(dropped) or 'no staging tables'}")
    return 0


def cmd_cone(args, console) -> int:
    checks.position(args.ra, args.dec)
    checks.radius(args.radius)
    checks.limit(args.limit)
    out = _output(args)
    checks.output(out)
    schema, table = checks.split_table(args.table, _schema(args)) if args.table else (_schema(args), None)
    with connect(_dsn(args)) as conn, conn.cursor() as cur:
        t = cone.describe(cur, schema, table)
        cols = _columns(args.columns)
        checks.columns(cur, t.schema, t.table, cols, "--columns")
        cols = cols or _default_columns(cur, t)
        ranges = cone.cone_ranges(cur, t.schema, args.ra, args.dec, args.radius)
        q = cone.cone_query(t, args.ra, args.dec, args.radius, cols, args.method, args.limit, args.count, ranges)
        return _print_query(cur, q, args.explain, console, "row", out)


def cmd_xmatch(args, console) -> int:
    checks.radius(args.radius)
    out = _output(args)
    checks.output(out)
    with connect(_dsn(args)) as conn, conn.cursor() as cur:
        a = cone.describe(cur, *checks.split_table(args.table_a, _schema(args)))
        b = cone.describe(cur, *checks.split_table(args.table_b, _schema(args)))
        checks.columns(cur, a.schema, a.table, _columns(args.columns_a), "--columns-a")
        checks.columns(cur, b.schema, b.table, _columns(args.columns_b), "--columns-b")
        distributed = citus.cluster(cur) is not None and any(
            (citus.placement(cur, t.schema, t.table) or "").startswith("hash") for t in (a, b))
        q = cone.crossmatch_query(a, b, args.radius, _columns(args.columns_a), _columns(args.columns_b),
                                  pushdown=distributed)
        return _print_query(cur, q, args.explain, console, "match", out)


def _columns(text: Optional[str]) -> list:
    return [c.strip().lower() for c in text.split(",") if c.strip()] if text else []


def _default_columns(cur: Cursor, t) -> list:
    cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (f'"{t.schema}"."{t.table}"',))
    return [r[0] for r in cur.fetchall()] + [t.ra, t.dec]


#: the units of the columns the cone and cross-match queries compute
COMPUTED_UNITS = {"dist": "deg"}


def _output(args) -> Optional[export.Output]:
    """The command's --output (with --format, --sky, --margin), or None."""
    if not args.output:
        for flag, value in (("--format", args.format), ("--sky", args.sky), ("--margin", args.margin)):
            if value is not None:
                raise UsageError(f"{flag} is for --output", "name the file or directory to write with --output")
        return None
    return export.Output(args.output, args.format, args.sky, args.margin)


def _export(conn: Connection, query: str, out: export.Output, units_of: Optional[dict] = None) -> int:
    """Write a query's result as ``out`` says (queries/export.py, queries/hats.py), and say what was written."""
    checks.output(out)                            # a wrong extension or directory fails before the query runs
    path = out.path
    t0 = time.perf_counter()
    written = export.export_query(conn, query, out, units_of)
    dt = time.perf_counter() - t0
    rate = f" in {dt:.2f} s: {written.rows / dt:,.0f} rows/s, {written.bytes / 1e6 / dt:,.1f} MB/s" \
        if written.rows and dt > 0 else ""
    what = "a HATS catalog (with its margin cache) at " if out.kind == "hats" else ""
    print(f"wrote {display.plural(written.rows, 'row')} to {what}{path} ({written.bytes / 1e6:,.1f} MB){rate}",
          file=sys.stderr)
    return 0


def _print_query(cur: Cursor, q, explain: bool, console, what: str, output: Optional[export.Output] = None) -> int:
    text = q.as_string(cur.connection)
    if output and not explain:
        return _export(cur.connection, text, output, COMPUTED_UNITS)
    try:
        if explain:
            cur.execute("EXPLAIN " + text)
            print(text + ";\n")
            print("\n".join(r[0] for r in cur.fetchall()))
            return 0
        cur.execute(text)
    except psycopg2.Error as exc:
        raise checks.explain_sql_error(exc, text) from exc
    display.show(console, [d.name for d in cur.description], cur, what)
    return 0


def cmd_coverage(args, console) -> int:
    """desi-loader coverage: the area in one line, or a MOC or a sky map written to --output."""
    kind = coverage.output_kind(args.output) if args.output else None
    if args.order is not None:
        coverage.check_order(args.order)
    schema, table = checks.split_table(args.table, _schema(args))
    with connect(_dsn(args)) as conn, conn.cursor() as cur:
        cov = coverage.coverage(cur, schema, table, args.order)
    if kind is None:
        print(cov.line())
        return 0
    if kind == "map":
        from .queries import skymap
        skymap.draw(cov, args.output)
    else:
        coverage.write_moc(cov, args.output)
    print(f"wrote {args.output}: {cov.line()}", file=sys.stderr)
    return 0


def cmd_void_membership(args, console) -> int:
    schema = _schema(args)
    conn = connect(_dsn(args))
    try:
        result = voids.build(conn, schema)
    finally:
        conn.close()
    tap.sync(_dsn(args), schema, console.print)
    t = Table("algorithm", "cap", "method", "galaxies in voids", "galaxies considered", "fraction",
              title=f"{schema}.{voids.TABLE}")
    for (alg, cap), (members, considered) in sorted(result.counts.items()):
        frac = voids.fraction(result.counts, (alg, cap))
        t.add_row(alg, cap, "holes" if alg == "VoidFinder" else "zone", f"{members:,}", f"{considered:,}",
                  "" if frac is None else f"{frac:.1%}")
    console.print(t)
    return 0


def cmd_bench(argv: list) -> int:
    """Run scripts/bench.py of the source tree (it needs pandas, which the package does not)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    if not script.is_file():
        raise UsageError("the benchmark lives in scripts/bench.py of the source tree",
                         "clone the repository, pip install -e '.[bench]', then desi-loader bench")
    sys.argv = [str(script)] + list(argv)
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def cmd_server(args, console) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.action == "stop":
        console.print("stopped" if server.stop(data_dir) else "not running")
        return 0
    if args.action != "start" and not server.running(data_dir):
        where = data_dir or server.default_data_dir()
        raise UsageError(f"the embedded server in {where} is not running", "desi-loader server start starts it")
    uri = server.start(data_dir)
    if args.action == "shrink":
        before, after = server.shrink_wal(uri)
        console.print(f"WAL files: {before / 1e9:,.2f} GB -> {after / 1e9:,.2f} GB")
        return 0
    if args.action == "psql":
        psql = server.psql_path()
        os.execv(psql, [psql, uri])
    console.print(uri, highlight=False, soft_wrap=True)
    return 0


def cmd_sample(args, console) -> int:
    for p in write_samples(args.outdir, args.catalog, args.rows, args.files, args.scale, args.seed):
        console.print(p)
    return 0
