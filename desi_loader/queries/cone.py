"""Positional queries on loaded tables: the SQL functions, q3c, cone search and cross-match.

Every table with a sky index has ``hpx29`` (sky.py) with a B-tree; where the server has
the q3c extension it also has a q3c index on ``q3c_ang2ipix(ra, dec)``.  A cone search
uses q3c when the table has its index, the HEALPix ranges of ``hpx_cone`` otherwise;
both end with an exact distance test, so both return the rows a brute-force angular
distance returns.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional, Sequence, TYPE_CHECKING

from psycopg2 import sql

from ..catalog.skyindex import q3c_schema
from ..db import relation_exists
from ..errors import UsageError
from ..sky import COLUMN

if TYPE_CHECKING:
    from ..db import Cursor

log = logging.getLogger(__name__)

#: what ``--method auto`` picks: q3c where the table has a q3c index
METHODS = ("auto", "hpx", "q3c")


@dataclass(frozen=True)
class SkyTable:
    """A loaded table with a sky index."""

    schema: str
    table: str
    ra: str
    dec: str
    q3c: Optional[str]          # schema of q3c when the table has a q3c index


def sky_tables(cur: Cursor, schema: str) -> list:
    """Names of the tables of ``schema`` that have the sky column."""
    cur.execute("SELECT table_name FROM information_schema.columns WHERE table_schema = %s "
                "AND column_name = %s ORDER BY table_name", (schema, COLUMN))
    return [r[0] for r in cur.fetchall()]


def describe(cur: Cursor, schema: str, table: Optional[str]) -> SkyTable:
    """The sky columns of ``table`` (default: the first sky table of the schema)."""
    tables = sky_tables(cur, schema)
    if not tables:
        raise UsageError(f"schema {schema} has no table with a sky index ({COLUMN})",
                         "load a catalog with positions first (FastSpecFit, or --catalog generic --sky RA,DEC)")
    if table is None:
        table = "fastspecfit_metadata" if "fastspecfit_metadata" in tables else tables[0]
    if table not in tables:
        import difflib
        close = difflib.get_close_matches(table, tables, n=1, cutoff=0.5)
        exists = relation_exists(cur, schema, table)
        raise UsageError(f"table {schema}.{table} " + ("has no sky index" if exists else "does not exist")
                         + (f" (did you mean {close[0]}?)" if close else ""),
                         f"tables with a sky index in {schema}: {', '.join(tables)}")
    cur.execute("SELECT col_description(%s::regclass, a.attnum) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attname = %s",
                (f'"{schema}"."{table}"',) * 2 + (COLUMN,))
    comment = (cur.fetchone() or [""])[0] or ""
    m = re.search(r"of \((\w+), (\w+)\)", comment)
    ra, dec = (m.group(1), m.group(2)) if m else ("ra", "dec")
    q3c = q3c_schema(cur)
    if q3c:
        cur.execute("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                    "AND indexdef LIKE '%%q3c_ang2ipix%%'", (schema, table))
        q3c = q3c if cur.fetchone() else None
    return SkyTable(schema, table, ra, dec, q3c)


def cone_ranges(cur: Cursor, schema: str, ra: float, dec: float, radius: float) -> list:
    """The hpx29 ranges covering a cone, from the server's hpx_cone."""
    cur.execute(sql.SQL("SELECT lo, hi FROM {}.hpx_cone(%s, %s, %s)").format(sql.Identifier(schema)),
                (float(ra), float(dec), float(radius)))
    return cur.fetchall()


