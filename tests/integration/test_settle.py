"""Hint bits set behind the copy (control/settle.py): the decision, pure; and the mechanism on
the embedded PostgreSQL 18 (data checksums on): after a checkpoint, the first reader of pages
the worker settled writes no full-page images, while pages nobody settled are written to WAL
again, which is what the index phase paid after a checkpoint inside the copy."""
import psycopg2
from psycopg2 import sql

from helpers import write_all_types

from desi_loader.control import settle
from desi_loader.control.options import LoadOptions
from desi_loader.control.run import run_load
from desi_loader.report import NullReporter
from desi_loader.control.target import Cluster, Server
from desi_loader.servers import citus
from desi_loader.control.settle import MIN_TASK_BYTES, TASK_BYTES_DEFAULT, plan_settling

CHECKSUMS = {"data_checksums": "on", "wal_log_hints": "off", "checkpoint_completion_target": "0.9"}


def test_no_settling_where_hint_bits_write_no_wal_or_tables_are_distributed():
    plain = {**CHECKSUMS, "data_checksums": "off", "max_wal_size": "1GB"}
    assert plan_settling(plain, 10 << 30, 2, TASK_BYTES_DEFAULT) == settle.Settling(False, TASK_BYTES_DEFAULT)
    checksums = {**CHECKSUMS, "max_wal_size": "1GB"}
    assert Server().settling(checksums, 10 << 30, 2, TASK_BYTES_DEFAULT) == plan_settling(
        checksums, 10 << 30, 2, TASK_BYTES_DEFAULT)
    assert Cluster(citus.Cluster("13.0", 2)).settling(checksums, 10 << 30, 2, TASK_BYTES_DEFAULT) \
        == settle.Settling(False, TASK_BYTES_DEFAULT)
    assert plan_settling({**plain, "wal_log_hints": "on", "max_wal_size": "1GB"}, 1, 2, TASK_BYTES_DEFAULT).settle
    settling = plan_settling(checksums, 10 << 30, 2, TASK_BYTES_DEFAULT)
    assert settling.behind_tasks("logged") and not settling.behind_tasks("unlogged")


def test_tasks_shrink_only_when_checkpoints_fall_inside_the_load():
    big = {**CHECKSUMS, "max_wal_size": "32768MB"}
    assert plan_settling(big, 4 << 30, 2, TASK_BYTES_DEFAULT) == settle.Settling(True, TASK_BYTES_DEFAULT)
    small = {**CHECKSUMS, "max_wal_size": "1GB"}          # checkpoints every ~565 MB of WAL
    s = plan_settling(small, 4 << 30, 2, TASK_BYTES_DEFAULT)
    assert s.settle and s.task_bytes == int(settle.CHECKPOINT_SHARE * (1 << 30) / 1.9 / 2)
    assert "max_wal_size=1GB" in s.reason and "MB" in s.reason
    assert plan_settling(small, 4 << 30, 64, TASK_BYTES_DEFAULT).task_bytes == MIN_TASK_BYTES
    assert plan_settling(small, 4 << 30, 2, 1 << 20).task_bytes == 1 << 20      # never made larger
    assert plan_settling({**CHECKSUMS, "max_wal_size": "?"}, 4 << 30, 2, TASK_BYTES_DEFAULT).task_bytes \
        == TASK_BYTES_DEFAULT


def _page_images(cur) -> int:
    """Full-page images this session has written to WAL (PostgreSQL 18's per-backend WAL
    statistics: other sessions' WAL, autovacuum's say, does not count)."""
    cur.execute("SELECT pg_stat_force_next_flush()")
    cur.execute("SELECT wal_fpi FROM pg_stat_get_backend_wal(pg_backend_pid())")
    return int(cur.fetchone()[0])


