"""What a schema publishes, read from the database: the loader's published tables (those in
``loader_columns``), ``desivast_void_membership``, and the views over them, each with its
columns (type, unit, description, UCD), primary key, foreign keys and sky index.

Nothing else of the schema is described, so nothing else is served: not the ledger
(``loader_loads``, ``loader_tasks``, ``loader_canary``, ``loader_columns``), not
``load_files`` (its headers are jsonb, which TAP cannot carry), not staging tables.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Optional, TYPE_CHECKING

from psycopg2 import sql

from ..catalog.columns import column_sources
from ..db import relation_exists
from ..fits.columns import FitsSource
from ..queries.voids import TABLE as VOID_MEMBERSHIP
from ..sky import COLUMN as SKY_COLUMN
from .. import units
from . import vocab

if TYPE_CHECKING:
    from ..db import Cursor


@dataclass(frozen=True)
class ColumnMeta:
    name: str                       # the PostgreSQL name
    pg_type: str                    # format_type()
    dachs_type: str
    unit: str = ""                  # VOUnit
    ucd: str = ""
    description: str = ""
    fits_unit: Optional[str] = None  # the FITS TUNIT it came from
    note: Optional[str] = None      # what serving it changed (unit translation, precision)
    null_literal: Optional[int] = None  # an integer NULL's value in VOTable BINARY (the FITS TNULL)


@dataclass(frozen=True)
class TableMeta:
    name: str
    kind: str                       # "table" or "view"
    description: str
    columns: tuple
    primary: tuple = ()
    sky: Optional[tuple] = None     # (ra, dec) of the sky index
    q3c_index: Optional[str] = None  # name of the q3c index on (ra, dec)
    foreign_keys: tuple = ()        # ((columns), table, (columns))
    rows: int = 0                   # the planner's estimate
    left_out: tuple = field(default=())   # (column, reason) that could not be served

    def column(self, name: str) -> ColumnMeta:
        return next(c for c in self.columns if c.name == name)


def published_tables(cur: Cursor, schema: str) -> list:
    """Names of the tables the loader published in ``schema`` (and void membership)."""
    names = []
    if relation_exists(cur, schema, "loader_columns"):
        cur.execute(sql.SQL("SELECT DISTINCT table_name FROM {}.loader_columns ORDER BY 1")
                    .format(sql.Identifier(schema)))
        names = [r[0] for r in cur.fetchall() if relation_exists(cur, schema, r[0])]
    if relation_exists(cur, schema, VOID_MEMBERSHIP):
        names.append(VOID_MEMBERSHIP)
    return names


def published_views(cur: Cursor, schema: str, tables: list) -> list:
    """Views of ``schema`` that read only published tables (the presets' views and users'
    views over them)."""
    cur.execute("SELECT c.relname, array_agg(DISTINCT u.table_schema || '.' || u.table_name) "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "JOIN information_schema.view_table_usage u ON u.view_schema = n.nspname "
                "AND u.view_name = c.relname WHERE n.nspname = %s AND c.relkind = 'v' GROUP BY 1 ORDER BY 1",
                (schema,))
    allowed = {f"{schema}.{t}" for t in tables}
    return [name for name, used in cur.fetchall() if set(used) <= allowed]


def describe_schema(cur: Cursor, schema: str) -> list:
    """TableMeta of every published table and view of ``schema``, tables first."""
    tables = published_tables(cur, schema)
    metas = [describe_relation(cur, schema, t, "table") for t in tables]
    by_name = {m.name: m for m in metas}
    for view in published_views(cur, schema, tables):
        metas.append(describe_relation(cur, schema, view, "view", by_name))
    return metas


def _columns(cur: Cursor, schema: str, name: str) -> list:
    cur.execute("SELECT a.attname, format_type(a.atttypid, a.atttypmod), col_description(a.attrelid, a.attnum) "
                "FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped "
                "ORDER BY a.attnum", (_qname(schema, name),))
    return cur.fetchall()


def _qname(schema: str, name: str) -> str:
    return '"{}"."{}"'.format(schema.replace('"', '""'), name.replace('"', '""'))


def describe_relation(cur: Cursor, schema: str, name: str, kind: str, bases: Optional[dict] = None) -> TableMeta:
    """One table or view: columns with their served type, unit, UCD and description."""
    sources = column_sources(cur, schema, name)
    primary = _primary_key(cur, schema, name)
    sky, q3c = _sky(cur, schema, name)
    origin = _view_origins(cur, schema, name, bases or {}) if kind == "view" else {}
    columns, left_out = [], []
    for col, pg_type, comment in _columns(cur, schema, name):
        meta = _column(name, col, pg_type, comment, sources.get(col), origin.get(col))
        if meta is None:
            shape = tuple(sources[col].shape) if col in sources else ()
            left_out.append((col, f"a {'x'.join(map(str, shape))} array: DaCHS serves 1-D arrays only"
                             if len(shape) > 1 else f"type {pg_type} cannot be served over TAP"))
        else:
            columns.append(meta)
    columns = _main_ucds(columns, primary, sky)
    cur.execute("SELECT obj_description(%s::regclass, 'pg_class'), "
                "(SELECT reltuples FROM pg_class WHERE oid = %s::regclass)", (_qname(schema, name),) * 2)
    comment, reltuples = cur.fetchone()
    description = comment or (f"view {name}" if kind == "view" else f"table {name}, loaded by desi-loader")
    return TableMeta(name, kind, description, tuple(columns), primary, sky, q3c,
                     tuple(_foreign_keys(cur, schema, name)), max(int(reltuples or 0), 0), tuple(left_out))


def _column(table: str, col: str, pg_type: str, comment: Optional[str], source: Optional[FitsSource],
            origin: Optional[ColumnMeta]) -> Optional[ColumnMeta]:
    if origin is not None and origin.pg_type == pg_type:
        return dataclasses.replace(origin, name=col)
    dachs = vocab.dachs_type(pg_type, tuple(source.shape) if source else ())
    if dachs is None:
        return None
    fits_unit = source.unit if source else _unit_of_comment(comment)
    unit = units.translate(fits_unit)
    description = (source.description if source and source.description else _strip_unit(comment)) or ""
    note = unit.note
    if pg_type.startswith("numeric"):
        note = "numeric (uint64) served as double precision: exact up to 2**53"
    if col == SKY_COLUMN:
        description = description or "nested HEALPix pixel of the position at order 29"
    return ColumnMeta(col, pg_type, dachs, unit.vounit, vocab.ucd(table, col), description, fits_unit, note,
                      _null_literal(dachs, source))


#: the smallest value of each integer type: an integer NULL's stand-in in VOTable BINARY
#: serialisation when its FITS column had no TNULL (BINARY2 flags NULLs instead, but not
#: those of an array's elements)
_INT_MIN = {"smallint": -2 ** 15, "integer": -2 ** 31, "bigint": -2 ** 63}


def _null_literal(dachs: str, source: Optional[FitsSource]) -> Optional[int]:
    """The stand-in of an integer NULL, or of a NULL element of an integer array (DaCHS
    refuses to write a None it has no stand-in for)."""
    dachs = dachs.split("[")[0]
    if dachs not in _INT_MIN:
        return None
    if source is not None and source.null is not None:
        return int(source.null)
    return _INT_MIN[dachs]


def _unit_of_comment(comment: Optional[str]) -> Optional[str]:
    """The loader writes a column's unit at the end of its comment: 'description [unit]'."""
    m = re.search(r"\[([^\[\]]+)\]\s*$", comment or "")
    return m.group(1) if m else None


