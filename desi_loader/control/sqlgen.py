"""TableSpec -> DDL, always through psycopg2.sql identifiers (names from FITS are data)."""
from __future__ import annotations

from typing import Optional

from psycopg2 import sql

from ..catalog.names import index_name
from ..fits.columns import TableSpec
from ..servers.citus import unique_columns


#: storage parameters of a staging table, reset when it is published (reset_staging_options)
STAGING_OPTIONS = "autovacuum_enabled = off"


def reset_staging_options(schema: str, name: str) -> sql.Composed:
    """The statement giving a published table the server's autovacuum again."""
    return sql.SQL("ALTER TABLE {} RESET (autovacuum_enabled)").format(sql.Identifier(schema, name))


def create_staging(schema: str, name: str, spec: TableSpec, logged: bool = False) -> list:
    """Statements creating the staging table (UNLOGGED unless ``logged``) with column comments;
    columns in their stored order (TableSpec.stored_columns), the key's NOT NULL (a primary
    key then attaches to its index without a scan).  Autovacuum is off while it fills (a
    VACUUM of a table still being loaded reads it to find nothing to do, beside the copy;
    the swap turns it back on: STAGING_OPTIONS)."""
    required = {"file_id", "row_num", *spec.key}
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(sql.Identifier(c.name), sql.SQL(c.sql_type),
                                  sql.SQL(" NOT NULL" if c.name in required else "")) for c in spec.stored_columns)
    ident = sql.Identifier(schema, name)
    out = [sql.SQL("CREATE {}TABLE {} ({}) WITH ({})").format(sql.SQL("" if logged else "UNLOGGED "), ident, cols,
                                                             sql.SQL(STAGING_OPTIONS))]
    for c in spec.all_columns:
        if c.comment:
            out.append(sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(
                ident, sql.Identifier(c.name), sql.Literal(c.comment)))
    return out


def primary_key(schema: str, name: str, spec: TableSpec, distributed=None) -> sql.Composed:
    """ALTER TABLE ... ADD PRIMARY KEY on the natural key (built in the statement)."""
    key = unique_columns(spec.key, distributed)
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
        sql.Identifier(schema, name), sql.Identifier(f"{name}_pkey"), sql.SQL(", ").join(map(sql.Identifier, key)))


def key_index(schema: str, name: str, spec: TableSpec, distributed=None) -> sql.Composed:
    """The primary key's unique index, built like any other and attached by attach_key."""
    key = unique_columns(spec.key, distributed)
    return sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(f"{name}_pkey"), sql.Identifier(schema, name), sql.SQL(", ").join(map(sql.Identifier, key)))


def attach_key(schema: str, name: str) -> sql.Composed:
    """The primary key made of key_index's index (no scan: the key columns are NOT NULL)."""
    return sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
        sql.Identifier(schema, name), sql.Identifier(f"{name}_pkey"), sql.Identifier(f"{name}_pkey"))


def secondary_indexes(schema: str, name: str, spec: TableSpec,
                      distributed=None) -> list[tuple[str, sql.Composed, Optional[str]]]:
    """(index name, statement, the unique columns or None) of unique (file_id, row_num)
    and the preset's indexes.

    ``distributed`` (a hash Distribution on a Citus cluster) adds its column to the unique
    keys that lack it (citus.unique_columns)."""
    ident = sql.Identifier(schema, name)
    out: list[tuple[str, sql.Composed, Optional[str]]] = []
    if tuple(spec.key) != ("file_id", "row_num"):
        rows = unique_columns(("file_id", "row_num"), distributed)
        idx = index_name(name, ("file_id", "row_num"))
        out.append((idx, sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(idx), ident, sql.SQL(", ").join(map(sql.Identifier, rows))), ", ".join(rows)))
    for cols in spec.indexes:
        idx = index_name(name, cols)
        out.append((idx, sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            sql.Identifier(idx), ident, sql.SQL(", ").join(map(sql.Identifier, cols))), None))
    return out
