"""The Python entry points: ``load`` files into PostgreSQL, ``query`` them back as astropy
Tables.  ``from desi_loader import load, query`` (imported lazily by the package, which
every worker process imports too)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Union

from .control.options import LoadOptions
from .control.summary import Summary
from .control.run import plan_loads, run_loads
from .queries.tables import default_dsn, query
from .errors import LoaderError, with_hint
from .tap import service as tap

log = logging.getLogger(__name__)

__all__ = ["load", "query", "tap_url"]


def load(paths: Union[str, Sequence[str]] = (), *, dsn: Optional[str] = None, workers: int = 2,
         sample: bool = False, quiet: bool = False, **options) -> list[Summary]:
    """Load FITS files or directories, as ``desi-loader load`` does; one Summary per catalog.

    ``sample=True`` loads the sample files (FastSpecFit and DESIVAST, written to the cache
    directory on first use), as ``--sample``.  Progress bars and a line per catalog are shown
    (in a notebook too) unless ``quiet``.  ``dsn``: the database (default as the command
    line: DESI_LOADER_DSN, the config file, libpq's environment, else the embedded server).
    Other keyword arguments are the fields of ``LoadOptions`` (catalog, schema, prefix, sky,
    fmt, allow_partial, replace_all, ...).  Raises a ``desi_loader.errors.LoaderError``
    naming what failed, with its hint in the message.
    """
    try:
        return _load(paths, dsn, workers, sample, quiet, options)
    except LoaderError as exc:
        raise with_hint(exc) from exc.__cause__


def _load(paths, dsn, workers, sample, quiet, options) -> list[Summary]:
    from rich.console import Console
    from .errors import UsageError
    from .progress import PlainReporter, QuietReporter, RichReporter
    from .samples.cache import ensure_sample
    console = Console()
    paths = [paths] if isinstance(paths, str) else list(paths)
    if sample:
        paths += ensure_sample(say=(lambda m: None) if quiet else console.print)
    if not paths:
        raise UsageError("no input given", "name FITS files or directories, or pass sample=True")
    opts = LoadOptions(paths=tuple(paths), dsn="", workers=workers, **options)
    plans = plan_loads(opts)              # arguments and files checked before any server starts
    opts = dataclasses.replace(opts, dsn=dsn if dsn is not None else default_dsn())
    reporter = QuietReporter() if quiet else (
        RichReporter(console) if console.is_terminal or console.is_jupyter else PlainReporter())
    summaries = run_loads(opts, reporter, plans)
    tap.sync_loads(opts.dsn, summaries, log.info)     # a schema served over TAP stays in sync
    if not quiet:
        for s in summaries:
            rows = sum(s.rows.values())
            console.print(f"load {s.load_id}: {s.catalog} -> schema {s.schema}: {rows:,} rows in "
                          f"{len(s.rows)} tables ({', '.join(s.rows)}) in {sum(s.phases.values()):.1f} s"
                          if s.role != "nothing" else f"{s.catalog}: nothing to load (published and unchanged)",
                          highlight=False)
    return summaries


def tap_url(tap_dir: Optional[str] = None) -> str:
    """The TAP endpoint of the service ``desi-loader tap publish`` set up (``tap_dir``:
    its ``--tap-dir``), for ``pyvo.dal.TAPService``."""
    from pathlib import Path
    from .errors import UsageError
    from .tap import dachs
    inst = dachs.Instance(Path(tap_dir) if tap_dir else dachs.default_dir())
    if not inst.exists():
        raise UsageError(f"no TAP service in {inst.root}", "desi-loader tap publish creates it")
    return tap.tap_url(inst.url)
