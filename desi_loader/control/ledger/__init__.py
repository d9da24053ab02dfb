"""The load's plan, tasks and file manifest, kept in PostgreSQL next to the data: ``Ledger``.

A task's completion is written in the same transaction as its COPY, and workers claim
tasks with ``FOR UPDATE SKIP LOCKED``: a worker that dies rolls back both its rows and
its claim, so every row ends up loaded exactly once, and any process that can reach the
database (another HPC node, later) can take tasks from the same table.
"""
from __future__ import annotations

import logging
from typing import Optional

from psycopg2 import sql

from ...db import relation_exists, relation_oid
from ..retry import transient
from ..sessions import SETUP_LOCK, Session, Tx, app_name, client_alive, parse_app_name, process_name
from ...catalog.columns import column_sources
from ...catalog.files import published_headers
from .columns import publish_columns
from .files import Files, publish_merged, publish_swapped, replaced_files
from .loads import Loads, staging_name
from .tasks import Tasks

#: sessions' names re-exported: callers know the ledger, the ledger knows its sessions
__all__ = ["Ledger", "Tx", "app_name", "client_alive", "parse_app_name", "process_name", "transient", "staging_name",
           "replaced_files", "publish_merged", "publish_swapped", "published_headers", "publish_columns",
           "column_sources"]

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
-- what each published column was in its FITS files (columns.py)
CREATE TABLE IF NOT EXISTS {s}.loader_columns (
    table_name  text NOT NULL,
    column_name text NOT NULL,
    fits_name   text NOT NULL,         -- TTYPE, case kept
    dtype       text NOT NULL,         -- numpy dtype as astropy reads it (uint16, float32, <U12 ...)
    shape       integer[] NOT NULL,    -- a cell's shape (empty for scalars)
    unit        text,
    description text,
    vla         boolean NOT NULL DEFAULT false,
    tnull       bigint,                -- the stored value a NULL stands for (TNULL or the preset's sentinel)
    load_id     bigint NOT NULL,       -- the load that published it
    PRIMARY KEY (table_name, column_name)
);
CREATE INDEX IF NOT EXISTS loader_tasks_pending_idx ON {s}.loader_tasks (load_id, task_id)
    WHERE status = 'pending';
"""


class Ledger(Loads, Files, Tasks, Session):
    """The ledger tables of one schema, and the load this process works on.

    Every statement on ``loader_loads`` (loads.py), ``load_files`` (files.py) and
    ``loader_tasks`` (tasks.py); its connection, lock and retries are a Session's
    (sessions.py).  ``load_id`` is None until ``start`` or ``bind``.
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
            if not relation_exists(cur, self.schema, "loader_columns"):
                cur.execute(sql.SQL(DDL).format(s=sql.Identifier(self.schema)))
        self._end(None)
        self._load_oid()

    def _load_oid(self, tx: Optional[Tx] = None) -> bool:
        with self.conn.cursor() as cur:
            self._oid = relation_oid(cur, self.schema, "loader_loads")
        self._end(tx)
        return self._oid is not None

    def exists(self) -> bool:
        """True when the schema holds ledger tables."""
        return self._load_oid()
