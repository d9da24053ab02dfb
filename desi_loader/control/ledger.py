"""The load's plan, tasks and file manifest, kept in PostgreSQL next to the data: ``Ledger``.

A task's completion is written in the same transaction as its COPY, and workers claim
tasks with ``FOR UPDATE SKIP LOCKED``: a worker that dies rolls back both its rows and
its claim, so every row ends up loaded exactly once, and any process that can reach the
database (another HPC node, later) can take tasks from the same table.
"""
from __future__ import annotations

import json
import logging
import socket
from typing import Optional

from psycopg2 import sql
from psycopg2.extras import Json, execute_values

from .. import __version__
from ..db import relation_exists
from ..errors import UsageError
from .sessions import SETUP_LOCK, Session, app_name, client_alive, parse_app_name, process_name, transient

#: sessions' names re-exported: callers know the ledger, the ledger knows its sessions
__all__ = ["Ledger", "app_name", "client_alive", "parse_app_name", "process_name", "transient", "staging_name",
           "replaced_files", "publish_merged", "publish_swapped", "published_headers"]

log = logging.getLogger(__name__)

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
ALTER TABLE {s}.loader_loads ADD COLUMN IF NOT EXISTS phase text;        -- what its finalizer does now
ALTER TABLE {s}.loader_loads ADD COLUMN IF NOT EXISTS finalizer text;    -- host:pid that finalizes it
ALTER TABLE {s}.loader_loads ADD COLUMN IF NOT EXISTS error text;        -- why it failed
ALTER TABLE {s}.loader_tasks ADD COLUMN IF NOT EXISTS rows jsonb;        -- table -> rows its COPY reported
ALTER TABLE {s}.load_files ADD COLUMN IF NOT EXISTS identity jsonb;      -- size, mtime, declared sums
-- one row per load whose staging is UNLOGGED: a crash of the server empties it (and the staging)
CREATE UNLOGGED TABLE IF NOT EXISTS {s}.loader_canary (load_id bigint PRIMARY KEY);
CREATE INDEX IF NOT EXISTS loader_tasks_pending_idx ON {s}.loader_tasks (load_id, task_id)
    WHERE status = 'pending';
"""


#: Reconnect attempts after a lost connection; with the backoff (0.5 s doubling, at most
#: 16 s) the last comes about a minute after the first failure: a server restart fits.
RECONNECT_ATTEMPTS = 8


def staging_name(table: str, load_id: int) -> str:
    """The staging table of ``table`` in load ``load_id``."""
    return f"{table}__load{load_id}"


# ------------------------------------------------------------------ the manifest at publish
# These run inside the publishing transaction of finalize.swap / finalize.merge (their cursor):
# the data and the manifest change together.

def replaced_files(cur, schema: str, tables: list, load_id: int) -> list:
    """file_ids of published files that this (incremental) load's files of the same name replace."""
    cur.execute(sql.SQL(
        "SELECT f.file_id FROM {s}.load_files f JOIN {s}.loader_loads l USING (load_id) "
        "WHERE f.published AND l.tables && %s AND f.load_id <> %s AND f.filename IN "
        "(SELECT filename FROM {s}.load_files WHERE load_id = %s)").format(s=sql.Identifier(schema)),
        (tables, load_id, load_id))
    return [r[0] for r in cur.fetchall()]


def publish_merged(cur, schema: str, load_id: int, replaced: list) -> None:
    """Incremental publish: forget the replaced files, publish this load's, retire emptied loads."""
    s = sql.Identifier(schema)
    cur.execute(sql.SQL("DELETE FROM {}.load_files WHERE file_id = ANY(%s)").format(s), (replaced,))
    cur.execute(sql.SQL("UPDATE {}.load_files SET published = true, loaded_at = now() WHERE load_id = %s")
                .format(s), (load_id,))
    cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = 'published', finished_at = now() "
                        "WHERE load_id = %s").format(s), (load_id,))
    cur.execute(sql.SQL("UPDATE {s}.loader_loads l SET status = 'replaced' WHERE status = 'published' "
                        "AND NOT EXISTS (SELECT 1 FROM {s}.load_files f WHERE f.load_id = l.load_id)")
                .format(s=s))


