"""Arguments of the query commands checked before anything runs (positions, radii, limits,
tables, columns, output paths), and the server's refusal of a query explained: its message,
where in the query (a caret under the position), and what to write instead."""
from __future__ import annotations

import difflib
import math
import os
from typing import Optional, Sequence

import psycopg2

from ..errors import QueryError, UsageError
from .export import file_format


def position(ra: float, dec: float) -> None:
    if not math.isfinite(ra) or not 0 <= ra < 360:
        raise UsageError(f"RA {ra:g} is not in [0, 360) degrees", f"use {ra % 360:g}" if math.isfinite(ra)
                         else "give the right ascension in degrees")
    if not math.isfinite(dec) or not -90 <= dec <= 90:
        raise UsageError(f"DEC {dec:g} is not in [-90, 90] degrees", "give the declination in degrees")


def radius(r: float, name: str = "radius") -> None:
    if not math.isfinite(r) or not 0 < r <= 180:
        raise UsageError(f"{name} {r:g} is not in (0, 180] degrees", "1 arcsec = 0.000278, 1 arcmin = 0.016667")


def limit(n: Optional[int]) -> None:
    if n is not None and n < 1:
        raise UsageError(f"--limit {n} must be at least 1", "leave it out for every row")


def output(path: Optional[str]) -> None:
    """A known format, in a directory that exists and can be written."""
    if path is None:
        return
    file_format(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise UsageError(f"--output {path}: directory {parent} does not exist", f"create it (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--output {path}: directory {parent} is not writable", "choose a directory you can write")
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory", "name a file in it")


def split_table(name: str, schema: str) -> tuple:
    """(schema, table) of ``table`` or ``schema.table``."""
    if "." in name:
        s, t = name.split(".", 1)
        return s, t
    return schema, name


def nearest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return ("did you mean " + ", ".join(close) + "?") if close else ""


def columns(cur, schema: str, table: str, wanted: Sequence[str], option: str) -> None:
    """Every name of ``wanted`` is a column of ``schema.table`` (``*`` stands for all)."""
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (schema, table))
    have = [r[0] for r in cur.fetchall()]
    for c in wanted:
        if c != "*" and c not in have:
            raise UsageError(f"{option}: {schema}.{table} has no column {c!r}",
                             " ".join(x for x in (nearest(c, have), f"its columns: desi-loader sql "
                                                  f"\"SELECT * FROM {schema}.{table} LIMIT 0\"") if x))


def explain_sql_error(exc: psycopg2.Error, query: str, cur=None, schema: str = "desi_dr1") -> QueryError:
    """The server's refusal as a QueryError: first line, the query's line with a caret under
    the position, and a hint (the schema a bare table name lives in, the nearest names)."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    diag = getattr(exc, "diag", None)
    pos = getattr(diag, "statement_position", None)
    if pos and pos.isdigit() and "\n" not in query:
        at = int(pos) - 1 - _offset(exc, query)
        if 0 <= at <= len(query):
            message += f"\n  {query}\n  {' ' * at}^"
    hint = (getattr(diag, "message_hint", None) or "") if diag else ""
    if getattr(exc, "pgcode", None) == "42P01" and cur is not None:
        hint = _table_hint(cur, message, schema) or hint
    code = f" (SQLSTATE {exc.pgcode})" if getattr(exc, "pgcode", None) else ""
    first, _, rest = message.partition("\n")
    return QueryError(first + code + (("\n" + rest) if rest else ""), hint)


def _offset(exc: psycopg2.Error, query: str) -> int:
    """Where the user's text starts in what was sent (a server-side cursor wraps it in DECLARE)."""
    sent = getattr(getattr(exc, "cursor", None), "query", None)
    if isinstance(sent, bytes):
        sent = sent.decode("utf-8", "replace")
    i = sent.find(query) if sent else -1
    return max(i, 0)


def _table_hint(cur, message: str, schema: str) -> str:
    import re
    m = re.search(r'relation "([^"]+)" does not exist', message)
    if not m:
        return ""
    name = m.group(1)
    try:
        cur.connection.rollback()
        cur.execute("SELECT table_schema, table_name FROM information_schema.tables "
                    "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')")
        tables = cur.fetchall()
    except psycopg2.Error:
        return ""
    bare = name.split(".")[-1]
    homes = sorted((s != schema, s) for s, t in tables if t == bare)      # the configured schema first
    if homes:
        home = homes[0][1]
        return f"the table lives in schema {home}: write {home}.{bare}"
    return nearest(bare, [t for _s, t in tables]) or f"list the tables: desi-loader sql \"SELECT table_name " \
        f"FROM information_schema.tables WHERE table_schema = '{schema}'\""