def _strip_unit(comment: Optional[str]) -> str:
    return re.sub(r"\s*\[[^\[\]]+\]\s*$", "", comment or "")


def _main_ucds(columns: list, primary: tuple, sky: Optional[tuple]) -> list:
    """The sky index's columns are the table's main position; the identifier column of the
    primary key (the last one: the others say which file set it belongs to) its main id."""
    ids = [c for c in primary if c not in ("survey", "program", "algorithm", "cap", "row_num", "file_id")]
    main_id = ids[0] if ids else None
    out = []
    for c in columns:
        u = c.ucd
        if sky and c.name == sky[0]:
            u = "pos.eq.ra;meta.main"
        elif sky and c.name == sky[1]:
            u = "pos.eq.dec;meta.main"
        elif c.name == main_id:
            u = "meta.id;meta.main"
        out.append(dataclasses.replace(c, ucd=u))
    return out


def _primary_key(cur: Cursor, schema: str, name: str) -> tuple:
    cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary "
                "ORDER BY array_position(i.indkey, a.attnum)", (_qname(schema, name),))
    return tuple(r[0] for r in cur.fetchall())


def _sky(cur: Cursor, schema: str, name: str) -> tuple:
    """(ra, dec) of the table's sky index, and the name of its q3c index if it has one."""
    cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = %s "
                "AND indexdef LIKE '%%q3c_ang2ipix(%%' ORDER BY 1", (schema, name))
    for index, definition in cur.fetchall():
        m = re.search(r"q3c_ang2ipix\(\"?(\w+)\"?, \"?(\w+)\"?\)", definition)
        if m:
            return (m.group(1), m.group(2)), index
    cur.execute("SELECT col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                "WHERE a.attrelid = %s::regclass AND a.attname = %s", (_qname(schema, name), SKY_COLUMN))
    row = cur.fetchone()
    m = re.search(r"of \((\w+), (\w+)\)", (row or [""])[0] or "")
    return ((m.group(1), m.group(2)) if m else None), None


def _foreign_keys(cur: Cursor, schema: str, name: str) -> list:
    cur.execute("SELECT c.conname, (SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(c.conkey) WITH ORDINALITY "
                "k(att, n) JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.att), "
                "f.relname, (SELECT array_agg(a.attname ORDER BY k.n) FROM unnest(c.confkey) WITH ORDINALITY "
                "k(att, n) JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.att) "
                "FROM pg_constraint c JOIN pg_class f ON f.oid = c.confrelid "
                "WHERE c.conrelid = %s::regclass AND c.contype = 'f' ORDER BY 1", (_qname(schema, name),))
    return [(tuple(src), dest, tuple(dcols)) for _n, src, dest, dcols in cur.fetchall()]


def _view_origins(cur: Cursor, schema: str, view: str, bases: dict) -> dict:
    """view column -> the ColumnMeta of the published table column it shows (same name,
    from exactly one base table)."""
    cur.execute("SELECT column_name, array_agg(table_name) FROM information_schema.view_column_usage "
                "WHERE view_schema = %s AND view_name = %s GROUP BY 1", (schema, view))
    out = {}
    for col, tables in cur.fetchall():
        if len(tables) == 1 and tables[0] in bases:
            try:
                out[col] = bases[tables[0]].column(col)
            except StopIteration:
                pass
    return out
