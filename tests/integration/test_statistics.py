"""The planner's statistics the loader takes of a wide table (control/analyze.py, colstats.py):
the pure parts, literals read back, and a role the server gives one connection (on the
embedded PostgreSQL 18).  The same statistics as the server's ANALYZE, on PostgreSQL 18 and
15: tests/system/test_statistics_servers.py."""
import logging
import numpy as np
import psycopg2
import pytest
from psycopg2 import sql

from desi_loader import colstats
from desi_loader.control import analyze
from widetable import clear, pg_stats, wide_table

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
