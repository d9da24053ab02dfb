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

from . import indexes, publish, publishing, staging, verify
from ..db import as_database_error, free_connections, server_settings
from ..errors import DatabaseError, LoadFailed, UsageError
from ..fits.discover import Plan
from ..pipeline.encodings import encoder_plan
from ..report import NullReporter
from .ledger import Ledger, process_name
from .load import Load
from .opening import open_load
from .options import LoadOptions
from .pool import Spares, WorkerPool
from .results import FailedFile, Merged, Outcome
from .summary import Facts, Summary, dry_run, summarize
from .settle import Settling, checkpoint_advice
from .target import Server, target_of
from .verify import RowsLost, check_canary, expected_counts
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

    def __init__(self, opts: LoadOptions, plan: Plan, reporter: NullReporter,
                 spares: Optional[Spares] = None) -> None:
        self.opts, self.reporter = opts, reporter
        self.plan = plan                      # as planned; its task size decided once the server is known
        self._ledger: Optional[Ledger] = None   # once connected (run)
        self._load: Optional[Load] = None     # the open load (open phase on): its own plan
        self.target: Server = Server()        # decided once connected (_decide)
        self.settling = Settling(False, plan.task_bytes)   # likewise
        self.facts = Facts()                  # what the phases return; summary.summarize reports it
        self.spares = spares                  # workers started while the load is planned and opens (pool.py)

    @property
    def load(self) -> Load:
        """The open load (from the start of run on)."""
        if self._load is None:
            raise RuntimeError("the load is not open yet")
        return self._load

    @property
    def finalizer(self) -> bool:
        return self.facts.finalizer

    @property
    def role(self) -> str:
        """How this process opened the load (opening.Opening.how; "" before the open phase)."""
        return self.facts.opening.how if self.facts.opening is not None else ""

    def run(self, plan_s: float) -> Summary:
        """Every phase in order: timed, retried where safe, reported."""
        plan, facts = self.plan, self.facts
        facts.plan_s = plan_s
        for note in plan.notes:
            self.reporter.warn(note)
        if not plan.files:
            raise LoadFailed(f"no {plan.catalog.name} file could be loaded:" + verify.reasons(plan.failed),
                             "fix or re-download the named files")
        if self.opts.dry_run:
            return dry_run(self.opts, plan, {t: sum(per.values()) for t, per in expected_counts(plan).items()},
                           plan_s)
        try:
            self.spares = self.spares or Spares(self.opts.workers)
            self._ledger = Ledger(self.opts.dsn, plan.schema, budget=self.opts.wait_timeout,
                                  notify=self.reporter.warn)
            facts.server = server_settings(self.ledger.conn)
            self._decide()
            self._advise(checkpoint_advice(facts.server, self.plan.total_bytes))
            self._run_phases()
            facts.coordinator_peak_kb = peak_rss_kb()
            summary = summarize(self.opts, self.load.plan, facts)
            for name, reason in summary.left_out:
                self.reporter.warn(f"published without {name}: {reason}")
            return summary
        except psycopg2.Error as exc:
            raise as_database_error(exc, "staging tables are kept; rerun the same command to resume") from exc
        except LoadFailed as exc:
            if self.finalizer:                # tell the processes waiting for this load why
                why, ledger = str(exc), self.ledger
                ledger.resilient(lambda: ledger.set_status("failed", why))
            raise
        finally:
            self._release_spares()
            self.reporter.close()
            if self._ledger is not None:
                self._ledger.close()

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
                self.ledger.unlock()
                self.facts.finalizer = False
                self.ledger.hold_shared()
                start = next(i for i, p in enumerate(PHASES) if p.name == "copy")

    @property
    def ledger(self) -> Ledger:
        """The load's ledger (from the start of run on)."""
        if self._ledger is None:
            raise RuntimeError("not connected yet")
        return self._ledger

    def _decide(self) -> None:
        """What depends on the server, decided before the load opens and before anything reads
        the plan's tasks (split when first read): the target (target.py), whether workers set
        hint bits behind their tasks, and smaller tasks when the server's checkpoints fall
        inside the load (settle.py); an explicit --task-rows is kept."""
        self.target = target_of(self.ledger.conn)
        plan = self.plan
        self.settling = self.target.settling(self.facts.server, plan.total_bytes, self.opts.workers, plan.task_bytes)
        if self.settling.task_bytes < plan.task_bytes and plan.task_rows is None:
            self.plan = replace(plan, task_bytes=self.settling.task_bytes)
            self.facts.notes.append(self.settling.reason)
            self.reporter.info(self.settling.reason)

    def _release_spares(self) -> None:
        """Let the spare workers go (this process copies no more, or never did)."""
        if self.spares is not None:
            self.spares.release()
            self.spares = None

    def _advise(self, advice: Optional[str]) -> None:
        """A note on the server's settings for the summary and the user (when there is one)."""
        if advice:
            self.facts.notes.append(advice)
            self.reporter.warn(advice)

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
            self.facts.phases[phase.name] = round(self.facts.phases.get(phase.name, 0)
                                                  + time.perf_counter() - t0, 3)

    # ----------------------------------------------------------------- open

    def open(self) -> None:
        """Start, resume or join the load of these tables (opening.py), after the preflight."""
        self.ledger.ensure_tables()
        self.preflight()
        self._load, opening = open_load(self.ledger, self.plan, self.opts, self.target, self.reporter)
        self.facts.opening = opening
        if opening.how == "nothing" and self.plan.failed:
            self.facts.verified = verify.nothing_but_failures(self.load, len(opening.unchanged))
        if opening.message:
            self.reporter.info(opening.message)
        if opening.how in ("nothing", "finalizing"):
            self._release_spares()
        self.describe_cluster()

    def describe_cluster(self) -> None:
        """On a Citus coordinator: say how each table is placed (and keys adapted)."""
        placed = self.target.describe(self.plan.tables)
        if placed is not None:
            self.facts.cluster = placed
            self.reporter.info(f"{placed[0]}: " + "; ".join(f"{t} {d}" for t, d in placed[1].items()))

    def preflight(self) -> None:
        """Refuse, before any data moves, what publishing could not do (publishing.py's
        preflight of the way this load would publish)."""
        conn = self.ledger.conn
        how = publishing.choose(self.ledger, self.plan, self.opts)
        with conn.cursor() as cur:
            problems = how.preflight(cur, self.plan)
        conn.rollback()
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
        while self.role != "finalizing":
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
        self._release_spares()
        ledger.release_shared()
        self.facts.finalizer = ledger.try_lock()
        if self.finalizer:
            ledger.set_phase("verify", process_name())
            check_canary(self.load)

    def _run_pool(self, pending: int):
        opts, plan, ledger = self.opts, self.load.plan, self.ledger
        if opts.copy_out:
            os.makedirs(opts.copy_out, exist_ok=True)
        workers = self._budget(min(opts.workers, pending))
        settle = self.settling.behind_tasks(self.load.staging_mode)
        cfg = WorkerConfig(plan.schema, ledger.bound_id(), opts.fmt, opts.verify_checksum,
                           encoder_plan(plan, self.load.staging_tables, self.load.file_ids), os.getpid(), opts.copy_out,
                           opts.faults, opts.wait_timeout, settle, self.target.task_commits_wait)
        pool = WorkerPool(opts.dsn, cfg, workers, self.reporter, self._death, spares=self.spares)
        self.spares = None                     # adopted, or let go, by the pool
        t0, cpu0 = time.perf_counter(), time.process_time()
        result = pool.run(ledger.pending_rows(), plan.total_bytes)
        end = time.perf_counter()
        self.facts.copy = self.facts.copy.plus(result, end - t0, time.process_time() - cpu0, end)
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
                self.facts.outcome = Outcome(finalizer, ledger.rows_by_table(),
                                             tuple(FailedFile(*f) for f in ledger.left_out(error)))
                self.reporter.info(f"load {ledger.load_id} was published by {finalizer}")
                return
            if status in ("failed", "aborted"):
                raise LoadFailed(f"load {ledger.load_id} {status} in {finalizer or 'another process'}: "
                                 f"{error or 'see desi-loader status'}",
                                 "fix the cause and rerun the same command")
            ledger.end_orphans()
            if ledger.try_lock():                      # the finalizer died: take over
                self.facts.finalizer = True
                ledger.set_phase("verify", process_name())
                self.reporter.info(f"load {ledger.load_id}: taking over the finalize from {finalizer}")
                check_canary(self.load)
                return
            if (phase, finalizer) != last:
                last = (phase, finalizer)
                self.reporter.info(f"load {ledger.load_id}: waiting for {finalizer or 'the other processes'}"
                                   f" ({phase or 'copy'})")
            self._check_wait(since, "the finalize of another process")
            time.sleep(WAIT_POLL)

    # ----------------------------------------------------------------- the finalizer's steps

    def verify(self) -> None:
        """Failed files, checksums and rows per file; the load goes on with the files it publishes."""
        opening = self.facts.opening
        self.facts.verified = verified = verify.verify(self.load, len(opening.unchanged) if opening else 0)
        self._load = self.load.narrowed({os.path.basename(p) for p in verified.published})

    def merge(self) -> None:
        check_canary(self.load)
        added, replaced = publish.publish_merge(self.load, self.reporter.warn)
        if added:
            self.reporter.info(f"new columns in the published tables: {', '.join(added)}")
        self.facts.merged = Merged(tuple(added), replaced)

    def index(self) -> None:
        self.facts.indexed = indexes.index(self.load, staging.prepare_sky(self.load, self.reporter.warn), self.reporter)

    def durable(self) -> None:
        check_canary(self.load)
        staging.durable(self.load)

    def link(self) -> None:
        staging.link(self.load)

    def swap(self) -> None:
        check_canary(self.load)
        publish.publish_swap(self.load)


