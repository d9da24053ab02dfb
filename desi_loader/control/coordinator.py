"""The coordinator: a load's phases (open, copy, await, verify, merge, durable, index,
foreign keys, swap) from one table, timing, retrying and reporting each.

Every process copies; the one that wins the load's lock alone (the finalizer) verifies,
indexes and publishes, the others await the outcome (and take over if it dies).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Optional

import psycopg2

from . import indexes, publish, staging, verify
from ..db import as_database_error, checkpoint_advice, free_connections, mask_dsn, server_settings
from ..errors import DatabaseError, LoadFailed, UsageError
from ..fits.discover import Plan, split_tasks
from ..pipeline.encodings import encoder_plan
from ..report import NullReporter
from ..servers import citus
from .ledger import Ledger, process_name
from .load import Load
from .opening import open_load
from .options import LoadOptions, Summary
from .pool import WorkerPool
from .settle import Settling, plan_settling
from .verify import RowsLost, check_rows, expected_counts
from .worker import WorkerConfig, peak_rss_kb

log = logging.getLogger(__name__)


#: A task whose worker died this many times is failed (it may be what kills them).
MAX_TASK_ATTEMPTS = 3
#: Seconds between looks at the ledger while other processes hold the load's tasks or
#: finalize it (one cheap query each).
WAIT_POLL = 1.0


@dataclass(frozen=True)
class Phase:
    """One step of a load: ``retry`` steps are idempotent and rerun after transient errors."""

    name: str
    run: Callable[["Coordinator"], None]
    retry: bool = True
    when: Callable[["Coordinator"], bool] = lambda c: True


class Coordinator:
    """Runs one plan's load through PHASES; raises LoaderError subclasses for what users must fix."""

    def __init__(self, opts: LoadOptions, plan: Plan, reporter: NullReporter) -> None:
        self.opts, self.plan, self.reporter = opts, plan, reporter
        self.load: Optional[Load] = None      # once the ledger is connected
        self.settling = Settling(False, opts.task_bytes)   # once the server is known (_settle_behind)
        self.finalizer = False
        self.summary = Summary(workers=opts.workers, fmt=opts.fmt, durable=not opts.unlogged,
                               dsn=mask_dsn(opts.dsn or ""), catalog=plan.catalog.name, schema=plan.schema,
                               files=len(plan.files), fits_bytes=plan.total_bytes, tasks=len(plan.tasks))
        self.summary.plan = [{"table": t, "columns": len(s.all_columns), "key": list(s.key), "sky": list(s.sky)}
                             for t, s in plan.tables.items()]
        self.summary.checksums = "verified" if opts.verify_checksum else "not verified (--no-verify-checksum)"

    def run(self, plan_s: float) -> Summary:
        """Every phase in order: timed, retried where safe, reported."""
        summary, plan = self.summary, self.plan
        summary.phases["plan"] = plan_s
        summary.notes = list(plan.notes)
        for note in plan.notes:
            self.reporter.warn(note)
        if not plan.files:
            raise LoadFailed(f"no {plan.catalog.name} file could be loaded:" + verify.reasons(plan.rejected),
                             "fix or re-download the named files")
        if self.opts.dry_run:
            summary.rows = {t: sum(per.values()) for t, per in expected_counts(plan).items()}
            summary.missing = [(os.path.basename(p), r) for p, r in plan.rejected]
            summary.files_loaded = [fp.info.path for fp in plan.files]
            summary.files_failed = list(plan.rejected)
            return summary
        try:
            self.load = Load(self.opts, plan, Ledger(self.opts.dsn, plan.schema, budget=self.opts.wait_timeout,
                                                        notify=self.reporter.warn))
            summary.server = server_settings(self.load.conn)
            self._settle_behind()
            plan = self.plan
            _advise(summary, checkpoint_advice(summary.server, plan.total_bytes), self.reporter)
            self._run_phases()
            if summary.role != "nothing":
                summary.files_loaded = [fp.info.path for fp in plan.files]
            for name, reason in summary.missing:
                self.reporter.warn(f"published without {name}: {reason}")
            summary.finalized = self.finalizer
            if self.finalizer:
                summary.published_by = process_name()
            summary.memory["coordinator_peak_mb"] = round(peak_rss_kb() / 1024, 1)
            return summary
        except psycopg2.Error as exc:
            raise as_database_error(exc, "staging tables are kept; rerun the same command to resume") from exc
        except LoadFailed as exc:
            if self.finalizer:                # tell the processes waiting for this load why
                why, ledger = str(exc), self.load.ledger
                ledger.resilient(lambda: ledger.set_status("failed", why))
            raise
        finally:
            self.reporter.close()
            if self.load is not None:
                self.load.ledger.close()

    def _run_phases(self) -> None:
        """PHASES in order; when a server crash took rows of done tasks, back to the copy."""
        start = 0
        while True:
            try:
                for phase in PHASES[start:]:
                    if phase.when(self):
                        self._run_phase(phase)
                return
            except RowsLost as lost:
                self.reporter.warn(f"the server restarted after a crash: UNLOGGED staging lost the rows of "
                                   f"{lost.tasks} done task(s); reloading exactly those")
                self.load.ledger.unlock()
                self.finalizer = False
                self.load.ledger.join()
                start = next(i for i, p in enumerate(PHASES) if p.name == "copy")

    @property
    def ledger(self) -> Ledger:
        return self.load.ledger

    def _settle_behind(self) -> None:
        """Whether workers set hint bits behind their tasks, and smaller tasks when the server's
        checkpoints fall inside the load (settle.py); an explicit --task-rows is kept."""
        conn = self.load.conn
        with conn.cursor() as cur:
            distributed = citus.cluster(cur) is not None
        conn.commit()
        self.settling = plan_settling(self.summary.server, self.plan.total_bytes, self.opts.workers,
                                      self.opts.task_bytes, distributed)
        if self.settling.task_bytes < self.opts.task_bytes and self.opts.task_rows is None:
            self.opts = replace(self.opts, task_bytes=self.settling.task_bytes)
            self.plan = replace(self.plan, tasks=split_tasks(self.plan, self.opts.task_bytes, None))
            self.load.opts, self.load.plan = self.opts, self.plan
            self.summary.notes.append(self.settling.reason)
            self.reporter.info(self.settling.reason)

    def _run_phase(self, phase: Phase) -> None:
        if self.finalizer and phase.name != "await":
            self.ledger.resilient(lambda: self.ledger.set_phase(phase.name))
        self.reporter.phase(phase.name)            # after the ledger says so: a test can stop the process here
        t0 = time.perf_counter()
        try:
            if phase.retry:
                self.ledger.resilient(lambda: phase.run(self), f"{phase.name} phase")
            else:
                phase.run(self)
        finally:
            self.summary.phases[phase.name] = round(self.summary.phases.get(phase.name, 0)
                                                    + time.perf_counter() - t0, 3)

    # ----------------------------------------------------------------- open

    def open(self) -> None:
        """Start, resume or join the load of these tables (opening.py), after the preflight."""
        self.ledger.ensure_tables()
        self.preflight(not self.opts.replace_all and bool(self.ledger.published_files(sorted(self.plan.tables))))
        opening = open_load(self.ledger, self.plan, self.opts, self.reporter)
        self.load.opened(opening)
        self.summary.opened(opening, self.plan)
        if opening.how == "nothing" and self.plan.rejected:
            verify.nothing_but_failures(self.load, self.summary)
        if opening.message:
            self.reporter.info(opening.message)
        self.describe_cluster()

    def describe_cluster(self) -> None:
        """On a Citus coordinator: say how each table is placed (and keys adapted)."""
        with self.ledger.conn.cursor() as cur:
            placed = citus.describe(cur, self.plan.tables)
        self.ledger.conn.commit()
        if placed is not None:
            self.summary.cluster, self.summary.distribution = placed
            self.reporter.info(f"{self.summary.cluster}: " + "; ".join(f"{t} {d}" for t, d in
                                                                      self.summary.distribution.items()))

    def preflight(self, incremental: bool) -> None:
        """Refuse, before any data moves, what publishing could not do (publish.preflight)."""
        problems = publish.preflight(self.load, incremental)
        if problems:
            raise UsageError(f"publishing would break what users attached to the tables in {self.plan.schema}:"
                             + "".join(f"\n  {p}" for p in problems),
                             "fix the named objects (nothing was loaded), then rerun the same command")

    # ----------------------------------------------------------------- copy

    def copy(self) -> None:
        """Run pools of workers until no task is pending, waiting while other processes hold the rest.

        Then elect the finalizer: the process that takes the load's lock alone (every
        copying process holds it shared until it has nothing left to copy).
        """
        ledger, waited_since = self.ledger, None
        while self.summary.role != "finalizing":
            pending = ledger.task_counts()["pending"]
            if not pending:
                break
            if ledger.claimable():
                waited_since = None
                if self._run_pool(pending).gave_up:
                    break                      # workers keep dying: settle_failures reports it
                continue
            if waited_since is None:
                waited_since = time.monotonic()
                self.reporter.info(f"{pending} task(s) are being loaded by other processes "
                                   f"({', '.join(ledger.holders()) or 'unknown'}); waiting for them")
            self._check_wait(waited_since, "tasks held by other processes")
            ledger.end_orphans()
            time.sleep(WAIT_POLL)
        ledger.leave()
        self.finalizer = ledger.try_lock()
        if self.finalizer:
            ledger.set_phase("verify", process_name())
            check_rows(self.load)

    def _run_pool(self, pending: int):
        opts, plan, ledger = self.opts, self.plan, self.ledger
        if opts.copy_out:
            os.makedirs(opts.copy_out, exist_ok=True)
        workers = self._budget(min(opts.workers, pending))
        cfg = WorkerConfig(plan.schema, ledger.load_id, opts.fmt, opts.verify_checksum,
                           encoder_plan(plan, self.load.staging, self.load.file_ids), os.getpid(), opts.copy_out,
                           opts.faults, opts.wait_timeout, self.settling.settle)
        pool = WorkerPool(opts.dsn, cfg, workers, self.reporter, self._death)
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = pool.run(ledger.pending_rows(), plan.total_bytes)
        cpu = self.summary.cpu
        cpu["workers_s"] = round(cpu.get("workers_s", 0) + result.worker_cpu, 3)
        cpu["coordinator_s"] = round(cpu.get("coordinator_s", 0) + time.process_time() - cpu0, 3)
        self.summary.node_rows += result.rows
        self.summary.node_seconds += time.perf_counter() - t0
        self.summary.memory["worker_peak_mb"] = max(self.summary.memory.get("worker_peak_mb", 0),
                                                    round(result.worker_peak_kb / 1024, 1))
        if result.first_rows_at is not None:
            # the streaming part of the copy: first rows encoded to last task committed (worker
            # start-up and exit, about half a second each on a laptop, excluded)
            end = result.last_done_at or time.perf_counter()
            self.summary.phases["copy_stream"] = round(self.summary.phases.get("copy_stream", 0)
                                                       + end - result.first_rows_at, 3)
        if result.fatal:
            raise DatabaseError(result.fatal, "staging tables are kept; fix the cause and rerun the same "
                                "command to resume")
        return result

    def _budget(self, wanted: int) -> int:
        """Workers that fit the server's free connection slots (each worker holds one)."""
        free = free_connections(self.ledger.conn)
        if free >= wanted:
            return wanted
        workers = max(1, free)
        self.reporter.warn(f"the server has {free} free connection slot(s) (max_connections minus reserved minus "
                           f"in use): starting {workers} worker(s) instead of {wanted}; raise max_connections "
                           "or put pgbouncer (session mode) in front of the server")
        return workers

    def _death(self, task: int, why: str) -> bool:
        return self.ledger.resilient(lambda: self.ledger.record_death(task, why, MAX_TASK_ATTEMPTS))

    def _check_wait(self, since: float, what: str) -> None:
        if time.monotonic() - since > self.opts.wait_timeout:
            raise LoadFailed(f"load {self.ledger.load_id}: still waiting for {what} after "
                             f"{self.opts.wait_timeout:.0f} s ({', '.join(self.ledger.holders()) or 'nobody'})",
                             "see desi-loader status; rerun later (or raise --wait-timeout)")

    # ----------------------------------------------------------------- await

    def await_outcome(self) -> None:
        """Another process finalizes: wait for it to publish or fail; take over if it dies."""
        ledger, since, last = self.ledger, time.monotonic(), None
        while True:
            status, phase, finalizer, error = ledger.state()
            if status == "published":
                self.summary.published_by = finalizer
                self.summary.rows = ledger.rows_by_table()
                self.summary.missing = ledger.left_out(error)
                self.summary.files_failed = [(n, r) for n, r in self.summary.missing]
                self.reporter.info(f"load {ledger.load_id} was published by {finalizer}")
                return
            if status in ("failed", "aborted"):
                raise LoadFailed(f"load {ledger.load_id} {status} in {finalizer or 'another process'}: "
                                 f"{error or 'see desi-loader status'}",
                                 "fix the cause and rerun the same command")
            ledger.end_orphans()
            if ledger.try_lock():                      # the finalizer died: take over
                self.finalizer = True
                ledger.set_phase("verify", process_name())
                self.reporter.info(f"load {ledger.load_id}: taking over the finalize from {finalizer}")
                check_rows(self.load)
                return
            if (phase, finalizer) != last:
                last = (phase, finalizer)
                self.reporter.info(f"load {ledger.load_id}: waiting for {finalizer or 'the other processes'}"
                                   f" ({phase or 'copy'})")
            self._check_wait(since, "the finalize of another process")
            time.sleep(WAIT_POLL)

    # ----------------------------------------------------------------- the finalizer's steps

    def merge(self) -> None:
        check_rows(self.load)
        added, replaced = publish.publish_merge(self.load)
        if added:
            self.reporter.info(f"new columns in the published tables: {', '.join(added)}")
        self.summary.replaced_rows = replaced

    def index(self) -> None:
        result = indexes.index(self.load, bool(self.summary.cluster), staging.prepare_sky(self.load), self.reporter)
        self.summary.index_steps.update(result.steps)
        self.summary.index_sessions = result.sessions

    def durable(self) -> None:
        check_rows(self.load)
        staging.durable(self.load)

    def swap(self) -> None:
        check_rows(self.load)
        publish.publish_swap(self.load)


