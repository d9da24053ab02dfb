"""The sky index a load builds: the SQL functions of the cone search (data/sky.sql),
the q3c extension where the server has it, and the q3c index statement.  The cone search
(queries/cone.py) reads what these leave in the database."""
from __future__ import annotations

import logging
from importlib import resources
from typing import Callable, Optional, Sequence, TYPE_CHECKING

import psycopg2
from psycopg2 import sql

from .. import coords

if TYPE_CHECKING:
    from ..db import Connection, Cursor

log = logging.getLogger(__name__)


def install_functions(conn: Connection, schema: str) -> None:
    """Create (or replace) angdist, hpx_center, hpx_max_pixrad and hpx_cone in ``schema``, and
    the coordinate functions of coords.py (comoving_distance, comoving_xyz, galactic_l/b)."""
    text = resources.files("desi_loader").joinpath("data/sky.sql").read_text()
    quoted = sql.Identifier(schema).as_string(conn)
    body = text.replace("{s}", quoted) + coords.sql_functions(quoted)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('desi-loader sky functions'))")
        cur.execute(body)
    conn.commit()


def q3c_schema(cur: Cursor) -> Optional[str]:
    """The schema holding the q3c functions, or None when the extension is not installed."""
    cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                "WHERE e.extname = 'q3c'")
    row = cur.fetchone()
    return row[0] if row else None


def q3c_advice(database: str, dsn_hint: str = "postgresql://SUPERUSER@HOST/DATABASE") -> str:
    """Who can create q3c and how: the statement, and the command that does it and builds the
    missing q3c indexes without reloading."""
    return (f"only a superuser can create it: have one run CREATE EXTENSION q3c; in database {database}, "
            f"or run desi-loader tap publish --admin-dsn {dsn_hint} (it creates q3c and builds the missing "
            "q3c indexes, no reload)")


def ensure_q3c(conn: Connection, warn: Callable[[str], None] = log.warning) -> Optional[str]:
    """Install q3c when the server has it and we may; its schema, or None (``warn`` told why)."""
    with conn.cursor() as cur:
        have = q3c_schema(cur)
        if have:
            conn.commit()
            return have
        cur.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'q3c'")
        if cur.fetchone() is None:
            conn.commit()
            log.info("the server has no q3c extension: sky index is the hpx29 B-tree only")
            return None
        try:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('desi-loader create q3c'))")
            cur.execute("CREATE EXTENSION IF NOT EXISTS q3c")
            have = q3c_schema(cur)
            conn.commit()
            return have
        except psycopg2.Error as exc:
            conn.rollback()
            database = conn.get_dsn_parameters().get("dbname", "")
            warn(f"q3c is available on the server but role {conn.get_dsn_parameters().get('user', '')} cannot "
                 f"create it ({str(exc).strip().splitlines()[0]}); {q3c_advice(database)}. This load "
                 "builds the hpx29 sky index only: desi-loader cone works, the TAP cone search needs q3c")
            return None


def q3c_index_statement(schema: str, table: str, index: str, sky: Sequence[str], q3c: str) -> sql.Composed:
    ra, dec = sky
    return sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({}.q3c_ang2ipix({}, {}))").format(
        sql.Identifier(index), sql.Identifier(schema, table), sql.Identifier(q3c),
        sql.Identifier(ra), sql.Identifier(dec))
