"""The planner's statistics the loader takes of a wide table (control/analyze.py, colstats.py)
against the server's own ANALYZE, on the embedded PostgreSQL 18: the same pg_stats rows
when both see every row, the same pg_stats fields filled when the loader samples, and the
server's ANALYZE where the fast path does not apply (a NULL in a fixed-width column)."""
import logging
import re

import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from desi_loader import colstats
from desi_loader.control import analyze

#: one column per (type, expression of g = 1..ROWS): ties, NaN, infinities, -0 beside +0,
#: physical order (correlation), a constant, all distinct, few distinct, skewed
PATTERNS = [
    ("int2", "(g % 7)::int2"),
    ("int2", "(CASE WHEN g % 10 < 6 THEN 1 ELSE g % 500 END)::int2"),
    ("int4", "g::int4"),
    ("int4", "((g::bigint * 2654435761) % 1000)::int4"),
    ("int4", "(-g)::int4"),
    ("int8", "((g::bigint * 40503) % 65536 - 30000)::int8"),
    ("int8", "(g / 10)::int8"),
    ("int8", "4611686018427387904::int8 + g % 3"),
    ("float4", "(sin(g) * 1000)::float4"),
    ("float4", "(CASE WHEN g % 3 = 0 THEN '-0' WHEN g % 3 = 1 THEN '0' ELSE g::float4 END)::float4"),
    ("float4", "(CASE WHEN g % 5 = 0 THEN 'NaN' WHEN g % 11 = 0 THEN 'Infinity' WHEN g % 13 = 0 "
               "THEN '-Infinity' ELSE (g % 50)::float4 END)::float4"),
    ("float4", "(g * 0.1)::float4"),
    ("float4", "1.5::float4"),
    ("float4", "(CASE WHEN g % 4 = 0 THEN '-0'::float4 ELSE '0'::float4 END)"),
    ("float8", "(cos(g) * 1e300)::float8"),
    ("float8", "(floor(sqrt(g)))::float8"),
    ("float8", "(g % 97 * 1e-310)::float8"),
    ("bool", "(g % 3 = 0)"),
    ("bool", "(g > 0)"),
]
ROWS = 2500


def wide_table(cur, schema: str, table: str, rows: int = ROWS, null_at=None) -> list:
    """A table of 114 fixed-width columns (the PATTERNS six times over, shifted) and a text
    and an array column: the shape of FASTSPEC, small."""
    cols, exprs = [], []
    for rep in range(6):
        for k, (typ, expr) in enumerate(PATTERNS):
            name = f"c{rep}_{k}_{typ}"
            cols.append((name, typ))
            exprs.append(re.sub(r"\bg\b", f"(g + {rep * 17})", expr))
    cols += [("label", "text"), ("vec", "real[]")]
    exprs += ["'gal' || (g % 40)", "ARRAY[g, g % 5]::real[]"]
    ident = sql.Identifier(schema, table)
    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    cur.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in cols)))
    cur.execute(sql.SQL("INSERT INTO {} SELECT {} FROM generate_series(1, {}) g").format(   # no parameters: % is SQL's
        ident, sql.SQL(", ").join(map(sql.SQL, exprs)), sql.Literal(rows)))
    if null_at is not None:
        cur.execute(sql.SQL("UPDATE {} SET {} = NULL WHERE {} = %s").format(
            ident, sql.Identifier(cols[1][0]), sql.Identifier(cols[2][0])), (null_at,))
    return cols


def analyzed_at_target_10(cur, schema: str, table: str, rows: int) -> tuple:
    """wide_table with every column's statistics target 10 (a sample of 3,000 rows), then
    the server's ANALYZE: (columns, table identifier)."""
    cols = wide_table(cur, schema, table, rows=rows)
    ident = sql.Identifier(schema, table)
    cur.execute(sql.SQL("ALTER TABLE {} ").format(ident) + sql.SQL(", ").join(
        sql.SQL("ALTER COLUMN {} SET STATISTICS 10").format(sql.Identifier(n)) for n, _ in cols))
    cur.execute(sql.SQL("ANALYZE {}").format(ident))
    return cols, ident


STATS = ("SELECT attname, null_frac, avg_width, n_distinct, most_common_vals::text, most_common_freqs::text, "
         "histogram_bounds::text, correlation FROM pg_stats WHERE schemaname = %s AND tablename = %s "
         "ORDER BY attname")


def pg_stats(cur, schema: str, table: str) -> list:
    cur.execute(STATS, (schema, table))
    return cur.fetchall()


