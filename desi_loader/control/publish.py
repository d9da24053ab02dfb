"""Publishing: a swap of staging tables into place (replace), or a merge into the published
tables (incremental); either is one transaction that readers see whole or not at all."""
from __future__ import annotations

import logging
from typing import Callable, Optional, TYPE_CHECKING

import psycopg2
from psycopg2 import sql

from ..catalog import attach
from ..catalog.columns import published_columns
from ..db import first_line, is_transient, relation_exists
from ..errors import DatabaseError, LoadFailed
from .retry import DEFAULT_BUDGET, Backoff
from .ledger import publish_columns, publish_merged, publish_swapped, replaced_files
from .sqlgen import reset_staging_options
from .staging import FINALIZE_LOCK_TIMEOUT, prepare_sky, table_order

if TYPE_CHECKING:
    from ..control.load import Load
    from ..db import Connection, Cursor

log = logging.getLogger(__name__)

#: How long the swap waits for a lock before giving up and retrying.  Readers holding the
#: published table delay the swap; a short timeout keeps new readers from queueing
#: behind our pending ACCESS EXCLUSIVE request for long.
SWAP_LOCK_TIMEOUT = "2s"
#: the backoff between lock waits of the swap (shorter than the server's: a reader ends soon)
SWAP_FIRST, SWAP_CAP = 0.2, 2.0


def swap_backoff(budget: float = DEFAULT_BUDGET, notify: Callable[[str], None] = log.warning) -> Backoff:
    """How the swap waits for readers of the published tables (retry.py's policy, its delays)."""
    return Backoff("publishing", budget, notify, waiting_for="readers of the published tables",
                   first=SWAP_FIRST, cap=SWAP_CAP)


def add_columns(conn: Connection, schema: str, specs: dict) -> list:
    """Give the published tables the columns the new files bring (nullable: instant, no rewrite).

    Its own short transaction before the merge, so the merge holds no exclusive lock.
    """
    added = []
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for table, spec in specs.items():
            have = published_columns(cur, schema, table)
            for col in spec.all_columns:
                if col.name not in have:
                    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        sql.Identifier(schema, table), sql.Identifier(col.name), sql.SQL(col.sql_type)))
                    if col.comment:
                        cur.execute(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                            sql.Identifier(schema, table), sql.Identifier(col.name), sql.Literal(col.comment)))
                    added.append(f"{table}.{col.name}")
    conn.commit()
    return added


def merge(conn: Connection, schema: str, staging: dict, specs: dict, load_id: int, order: list) -> dict:
    """Publish an incremental load in one transaction: the rows of files this load replaces
    are deleted, the staging rows inserted, the manifest flipped, staging dropped.

    Readers see the tables before or after (MVCC), never in between, and are not blocked:
    only row locks and the published tables' indexes are touched.  Keys and foreign keys
    are checked against the whole published tables by the inserts themselves.  ``order``
    lists tables parents first.  Returns {table: rows deleted}.
    """
    deleted = {}
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
            replaced = replaced_files(cur, schema, list(staging), load_id)
            for table in reversed(order):
                cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = ANY(%s)").format(sql.Identifier(schema, table)),
                            (replaced,))
                deleted[table] = cur.rowcount
            for table in order:
                cols = sql.SQL(", ").join(sql.Identifier(c.name) for c in specs[table].all_columns)
                cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                    sql.Identifier(schema, table), cols, cols, sql.Identifier(schema, staging[table])))
            publish_merged(cur, schema, load_id, replaced)
            publish_columns(cur, schema, specs, load_id, replace=False)
            cur.execute(sql.SQL("DROP TABLE {}").format(
                sql.SQL(", ").join(sql.Identifier(schema, t) for t in staging.values())))
        conn.commit()
    except (psycopg2.errors.UniqueViolation, psycopg2.errors.ForeignKeyViolation) as exc:
        conn.rollback()
        detail = (exc.diag.message_detail or "").strip()
        raise LoadFailed(f"the new rows conflict with the published {exc.diag.table_name}: "
                         f"{first_line(exc)} ({detail})",
                         "two files hold the same keys? nothing was published; remove the duplicate file, "
                         "or reload everything with --replace-all") from exc
    return deleted


def _create_views(cur: Cursor, schema: str, views: dict) -> None:
    for name, select in views.items():
        cur.execute("SAVEPOINT view")
        try:
            cur.execute(sql.SQL("CREATE VIEW {} AS ").format(sql.Identifier(schema, name)) +
                        sql.SQL(select.replace("{schema}", "{s}")).format(s=sql.Identifier(schema)))
            cur.execute("RELEASE SAVEPOINT view")
        except psycopg2.errors.UndefinedTable:
            cur.execute("ROLLBACK TO SAVEPOINT view")   # this load lacks a table the view needs
            log.info("view %s not created: its tables are not all loaded", name)


