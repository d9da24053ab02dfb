"""A wide table of fixed-width columns (the shape of FASTSPEC, small), and the planner's
statistics of it as pg_stats shows them: shared by the statistics tests of every server."""
import re

from psycopg2 import sql

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
    """No statistics of the table's columns left (before PostgreSQL 18: deleted from
    pg_statistic, as a superuser)."""
    if cur.connection.server_version >= 180000:
        for name, _ in cols:
            cur.execute("SELECT pg_clear_attribute_stats(%s, %s, %s, false)", (schema, table, name))
    else:
        cur.execute("DELETE FROM pg_statistic WHERE starelid = %s::regclass", (f'"{schema}"."{table}"',))