def clear(cur, schema: str, table: str, cols: list) -> None:
    for name, _ in cols:
        cur.execute("SELECT pg_clear_attribute_stats(%s, %s, %s, false)", (schema, table, name))


def test_statistics_equal_the_servers_analyze_column_by_column(pg_uri, schema):
    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    cur = conn.cursor()
    cols = wide_table(cur, schema, "wide")
    cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET STATISTICS 10, ALTER COLUMN {} SET STATISTICS 0").format(
        sql.Identifier(schema, "wide"), sql.Identifier(cols[0][0]), sql.Identifier(cols[3][0])))
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "wide")))
    by_server = pg_stats(cur, schema, "wide")
    assert len(by_server) == len(cols) - 1            # one column has no statistics (target 0)
    clear(cur, schema, "wide", cols)
    assert pg_stats(cur, schema, "wide") == []
    work = psycopg2.connect(pg_uri)
    how = analyze.analyze(work, pg_uri, "test", schema, "wide")
    work.close()
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
    conn.close()


def test_a_null_in_a_fixed_width_column_leaves_it_to_analyze(pg_uri, schema):
    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    cur = conn.cursor()
    cols = wide_table(cur, schema, "holes", null_at=7)
    cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "holes")))
    by_server = pg_stats(cur, schema, "holes")
    clear(cur, schema, "holes", cols)
    work = psycopg2.connect(pg_uri)
    assert analyze.analyze(work, pg_uri, "test", schema, "holes") == "ANALYZE (a NULL in the sample)"
    work.close()
    assert pg_stats(cur, schema, "holes") == by_server
    conn.close()


def test_a_sampled_table_gets_every_statistic_analyze_gives(pg_uri, schema):
    """More rows than the sample (300 x the target): pages drawn at random, as ANALYZE does;
    the values differ by the draw, what is filled does not, and the estimates stay close."""
    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    cur = conn.cursor()
    cols, ident = analyzed_at_target_10(cur, schema, "big", 20000)
    by_server = pg_stats(cur, schema, "big")
    clear(cur, schema, "big", cols)
    work = psycopg2.connect(pg_uri)
    how = analyze.analyze(work, pg_uri, "test", schema, "big")
    work.close()
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
        if theirs[7] is not None:
            assert abs(mine[7] - theirs[7]) < 0.1, name                # correlation
        k = int(name.split("_")[1]) if name in fixed else None
        if k == 0:                                         # seven values, equally common: all of them
            assert sorted(mine[4].strip("{}").split(",")) == sorted(theirs[4].strip("{}").split(",")), name
        if k == 1:                                         # one value in 60 % of the rows: first, at 0.6
            assert mine[4].strip("{}").split(",")[0] == theirs[4].strip("{}").split(",")[0] == "1", name
            assert float(mine[5].strip("{}").split(",")[0]) == pytest.approx(0.6, abs=0.05), name
    conn.close()


def test_a_table_grown_past_its_row_count_is_still_sampled(pg_uri, schema):
    """reltuples says the whole table fits the sample; it has grown since: the rows read
    are drawn down to the sample's size, not all taken."""
    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    cur = conn.cursor()
    cols, ident = analyzed_at_target_10(cur, schema, "grown", 2000)     # reltuples = 2000
    cur.execute(sql.SQL("INSERT INTO {} SELECT * FROM {}").format(ident, ident))   # 4000 rows now
    work = psycopg2.connect(pg_uri)
    how = analyze.analyze(work, pg_uri, "test", schema, "grown")
    work.close()
    assert how.startswith(f"statistics of {len(cols) - 2} columns from 3,000 sampled rows"), how
    conn.close()


# ----------------------------------------------------------------------------- pure parts

def test_scalar_stats_of_distinct_sorted_values():
    v = np.arange(1000, dtype=np.int32)
    st = colstats.scalar_stats(v, 0, 1000, 1000.0, target=10)
    assert st.n_distinct == -1.0 and st.mcv is None and st.correlation == 1.0
    assert st.histogram.tolist() == [0, 99, 199, 299, 399, 499, 599, 699, 799, 899, 999]   # target + 1 bounds


def test_scalar_stats_most_common_values_first_ties_by_value():
    v = np.array([5, 3, 3, 5, 9, 1, 7], dtype=np.int16)
    st = colstats.scalar_stats(v, 0, 7, 7.0)
    assert st.mcv.tolist() == [3, 5] and st.mcf.tolist() == pytest.approx([2 / 7, 2 / 7])
    assert st.histogram.tolist() == [1, 7, 9]
    assert st.n_distinct == float(np.float32(-5 / 7)) and st.avg_width == 2     # over 10 % of the rows: a fraction


