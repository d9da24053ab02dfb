"""The index phase's jobs (indexes.py runs them): what one staging table needs once its rows
are in -- its key, the preset's and the sky's indexes, the indexes users added to the
published table, and its statistics -- as groups of statements with their order and cost.

On a server that holds the table whole (``table_jobs``) every index is its own job, built
beside the others, and the primary key is attached and the statistics taken after them; on
a Citus cluster (``distributed_jobs``) one job runs a table's statements in order.  Which
one a table gets is the load's target's to say (target.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, TYPE_CHECKING

from psycopg2 import sql

from . import analyze as statistics
from ..catalog.skyindex import q3c_index_statement
from .sqlgen import attach_key, index_name, key_index, primary_key, secondary_indexes

if TYPE_CHECKING:
    from ..db import Connection

log = logging.getLogger(__name__)

#: heap pages an ANALYZE costs per column, for the order of the jobs (the biggest first)
ANALYZE_COST = 20


@dataclass
class Job:
    """One statement group of the index phase on one staging table."""

    table: str                         # the published table's name (what the user sees)
    what: str                          # "index <name>", "primary key", "ANALYZE", ...
    statements: list                   # run in order, in one transaction
    cost: float                        # a guess of the work (heap pages, columns): biggest first
    after: int = 0                     # jobs of the same table that must end first
    unique: Optional[str] = None       # the key a UniqueViolation breaks (for the message)
    then: Optional[Callable] = None    # run(conn, dsn, tag) after the statements' commit


def _builds(schema: str, table: str, stage: str, spec, pages: int, q3c: Optional[str], user: list,
            distribution) -> list:
    """The index builds of one staging table besides its key: the preset's secondary indexes
    (``distribution``: the Citus placement their unique keys must include), the sky's q3c
    index, and the indexes users added to the published table (``user``: (statement, name))."""
    builds = [Job(table, f"index {name}", [stmt], pages, unique=unique)
              for name, stmt, unique in secondary_indexes(schema, stage, spec, distribution)]
    if q3c and spec.sky:
        name = index_name(stage, ("q3c",))
        builds.append(Job(table, f"index {name}", [q3c_index_statement(schema, stage, name, spec.sky, q3c)], pages))
    return builds + [Job(table, f"index {name} (yours)", [stmt], pages) for stmt, name in user]


def table_jobs(schema: str, table: str, stage: str, spec, pages: int, q3c: Optional[str],
               user: list, has_key: bool, files=None) -> list:
    """The jobs of one staging table on a server that holds it whole: its index builds (no
    order between them), then the primary key attached and ANALYZE (``after`` = the number
    of builds).

    ``user``: (statement, name) of the indexes users added to the published table; ``has_key``:
    a resumed load attached the primary key already; ``files``: its rows in this load's
    files (pipeline/sample.FileRows), where its statistics read their sample."""
    key = ", ".join(spec.key)
    builds = [] if has_key else [Job(table, "primary key index", [key_index(schema, stage, spec)], pages, unique=key)]
    builds += _builds(schema, table, stage, spec, pages, q3c, user, None)

    def take_statistics(conn: Connection, dsn: str, tag: str) -> None:
        log.info("statistics of %s: %s", table, statistics.analyze(conn, dsn, tag, schema, stage, files=files))

    finish = [] if has_key else [attach_key(schema, stage)]
    return builds + [Job(table, "statistics" if has_key else "primary key, statistics", finish,
                         pages + ANALYZE_COST * len(spec.all_columns), after=len(builds), then=take_statistics)]


def distributed_jobs(schema: str, table: str, stage: str, spec, pages: int, q3c: Optional[str],
                     user: list, has_key: bool) -> list:
    """The one job of a staging table spread over a Citus cluster: its key (ADD PRIMARY KEY,
    with the distribution column), indexes and ANALYZE in order, in one session (the
    coordinator propagates each to the shards under its own locks)."""
    distribution = spec.distribution
    builds = _builds(schema, table, stage, spec, pages, q3c, user, distribution)
    first = [] if has_key else [primary_key(schema, stage, spec, distribution)]
    analyze = sql.SQL("ANALYZE {}").format(sql.Identifier(schema, stage))
    return [Job(table, "keys, indexes, ANALYZE", first + [s for j in builds for s in j.statements] + [analyze],
                pages * (2 + len(builds)), unique=", ".join(spec.key))]
