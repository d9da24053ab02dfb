"""The index phase: every index of every staging table built in a pool of sessions, each
table's primary key attached and its statistics taken once its indexes are in, and what the
server says of each build (pg_stat_progress_create_index / _analyze) shown as it runs.

Why jobs rather than one session per table: several ``CREATE INDEX`` on one table run at
once (their SHARE locks do not conflict), so the indexes of the widest table no longer wait
for each other; the primary key is built as a unique index like the rest and attached with
``ADD PRIMARY KEY USING INDEX`` (its columns are NOT NULL from the start, so that takes no
scan).  ANALYZE conflicts with CREATE INDEX on the same table (SHARE UPDATE EXCLUSIVE
against SHARE), so it runs after the table's indexes and beside other tables' builds.
On a Citus coordinator each table's statements run in one session, in order, as before
(its DDL propagates to the shards under its own locks).
"""
from __future__ import annotations

import heapq
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TYPE_CHECKING

import psycopg2

from ..catalog import attach
from ..db import connect, free_connections, relation_exists
from ..errors import LoadFailed
from ..pipeline.sample import file_rows
from .ledger import app_name
from .jobs import Job
from .staging import FINALIZE_LOCK_TIMEOUT
from .sqlgen import index_name

if TYPE_CHECKING:
    from ..control.load import Load
    from ..db import Connection, Cursor
    from ..report import NullReporter

log = logging.getLogger(__name__)

#: seconds between looks at the server's progress views
PROGRESS_POLL = 1.0

@dataclass
class IndexResult:
    """What the index phase did: seconds per step ("table: what"), sessions used."""

    steps: dict = field(default_factory=dict)
    sessions: int = 0


class _Queue:
    """The index phase's jobs, shared by its sessions: biggest first, each table's finishing
    job after its builds; the first failure stops every session."""

    def __init__(self, jobs: list) -> None:
        self.jobs = jobs
        self.lock = threading.Condition()
        self.waiting = {id(j): j.after for j in jobs}       # builds left before a job may start
        self.ready = [(-j.cost, n, j) for n, j in enumerate(jobs) if not j.after]
        heapq.heapify(self.ready)
        self.running: dict = {}                             # backend pid -> Job
        self.left = len(jobs)
        self.failure: list = []

    def take(self) -> Optional[Job]:
        with self.lock:
            while not self.ready and self.left and not self.failure:
                self.lock.wait()
            if self.failure or not self.ready:
                return None
            return heapq.heappop(self.ready)[2]

    def finished(self, job: Job) -> None:
        with self.lock:
            self.left -= 1
            for n, other in enumerate(self.jobs):
                if other.table == job.table and self.waiting[id(other)] and job.after == 0:
                    self.waiting[id(other)] -= 1
                    if not self.waiting[id(other)]:
                        heapq.heappush(self.ready, (-other.cost, len(self.jobs) + n, other))
            self.lock.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.failure.append(exc)
            self.lock.notify_all()


def _session(dsn: str, tag: str, queue: _Queue, conns: list, result: IndexResult, reporter: NullReporter,
             begin: Callable) -> None:
    """One session of the index phase: jobs from ``queue`` until none is left (or one failed)."""
    conn = connect(dsn, app_name("finalize", tag))
    conns.append(conn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        conn.commit()
        pid = conn.get_backend_pid()
        while (job := queue.take()) is not None:
            label = f"{job.table}: {job.what}"
            reporter.step(label, "start")
            with queue.lock:
                queue.running[pid] = job
            t0 = time.perf_counter()
            try:
                _execute(conn, job, begin)
                if job.then is not None:
                    job.then(conn, dsn, tag)
            finally:
                with queue.lock:
                    queue.running.pop(pid, None)
            secs = time.perf_counter() - t0
            result.steps[label] = round(secs, 3)
            reporter.step(label, f"done in {secs:.1f} s")
            queue.finished(job)
    except BaseException as exc:               # noqa: BLE001 -- handed to the caller by run_jobs
        queue.fail(exc)
    finally:
        conn.close()


def _cancel(conns: list) -> None:
    for c in list(conns):
        if not c.closed:
            c.cancel()


def run_jobs(dsn: str, tag: str, jobs: list, sessions: int, reporter: NullReporter,
             begin: Callable = lambda cur: None) -> IndexResult:
    """Run ``jobs`` in ``sessions`` connections, biggest first, each table's finishing job
    after its builds; the server's progress of each running job reported every second.
    ``begin(cursor)`` starts each job's transaction (the target's session settings)."""
    result = IndexResult(sessions=sessions)
    queue, stop = _Queue(jobs), threading.Event()
    conns: list = []
    threads = [threading.Thread(target=_session, args=(dsn, tag, queue, conns, result, reporter, begin),
                                name=f"index-{i}", daemon=True) for i in range(sessions)]
    watcher = threading.Thread(target=_watch, args=(dsn, tag, queue.running, queue.lock, stop, reporter), daemon=True)
    for t in threads:
        t.start()
    watcher.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.2)
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM): stop the statements now rather than wait minutes
        # for index builds nobody will use
        queue.fail(KeyboardInterrupt())
        _cancel(conns)
        raise
    finally:
        stop.set()
    if queue.failure:
        _cancel(conns)
        raise queue.failure[0]
    return result


