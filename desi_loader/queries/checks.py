"""Arguments of the query commands checked before anything runs: positions, radii, limits,
tables, columns, output paths (the server's refusal of a query is explained by sqlerrors.py)."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, TYPE_CHECKING


from ..errors import UsageError
from .export import Output
from .sqlerrors import explain_sql_error, nearest

if TYPE_CHECKING:
    from ..db import Cursor

__all__ = ["position", "radius", "limit", "output", "split_table", "columns", "explain_sql_error", "nearest"]


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


def output(out: Optional[Output]) -> None:
    """A known format, in a directory that exists and can be written (a HATS catalog: a
    directory that does not exist yet)."""
    if out is None:
        return
    path = out.path
    kind = out.kind
    parent = os.path.dirname(os.path.abspath(os.path.normpath(path)))
    if not os.path.isdir(parent):
        raise UsageError(f"--output {path}: directory {parent} does not exist", f"create it (mkdir -p {parent})")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"--output {path}: directory {parent} is not writable", "choose a directory you can write")
    if kind == "hats":
        if os.path.exists(path):
            raise UsageError(f"--output {path} exists; a HATS catalog is written as a new directory",
                             "remove it, or name a new directory")
        if out.margin is not None and not 0 < out.margin <= 3600:
            raise UsageError(f"--margin {out.margin:g} is not in (0, 3600] arcseconds",
                             "the largest separation a cross-match in LSDB should find, e.g. 10")
        return
    if os.path.isdir(path):
        raise UsageError(f"--output {path} is a directory", "name a file in it (or --format hats)")


def split_table(name: str, schema: str) -> tuple:
    """(schema, table) of ``table`` or ``schema.table``."""
    if "." in name:
        s, t = name.split(".", 1)
        return s, t
    return schema, name


def columns(cur: Cursor, schema: str, table: str, wanted: Sequence[str], option: str) -> None:
    """Every name of ``wanted`` is a column of ``schema.table`` (``*`` stands for all)."""
    cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                (schema, table))
    have = [r[0] for r in cur.fetchall()]
    for c in wanted:
        if c != "*" and c not in have:
            raise UsageError(f"{option}: {schema}.{table} has no column {c!r}",
                             " ".join(x for x in (nearest(c, have), f"its columns: desi-loader sql "
                                                  f"\"SELECT * FROM {schema}.{table} LIMIT 0\"") if x))