def _fill(conn, table: str, rows: int, settled: bool) -> int:
    """Insert ``rows`` wide rows in one transaction, as a worker's task; settle them after the
    commit when asked.  Returns the table's size in bytes."""
    with conn.cursor() as cur:
        before = settle.extents(cur, "public", [table]) if settled else None
        cur.execute(sql.SQL("INSERT INTO {} SELECT g, repeat('x', 1500) FROM generate_series(1, %s) g")
                    .format(sql.Identifier(table)), (rows,))
        after = settle.extents(cur, "public", [table]) if settled else None
    conn.commit()
    if settled:
        with conn.cursor() as cur:
            assert settle.settle(cur, "public", before, after) >= after[table] - before[table]
        conn.commit()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_relation_size(%s)", (table,))
        size = cur.fetchone()[0]
    conn.commit()
    return size


def test_settled_pages_are_not_written_to_wal_again_after_a_checkpoint(pg_uri):
    conn = psycopg2.connect(pg_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW data_checksums")
            assert cur.fetchone()[0] == "on"             # the embedded server: initdb's default on 18
            for t in ("settle_yes", "settle_no"):
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {0}; CREATE TABLE {0} (id int, pad text) "
                                    "WITH (autovacuum_enabled = off)").format(sql.Identifier(t)))
        conn.commit()
        sizes = {t: _fill(conn, t, 4000, t == "settle_yes") for t in ("settle_yes", "settle_no")}
        conn.autocommit = True
        images = {}
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")                     # the checkpoint that falls inside a copy
            for t in ("settle_no", "settle_yes"):
                before = _page_images(cur)
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))   # the first reader
                assert cur.fetchone()[0] == 4000
                images[t] = _page_images(cur) - before
        pages = {t: size // 8192 for t, size in sizes.items()}
        assert images["settle_no"] >= 0.9 * pages["settle_no"]      # every page again, without settling
        assert images["settle_yes"] <= 0.01 * pages["settle_yes"]
    finally:
        conn.close()


def test_unlogged_pages_are_hinted_without_wal_by_their_first_reader(pg_uri):
    """Why UNLOGGED staging is not settled: after a checkpoint, the first reader of its
    unhinted pages writes no page image (a logged table's writes one a page, above)."""
    conn = psycopg2.connect(pg_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS settle_unlogged; CREATE UNLOGGED TABLE settle_unlogged "
                        "(id int, pad text) WITH (autovacuum_enabled = off)")
        conn.commit()
        pages = _fill(conn, "settle_unlogged", 4000, False) // 8192
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CHECKPOINT")
            before = _page_images(cur)
            cur.execute("SELECT count(*) FROM settle_unlogged")       # the first reader: sets every hint
            assert cur.fetchone()[0] == 4000 and pages > 500
            assert _page_images(cur) - before <= 0.01 * pages          # a catalog page's, at most
    finally:
        conn.close()


def test_staging_fills_without_autovacuum_and_the_published_table_gets_it_back(pg_uri, schema, tmp_path, db):
    """A VACUUM of a table still being loaded reads it to find nothing to do (and, after a
    checkpoint, writes its pages to WAL again): staging is created without autovacuum, and
    the swap gives the published table the server's autovacuum back."""
    seen = {}

    class Watch(NullReporter):
        def phase(self, name):                 # the staging table, as the copy leaves it
            if name == "verify":
                with db.cursor() as cur:
                    cur.execute("SELECT relname, reloptions FROM pg_class c JOIN pg_namespace n ON "
                                "n.oid = c.relnamespace WHERE nspname = %s AND relname LIKE '%%\\_\\_load%%' "
                                "AND relkind = 'r'", (schema,))
                    seen.update(dict(cur.fetchall()))
                db.rollback()

    path = write_all_types(tmp_path / "things.fits")
    opts = LoadOptions(paths=(str(path),), dsn=pg_uri, schema=schema, workers=1, catalog="generic", prefix="g")
    summary = run_load(opts, Watch())
    assert summary.rows and seen and all(v == ["autovacuum_enabled=off"] for v in seen.values())
    with db.cursor() as cur:
        cur.execute("SELECT relname, reloptions FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE nspname = %s AND relname = ANY(%s)", (schema, list(summary.rows)))
        published = dict(cur.fetchall())
    assert set(published) == set(summary.rows) and all(v is None for v in published.values())
