"""Where a load's tables live, chosen once when the coordinator connects: a PostgreSQL
server that holds them whole (``Server``), or a Citus cluster behind its coordinator
(``Cluster``).  The target knows what differs between the two, so nothing else in the
control plane asks which one it is:

- how staging tables are placed once created (``distribute``: nothing, or spread over the
  cluster's shards, co-located);
- whether workers set hint bits behind their tasks (``settling``: the shards do their own);
- whether a task's commit waits for its WAL to reach the disk (``task_commits_wait``);
- the index phase's jobs of one table (``index_jobs``) and how each job's transaction
  starts (``begin_job``);
- what the summary says of the placement (``describe``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ..fits.config import Distribution
from ..servers import citus
from . import jobs
from .settle import Settling, plan_settling

if TYPE_CHECKING:
    from ..db import Connection, Cursor
    from ..fits.columns import TableSpec


class Server:
    """A PostgreSQL server that holds every table whole."""

    #: A task's commit returns before its WAL is flushed (synchronous_commit off for that
    #: transaction): a crash can then lose the last tasks' commits, each with its rows (one
    #: transaction), so they are pending again and loaded again, never twice; whatever is
    #: committed later and waits for the flush (the finalize, the swap) flushes them first.
    #: The commit's flush is time the server waits for the worker's next task: 7-10 ms a
    #: task on this project's test machine, 4 % of a 24,000-galaxy copy at one worker.
    task_commits_wait = False

    def settling(self, server: dict, fits_bytes: int, workers: int, task_bytes: int) -> Settling:
        """Hint bits set behind each task, and the task size (settle.py)."""
        return plan_settling(server, fits_bytes, workers, task_bytes)

    def distribute(self, cur: Cursor, schema: str, table: str, stage: str, spec: TableSpec, hashed: list) -> None:
        """Place the new, empty staging table ``stage`` of ``table`` (here: it stays where it is)."""

    def index_jobs(self, schema: str, table: str, stage: str, spec: TableSpec, pages: int, q3c: Optional[str],
                   user: list, has_key: bool, files=None) -> list:
        """The index phase's jobs of one staging table (jobs.table_jobs)."""
        return jobs.table_jobs(schema, table, stage, spec, pages, q3c, user, has_key, files)

    def begin_job(self, cur: Cursor) -> None:
        """Settings of one index job's transaction (none here)."""

    def describe(self, tables: dict) -> Optional[tuple[str, dict]]:
        """(the cluster, {table: placement}) for the summary; None on a plain server."""
        return None


class Cluster(Server):
    """A Citus coordinator with worker nodes: tables placed as the preset says (servers/citus.py)."""

    #: Citus commits the shards' prepared transactions after the coordinator's own commit: a
    #: coordinator commit lost in a crash would leave rows on the workers of a task pending
    #: again, loaded twice.
    task_commits_wait = True

    def __init__(self, info: citus.Cluster) -> None:
        self.info = info

    def settling(self, server: dict, fits_bytes: int, workers: int, task_bytes: int) -> Settling:
        """The coordinator's settings say nothing of the shards' checkpoints: nothing changes."""
        return Settling(False, task_bytes)

    def distribute(self, cur: Cursor, schema: str, table: str, stage: str, spec: TableSpec, hashed: list) -> None:
        """Distribute the staging table as ``spec`` says, co-located with the published table
        or the staging tables hashed before it (``hashed``, which this one joins)."""
        dist = spec.distribution
        if not isinstance(dist, Distribution):
            return
        partner = citus.colocation_partner(cur, schema, [table] + hashed, dist)
        citus.distribute(cur, schema, stage, dist, partner)
        if dist.kind == "hash":
            hashed.append(stage)

    def index_jobs(self, schema: str, table: str, stage: str, spec: TableSpec, pages: int, q3c: Optional[str],
                   user: list, has_key: bool, files=None) -> list:
        """A distributed table's statements in one job, in order (jobs.distributed_jobs); a
        table kept on the coordinator is built as on a plain server."""
        if spec.distribution is None:
            return super().index_jobs(schema, table, stage, spec, pages, q3c, user, has_key, files)
        return jobs.distributed_jobs(schema, table, stage, spec, pages, q3c, user, has_key)

    def begin_job(self, cur: Cursor) -> None:
        citus.no_local_execution(cur)

    def describe(self, tables: dict) -> Optional[tuple[str, dict]]:
        return citus.describe(self.info, tables)


def target_of(conn: Connection) -> Server:
    """The target behind ``conn``: a Cluster when it is a Citus coordinator with workers."""
    with conn.cursor() as cur:
        info = citus.cluster(cur)
    conn.commit()
    return Server() if info is None else Cluster(info)
