"""Hint bits set behind the copy: a checkpoint inside the load must not make the finalize
write every loaded page to WAL a second time.

The mechanism (measured, docs/BENCHMARKS.md): a row COPY wrote carries its transaction's id
and no "committed" hint.  The first reader after the commit sets the hint bit; with data
checksums (the default of PostgreSQL 18's initdb) or ``wal_log_hints``, the first change of a
page after a checkpoint began is WAL-logged as a full-page image, a hint bit included.  So
when a checkpoint falls inside the copy, the index phase (the first reader) wrote every page
loaded before it to WAL again: 1.07x the copy's WAL at 400,000 galaxies and max_wal_size=1GB.

The cure has two halves, both needed:

- each worker reads the pages its task wrote right after the task commits (a TID range
  scan: the relation's size before and after its COPY bound them), which sets the hint bits
  while the pages are younger than the last checkpoint, so no page image is written;
- a page written before a checkpoint starts and hinted after it still costs an image, so a
  task's transaction must span a small part of the checkpoint distance: when the server's
  checkpoints would fall inside the load, tasks are made smaller (``task_bytes``).

Where hint bits are not WAL-logged (no checksums, no wal_log_hints, UNLOGGED staging) or the
tables are distributed (Citus), nothing changes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, TYPE_CHECKING

from psycopg2 import sql

from ..db import size_bytes
from ..fits.discover import TASK_BYTES as TASK_BYTES_DEFAULT

if TYPE_CHECKING:
    from ..db import Cursor

__all__ = ["Settling", "plan_settling", "checkpoint_advice", "extents", "settle", "TASK_BYTES_DEFAULT"]

#: Share of the checkpoint distance (WAL between two checkpoints) one task of each worker
#: may span: the pages of tasks in flight when a checkpoint begins still cost an image, on
#: average half a task each, so about SHARE / 2 of the copy's WAL is written again.
CHECKPOINT_SHARE = 0.05
#: Smallest task made for that: below it, per-task costs (claim, three COPY statements,
#: commit) are no longer noise (measured: 8 MB tasks of FastSpecFit, 2 workers, copy phase
#: within noise of 256 MB tasks).  A server whose checkpoints come faster than that wants
#: a larger max_wal_size (the summary says so).
MIN_TASK_BYTES = 8 << 20
#: WAL a load writes per FITS byte (measured: 4.6 GB for 4.2 GB of FastSpecFit, logged
#: staging, indexes at replica).
WAL_PER_FITS_BYTE = 1.2


@dataclass(frozen=True)
class Settling:
    """Whether workers settle hint bits behind their tasks, and the task size the server wants."""

    settle: bool
    task_bytes: int
    reason: str = ""

    def behind_tasks(self, staging_mode: str) -> bool:
        """Whether the workers settle the pages of staging of this mode: logged staging only.
        A hint bit in an UNLOGGED table is never WAL-logged; its first reader (an index
        build, SET LOGGED's rewrite) sets it at no WAL cost, and settling would only keep the
        server from the next task (7 ms of each 330 ms task of a 24,000-galaxy load)."""
        return self.settle and staging_mode == "logged"


def hints_logged(server: dict) -> bool:
    """True when setting a hint bit can write a full-page image (checksums or wal_log_hints)."""
    return server.get("data_checksums") == "on" or server.get("wal_log_hints") == "on"


def checkpoint_distance(server: dict) -> Optional[int]:
    """WAL bytes between two checkpoints the server triggers by size (None if unknown)."""
    size = size_bytes(server.get("max_wal_size", ""))
    if size is None:
        return None
    try:
        target = float(server.get("checkpoint_completion_target", "0.9"))
    except ValueError:
        target = 0.9
    return int(size / (1 + target))


def checkpoint_advice(server: dict, fits_bytes: int) -> Optional[str]:
    """A note when the server's max_wal_size is below what this load will write to WAL
    (about the FITS bytes, COPY into logged staging): checkpoints fall inside the copy
    (settling keeps them from costing a second WAL write of the pages)."""
    distance = checkpoint_distance(server)
    if distance is None:
        return None
    wal = WAL_PER_FITS_BYTE * fits_bytes
    if wal <= distance:
        return None
    want = -(-int(2 * wal) // (1 << 30))
    return (f"max_wal_size={server['max_wal_size']} is below the WAL this load writes (about {wal / 1e9:.1f} GB): "
            f"checkpoints fall inside the load (smaller tasks, hint bits set behind each, so the finalize does not "
            f"write the pages to WAL again); on a server tuned for loading set max_wal_size = {want}GB "
            f"(ALTER SYSTEM SET max_wal_size = '{want}GB'; SELECT pg_reload_conf())")


def plan_settling(server: dict, fits_bytes: int, workers: int, task_bytes: int) -> Settling:
    """What the server at hand needs (pure: ``server`` as db.server_settings reads it).

    ``task_bytes`` is the plan's task size; it is only ever made smaller, and only when the
    load's WAL passes the checkpoint distance.
    """
    if not hints_logged(server):
        return Settling(False, task_bytes)
    distance = checkpoint_distance(server)
    if distance is None or WAL_PER_FITS_BYTE * fits_bytes <= distance:
        return Settling(True, task_bytes)
    want = max(MIN_TASK_BYTES, int(CHECKPOINT_SHARE * distance / max(1, workers)))
    if want >= task_bytes:
        return Settling(True, task_bytes)
    return Settling(True, want, f"checkpoints fall inside this load (max_wal_size={server.get('max_wal_size')}): "
                                f"tasks of {want >> 20} MB, hint bits set behind each")


def extents(cur: Cursor, schema: str, staging: list) -> dict:
    """{staging table: its size in blocks} now (pg_relation_size: no read of the table)."""
    names = [sql.Identifier(schema, t).as_string(cur) for t in staging]
    cur.execute("SELECT r, pg_relation_size(r::regclass) / current_setting('block_size')::int "
                "FROM unnest(%s::text[]) r", (names,))
    return dict(zip(staging, (n for _, n in cur.fetchall())))


def settle(cur: Cursor, schema: str, before: dict, after: dict) -> int:
    """Read the blocks each staging table grew by between ``before`` and ``after`` (and the
    block before, which the COPY may have finished filling): their committed rows get their
    hint bits now.  Returns the blocks read."""
    scans, args, blocks = [], [], 0
    for table, stop in after.items():
        start = max(0, before.get(table, 0) - 1)
        if stop <= start:
            continue
        scans.append(sql.SQL("(SELECT count(*) FROM {} WHERE ctid >= %s::tid AND ctid < %s::tid)")
                     .format(sql.Identifier(schema, table)))
        args += [f"({start},0)", f"({stop},0)"]
        blocks += stop - start
    if scans:
        cur.execute(sql.SQL("SELECT ") + sql.SQL(", ").join(scans), args)
        cur.fetchone()
    return blocks