def publish_swapped(cur, schema: str, tables: list, load_id: int) -> None:
    """Swap publish: the loads published before in these tables are replaced by this one."""
    cur.execute(sql.SQL(
        "UPDATE {s}.loader_loads SET status = 'replaced' WHERE status = 'published' "
        "AND tables && %s AND load_id <> %s").format(s=sql.Identifier(schema)), (tables, load_id))
    cur.execute(sql.SQL(
        "DELETE FROM {s}.load_files WHERE load_id IN (SELECT load_id FROM {s}.loader_loads "
        "WHERE status = 'replaced')").format(s=sql.Identifier(schema)))
    cur.execute(sql.SQL("UPDATE {s}.load_files SET published = true, loaded_at = now() "
                        "WHERE load_id = %s").format(s=sql.Identifier(schema)), (load_id,))
    cur.execute(sql.SQL("UPDATE {s}.loader_loads SET status = 'published', finished_at = now() "
                        "WHERE load_id = %s").format(s=sql.Identifier(schema)), (load_id,))


def published_headers(cur, schema: str, catalog: str) -> list:
    """(filename, PRIMARY header) of the published files of ``catalog`` ([] before any load)."""
    if not relation_exists(cur, schema, "load_files"):
        return []
    cur.execute(sql.SQL("SELECT filename, header FROM {}.load_files WHERE published AND catalog = %s")
                .format(sql.Identifier(schema)), (catalog,))
    return cur.fetchall()


