"""The published files of a schema as ``load_files`` records them: read by the queries that
need a catalog's own header cards (void membership: the cosmology and limits of the files)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg2 import sql

from ..db import relation_exists

if TYPE_CHECKING:
    from ..db import Cursor


def published_headers(cur: Cursor, schema: str, catalog: str) -> list:
    """(filename, PRIMARY header) of the published files of ``catalog`` ([] before any load)."""
    if not relation_exists(cur, schema, "load_files"):
        return []
    cur.execute(sql.SQL("SELECT filename, header FROM {}.load_files WHERE published AND catalog = %s")
                .format(sql.Identifier(schema)), (catalog,))
    return cur.fetchall()
