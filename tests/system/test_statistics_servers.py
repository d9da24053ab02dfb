"""The planner's statistics the loader takes of a wide table (control/analyze.py, colstats.py)
against the server's own ANALYZE, on the embedded PostgreSQL 18 (restored with
pg_restore_attribute_stats) and on Debian's PostgreSQL 15 (written into pg_statistic): the
same pg_stats rows when both see every row, the same pg_stats fields filled when the loader
samples, and the server's ANALYZE where the fast path does not apply (a NULL in a
fixed-width column; a loader that is no superuser, before 18)."""
import uuid

import psycopg2
import pytest
from psycopg2 import sql

from desi_loader.control import analyze
from widetable import ROWS, analyzed_at_target_10, clear, pg_stats, wide_table


@pytest.fixture(params=["18", "15"])
def server(request, pg_uri, pg15_uri):
    """(URI, fresh schema, an autocommit cursor) on the embedded PostgreSQL 18, then on Debian's 15."""
    uri = pg_uri if request.param == "18" else pg15_uri
    name = "t_" + uuid.uuid4().hex[:10]
    conn = psycopg2.connect(uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        yield uri, name, cur
        cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    conn.close()


def loader_statistics(uri: str, schema: str, table: str) -> str:
    """The loader's statistics of ``schema.table`` taken in a session of their own: how."""
    work = psycopg2.connect(uri)
    try:
        return analyze.analyze(work, uri, "test", schema, table)
    finally:
        work.close()


def test_statistics_equal_the_servers_analyze_column_by_column(server):
    pg_uri, schema, cur = server
    cols = wide_table(cur, schema, "wide")
    cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS 10, ALTER COLUMN {} SET STATISTICS 0").format(
        sql.Identifier(schema, "wide"), sql.Identifier(cols[0][0]), sql.Identifier(cols[3][0])))
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "wide")))
    by_server = pg_stats(cur, schema, "wide")
    assert len(by_server) == len(cols) - 1            # one column has no statistics (target 0)
    clear(cur, schema, "wide", cols)
    assert pg_stats(cur, schema, "wide") == []
    how = loader_statistics(pg_uri, schema, "wide")
    assert how == f"statistics of {len(cols) - 3} columns from {ROWS:,} sampled rows, ANALYZE of 2"
    by_loader = pg_stats(cur, schema, "wide")
    assert [r[0] for r in by_loader] == [r[0] for r in by_server]
    for mine, theirs in zip(by_loader, by_server):
        assert mine == theirs, mine[0]
    # what the planner makes of them: the same estimates
    cur.execute(sql.SQL("EXPLAIN SELECT * FROM {} WHERE {} = 1 AND {} < 300").format(
        sql.Identifier(schema, "wide"), sql.Identifier(cols[1][0]), sql.Identifier(cols[3 + 19][0])))
    mine = cur.fetchall()
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "wide")))
    cur.execute(sql.SQL("EXPLAIN SELECT * FROM {} WHERE {} = 1 AND {} < 300").format(
        sql.Identifier(schema, "wide"), sql.Identifier(cols[1][0]), sql.Identifier(cols[3 + 19][0])))
    assert cur.fetchall() == mine


def test_a_null_in_a_fixed_width_column_leaves_it_to_analyze(server):
    pg_uri, schema, cur = server
    cols = wide_table(cur, schema, "holes", null_at=7)
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "holes")))
    by_server = pg_stats(cur, schema, "holes")
    clear(cur, schema, "holes", cols)
    assert loader_statistics(pg_uri, schema, "holes") == "ANALYZE (a NULL in the sample)"
    assert pg_stats(cur, schema, "holes") == by_server


def test_a_sampled_table_gets_every_statistic_analyze_gives(server):
    """More rows than the sample (300 x the target): pages drawn at random, as ANALYZE does;
    the values differ by the draw, what is filled does not, and the estimates stay close."""
    pg_uri, schema, cur = server
    cols, ident = analyzed_at_target_10(cur, schema, "big", 20000)
    by_server = pg_stats(cur, schema, "big")
    clear(cur, schema, "big", cols)
    how = loader_statistics(pg_uri, schema, "big")
    assert how.startswith(f"statistics of {len(cols) - 2} columns from 3,000 sampled rows"), how
    by_loader = pg_stats(cur, schema, "big")
    assert len(by_loader) == len(by_server) == len(cols)
    fixed = {n for n, t in cols if t != "text" and not t.endswith("]")}
    for mine, theirs in zip(by_loader, by_server):
        name = mine[0]
        # which of the most common values pass the test of significance is the draw's
        # (either sample may find a value of a uniform column common); the rest is the table's
        assert [v is None for v in mine[6:]] == [v is None for v in theirs[6:]], (mine, theirs)
        if name in fixed:
            assert mine[1:3] == theirs[1:3], name                      # null_frac, avg_width
        # distinct values estimated (negative: a fraction of the rows)
        nd_mine, nd_theirs = (-nd * 20000 if nd < 0 else nd for nd in (mine[3], theirs[3]))
        assert 0.7 < nd_mine / nd_theirs < 1.4, (name, nd_mine, nd_theirs)
        if theirs[7] is not None:                          # correlation
            # rows of equal values are ranked by their place in the sample, so where most rows
            # share a few values (a common value in 60 % of them, seven values, a boolean) two
            # draws differ by up to 0.1 (0.10055 seen once in 2 x 116 columns x many runs); the
            # columns of distinct values (ordered, their correlation near +-1) are held to 0.1
            tied = sum(float(f) for f in theirs[5].strip("{}").split(",")) >= 0.5 if theirs[5] else False
            assert abs(mine[7] - theirs[7]) < (0.25 if tied else 0.1), (name, mine[7], theirs[7])
        k = int(name.split("_")[1]) if name in fixed else None
        if k == 0:                                         # seven values, equally common: all of them
            assert sorted(mine[4].strip("{}").split(",")) == sorted(theirs[4].strip("{}").split(",")), name
        if k == 1:                                         # one value in 60 % of the rows: first, at 0.6
            assert mine[4].strip("{}").split(",")[0] == theirs[4].strip("{}").split(",")[0] == "1", name
            assert float(mine[5].strip("{}").split(",")[0]) == pytest.approx(0.6, abs=0.05), name


