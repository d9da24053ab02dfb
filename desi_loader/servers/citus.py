"""Citus: tables spread over a cluster, as the catalog preset says (``distribute``).

On a server with the citus extension and worker nodes, staging tables are distributed
right after they are created and before any row arrives: ``hash(column)`` tables with
``create_distributed_table`` (co-located with the catalog's other tables hashed on the
same column, and with the published table they will replace), ``reference`` tables with
``create_reference_table``; ``local`` tables stay plain tables on the coordinator.
Workers COPY through the coordinator, which routes every row to its shard.

Unique constraints on a hash-distributed table must contain the distribution column
(each shard checks its own rows): ``unique_columns`` appends it where a key lacks it, so
(file_id, row_num) becomes (file_id, row_num, targetid): still unique per file row,
because a file row has one targetid.  On a plain server nothing here runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, TYPE_CHECKING

from psycopg2 import sql

from ..db import relation_exists
from ..fits.config import Distribution

if TYPE_CHECKING:
    from ..db import Cursor


@dataclass(frozen=True)
class Cluster:
    """The Citus cluster behind a coordinator."""

    version: str
    workers: int


def cluster(cur: Cursor) -> Optional[Cluster]:
    """The cluster when the server is a Citus coordinator with active workers, else None."""
    cur.execute("SELECT extversion FROM pg_extension WHERE extname = 'citus'")
    row = cur.fetchone()
    if row is None:
        return None
    cur.execute("SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND isactive AND groupid <> 0")
    workers = cur.fetchone()[0]
    return Cluster(row[0], workers) if workers else None


def placement(cur: Cursor, schema: str, table: str) -> Optional[str]:
    """How a table is placed now: 'hash(col)', 'reference', 'local' (in Citus metadata or
    not), or None when it does not exist."""
    if not relation_exists(cur, schema, table):
        return None
    cur.execute("SELECT partmethod, column_to_column_name(logicalrelid, partkey) FROM pg_dist_partition "
                "WHERE logicalrelid = format('%%I.%%I', %s::text, %s::text)::regclass", (schema, table))
    row = cur.fetchone()
    if row is None or row[0] == "n" and not row[1]:
        return "local"
    return f"hash({row[1]})" if row[0] == "h" else "reference"


def distribute(cur: Cursor, schema: str, stage: str, dist: Distribution, colocate: Optional[str]) -> None:
    """Distribute the (empty) staging table ``stage``; ``colocate`` is a table of the same
    schema to co-locate a hash table with (None: Citus's default group for its type)."""
    ident = sql.Literal(f'"{schema}"."{stage}"')
    if dist.kind == "hash":
        cur.execute(sql.SQL("SELECT create_distributed_table({}, {}, colocate_with => {})").format(
            ident, sql.Literal(dist.column),
            sql.Literal(f'"{schema}"."{colocate}"' if colocate else "default")))
    elif dist.kind == "reference":
        cur.execute(sql.SQL("SELECT create_reference_table({})").format(ident))


def colocation_partner(cur: Cursor, schema: str, candidates: Sequence[str], dist: Distribution) -> Optional[str]:
    """The first of ``candidates`` that exists and is hashed on the same column."""
    for name in candidates:
        if placement(cur, schema, name) == str(dist):
            return name
    return None


def no_local_execution(cur: Cursor) -> None:
    """For this transaction: no local execution on the coordinator's placements (of
    reference tables), which would forbid the parallel commands that follow (ANALYZE, DDL)."""
    cur.execute("SET LOCAL citus.enable_local_execution TO off")


def unique_columns(columns: Sequence[str], dist: Optional[Distribution]) -> tuple:
    """A unique key as a hash-distributed table must have it: with the distribution column."""
    cols = tuple(columns)
    if dist is not None and dist.kind == "hash" and dist.column not in cols:
        return cols + (dist.column,)
    return cols


def describe(info: Cluster, tables: dict) -> tuple[str, dict]:
    """(the cluster, {table: how it is placed and its keys adapted} for the TableSpecs
    ``tables``)."""
    placed = {}
    for t, spec in tables.items():
        dist = spec.distribution
        text = str(dist)
        if dist.kind == "hash":
            key = unique_columns(spec.key, dist)
            text += " co-located" + (f", primary key ({', '.join(key)})" if key != tuple(spec.key) else "")
            text += f", unique ({', '.join(unique_columns(('file_id', 'row_num'), dist))})"
        placed[t] = text
    return f"Citus {info.version}, {info.workers} worker node(s)", placed
