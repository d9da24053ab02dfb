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
    done_at     timestamptz,
    PRIMARY KEY (load_id, task_id)
);
"""


def ensure_tables(conn, schema: str) -> None:
    """Create the schema and the ledger tables if missing (serialised by an advisory lock)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SETUP_LOCK,))
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
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


def insert_tasks(conn, schema: str, load_id: int, plan) -> None:
    """Write the task list of the plan into loader_tasks (all pending)."""
    rows = []
    for t in plan.tasks:
        fp = plan.files[t.file_index]
        parts = [[p.hdu, p.table, p.start, p.stop] for p in t.parts]
        rows.append((load_id, t.task_id, fp.file_id, json.dumps(parts), t.rows))
    with conn.cursor() as cur:
        from psycopg2.extras import execute_values
        execute_values(cur, sql.SQL("INSERT INTO {}.loader_tasks (load_id, task_id, file_id, parts, nrows) "
                                    "VALUES %s").format(sql.Identifier(schema)).as_string(cur), rows,
                       template="(%s, %s, %s, %s::jsonb, %s)", page_size=1000)
    conn.commit()


def claim_task(cur, schema: str, load_id: int) -> Optional[tuple]:
    """Lock the next pending task in the current transaction; None when none is left."""
    cur.execute(sql.SQL("SELECT task_id, file_id, parts, nrows FROM {}.loader_tasks "
                        "WHERE load_id = %s AND status = 'pending' ORDER BY task_id "
                        "LIMIT 1 FOR UPDATE SKIP LOCKED").format(sql.Identifier(schema)), (load_id,))
    return cur.fetchone()


def finish_task(cur, schema: str, load_id: int, task_id: int, worker: str) -> None:
    """Mark a task done, in the transaction that holds its rows."""
    cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'done', done_at = now(), worker = %s, "
                        "attempts = attempts + 1 WHERE load_id = %s AND task_id = %s")
                .format(sql.Identifier(schema)), (worker, load_id, task_id))


def fail_task(conn, schema: str, load_id: int, task_id: int, worker: str, error: str) -> None:
    """Record a failed task (its own transaction; the data transaction was rolled back)."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {}.loader_tasks SET status = 'failed', error = %s, worker = %s, "
                            "attempts = attempts + 1 WHERE load_id = %s AND task_id = %s")
                    .format(sql.Identifier(schema)), (error, worker, load_id, task_id))
    conn.commit()


def task_counts(conn, schema: str, load_id: int) -> dict:
    """{'done': n, 'pending': n, 'failed': n} for a load."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT status, count(*) FROM {}.loader_tasks WHERE load_id = %s GROUP BY 1")
                    .format(sql.Identifier(schema)), (load_id,))
        out = {"done": 0, "pending": 0, "failed": 0}
        out.update(dict(cur.fetchall()))
    conn.commit()
    return out


def failed_tasks(conn, schema: str, load_id: int) -> list:
    """(file name, error) of failed tasks."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT f.filename, t.error FROM {s}.loader_tasks t JOIN {s}.load_files f "
                            "USING (file_id) WHERE t.load_id = %s AND t.status = 'failed' ORDER BY t.task_id")
                    .format(s=sql.Identifier(schema)), (load_id,))
        rows = cur.fetchall()
    conn.commit()
    return rows


def set_status(conn, schema: str, load_id: int, status: str) -> None:
    with conn.cursor() as cur:
        cur.execute(sql.SQL("UPDATE {}.loader_loads SET status = %s, finished_at = now() WHERE load_id = %s")
                    .format(sql.Identifier(schema)), (status, load_id))
    conn.commit()
