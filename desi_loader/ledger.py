"""The load's plan, tasks and file manifest, kept in PostgreSQL next to the data: ``Ledger``.

A task's completion is written in the same transaction as its COPY, and workers claim
tasks with ``FOR UPDATE SKIP LOCKED``: a worker that dies rolls back both its rows and
its claim, so every row ends up loaded exactly once, and any process that can reach the
database (another HPC node, later) can take tasks from the same table.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import Callable, Optional, TypeVar

import psycopg2
from psycopg2 import sql
from psycopg2.extras import Json, execute_values

from . import __version__
from .db import connect, is_transient, relation_exists
from .errors import DatabaseError, UsageError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: key of the advisory lock serialising DDL of the ledger tables between loaders
_SETUP_LOCK = 0x6465_7369  # 'desi'

DDL = """
CREATE TABLE IF NOT EXISTS {s}.loader_loads (
    load_id     bigserial PRIMARY KEY,
    catalog     text NOT NULL,
    tables      text[] NOT NULL,
    status      text NOT NULL DEFAULT 'running',   -- running | published | failed | aborted | replaced
    options     jsonb,
    host        text,
    loader_version text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS {s}.load_files (
    file_id     bigserial PRIMARY KEY,
    load_id     bigint NOT NULL,
    catalog     text NOT NULL,
    filename    text NOT NULL,
    path        text NOT NULL,
    size_bytes  bigint NOT NULL,
    nrows       jsonb NOT NULL,        -- EXTNAME -> NAXIS2
    header      jsonb NOT NULL,        -- PRIMARY header cards
    hdu_headers jsonb NOT NULL,        -- non-column cards of each loaded HDU
    checksum    text NOT NULL,         -- absent | present (not verified) | verified
    loaded_at   timestamptz,
    loader_version text NOT NULL,
    published   boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE {s}.load_files IS 'one row per loaded FITS file; data rows carry its file_id';
CREATE TABLE IF NOT EXISTS {s}.loader_tasks (
    load_id     bigint NOT NULL,
    task_id     integer NOT NULL,
    file_id     bigint NOT NULL,
    parts       jsonb NOT NULL,        -- [[hdu, table, start, stop], ...]
    nrows       bigint NOT NULL,
    status      text NOT NULL DEFAULT 'pending',   -- pending | done | failed
    attempts    integer NOT NULL DEFAULT 0,
    worker      text,
    error       text,
    datasums    jsonb,                 -- hdu index -> ones'-complement sum of the bytes loaded
    done_at     timestamptz,
    PRIMARY KEY (load_id, task_id)
);
-- ledgers written by earlier versions
ALTER TABLE {s}.loader_tasks ADD COLUMN IF NOT EXISTS datasums jsonb;
CREATE INDEX IF NOT EXISTS loader_tasks_pending_idx ON {s}.loader_tasks (load_id, task_id)
    WHERE status = 'pending';
"""



#: Reconnect attempts after a lost connection; with the backoff (0.5 s doubling, at most
#: 16 s) the last comes about a minute after the first failure: a server restart fits.
RECONNECT_ATTEMPTS = 8


def app_name(role: str, tag: str = "-") -> str:
    """``application_name`` of a loader connection: role, load tag, host and pid.

    A later run reads it in pg_stat_activity to tell which sessions belong to a load and
    whether their client process still exists.
    """
    return f"desi-loader {role} {tag} {socket.gethostname()}:{os.getpid()}"[:63]


def staging_name(table: str, load_id: int) -> str:
    """The staging table of ``table`` in load ``load_id``."""
    return f"{table}__load{load_id}"


class Ledger:
    """The ledger tables of one schema, and the load this process works on.

    Owns its connection (re-opened after a server restart, the load re-locked) and every
    statement on ``loader_loads``, ``loader_tasks`` and ``load_files``.  ``load_id`` is
    None until ``start`` or ``bind``.
    """

    def __init__(self, dsn: str, schema: str, role: str = "coordinator") -> None:
        self.dsn, self.schema, self.role = dsn, schema, role
        self.load_id: Optional[int] = None
        self.locked = False
        self._oid: Optional[int] = None
        self.conn = connect(dsn, app_name(role))

    # ----------------------------------------------------------------- plumbing

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()

    def _run(self, text: str, args: tuple = ()) -> Optional[list]:
        """One statement in its own transaction (``{s}`` is the schema); its rows, if any."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL(text).format(s=sql.Identifier(self.schema)), args)
            rows = cur.fetchall() if cur.description else None
        self.conn.commit()
        return rows

    @property
    def tag(self) -> str:
        """Short name of the load for application_name: L<load id>@<oid of loader_loads>."""
        return f"L{self.load_id}@{self._oid}" if self.load_id is not None else "-"

    @property
    def lock_key(self) -> int:
        """The load's advisory-lock key, unique on the server.

        Advisory locks are per database; the OID of this schema's ``loader_loads`` is
        unique within the database, so (oid, load id) names one load of one schema.
        """
        key = (self._oid << 32) | (self.load_id & 0xFFFF_FFFF)
        return key - (1 << 64) if key >= 1 << 63 else key

    def ensure_tables(self) -> None:
        """Create the schema and the ledger tables if missing (serialised by an advisory lock)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
            if cur.fetchone() is None:   # CREATE SCHEMA needs CREATE on the database: only when missing
                cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            cur.execute(sql.SQL(DDL).format(s=sql.Identifier(self.schema)))
        self.conn.commit()
        self._load_oid()

    def _load_oid(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.loader_loads', %s::text))::oid", (self.schema,))
            self._oid = cur.fetchone()[0]
        self.conn.commit()
        return self._oid is not None

    def exists(self) -> bool:
        """True when the schema holds ledger tables."""
        return self._load_oid()

    def bind(self, load_id: int) -> "Ledger":
        """Work on load ``load_id`` from now on (names this connection after it)."""
        if self._oid is None:
            self._load_oid()
        self.load_id = load_id
        with self.conn.cursor() as cur:
            cur.execute("SET application_name = %s", (app_name(self.role, self.tag),))
        self.conn.commit()
        return self

    def reconnect(self) -> None:
        """Re-open the connection if the server dropped it, re-taking the load's lock."""
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")
            self.conn.commit()
            return
        except psycopg2.Error:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        for attempt in range(RECONNECT_ATTEMPTS):
            try:
                self.conn = connect(self.dsn, app_name(self.role, self.tag))
                break
            except DatabaseError:
                if attempt == RECONNECT_ATTEMPTS - 1:
                    raise
                time.sleep(min(0.5 * 2 ** attempt, 16))
        if self.locked and not self._try_lock():
            raise UsageError(f"load {self.load_id} was taken over by another process while the "
                             "server restarted")

    def resilient(self, step: Callable[[], T], what: str = "step", attempts: int = 7) -> T:
        """Run ``step()``; after a transient error (server restart, lost connection, lock
        timeout) reconnect, re-lock and run it again.  Steps given here are idempotent."""
        for attempt in range(attempts):
            try:
                return step()
            except (psycopg2.Error, DatabaseError) as exc:
                if not transient(exc) or attempt == attempts - 1:
                    raise
                log.warning("%s interrupted (%s); retrying", what, str(exc).strip().splitlines()[0])
                time.sleep(min(0.5 * 2 ** attempt, 16))
                self.reconnect()
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- loads

    def find_unfinished(self, catalog: str, tables: list) -> Optional[int]:
        """The newest load of these tables that was neither published nor aborted."""
        rows = self._run("SELECT load_id FROM {s}.loader_loads WHERE catalog = %s AND tables = %s "
                         "AND status IN ('running', 'failed') ORDER BY load_id DESC LIMIT 1",
                         (catalog, sorted(tables)))
        return rows[0][0] if rows else None

    def start(self, catalog: str, tables: list, options: dict) -> int:
        """Record a new load, bind to it and return its id."""
        (load_id,), = self._run(
            "INSERT INTO {s}.loader_loads (catalog, tables, options, host, loader_version) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING load_id",
            (catalog, sorted(tables), Json(options), socket.gethostname(), __version__))
        self.bind(load_id)
        return load_id

    def _try_lock(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (self.lock_key,))
            ok = cur.fetchone()[0]
        self.conn.commit()
        return ok

    def try_lock(self) -> bool:
        """Take the session lock that makes this process the load's coordinator."""
        self.locked = self._try_lock() or self.locked
        return self.locked

    def set_status(self, status: str) -> None:
        self._run("UPDATE {s}.loader_loads SET status = %s, finished_at = now() WHERE load_id = %s",
                  (status, self.load_id))

    def staging_complete(self) -> bool:
        """True when every staging table of the load still exists."""
        (tables,), = self._run("SELECT tables FROM {s}.loader_loads WHERE load_id = %s", (self.load_id,))
        with self.conn.cursor() as cur:
            ok = all(relation_exists(cur, self.schema, staging_name(t, self.load_id)) for t in tables)
        self.conn.commit()
        return ok

    def loads(self) -> list:
        """Every load with its task counts (for `desi-loader status`)."""
        return self._run(
            "SELECT l.load_id, l.catalog, l.status, l.started_at, l.finished_at, l.host, "
            "count(t.*) FILTER (WHERE t.status = 'done'), count(t.*) FILTER (WHERE t.status = 'pending'), "
            "count(t.*) FILTER (WHERE t.status = 'failed'), l.tables "
            "FROM {s}.loader_loads l LEFT JOIN {s}.loader_tasks t USING (load_id) "
            "GROUP BY l.load_id ORDER BY l.load_id")

    def abort(self) -> list:
        """Drop the load's staging tables and mark it aborted; returns the tables dropped."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT tables, status FROM {}.loader_loads WHERE load_id = %s")
                        .format(sql.Identifier(self.schema)), (self.load_id,))
            row = cur.fetchone()
            if row is None:
                raise UsageError(f"no load {self.load_id} in schema {self.schema}", "see desi-loader status")
            tables, status = row
            if status == "published":
                raise UsageError(f"load {self.load_id} is published; nothing to abort")
            dropped = [staging_name(t, self.load_id) for t in tables
                       if relation_exists(cur, self.schema, staging_name(t, self.load_id))]
            if dropped:
                cur.execute(sql.SQL("DROP TABLE {} CASCADE").format(
                    sql.SQL(", ").join(sql.Identifier(self.schema, d) for d in dropped)))
            cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = 'aborted', finished_at = now() "
                                "WHERE load_id = %s").format(sql.Identifier(self.schema)), (self.load_id,))
            cur.execute(sql.SQL("DELETE FROM {}.load_files WHERE load_id = %s")
                        .format(sql.Identifier(self.schema)), (self.load_id,))
        self.conn.commit()
        return dropped

    # ----------------------------------------------------------------- files

    def register_files(self, catalog: str, files: list) -> None:
        """Insert the manifest rows (unpublished) and set each FilePlan.file_id."""
        with self.conn.cursor() as cur:
            for fp in files:
                if fp.file_id:
                    continue
                info = fp.info
                loaded = [h for h in info.hdus if h.index in fp.tables]
                nrows = {(h.extname or f"HDU{h.index}"): h.nrows for h in loaded}
                hdrs = {(h.extname or f"HDU{h.index}"): h.cards for h in loaded}
                cur.execute(sql.SQL(
                    "INSERT INTO {}.load_files (load_id, catalog, filename, path, size_bytes, nrows, header, "
                    "hdu_headers, checksum, loader_version) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                    "RETURNING file_id").format(sql.Identifier(self.schema)),
                    (self.load_id, catalog, info.name, info.path, info.size, Json(nrows), Json(info.primary),
                     Json(hdrs), info.checksum, __version__))
                fp.file_id = cur.fetchone()[0]
        self.conn.commit()

    def registered_files(self) -> dict:
        """filename -> (file_id, size_bytes) of the load's manifest rows."""
        rows = self._run("SELECT filename, file_id, size_bytes FROM {s}.load_files WHERE load_id = %s",
                         (self.load_id,))
        return {name: (file_id, size) for name, file_id, size in rows}

    def remove_files(self, file_ids: list, staging: dict) -> None:
        """Forget files of the load: their rows in staging, their tasks and manifest rows."""
        if not file_ids:
            return
        ids = list(file_ids)
        with self.conn.cursor() as cur:
            for stage in staging.values():
                if relation_exists(cur, self.schema, stage):
                    cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = ANY(%s)").format(
                        sql.Identifier(self.schema, stage)), (ids,))
            for table in ("loader_tasks", "load_files"):
                cur.execute(sql.SQL("DELETE FROM {} WHERE load_id = %s AND file_id = ANY(%s)").format(
                    sql.Identifier(self.schema, table)), (self.load_id, ids))
        self.conn.commit()

    def datasums(self) -> dict:
        """(file_id, hdu index) -> list of partial sums recorded by the done tasks."""
        out: dict = {}
        for file_id, sums in self._run("SELECT file_id, datasums FROM {s}.loader_tasks WHERE load_id = %s "
                                       "AND status = 'done' AND datasums IS NOT NULL", (self.load_id,)):
            for hdu, values in sums.items():
                out.setdefault((file_id, int(hdu)), []).extend(values)
        return out

    # ----------------------------------------------------------------- tasks

    def insert_tasks(self, plan, files: Optional[set] = None) -> int:
        """Write the plan's tasks (of the file indexes in ``files``, default all) as pending."""
        (next_id,), = self._run("SELECT coalesce(max(task_id) + 1, 0) FROM {s}.loader_tasks "
                                "WHERE load_id = %s", (self.load_id,))
        rows = []
        for t in plan.tasks:
            if files is not None and t.file_index not in files:
                continue
            fp = plan.files[t.file_index]
            parts = [[p.hdu, p.table, p.start, p.stop] for p in t.parts]
            rows.append((self.load_id, next_id + len(rows), fp.file_id, json.dumps(parts), t.rows))
        if not rows:
            return 0
        with self.conn.cursor() as cur:
            execute_values(cur, sql.SQL("INSERT INTO {}.loader_tasks (load_id, task_id, file_id, parts, "
                                        "nrows) VALUES %s").format(sql.Identifier(self.schema)).as_string(cur),
                           rows, template="(%s, %s, %s, %s::jsonb, %s)", page_size=1000)
        self.conn.commit()
        return len(rows)

    def claim(self, cur) -> Optional[tuple]:
        """Lock the next pending task in the current transaction: (task_id, file_id, parts, nrows)."""
        cur.execute(sql.SQL("SELECT task_id, file_id, parts, nrows FROM {}.loader_tasks "
                            "WHERE load_id = %s AND status = 'pending' ORDER BY task_id "
                            "LIMIT 1 FOR UPDATE SKIP LOCKED").format(sql.Identifier(self.schema)),
                    (self.load_id,))
        return cur.fetchone()

    def finish(self, cur, task_id: int, worker: str, datasums: dict) -> None:
        """Mark a task done, in the transaction that holds its rows."""
        cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'done', done_at = now(), worker = %s, "
                            "attempts = attempts + 1, error = NULL, datasums = %s "
                            "WHERE load_id = %s AND task_id = %s")
                    .format(sql.Identifier(self.schema)), (worker, Json(datasums), self.load_id, task_id))

    def fail(self, task_id: int, worker: str, error: str) -> None:
        """Record a failed task (its own transaction; the data transaction was rolled back)."""
        self._run("UPDATE {s}.loader_tasks SET status = 'failed', error = %s, worker = %s, "
                  "attempts = attempts + 1 WHERE load_id = %s AND task_id = %s",
                  (error, worker, self.load_id, task_id))

    def record_death(self, task_id: int, reason: str, max_attempts: int) -> bool:
        """Count a worker death against its task; True when the task is now failed for good."""
        rows = self._run("UPDATE {s}.loader_tasks SET attempts = attempts + 1, error = %s, "
                         "status = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE status END "
                         "WHERE load_id = %s AND task_id = %s AND status = 'pending' RETURNING status",
                         (reason, max_attempts, self.load_id, task_id))
        return bool(rows and rows[0][0] == "failed")

    def reset_failed(self) -> int:
        """Make failed tasks pending again (a rerun retries them); returns how many."""
        rows = self._run("UPDATE {s}.loader_tasks SET status = 'pending', attempts = 0 WHERE load_id = %s "
                         "AND status = 'failed' RETURNING 1", (self.load_id,))
        self._run("UPDATE {s}.loader_loads SET status = 'running', finished_at = NULL WHERE load_id = %s",
                  (self.load_id,))
        return len(rows)

    def pending_rows(self) -> int:
        """Rows still to load (for the progress bar of a resumed load)."""
        (n,), = self._run("SELECT coalesce(sum(nrows), 0) FROM {s}.loader_tasks WHERE load_id = %s "
                          "AND status = 'pending'", (self.load_id,))
        return int(n)

    def task_counts(self) -> dict:
        """{'done': n, 'pending': n, 'failed': n} for the load."""
        out = {"done": 0, "pending": 0, "failed": 0}
        out.update(dict(self._run("SELECT status, count(*) FROM {s}.loader_tasks WHERE load_id = %s "
                                  "GROUP BY 1", (self.load_id,))))
        return out

    def failed_tasks(self) -> list:
        """(file name, error) of failed tasks."""
        return self._run("SELECT f.filename, t.error FROM {s}.loader_tasks t JOIN {s}.load_files f "
                         "USING (file_id) WHERE t.load_id = %s AND t.status = 'failed' ORDER BY t.task_id",
                         (self.load_id,))


def transient(exc: BaseException) -> bool:
    """True for errors a reconnect and retry can cure (also when connect() wrapped them)."""
    if isinstance(exc, DatabaseError) and isinstance(exc.__cause__, psycopg2.Error):
        exc = exc.__cause__                  # connect() failed while the server restarts
    return isinstance(exc, psycopg2.Error) and is_transient(exc)