def cone_query(t: SkyTable, ra: float, dec: float, radius: float, columns: Sequence[str] = (),
               method: str = "auto", limit: Optional[int] = None, count: bool = False,
               ranges: Optional[list] = None) -> sql.Composed:
    """The SQL of a cone search (rows ordered by distance), parameters inlined as literals.

    With ``ranges`` (cone_ranges, fetched first) the hpx29 ranges are constants: the planner
    sees them (a bitmap OR of index scans, good estimates), and a Citus coordinator can push
    the query down to every shard; without, the SQL is one statement (hpx_cone LATERAL),
    the form to copy into your own queries on a plain server."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}", f"choose one of {', '.join(METHODS)}")
    if method == "q3c" and not t.q3c:
        raise UsageError(f"{t.schema}.{t.table} has no q3c index", "use --method hpx (or auto)")
    use_q3c = method == "q3c" or (method == "auto" and t.q3c)
    lit = [sql.Literal(float(v)) for v in (ra, dec, radius)]
    tab, rcol, dcol = sql.Identifier(t.schema, t.table), sql.Identifier("t", t.ra), sql.Identifier("t", t.dec)
    dist = sql.SQL("{}.angdist({}, {}, {}, {})").format(sql.Identifier(t.schema), rcol, dcol, lit[0], lit[1])
    if count:
        select = sql.SQL("count(*)")
    elif columns and list(columns) != ["*"]:
        select = sql.SQL(", ").join([sql.Identifier("t", c) for c in columns] + [dist + sql.SQL(" AS dist")])
    else:
        select = sql.SQL("t.*, {} AS dist").format(dist)
    if use_q3c:
        q = sql.SQL("SELECT {} FROM {} t WHERE {}.q3c_radial_query({}, {}, {}, {}, {}) AND {} <= {}").format(
            select, tab, sql.Identifier(t.q3c), rcol, dcol, *lit, dist, lit[2])
    elif ranges is not None:
        hpx = sql.Identifier("t", COLUMN)
        cover = sql.SQL(" OR ").join(sql.SQL("{} BETWEEN {} AND {}").format(hpx, sql.Literal(lo), sql.Literal(hi))
                                     for lo, hi in ranges) if ranges else sql.SQL("false")
        q = sql.SQL("SELECT {} FROM {} t WHERE ({}) AND {} <= {}").format(select, tab, cover, dist, lit[2])
    else:
        # LATERAL + OFFSET 0: each range is its own index scan (a plain join lets the planner, which cannot
        # estimate the ranges, choose a sequential scan)
        q = sql.SQL("SELECT {} FROM {}.hpx_cone({}, {}, {}) c CROSS JOIN LATERAL (SELECT * FROM {} t "
                    "WHERE t.{} BETWEEN c.lo AND c.hi OFFSET 0) t WHERE {} <= {}").format(
            select, sql.Identifier(t.schema), *lit, tab, sql.Identifier(COLUMN), dist, lit[2])
    if not count:
        q += sql.SQL(" ORDER BY dist")
        if limit is not None:
            q += sql.SQL(" LIMIT {}").format(sql.Literal(int(limit)))
    return q


def crossmatch_query(a: SkyTable, b: SkyTable, radius: float, columns_a: Sequence[str] = (),
                     columns_b: Sequence[str] = (), pushdown: bool = False) -> sql.Composed:
    """Nearest neighbour in ``b`` within ``radius`` degrees of every row of ``a`` (rows of
    ``a`` without one are left out).

    The default form runs one indexed cone per row of ``a`` (LATERAL ... LIMIT 1).  On a
    Citus cluster (``pushdown``), where a LATERAL subquery with LIMIT cannot be pushed to the
    shards, the cover is joined directly and DISTINCT ON keeps each row's nearest match:
    Citus runs it when one of the tables is a reference (or local) table.
    """
    r = sql.Literal(float(radius))
    dist = sql.SQL("{}.angdist(a.{}, a.{}, b.{}, b.{})").format(
        sql.Identifier(b.schema), sql.Identifier(a.ra), sql.Identifier(a.dec), sql.Identifier(b.ra),
        sql.Identifier(b.dec))
    cols_a = columns_a or ("file_id", "row_num")
    cols_b = columns_b or ("file_id", "row_num")
    ca = sql.SQL(", ").join(sql.Identifier("a", c) for c in cols_a)
    parts = dict(ca=ca, ta=sql.Identifier(a.schema, a.table), dist=dist, s=sql.Identifier(b.schema),
                 ra=sql.Identifier(a.ra), dec=sql.Identifier(a.dec), r=r, tb=sql.Identifier(b.schema, b.table),
                 hpx=sql.Identifier(COLUMN))
    if pushdown:
        return sql.SQL(
            "SELECT DISTINCT ON (a.file_id, a.row_num) {ca}, {cb}, {dist} AS dist FROM {ta} a "
            "CROSS JOIN LATERAL {s}.hpx_cone(a.{ra}, a.{dec}, {r}) c JOIN {tb} b ON b.{hpx} BETWEEN c.lo AND c.hi "
            "WHERE {dist} <= {r} ORDER BY a.file_id, a.row_num, dist"
        ).format(cb=sql.SQL(", ").join(sql.Identifier("b", c) for c in cols_b), **parts)
    return sql.SQL(
        "SELECT {ca}, {cb}, m.dist FROM {ta} a CROSS JOIN LATERAL ("
        "SELECT {inner}, {dist} AS dist FROM {s}.hpx_cone(a.{ra}, a.{dec}, {r}) c "
        "CROSS JOIN LATERAL (SELECT * FROM {tb} b WHERE b.{hpx} BETWEEN c.lo AND c.hi OFFSET 0) b "
        "WHERE {dist} <= {r} ORDER BY dist LIMIT 1) m"
    ).format(cb=sql.SQL(", ").join(sql.Identifier("m", c) for c in cols_b),
             inner=sql.SQL(", ").join(sql.Identifier("b", c) for c in cols_b), **parts)