def _advise(summary: Summary, advice: Optional[str], reporter: NullReporter) -> None:
    """A note on the server's settings for the summary and the user (when there is one)."""
    if advice:
        summary.notes.append(advice)
        reporter.warn(advice)


#: The phases of a load, in order.  ``open`` runs in one transaction (a failure leaves
#: nothing); the others are idempotent and retried whole after a transient error (the
#: copy phase only starts workers for the tasks still pending).  Every
#: process copies; the one that wins the load's lock alone (``finalizer``) verifies,
#: indexes and publishes, the others await the outcome (and take over if it dies).
def _replacing(c: Coordinator) -> bool:
    return c.finalizer and not c.load.incremental


PHASES = (
    Phase("open", Coordinator.open, retry=False),
    Phase("copy", Coordinator.copy, when=lambda c: c.summary.role != "nothing"),
    Phase("await", Coordinator.await_outcome, when=lambda c: not c.finalizer and c.summary.role != "nothing"),
    Phase("verify", lambda c: verify.verify(c.load, c.summary), when=lambda c: c.finalizer),
    Phase("merge", Coordinator.merge, when=lambda c: c.finalizer and c.load.incremental),
    # SET LOGGED rewrites the table and rebuilds its indexes: made durable first, indexed once
    Phase("durable", Coordinator.durable,
          when=lambda c: _replacing(c) and not c.opts.unlogged and c.load.staging_mode == "unlogged"),
    Phase("index", Coordinator.index, when=_replacing),
    Phase("foreign_keys", lambda c: staging.link(c.load), when=lambda c: _replacing(c) and bool(c.load.fkeys)),
    Phase("swap", Coordinator.swap, when=_replacing),
)
