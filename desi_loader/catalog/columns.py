"""What each published column was in its FITS file (the ledger's ``loader_columns``, written
by control/ledger/columns.py when a table is published): read by query(), the exports and the
TAP description; and the SQL types of a published table's columns (``published_columns``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql

from ..db import relation_exists
from ..fits.columns import FitsSource

if TYPE_CHECKING:
    from ..db import Cursor


def column_sources(cur: Cursor, schema: str, table: str) -> dict:
    """column -> fits.columns.FitsSource of a published table ({} for tables the loader did not
    publish, or a schema whose ledger predates loader_columns)."""
    if not relation_exists(cur, schema, "loader_columns"):
        return {}
    cur.execute(sql.SQL("SELECT column_name, fits_name, dtype, shape, unit, description, vla, tnull "
                        "FROM {}.loader_columns WHERE table_name = %s").format(sql.Identifier(schema)), (table,))
    return {r[0]: FitsSource(r[1], r[2], tuple(r[3]), r[4], r[5], r[6], r[7]) for r in cur.fetchall()}


def published_columns(cur: Cursor, schema: str, table: str) -> dict:
    """column -> SQL type of a published table ({} when it does not exist)."""
    cur.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                "to_regclass(format('%%I.%%I', %s::text, %s::text)) AND attnum > 0 AND NOT attisdropped",
                (schema, table))
    return dict(cur.fetchall())
