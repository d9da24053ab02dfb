"""The server's refusal of a query explained: its message, where in the query (a caret under
the position), and what to write instead (the schema a bare table name lives in, the nearest
names)."""
from __future__ import annotations

import difflib
import re
from typing import Sequence, TYPE_CHECKING

import psycopg2

from ..db import first_line
from ..errors import QueryError

if TYPE_CHECKING:
    from ..db import Cursor


def nearest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return ("did you mean " + ", ".join(close) + "?") if close else ""


def explain_sql_error(exc: psycopg2.Error, query: str, cur: Cursor=None, schema: str = "desi_dr1") -> QueryError:
    """The server's refusal as a QueryError: first line, the query's line with a caret under
    the position, and a hint (the schema a bare table name lives in, the nearest names)."""
    message = first_line(exc)
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


def _table_hint(cur: Cursor, message: str, schema: str) -> str:
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