def _rename_indexes(cur: Cursor, schema: str, table: str, old_prefix: str) -> None:
    cur.execute("SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
                "WHERE n.nspname = %s AND t.relname = %s", (schema, table))
    for (name,) in cur.fetchall():
        if name.startswith(old_prefix):
            new = table + name[len(old_prefix):]
            cur.execute(sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(schema, name), sql.Identifier(new[:63])))


def swap(conn: Connection, schema: str, staging: dict, load_id: int, catalog: str, views: Optional[dict] = None,
         backoff: Optional[Backoff] = None, specs: Optional[dict] = None) -> int:
    """Publish every staging table in one short transaction; returns attempts used.

    Each published table is renamed away, its staging table renamed in, the old one
    dropped, and the manifest flipped to this load, all or nothing; what users attached to
    the old tables (owner, grants, comments, row-level security, their views and indexes)
    moves to the new ones in the same transaction (attach.py).  A reader sees the old
    tables or the new ones.  Each lock wait is bounded by SWAP_LOCK_TIMEOUT (new readers do
    not queue behind it for long) and retried as ``backoff`` says; a lost connection is the
    caller's to cure (the phase is rerun on a new one).
    """
    backoff = backoff or swap_backoff()
    while True:
        try:
            with conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (SWAP_LOCK_TIMEOUT,))
                _swap_tables(cur, schema, staging, load_id, views or {})
                publish_swapped(cur, schema, list(staging), load_id)
                publish_columns(cur, schema, specs or {}, load_id, replace=True)
            conn.commit()
            return backoff.attempts + 1
        except psycopg2.Error as exc:
            if conn.closed:
                raise
            conn.rollback()
            if not backoff.wait(exc, is_transient):
                raise DatabaseError(f"could not publish the tables: {first_line(exc)}",
                                    "long-running queries may hold the tables; staging is kept, "
                                    "rerun to retry (or raise --wait-timeout)") from exc


def _swap_tables(cur: Cursor, schema: str, staging: dict, load_id: int, views: dict) -> None:
    published = [t for t in staging if relation_exists(cur, schema, t)]
    kept = {t: attach.capture(cur, schema, t) for t in published}
    user_views = attach.dependent_views(cur, schema, published, set(views))
    moved = {t: [n for n, _ in attach.user_indexes(cur, schema, t, set())] for t in published}
    attach.drop_views(cur, user_views)
    for name in views:
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(schema, name)))
    olds = []
    for table, stage in staging.items():
        if table in published:
            old = f"{table}__old{load_id}"
            cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, table),
                                                                    sql.Identifier(old)))
            olds.append(old)
        cur.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, stage),
                                                                sql.Identifier(table)))
        cur.execute(reset_staging_options(schema, table))
    if olds:   # one statement: old tables may reference each other
        cur.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(sql.Identifier(schema, o) for o in olds)))
    for table, stage in staging.items():
        _rename_indexes(cur, schema, table, stage)
        for name in moved.get(table, ()):       # users' indexes, built on staging in the index phase
            cur.execute(sql.SQL("ALTER INDEX IF EXISTS {} RENAME TO {}").format(
                sql.Identifier(schema, attach.staging_index_name(name, load_id)), sql.Identifier(name)))
        if table in kept:
            cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(format('%%I.%%I', "
                        "%s::text, %s::text)) AND attnum > 0", (schema, table))
            attach.restore(cur, schema, table, kept[table], {r[0] for r in cur.fetchall()})
    _create_views(cur, schema, views)
    attach.create_views(cur, user_views)


# ------------------------------------------------------------------ a whole load

def publish_merge(load: Load, warn: Optional[Callable[[str], None]] = None) -> tuple[list, dict]:
    """Incremental publish of ``load`` (a load.Load): new columns, then one transaction
    replacing and adding rows.  Returns (columns added, {table: rows replaced}); ``warn``: the
    reporter's, told when q3c is there but this role cannot create it."""
    prepare_sky(load, warn)
    added = add_columns(load.conn, load.schema, load.tables)
    deleted = merge(load.conn, load.schema, load.staging_tables, load.tables, load.load_id,
                    table_order(load.tables, load.fkeys))
    return added, {t: n for t, n in deleted.items() if n}


def publish_swap(load: Load) -> int:
    """Replace the published tables of ``load`` by its staging tables (``swap``)."""
    return swap(load.conn, load.schema, load.staging_tables, load.load_id, load.plan.catalog.name,
                load.plan.catalog.views, swap_backoff(load.opts.wait_timeout, load.ledger.notify),
                specs=load.tables)
