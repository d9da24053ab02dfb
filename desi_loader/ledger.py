"""The load's plan, tasks and file manifest, kept in PostgreSQL next to the data.

A task's completion is written in the same transaction as its COPY, and workers claim
tasks with ``FOR UPDATE SKIP LOCKED``: a worker that dies rolls back both its rows and
its claim, so every row ends up loaded exactly once, and any process that can reach the
database (another HPC node, later) can take tasks from the same table.
"""
from __future__ import annotations

import json
import socket
from typing import Optional

from psycopg2 import sql
from psycopg2.extras import Json

from . import __version__
from .db import relation_exists

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


def _run(conn, schema: str, text: str, args: tuple = ()) -> Optional[list]:
    """One statement in its own transaction (``{s}`` is the schema); its rows, if any."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL(text).format(s=sql.Identifier(schema)), args)
        rows = cur.fetchall() if cur.description else None
    conn.commit()
    return rows


def ensure_tables(conn, schema: str) -> None:
    """Create the schema and the ledger tables if missing (serialised by an advisory lock)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
        cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if cur.fetchone() is None:   # CREATE SCHEMA needs CREATE on the database: only when missing
            cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL(DDL).format(s=sql.Identifier(schema)))
    conn.commit()


def start_load(conn, schema: str, catalog: str, tables: list, options: dict) -> int:
    """Record a new load and return its id."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("INSERT INTO {}.loader_loads (catalog, tables, options, host, loader_version) "
                            "VALUES (%s, %s, %s, %s, %s) RETURNING load_id").format(sql.Identifier(schema)),
                    (catalog, tables, Json(options), socket.gethostname(), __version__))
        load_id = cur.fetchone()[0]
    conn.commit()
    return load_id


def register_files(conn, schema: str, load_id: int, catalog: str, files: list) -> None:
    """Insert the manifest rows (unpublished) and set each FilePlan.file_id."""
    with conn.cursor() as cur:
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
                "RETURNING file_id").format(sql.Identifier(schema)),
                (load_id, catalog, info.name, info.path, info.size, Json(nrows), Json(info.primary),
                 Json(hdrs), info.checksum, __version__))
            fp.file_id = cur.fetchone()[0]
    conn.commit()


def insert_tasks(conn, schema: str, load_id: int, plan, files: Optional[set] = None) -> int:
    """Write the plan's tasks (of the file indexes in ``files``, default all) as pending; returns how many."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT coalesce(max(task_id) + 1, 0) FROM {}.loader_tasks WHERE load_id = %s")
                    .format(sql.Identifier(schema)), (load_id,))
        next_id = cur.fetchone()[0]
    rows = []
    for t in plan.tasks:
        if files is not None and t.file_index not in files:
            continue
        fp = plan.files[t.file_index]
        parts = [[p.hdu, p.table, p.start, p.stop] for p in t.parts]
        rows.append((load_id, next_id + len(rows), fp.file_id, json.dumps(parts), t.rows))
    if not rows:
        return 0
    with conn.cursor() as cur:
        from psycopg2.extras import execute_values
        execute_values(cur, sql.SQL("INSERT INTO {}.loader_tasks (load_id, task_id, file_id, parts, nrows) "
                                    "VALUES %s").format(sql.Identifier(schema)).as_string(cur), rows,
                       template="(%s, %s, %s, %s::jsonb, %s)", page_size=1000)
    conn.commit()
    return len(rows)


def claim_task(cur, schema: str, load_id: int) -> Optional[tuple]:
    """Lock the next pending task in the current transaction; None when none is left."""
    cur.execute(sql.SQL("SELECT task_id, file_id, parts, nrows FROM {}.loader_tasks "
                        "WHERE load_id = %s AND status = 'pending' ORDER BY task_id "
                        "LIMIT 1 FOR UPDATE SKIP LOCKED").format(sql.Identifier(schema)), (load_id,))
    return cur.fetchone()