def test_minus_zero_is_zero_and_nan_sorts_last():
    v = np.array([np.nan, -0.0, 0.0, 1.0, np.nan, -np.inf], dtype=np.float32)
    keys, order = colstats._sorted_order(v)
    assert order.tolist() == [5, 1, 2, 3, 0, 4]
    st = colstats.scalar_stats(v, 0, 6, 6.0)
    assert np.signbit(st.mcv[0]) and st.mcv[0] == 0          # the first of the tie, as the server keeps it


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.float32, np.float64, np.bool_])
def test_sorted_order_is_value_then_tuple_number(dtype):
    """The radix order (16 bits at a time) against a plain sort by (value as the server
    orders it, tuple number): extremes, ties, -0 beside 0, NaN above everything."""
    rng = np.random.default_rng(11)
    n = 3000
    if np.dtype(dtype).kind == "i":
        info = np.iinfo(dtype)
        v = np.concatenate([rng.integers(info.min, info.max, n, dtype=dtype, endpoint=True),
                            rng.integers(-3, 3, n).astype(dtype), np.array([info.min, info.max, 0, -1] * 5, dtype)])
        key = [int(x) for x in v]
    elif np.dtype(dtype).kind == "f":
        v = np.concatenate([rng.normal(size=n), np.round(rng.normal(size=n), 1),
                            [np.nan, -0.0, 0.0, np.inf, -np.inf] * 5]).astype(dtype)
        key = [(1, 0.0) if np.isnan(x) else (0, float(x) + 0.0) for x in v]
    else:
        v = rng.integers(0, 2, n).astype(bool)
        key = [bool(x) for x in v]
    want = sorted(range(len(v)), key=lambda i: (key[i], i))
    _, order = colstats._sorted_order(v)
    assert order.tolist() == want


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_literals_read_back_exactly(db, dtype):
    rng = np.random.default_rng(3)
    bits = rng.integers(0, 2 ** (8 * np.dtype(dtype).itemsize) - 1, 300, dtype=np.uint64)
    v = bits.astype(np.uint32 if dtype is np.float32 else np.uint64).view(dtype)
    v = np.concatenate([v[np.isfinite(v)], np.array([np.inf, -np.inf, 0.0, -0.0, np.nan], dtype=dtype)])
    with db.cursor() as cur:
        cur.execute(f"SELECT %s::{'float4' if dtype is np.float32 else 'float8'}[]::text", (colstats.literal(v),))
        text = cur.fetchone()[0]
        cur.execute(f"SELECT unnest(%s::{'float4' if dtype is np.float32 else 'float8'}[])", (text,))
        back = np.array([r[0] for r in cur.fetchall()], dtype=dtype)
    assert back.view(np.uint8).tobytes() == np.where(np.isnan(v), dtype(np.nan), v).view(np.uint8).tobytes()


def test_one_session_when_the_server_has_no_slot_for_more(pg_uri, schema, caplog):
    """A role limited to one connection: the statistics are read and the text columns
    analyzed in the caller's session alone, and come out the same."""
    role = f"stats_{schema}"
    su = psycopg2.connect(pg_uri)
    su.autocommit = True
    cur = su.cursor()
    cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'pw' CONNECTION LIMIT 1")
    try:
        cols = wide_table(cur, schema, "wide")
        cur.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO {role}; ALTER TABLE "{schema}".wide OWNER TO {role}')
        cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, "wide")))
        by_server = pg_stats(cur, schema, "wide")
        clear(cur, schema, "wide", cols)
        dsn = psycopg2.extensions.make_dsn(pg_uri, user=role, password="pw")
        work = psycopg2.connect(dsn)
        with caplog.at_level(logging.INFO, logger="desi_loader.control.analyze"):
            how = analyze.analyze(work, dsn, "test", schema, "wide")
        work.close()
        assert how.startswith(f"statistics of {len(cols) - 2} columns"), how
        assert "statistics in fewer sessions" in caplog.text and "too many connections" in caplog.text
        assert pg_stats(cur, schema, "wide") == by_server
    finally:
        cur.execute(f'DROP TABLE IF EXISTS "{schema}".wide; DROP OWNED BY {role}; DROP ROLE {role}')
        su.close()
