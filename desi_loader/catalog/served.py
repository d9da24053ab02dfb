"""``loader_tap``: which DaCHS instance serves the schema over TAP (written by ``desi-loader
tap publish``), so that every load publishing into the schema brings the service up to date."""
from __future__ import annotations

import socket
from typing import Optional, TYPE_CHECKING

from psycopg2 import sql

from ..db import relation_exists

if TYPE_CHECKING:
    from ...db import Cursor

DDL = """
CREATE TABLE IF NOT EXISTS {s}.loader_tap (
    tap_dir      text PRIMARY KEY,         -- the DaCHS instance's directory on host
    host         text NOT NULL,            -- where the instance lives (socket.gethostname())
    url          text NOT NULL,            -- its TAP endpoint
    published_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE {s}.loader_tap IS 'desi-loader: the DaCHS instances serving this schema over TAP';
"""


def record_served(cur: Cursor, schema: str, tap_dir: str, url: str) -> None:
    s = sql.Identifier(schema)
    cur.execute(sql.SQL(DDL).format(s=s))
    cur.execute(sql.SQL("INSERT INTO {}.loader_tap (tap_dir, host, url) VALUES (%s, %s, %s) ON CONFLICT (tap_dir) "
                        "DO UPDATE SET host = excluded.host, url = excluded.url, published_at = now()").format(s),
                (tap_dir, socket.gethostname(), url))


def served_by(cur: Cursor, schema: str) -> list:
    """(tap_dir, host, url) of the instances serving ``schema`` ([] when none does)."""
    if not relation_exists(cur, schema, "loader_tap"):
        return []
    cur.execute(sql.SQL("SELECT tap_dir, host, url FROM {}.loader_tap ORDER BY 1").format(sql.Identifier(schema)))
    return cur.fetchall()


def forget_served(cur: Cursor, schema: str, tap_dir: Optional[str] = None) -> None:
    if relation_exists(cur, schema, "loader_tap"):
        cur.execute(sql.SQL("DELETE FROM {}.loader_tap WHERE %s IS NULL OR tap_dir = %s")
                    .format(sql.Identifier(schema)), (tap_dir, tap_dir))