def finish_task(cur, schema: str, load_id: int, task_id: int, worker: str, datasums: dict) -> None:
    """Mark a task done, in the transaction that holds its rows."""
    cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'done', done_at = now(), worker = %s, "
                        "attempts = attempts + 1, error = NULL, datasums = %s "
                        "WHERE load_id = %s AND task_id = %s")
                .format(sql.Identifier(schema)), (worker, Json(datasums), load_id, task_id))


def fail_task(conn, schema: str, load_id: int, task_id: int, worker: str, error: str) -> None:
    """Record a failed task (its own transaction; the data transaction was rolled back)."""
    _run(conn, schema, "UPDATE {s}.loader_tasks SET status = 'failed', error = %s, worker = %s, "
         "attempts = attempts + 1 WHERE load_id = %s AND task_id = %s", (error, worker, load_id, task_id))


def pending_rows(conn, schema: str, load_id: int) -> int:
    """Rows still to load (for the progress bar of a resumed load)."""
    rows = _run(conn, schema, "SELECT coalesce(sum(nrows), 0) FROM {s}.loader_tasks WHERE load_id = %s "
                "AND status = 'pending'", (load_id,))
    return int(rows[0][0])


def task_counts(conn, schema: str, load_id: int) -> dict:
    """{'done': n, 'pending': n, 'failed': n} for a load."""
    out = {"done": 0, "pending": 0, "failed": 0}
    out.update(dict(_run(conn, schema, "SELECT status, count(*) FROM {s}.loader_tasks WHERE load_id = %s "
                         "GROUP BY 1", (load_id,))))
    return out


def failed_tasks(conn, schema: str, load_id: int) -> list:
    """(file name, error) of failed tasks."""
    return _run(conn, schema, "SELECT f.filename, t.error FROM {s}.loader_tasks t JOIN {s}.load_files f "
                "USING (file_id) WHERE t.load_id = %s AND t.status = 'failed' ORDER BY t.task_id", (load_id,))


def set_status(conn, schema: str, load_id: int, status: str) -> None:
    _run(conn, schema, "UPDATE {s}.loader_loads SET status = %s, finished_at = now() WHERE load_id = %s",
         (status, load_id))


#: advisory lock namespace of loads: the coordinator running load N holds (LOCK_NS, N)
LOCK_NS = 0x6465_7369


def try_lock(conn, load_id: int) -> bool:
    """Take the session lock that marks this process as the load's coordinator."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_NS, load_id))
        ok = cur.fetchone()[0]
    conn.commit()
    return ok


def find_unfinished(conn, schema: str, catalog: str, tables: list) -> Optional[int]:
    """The newest load of these tables that was neither published nor aborted."""
    rows = _run(conn, schema, "SELECT load_id FROM {s}.loader_loads WHERE catalog = %s AND tables = %s "
                "AND status IN ('running', 'failed') ORDER BY load_id DESC LIMIT 1", (catalog, sorted(tables)))
    return rows[0][0] if rows else None


def staging_complete(conn, schema: str, load_id: int) -> bool:
    """True when every staging table of the load still exists."""
    (tables,), = _run(conn, schema, "SELECT tables FROM {s}.loader_loads WHERE load_id = %s", (load_id,))
    with conn.cursor() as cur:
        ok = all(relation_exists(cur, schema, f"{t}__load{load_id}") for t in tables)
    conn.commit()
    return ok


def registered_files(conn, schema: str, load_id: int) -> dict:
    """filename -> (file_id, size_bytes) of a load's manifest rows."""
    rows = _run(conn, schema, "SELECT filename, file_id, size_bytes FROM {s}.load_files WHERE load_id = %s",
                (load_id,))
    return {name: (file_id, size) for name, file_id, size in rows}