def test_a_table_grown_past_its_row_count_is_still_sampled(server):
    """reltuples says the whole table fits the sample; it has grown since: the rows read
    are drawn down to the sample's size, not all taken."""
    pg_uri, schema, cur = server
    cols, ident = analyzed_at_target_10(cur, schema, "grown", 2000)     # reltuples = 2000
    cur.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(ident, ident))   # 4000 rows now
    how = loader_statistics(pg_uri, schema, "grown")
    assert how.startswith(f"statistics of {len(cols) - 2} columns from 3,000 sampled rows"), how


def test_before_18_a_loader_that_is_no_superuser_gets_the_servers_analyze(pg15_uri):
    """pg_statistic is written by superusers only: another role's load leaves the table to ANALYZE."""
    schema, role = "t_" + uuid.uuid4().hex[:10], "stats_" + uuid.uuid4().hex[:8]
    su = psycopg2.connect(pg15_uri)
    su.autocommit = True
    cur = su.cursor()
    cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    try:
        wide_table(cur, schema, "wide")
        cur.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}; ALTER TABLE "{schema}".wide OWNER TO {role}')
        work = psycopg2.connect(psycopg2.extensions.make_dsn(pg15_uri, user=role, password="pw"))
        assert analyze.analyze(work, pg15_uri, "test", schema, "wide") == "ANALYZE"
        work.close()
        assert len(pg_stats(cur, schema, "wide")) == 116
    finally:
        cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE; DROP OWNED BY {role}; DROP ROLE {role}')
        su.close()


def test_statistics_read_from_the_files_equal_those_read_from_the_server(server, tmp_path):
    """A loaded FASTSPEC table's sample values read from its files (the server names the
    sampled rows: file_id, row_num, in physical order) give the statistics that reading
    them from the server gives, column by column, correlation included: the whole table
    (target 100: 1,400 rows), a sample of 600 rows drawn by TID (target 2: each file's
    rows read as one span) and one of 300 (target 1: each row through a memory map)."""
    from desi_loader.control.options import LoadOptions
    from desi_loader.control.run import plan_loads
    from desi_loader.pipeline.sample import file_rows
    from desi_loader.samples.fastspecfit import write_fastspecfit_file
    from helpers import load
    uri, schema, cur = server
    paths = [write_fastspecfit_file(str(tmp_path / f"fastspec-iron-main-dark-nside1-hp{i:02d}.fits"), 700, seed=60 + i)
             for i in range(2)]
    load(uri, schema, paths)
    table = "fastspecfit_fastspec"
    cur.execute(sql.SQL("SELECT filename, file_id FROM {}.load_files").format(sql.Identifier(schema)))
    ids = dict(cur.fetchall())
    files = file_rows(plan_loads(LoadOptions(paths=tuple(paths), dsn=uri))[0], ids)[table]
    cur.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                (f'"{schema}"."{table}"',))
    cols = [(n, None) for (n,) in cur.fetchall()]

    def taken(files, target: int) -> tuple:
        clear(cur, schema, table, cols)
        work = psycopg2.connect(uri)
        try:
            with work.cursor() as c:
                c.execute("SET default_statistics_target = %s", (target,))
            work.commit()
            return analyze.analyze(work, uri, "test", schema, table, files=files), pg_stats(cur, schema, table)
        finally:
            work.close()
    for target, rows in ((100, 1400), (2, 600), (1, 300)):
        how_files, from_files = taken(files, target)
        how_server, from_server = taken(None, target)
        assert f"from {rows:,} sampled rows (their values read from the files)" in how_files, how_files
        assert "files" not in how_server, how_server
        assert len(from_files) == len(from_server) > 800
        for mine, theirs in zip(from_files, from_server):
            assert mine == theirs, (target, mine[0])