def _execute(conn: Connection, job: Job, begin: Callable) -> None:
    try:
        with conn.cursor() as cur:
            begin(cur)
            for stmt in job.statements:
                cur.execute(stmt)
        conn.commit()
    except psycopg2.errors.UniqueViolation as exc:
        conn.rollback()
        detail = (exc.diag.message_detail or "").strip()
        raise LoadFailed(f"table {job.table}: key ({job.unique}) is not unique: {detail}",
                         "two files hold the same rows? load each file once") from exc
    except BaseException:
        try:
            conn.rollback()
        except psycopg2.Error:
            pass
        raise


#: The server's own account of a running CREATE INDEX or ANALYZE (PostgreSQL 12+/13+).
_PROGRESS = """
SELECT pid, phase, blocks_done, blocks_total, tuples_done, tuples_total FROM pg_stat_progress_create_index
WHERE pid = ANY(%(pids)s)
UNION ALL
SELECT pid, phase, sample_blks_scanned, sample_blks_total, ext_stats_computed, ext_stats_total
FROM pg_stat_progress_analyze WHERE pid = ANY(%(pids)s)"""


def progress_text(phase: str, blocks_done: int, blocks_total: int, tuples_done: int, tuples_total: int) -> str:
    """One line of a running build: its phase and how far it is ("scanning table 40%")."""
    if blocks_total:
        return f"{phase} {100 * blocks_done / blocks_total:.0f}%"
    if tuples_total:
        return f"{phase} {100 * tuples_done / tuples_total:.0f}%"
    return phase


def _watch(dsn: str, tag: str, running: dict, lock, stop: threading.Event, reporter: NullReporter) -> None:
    """Every PROGRESS_POLL seconds: what the server says of each running job."""
    conn = None
    try:
        while not stop.wait(PROGRESS_POLL):
            with lock:
                jobs = dict(running)
            if not jobs:
                continue
            if conn is None:
                conn = connect(dsn, app_name("progress", tag))
                conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(_PROGRESS, {"pids": list(jobs)})
                rows = cur.fetchall()
            for pid, phase, bd, bt, td, tt in rows:
                job = jobs.get(pid)
                if job is not None:
                    reporter.step(f"{job.table}: {job.what}", progress_text(phase, bd or 0, bt or 0, td or 0, tt or 0))
    except Exception as exc:                        # noqa: BLE001 -- progress is best effort
        log.info("finalize progress not shown: %s", exc)
    finally:
        if conn is not None:
            conn.close()


def sessions_for(conn: Connection, workers: int, jobs: int) -> int:
    """Sessions of the index phase: as many as the load's workers (the user's measure of the
    server's cores), no more than the jobs, within the server's free connection slots."""
    return max(1, min(workers, jobs, free_connections(conn)))


def table_pages(cur: Cursor, schema: str, stage: str) -> int:
    cur.execute("SELECT pg_relation_size(%s::regclass) / 8192", (f'"{schema}"."{stage}"',))
    return int(cur.fetchone()[0])


def index(load: Load, q3c: Optional[str], reporter: NullReporter) -> IndexResult:
    """Every staging table's keys, indexes (the preset's, the sky's, the users') and ANALYZE,
    as the load's target builds them (target.py)."""
    jobs = []
    conn = load.conn
    files = file_rows(load.plan, load.file_ids)
    with conn.cursor() as cur:
        for table, spec in load.tables.items():
            stage = load.staging_tables[table]
            cur.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                        (f'"{load.schema}"."{stage}"', f"{stage}_pkey"))
            has_key = cur.fetchone() is not None
            jobs += load.target.index_jobs(load.schema, table, stage, spec, table_pages(cur, load.schema, stage),
                                           q3c, user_index_statements(cur, load.schema, table, stage, spec,
                                                                      load.load_id), has_key, files.get(table))
    conn.commit()
    return run_jobs(load.opts.dsn, load.ledger.tag, jobs, sessions_for(conn, load.opts.workers, len(jobs)),
                    reporter, load.target.begin_job)


def user_index_statements(cur: Cursor, schema: str, table: str, stage: str, spec, load_id: int) -> list:
    """(statement, name) building on staging the indexes users added to the published table
    (renamed back in the swap); none that a resumed load built already."""
    mine = {f"{table}_pkey", index_name(table, ("file_id", "row_num")),
            index_name(table, ("q3c",))} | {index_name(table, c) for c in spec.indexes}
    out = []
    for name, definition in attach.user_indexes(cur, schema, table, mine):
        new = attach.staging_index_name(name, load_id)
        if not relation_exists(cur, schema, new):
            out.append((attach.index_on(definition, schema, table, stage, name, new), name))
    return out