#: The phases of a load, in order.  ``open`` runs in one transaction (a failure leaves
#: nothing); the others are idempotent and retried whole after a transient error (the
#: copy phase only starts workers for the tasks still pending).  Every
#: process copies; the one that wins the load's lock alone (``finalizer``) verifies,
#: indexes and publishes, the others await the outcome (and take over if it dies).
def _publishes(step: str) -> Callable[[Coordinator], bool]:
    """The finalizer runs the steps of the load's way of publishing (publishing.py)."""
    return lambda c: c.finalizer and c.load.publishes(step)


PHASES = (
    Phase("open", Coordinator.open, retry=False),
    Phase("copy", Coordinator.copy, when=lambda c: c.role != "nothing"),
    Phase("await", Coordinator.await_outcome, when=lambda c: not c.finalizer and c.role != "nothing"),
    Phase("verify", Coordinator.verify, when=lambda c: c.finalizer),
    Phase("merge", Coordinator.merge, when=_publishes("merge")),
    # SET LOGGED rewrites the table and rebuilds its indexes: made durable first, indexed once
    Phase("durable", Coordinator.durable,
          when=lambda c: _publishes("durable")(c) and not c.opts.unlogged and c.load.staging_mode == "unlogged"),
    Phase("index", Coordinator.index, when=_publishes("index")),
    Phase("foreign_keys", Coordinator.link, when=lambda c: _publishes("foreign_keys")(c) and bool(c.load.fkeys)),
    Phase("swap", Coordinator.swap, when=_publishes("swap")),
)