def remove_files(conn, schema: str, load_id: int, file_ids: list, staging: dict) -> None:
    """Forget files of a load: their rows in staging, their tasks and manifest rows."""
    if not file_ids:
        return
    with conn.cursor() as cur:
        for stage in staging.values():
            if relation_exists(cur, schema, stage):
                cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = ANY(%s)").format(
                    sql.Identifier(schema, stage)), (list(file_ids),))
        cur.execute(sql.SQL("DELETE FROM {}.loader_tasks WHERE load_id = %s AND file_id = ANY(%s)")
                    .format(sql.Identifier(schema)), (load_id, list(file_ids)))
        cur.execute(sql.SQL("DELETE FROM {}.load_files WHERE load_id = %s AND file_id = ANY(%s)")
                    .format(sql.Identifier(schema)), (load_id, list(file_ids)))
    conn.commit()


def reset_failed(conn, schema: str, load_id: int) -> int:
    """Make failed tasks pending again (a rerun retries them); returns how many."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'pending', attempts = 0 WHERE load_id = %s "
                            "AND status = 'failed'").format(sql.Identifier(schema)), (load_id,))
        n = cur.rowcount
        cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = 'running', finished_at = NULL "
                            "WHERE load_id = %s").format(sql.Identifier(schema)), (load_id,))
    conn.commit()
    return n


def record_death(conn, schema: str, load_id: int, task_id: int, reason: str, max_attempts: int) -> bool:
    """Count a worker death against its task; True when the task is now failed for good."""
    rows = _run(conn, schema, "UPDATE {s}.loader_tasks SET attempts = attempts + 1, error = %s, "
                "status = CASE WHEN attempts + 1 >= %s THEN 'failed' ELSE status END "
                "WHERE load_id = %s AND task_id = %s AND status = 'pending' RETURNING status",
                (reason, max_attempts, load_id, task_id))
    return bool(rows and rows[0][0] == "failed")


def datasums(conn, schema: str, load_id: int) -> dict:
    """(file_id, hdu index) -> list of partial sums recorded by the done tasks."""
    out: dict = {}
    for file_id, sums in _run(conn, schema, "SELECT file_id, datasums FROM {s}.loader_tasks WHERE load_id = %s "
                              "AND status = 'done' AND datasums IS NOT NULL", (load_id,)):
        for hdu, values in sums.items():
            out.setdefault((file_id, int(hdu)), []).extend(values)
    return out


def loads(conn, schema: str) -> list:
    """Every load with its task counts (for `desi-loader status`)."""
    return _run(conn, schema,
                "SELECT l.load_id, l.catalog, l.status, l.started_at, l.finished_at, l.host, "
                "count(t.*) FILTER (WHERE t.status = 'done'), count(t.*) FILTER (WHERE t.status = 'pending'), "
                "count(t.*) FILTER (WHERE t.status = 'failed'), l.tables "
                "FROM {s}.loader_loads l LEFT JOIN {s}.loader_tasks t USING (load_id) "
                "GROUP BY l.load_id ORDER BY l.load_id")


def abort(conn, schema: str, load_id: int) -> list:
    """Drop a load's staging tables and mark it aborted; returns the tables dropped."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT tables, status FROM {}.loader_loads WHERE load_id = %s")
                    .format(sql.Identifier(schema)), (load_id,))
        row = cur.fetchone()
        if row is None:
            from .errors import UsageError
            raise UsageError(f"no load {load_id} in schema {schema}", "see desi-loader status")
        tables, status = row
        if status == "published":
            from .errors import UsageError
            raise UsageError(f"load {load_id} is published; nothing to abort")
        dropped = []
        for t in tables:
            stage = f"{t}__load{load_id}"
            if relation_exists(cur, schema, stage):
                dropped.append(stage)
        if dropped:
            cur.execute(sql.SQL("DROP TABLE {} CASCADE").format(
                sql.SQL(", ").join(sql.Identifier(schema, d) for d in dropped)))
        cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = 'aborted', finished_at = now() WHERE load_id = %s")
                    .format(sql.Identifier(schema)), (load_id,))
        cur.execute(sql.SQL("DELETE FROM {}.load_files WHERE load_id = %s").format(sql.Identifier(schema)),
                    (load_id,))
    conn.commit()
    return dropped