class Ledger(Session):
    """The ledger tables of one schema, and the load this process works on.

    Every statement on ``loader_loads``, ``loader_tasks`` and ``load_files``; its connection,
    lock and retries are a Session's (sessions.py).  ``load_id`` is None until ``start`` or
    ``bind``.
    """

    def ensure_tables(self) -> None:
        """Create the schema and the ledger tables if missing (serialised by an advisory lock)."""
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,))
            if cur.fetchone() is None:   # CREATE SCHEMA needs CREATE on the database: only when missing
                cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            # DDL only when the ledger is missing or older: its ALTERs take exclusive locks that
            # would deadlock with other processes opening a load (they hold row locks on it)
            cur.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = to_regclass(format("
                        "'%%I.load_files', %s::text)) AND attname = 'identity' AND NOT attisdropped", (self.schema,))
            if not cur.fetchone()[0]:
                cur.execute(sql.SQL(DDL).format(s=sql.Identifier(self.schema)))
        self._commit()
        self._load_oid()

    def _load_oid(self) -> bool:
        with self.conn.cursor() as cur:
            cur.execute("SELECT to_regclass(format('%%I.loader_loads', %s::text))::oid", (self.schema,))
            self._oid = cur.fetchone()[0]
        self._commit()
        return self._oid is not None

    def exists(self) -> bool:
        """True when the schema holds ledger tables."""
        return self._load_oid()

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

    def state(self) -> tuple:
        """(status, phase, finalizer, error) of the load."""
        (row,) = self._run("SELECT status, phase, finalizer, error FROM {s}.loader_loads WHERE load_id = %s",
                           (self.load_id,))
        return row

    def published_files(self, tables: list) -> dict:
        """filename -> (file_id, identity) of the files published in these tables."""
        rows = self._run("SELECT f.filename, f.file_id, coalesce(f.identity, jsonb_build_object('size', f.size_bytes)) "
                         "FROM {s}.load_files f JOIN {s}.loader_loads l USING (load_id) "
                         "WHERE f.published AND l.status = 'published' AND l.tables && %s", (sorted(tables),))
        return {name: (file_id, identity) for name, file_id, identity in rows}

    def setting(self, name: str) -> str:
        """A server setting (current_setting)."""
        (row,) = self._run("SELECT current_setting(%s)", (name,))
        return row[0]

    def options(self) -> dict:
        """The options the load was started with (format, staging mode, paths ...)."""
        (row,) = self._run("SELECT options FROM {s}.loader_loads WHERE load_id = %s", (self.load_id,))
        return row[0] or {}

    def set_phase(self, phase: Optional[str], finalizer: Optional[str] = None) -> None:
        self._run("UPDATE {s}.loader_loads SET phase = %s, finalizer = coalesce(%s, finalizer) "
                  "WHERE load_id = %s", (phase, finalizer, self.load_id))

    def set_left_out(self, files: list) -> None:
        """Record the (file, reason) pairs --allow-partial publishes without, for the processes
        awaiting the outcome (they exit 4 as the finalizer does)."""
        self._run("UPDATE {s}.loader_loads SET error = %s WHERE load_id = %s",
                  (json.dumps([list(f) for f in files]), self.load_id))

    @staticmethod
    def left_out(error: Optional[str]) -> list:
        """The pairs set_left_out recorded in a published load's error column."""
        try:
            return [tuple(f) for f in json.loads(error)] if error else []
        except (ValueError, TypeError):
            return []

    def set_status(self, status: str, error: Optional[str] = None) -> None:
        self._run("UPDATE {s}.loader_loads SET status = %s, error = %s, finished_at = now() WHERE load_id = %s",
                  (status, error, self.load_id))

    def staging_complete(self) -> bool:
        """True when every staging table of the load still exists."""
        (tables,), = self._run("SELECT tables FROM {s}.loader_loads WHERE load_id = %s", (self.load_id,))
        with self.conn.cursor() as cur:
            ok = all(relation_exists(cur, self.schema, staging_name(t, self.load_id)) for t in tables)
        self._commit()
        return ok

    def loads(self) -> list:
        """Every load with its task counts (for `desi-loader status`)."""
        return self._run(
            "SELECT l.load_id, l.catalog, l.status, l.started_at, l.finished_at, l.host, "
            "count(t.*) FILTER (WHERE t.status = 'done'), count(t.*) FILTER (WHERE t.status = 'pending'), "
            "count(t.*) FILTER (WHERE t.status = 'failed'), l.tables, l.phase "
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
        self._commit()
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
                    "hdu_headers, checksum, loader_version, identity) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
                    "RETURNING file_id").format(sql.Identifier(self.schema)),
                    (self.load_id, catalog, info.name, info.path, info.size, Json(nrows), Json(info.primary),
                     Json(hdrs), info.checksum, __version__, Json(info.identity)))
                fp.file_id = cur.fetchone()[0]
        self._commit()

    def registered_files(self) -> dict:
        """filename -> (file_id, identity) of the load's manifest rows."""
        rows = self._run("SELECT filename, file_id, coalesce(identity, jsonb_build_object('size', size_bytes)) "
                         "FROM {s}.load_files WHERE load_id = %s", (self.load_id,))
        return {name: (file_id, identity) for name, file_id, identity in rows}

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
        self._commit()

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
        self._commit()
        return len(rows)

    def claim(self, cur) -> Optional[tuple]:
        """Lock the next pending task in the current transaction: (task_id, file_id, parts, nrows)."""
        cur.execute(sql.SQL("SELECT task_id, file_id, parts, nrows FROM {}.loader_tasks "
                            "WHERE load_id = %s AND status = 'pending' ORDER BY task_id "
                            "LIMIT 1 FOR UPDATE SKIP LOCKED").format(sql.Identifier(self.schema)),
                    (self.load_id,))
        return cur.fetchone()

    def finish(self, cur, task_id: int, worker: str, datasums: dict, rows: dict) -> None:
        """Mark a task done, in the transaction that holds its rows (``rows``: table -> rows COPY reported)."""
        cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'done', done_at = now(), worker = %s, "
                            "attempts = attempts + 1, error = NULL, datasums = %s, rows = %s "
                            "WHERE load_id = %s AND task_id = %s")
                    .format(sql.Identifier(self.schema)),
                    (worker, Json(datasums), Json(rows), self.load_id, task_id))

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

    def loaded_rows(self) -> Optional[dict]:
        """{table: {file_id: rows}} that the done tasks' COPY statements reported, or None when
        a done task predates these counts (then the staging tables must be counted)."""
        (missing,), = self._run("SELECT count(*) FROM {s}.loader_tasks WHERE load_id = %s AND status = 'done' "
                                "AND rows IS NULL", (self.load_id,))
        if missing:
            return None
        out: dict = {}
        for table, file_id, n in self._run(
                "SELECT r.key, t.file_id, sum(r.value::bigint) FROM {s}.loader_tasks t, jsonb_each_text(t.rows) r "
                "WHERE t.load_id = %s AND t.status = 'done' GROUP BY 1, 2", (self.load_id,)):
            out.setdefault(table, {})[file_id] = int(n)
        return out

    # ----------------------------------------------------------------- crash recovery

    def arm_canary(self) -> None:
        """Note, in an UNLOGGED table, that this load's UNLOGGED staging holds rows."""
        self._run("INSERT INTO {s}.loader_canary VALUES (%s) ON CONFLICT DO NOTHING", (self.load_id,))

    def canary_lost(self) -> bool:
        """True when the server crashed since arm_canary: UNLOGGED tables came back empty."""
        rows = self._run("SELECT 1 FROM {s}.loader_canary WHERE load_id = %s", (self.load_id,))
        return not rows

    def done_tasks(self) -> list:
        """(task_id, file_id, parts, rows) of the load's done tasks."""
        return self._run("SELECT task_id, file_id, parts, rows FROM {s}.loader_tasks WHERE load_id = %s AND "
                         "status = 'done' ORDER BY task_id", (self.load_id,))

    def reset_tasks(self, task_ids: list) -> None:
        """Make done tasks pending again (their rows are gone)."""
        self._run("UPDATE {s}.loader_tasks SET status = 'pending', attempts = 0, done_at = NULL, datasums = NULL, "
                  "rows = NULL WHERE load_id = %s AND task_id = ANY(%s)", (self.load_id, list(task_ids)))

    def claimable(self) -> bool:
        """True when a pending task is not held by any process right now."""
        with self.conn.cursor() as cur:
            row = self.claim(cur)
        self.conn.rollback()
        return row is not None

    def rows_by_table(self) -> dict:
        """Rows of the done tasks per table (what the load holds, whoever loaded it)."""
        rows = self._run("SELECT p->>1, sum((p->>3)::bigint - (p->>2)::bigint) FROM {s}.loader_tasks t, "
                         "jsonb_array_elements(t.parts) p WHERE t.load_id = %s AND t.status = 'done' GROUP BY 1 "
                         "ORDER BY 1", (self.load_id,))
        return {table: int(n) for table, n in rows}

    def progress_by_host(self) -> list:
        """(host, tasks done, rows done) of the load, per loading host."""
        return self._run("SELECT split_part(worker, ':', 1), count(*), sum(nrows) FROM {s}.loader_tasks "
                         "WHERE load_id = %s AND status = 'done' GROUP BY 1 ORDER BY 1", (self.load_id,))

    def failed_tasks(self) -> list:
        """(file name, error) of failed tasks."""
        return self._run("SELECT f.filename, t.error FROM {s}.loader_tasks t JOIN {s}.load_files f "
                         "USING (file_id) WHERE t.load_id = %s AND t.status = 'failed' ORDER BY t.task_id",
                         (self.load_id,))


