"""The only module that runs COPY: it sends a stream of COPY bytes to the server.

The bytes come from stream.py (a reader whose ``read()`` returns blocks, ``b""`` ending
each statement's data); this module knows statements and cursors, not FITS.
"""
from __future__ import annotations

from typing import Sequence, TYPE_CHECKING

import psycopg2
from psycopg2 import sql

from ..fits.columns import pg_name
from .stream import BLOCK_BYTES

if TYPE_CHECKING:
    from ..db import Cursor


def copy_statement(schema: str, table: str, columns: Sequence[str], fmt: str) -> sql.Composed:
    """``COPY schema.table (columns) FROM STDIN WITH (FORMAT fmt)``, names quoted; ``columns``
    are FITS or loader names, sent as their PostgreSQL names (schema.pg_name)."""
    cols = sql.SQL(", ").join(sql.Identifier(pg_name(c)) for c in columns)
    return sql.SQL("COPY {}.{} ({}) FROM STDIN WITH (FORMAT {})").format(
        sql.Identifier(schema), sql.Identifier(table), cols, sql.SQL(fmt))


def send(cur: Cursor, statements: Sequence[sql.Composable], reader) -> list[int]:
    """Run each COPY statement on ``cur`` with its data read from ``reader`` until ``b""``;
    returns the rows the server reports for each.

    When the reader fails (bad data, not the database), psycopg2 aborts the COPY with a
    QueryCanceled; the reader's own exception is raised instead, so the caller sees why.
    """
    counts = []
    for stmt in statements:
        try:
            cur.copy_expert(stmt, reader, size=BLOCK_BYTES)
        except psycopg2.Error:
            error = getattr(reader, "error", None)
            if error is not None:
                raise error from None
            raise
        counts.append(cur.rowcount)
    return counts
