"""``loader_columns``: what each published column was in its FITS files (name, numpy dtype,
cell shape, unit, description), written in the publishing transaction, read by the query
side to give results back as the files had them."""
from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql
from psycopg2.extras import execute_values


if TYPE_CHECKING:
    from ...db import Cursor


def publish_columns(cur: Cursor, schema: str, specs: dict, load_id: int, replace: bool) -> None:
    """Record the FITS sources of the columns of ``specs`` (table -> TableSpec) in the
    publishing transaction: a swap replaces the tables' rows, a merge updates and adds."""
    s = sql.Identifier(schema)
    if replace:
        cur.execute(sql.SQL("DELETE FROM {}.loader_columns WHERE table_name = ANY(%s)").format(s), (list(specs),))
    rows = [(t, c.name, c.source.name, c.source.dtype, list(c.source.shape), c.source.unit,
             c.source.description, c.source.vla, c.source.null, load_id)
            for t, spec in specs.items() for c in spec.all_columns if c.source is not None]
    if rows:
        execute_values(cur, sql.SQL(
            "INSERT INTO {}.loader_columns (table_name, column_name, fits_name, dtype, shape, unit, description, "
            "vla, tnull, load_id) VALUES %s ON CONFLICT (table_name, column_name) DO UPDATE SET fits_name = "
            "excluded.fits_name, dtype = excluded.dtype, shape = excluded.shape, unit = excluded.unit, "
            "description = excluded.description, vla = excluded.vla, tnull = excluded.tnull, "
            "load_id = excluded.load_id").format(s)
            .as_string(cur), rows)
