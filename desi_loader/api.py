"""The Python entry points: ``load`` files into PostgreSQL, ``query`` them back as astropy
Tables, ``tap_url`` of the TAP service.  ``from desi_loader import load, query, tap_url``
(imported lazily by the package, which every worker process imports too)."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Optional, Sequence, Union

from .control.options import LoadOptions
from .control.summary import Summary
from .control.pool import Spares
from .control.run import plan_loads, run_loads
from .fits.hats import any_parquet
from .queries.tables import query
from .errors import LoaderError, UsageError, with_hint
from .report import NullReporter
from .samples.cache import ensure_sample
from .servers import embedded
from .tap import service as tap

log = logging.getLogger(__name__)

__all__ = ["load", "query", "export", "tap_url", "run", "Sample"]


def load(paths: Union[str, Sequence[str]] = (), *, dsn: Optional[str] = None, workers: int = 2,
         sample: bool = False, quiet: bool = False, **options) -> list[Summary]:
    """Load FITS files into PostgreSQL, as ``desi-loader load`` does.

    The files are planned (catalog, tables, tasks) before anything is touched, copied by
    ``workers`` processes into staging tables, verified, indexed and published atomically;
    an interrupted load continues where it stopped when called again with the same files.

    Parameters
    ----------
    paths : str or sequence of str
        FITS files (``.fits``, ``.fits.gz``) or directories holding them.
    dsn : str, optional
        The database: a libpq connection string or URI.  By default the one the command line
        would use: ``DESI_LOADER_DSN``, the configuration file, libpq's environment, else the
        embedded server (started if needed).
    workers : int, optional
        Worker processes, each with its own database connection.
    sample : bool, optional
        Also load the sample files (FastSpecFit and DESIVAST with the real layouts, written to
        the cache directory on first use), as ``--sample`` does.
    quiet : bool, optional
        Show no progress bars and no summary line.
    **options
        Fields of ``desi_loader.control.options.LoadOptions``, the command's options by their
        Python names: ``catalog``, ``schema``, ``prefix``, ``sky``, ``fmt``, ``replace_all``,
        ``allow_partial``, ``resume``, ``task_rows``, ``staging_mode``, ``unlogged``,
        ``verify_checksum``, ``wait_timeout``, ``config``, ``dry_run``, ``distribute``,
        ``copy_out``, ``join``.

    Returns
    -------
    list of desi_loader.control.summary.Summary
        One summary per catalog loaded: rows per table, files loaded, unchanged and failed,
        the time of each phase (``Summary.as_dict()`` is what ``--summary-json`` writes).

    Raises
    ------
    desi_loader.errors.LoaderError
        A subclass naming what failed, with the fix in its message: ``UsageError`` (arguments,
        paths), ``BadFileError``, ``SchemaError``, ``LoadFailed`` (some files failed; nothing
        was published), ``DatabaseError``.

    Notes
    -----
    Workers are spawned processes: call ``load`` under ``if __name__ == "__main__":`` in a
    script (a notebook needs nothing).

    Examples
    --------
    >>> from desi_loader import load
    >>> summaries = load(["/data/fastspecfit"], workers=8)   # doctest: +SKIP
    >>> summaries = load(sample=True, quiet=True)             # doctest: +SKIP
    """
    try:
        return _load(paths, dsn, workers, sample, quiet, options)
    except LoaderError as exc:
        raise with_hint(exc) from exc.__cause__


def _load(paths, dsn, workers, sample, quiet, options) -> list[Summary]:
    from rich.console import Console
    from .progress import PlainReporter, QuietReporter, RichReporter
    console = Console()
    opts = LoadOptions(paths=tuple([paths] if isinstance(paths, str) else paths), dsn="", workers=workers, **options)
    reporter = QuietReporter() if quiet else (
        RichReporter(console) if console.is_terminal or console.is_jupyter else PlainReporter())
    summaries = run(opts, dsn=dsn, sample=Sample() if sample else None, reporter=reporter,
                    say=log.info if quiet else console.print)
    if not quiet:
        for s in summaries:
            rows = sum(s.rows.values())
            console.print(f"load {s.load_id}: {s.catalog} -> schema {s.schema}: {rows:,} rows in "
                          f"{len(s.rows)} tables ({', '.join(s.rows)}) in {sum(s.phases.values()):.1f} s"
                          if s.role != "nothing" else f"{s.catalog}: nothing to load (published and unchanged)",
                          highlight=False)
    return summaries


@dataclasses.dataclass(frozen=True)
class Sample:
    """The sample files to add to a load (``--sample``): FastSpecFit files of ``rows`` rows
    each and the 8 DESIVAST files at ``scale`` of the real counts, written once to the cache."""

    rows: int = 2000
    files: int = 3
    scale: Optional[float] = None


def run(opts: LoadOptions, *, dsn: Optional[str] = None, data_dir: Optional[str] = None,
        sample: Optional[Sample] = None, reporter: Optional[NullReporter] = None,
        say: Callable[[str], None] = log.info) -> list[Summary]:
    """The load use case: the one orchestration of a load, which ``desi_loader.load()`` and
    ``desi-loader load`` both call (they differ only in how they show progress and results).

    The sample files are added, the files are planned (paths, catalogs and headers checked
    before any server is started or schema touched), the target database is chosen as every
    command chooses it (``dsn``, DESI_LOADER_DSN, the config, libpq's environment, else the
    embedded server in ``data_dir``, started), each catalog is loaded (control/run.py), and a
    schema served over TAP is brought up to date.  A dry run touches no database.
    """
    if opts.workers < 1:
        raise UsageError("--workers must be at least 1")
    paths = list(opts.paths)
    if sample is not None:
        paths += ensure_sample(sample.rows, sample.files, sample.scale, say)
    if not paths:
        raise UsageError("no input given", "name FITS files or directories, or use --sample (sample=True)")
    opts = dataclasses.replace(opts, paths=tuple(paths), dsn="")
    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    # the workers start now, beside the planning and the opening: their start-up is off the copy's path
    preload = ("pyarrow.parquet", "pyarrow.compute") if any_parquet(opts.paths) else ()
    spares = None if opts.dry_run else Spares(opts.workers, preload)
    try:
        reporter.phase("plan")
        plans = plan_loads(opts)
        plan_s = round(time.perf_counter() - t0, 3)
        target = "" if opts.dry_run else embedded.target(dsn, opts.config, data_dir, start_server=True)
        opts = dataclasses.replace(opts, dsn=target)
        summaries = run_loads(opts, reporter, plans, plan_s, spares)
    finally:
        if spares is not None:
            spares.release()
    if not opts.dry_run:
        tap.sync_loads(target, summaries, say)       # a schema served over TAP stays in sync
    return summaries


def export(sql: str, output: str, params=None, *, format: Optional[str] = None, sky: Optional[str] = None,
           margin: Optional[float] = None, dsn: Optional[str] = None, start: bool = False) -> int:
    """Write a query's result to a file or a HATS catalog, as ``desi-loader sql --output`` does.

    The rows are streamed in chunks, so a result larger than memory is written; every column
    keeps its FITS dtype, unit and description (as ``query`` returns them).

    Parameters
    ----------
    sql : str
        One SQL statement that returns rows.
    output : str
        The file to write (FITS, VOTable, ECSV or CSV by its extension), or with
        ``format="hats"`` the directory of a new HATS catalog (a collection: the catalog and
        its margin cache), which ``lsdb.read_hats(output)`` opens.
    params : sequence or dict, optional
        Values for the placeholders in ``sql`` (psycopg2's parameters).
    format : {"fits", "votable", "ecsv", "csv", "hats"}, optional
        The format, whatever the name's extension.
    sky : str, optional
        ``"RA,DEC"``: the position columns a HATS catalog is partitioned by (default: the
        result's ``ra`` and ``dec``).
    margin : float, optional
        The HATS margin cache's width in arcseconds (default 10): the largest separation an
        LSDB cross-match finds across partition edges.
    dsn : str, optional
        The database, as for ``query``.
    start : bool, optional
        Start the embedded server when it is the target and is stopped.

    Returns
    -------
    int
        The rows written.

    Raises
    ------
    desi_loader.errors.UsageError
        A format, path or option that cannot be written (the message says what to change).
    desi_loader.errors.QueryError
        The server refused the query.
    """
    try:
        return _export(sql, output, params, format, sky, margin, dsn, start)
    except LoaderError as exc:
        raise with_hint(exc) from exc.__cause__


def _export(sql, output, params, format, sky, margin, dsn, start) -> int:
    from .db import connect
    from .queries import checks, export as writers
    from .queries.tables import default_dsn

    out = writers.Output(output, format, sky, margin)
    checks.output(out)
    conn = connect(dsn if dsn is not None else default_dsn(start))
    try:
        text = sql if params is None else conn.cursor().mogrify(sql, params).decode()
        return writers.export_query(conn, text, out).rows
    finally:
        conn.close()


def tap_url(tap_dir: Optional[str] = None) -> str:
    """The TAP endpoint of the service ``desi-loader tap publish`` set up.

    Parameters
    ----------
    tap_dir : str, optional
        The DaCHS instance's directory (``tap publish --tap-dir``).  By default the instance
        published last on this machine, else ``~/.local/share/desi-loader/tap``.

    Returns
    -------
    str
        The URL, for ``pyvo.dal.TAPService`` or TOPCAT.

    Raises
    ------
    desi_loader.errors.UsageError
        No service was published there (the message names the argument that finds another).

    Examples
    --------
    >>> import pyvo
    >>> from desi_loader import tap_url
    >>> service = pyvo.dal.TAPService(tap_url())   # doctest: +SKIP
    """
    from .tap import dachs
    inst = dachs.find(tap_dir)
    if not inst.exists():
        raise with_hint(dachs.missing(inst))
    return tap.tap_url(inst.url)
