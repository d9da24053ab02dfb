"""TableSpec -> DDL, always through psycopg2.sql identifiers (names from FITS are data)."""
from __future__ import annotations

from psycopg2 import sql

from ..fits.schema import TableSpec
from ..servers.citus import unique_columns


def create_staging(schema: str, name: str, spec: TableSpec, logged: bool = False) -> list:
    """Statements creating the staging table (UNLOGGED unless ``logged``) with column comments."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in spec.all_columns)
    ident = sql.Identifier(schema, name)
    out = [sql.SQL("CREATE {}TABLE {} ({})").format(sql.SQL("" if logged else "UNLOGGED "), ident, cols)]
    for c in spec.all_columns:
        if c.comment:
            out.append(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                ident, sql.Identifier(c.name), sql.Literal(c.comment)))
    return out


def index_name(table: str, cols: tuple) -> str:
    """Deterministic index names (<= 63 bytes)."""
    name = f"{table}_{'_'.join(cols)}_idx"
    if len(name) > 63:
        import hashlib
        name = f"{table[:40]}_{hashlib.sha1(name.encode()).hexdigest()[:12]}_idx"
    return name


def create_indexes(schema: str, name: str, spec: TableSpec, distributed=None) -> list:
    """Primary key on the natural key, unique (file_id, row_num), then the preset's indexes.

    ``distributed`` (a hash Distribution on a Citus cluster) adds its column to the unique
    keys that lack it (citus.unique_columns)."""
    ident = sql.Identifier(schema, name)
    key = unique_columns(spec.key, distributed)
    out = [sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        ident, sql.Identifier(f"{name}_pkey"), sql.SQL(", ").join(map(sql.Identifier, key)))]
    if tuple(spec.key) != ("file_id", "row_num"):
        rows = unique_columns(("file_id", "row_num"), distributed)
        out.append(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index_name(name, ("file_id", "row_num"))), ident,
            sql.SQL(", ").join(map(sql.Identifier, rows))))
    for cols in spec.indexes:
        out.append(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(index_name(name, cols)), ident, sql.SQL(", ").join(map(sql.Identifier, cols))))
    return out
