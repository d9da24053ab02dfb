"""The coordinator: plan, then run a load's phases (open, copy, verify, index, durable,
foreign keys, swap) from one table, timing, retrying and reporting each.

The load's state lives in the database (loader_loads, loader_tasks, load_files), so
rerunning the same command after any interruption continues where the last run stopped.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional

import psycopg2

from . import __version__
from .checksum import checksum_ok, combine
from .config import load_settings
from .db import as_database_error, connect, mask_dsn, server_settings
from .discover import (TASK_BYTES, Plan, build_plan, encoder_plan, find_files, foreign_keys,
                       group_by_catalog)
from .errors import BadFileError, DatabaseError, LoaderError, LoadFailed, UsageError
from .finalize import (add_foreign_keys, build_indexes, expected_counts, make_logged, prepare_staging, swap,
                       verify_counts)
from .ledger import Ledger, app_name, staging_name
from .pool import WorkerPool
from .read import read_info
from .report import NullReporter
from .worker import WorkerConfig, peak_rss_kb

log = logging.getLogger(__name__)

#: A task whose worker died this many times is failed (it may be what kills them).
MAX_TASK_ATTEMPTS = 3


@dataclass(frozen=True)
class LoadOptions:
    """Everything a load needs; the CLI builds it from arguments."""

    paths: tuple
    dsn: str
    schema: Optional[str] = None
    catalog: Optional[str] = None
    prefix: Optional[str] = None
    workers: int = 2
    fmt: str = "binary"
    unlogged: bool = False
    dry_run: bool = False
    task_rows: Optional[int] = None
    task_bytes: int = TASK_BYTES
    config: Optional[str] = None
    verify_checksum: bool = True
    allow_partial: bool = False
    resume: Optional[bool] = None        # None: resume when possible; True: must resume; False: --restart
    copy_out: Optional[str] = None       # write each task's exact COPY bytes into this directory too


@dataclass
class Summary:
    """What happened, for the final table and --summary-json."""

    load_id: Optional[int] = None
    catalog: str = ""
    schema: str = ""
    files: int = 0
    fits_bytes: int = 0
    tasks: int = 0
    rows: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)
    workers: int = 0
    fmt: str = ""
    durable: bool = True
    verified: bool = False
    checksums: str = ""
    resumed: Optional[str] = None
    missing: list = field(default_factory=list)      # (file, reason) left out by --allow-partial
    dsn: str = ""
    server: dict = field(default_factory=dict)
    plan: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)       # peak RSS in MB: coordinator, largest worker

    def as_dict(self) -> dict:
        copy_s = self.phases.get("copy", 0) or 0
        total = sum(self.rows.values())
        return {**self.__dict__, "total_rows": total,
                "copy_rows_per_s": round(total / copy_s, 1) if copy_s else None,
                "copy_mb_per_s": round(self.fits_bytes / 1e6 / copy_s, 2) if copy_s else None,
                "loader_version": __version__}


# --------------------------------------------------------------------------- planning

def plan_loads(opts: LoadOptions) -> list[Plan]:
    """Find files, read headers and build one plan per catalog (no database needed)."""
    settings = load_settings(opts.config)
    files = find_files(opts.paths)
    schema = opts.schema or settings.schema
    plans = []
    for catalog, group in group_by_catalog(files, settings, opts.catalog, opts.prefix):
        infos, rejected = [], []
        for f in group:
            try:
                info = read_info(f)
            except BadFileError as exc:
                rejected.append((f, exc.reason))
                continue
            if opts.verify_checksum and info.primary_checksum_ok is False:
                rejected.append((f, "CHECKSUM of the PRIMARY HDU does not match its header (file corrupt; "
                                    "download it again, or --no-verify-checksum)"))
                continue
            infos.append(info)
        plan = build_plan(infos, catalog, schema, opts.task_bytes, opts.task_rows)
        plan.rejected[:0] = rejected
        plans.append(plan)
    return plans


def run_loads(opts: LoadOptions, reporter: Optional[NullReporter] = None) -> list[Summary]:
    """Plan, then load each catalog found among the paths; one Summary per catalog."""
    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    reporter.phase("plan")
    plans = plan_loads(opts)
    plan_s = round(time.perf_counter() - t0, 3)
    return [Coordinator(opts, plan, reporter).run(plan_s / len(plans)) for plan in plans]


def run_load(opts: LoadOptions, reporter: Optional[NullReporter] = None) -> Summary:
    """Load files of a single catalog (see run_loads for several)."""
    summaries = run_loads(opts, reporter)
    if len(summaries) != 1:
        raise LoaderError(f"the paths hold {len(summaries)} catalogs; use run_loads")
    return summaries[0]


def _reasons(items) -> str:
    return "".join(f"\n  {os.path.basename(p)}: {r}" for p, r in items)


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
        self.ledger: Optional[Ledger] = None
        self.staging: dict = {}
        self.fkeys = foreign_keys(plan)
        self.summary = Summary(workers=opts.workers, fmt=opts.fmt, durable=not opts.unlogged,
                               dsn=mask_dsn(opts.dsn or ""), catalog=plan.catalog.name, schema=plan.schema,
                               files=len(plan.files), fits_bytes=plan.total_bytes, tasks=len(plan.tasks))
        self.summary.plan = [{"table": t, "columns": len(s.all_columns), "key": list(s.key)}
                             for t, s in plan.tables.items()]
        self.summary.checksums = "verified" if opts.verify_checksum else "not verified (--no-verify-checksum)"

    def run(self, plan_s: float) -> Summary:
        """Every phase in order: timed, retried where safe, reported."""
        summary, plan = self.summary, self.plan
        summary.phases["plan"] = plan_s
        if not plan.files:
            raise LoadFailed(f"no {plan.catalog.name} file could be loaded:" + _reasons(plan.rejected),
                             "fix or re-download the named files")
        if self.opts.dry_run:
            summary.rows = {t: sum(per.values()) for t, per in expected_counts(plan).items()}
            summary.missing = [(os.path.basename(p), r) for p, r in plan.rejected]
            return summary
        try:
            self.ledger = Ledger(self.opts.dsn, plan.schema)
            summary.server = server_settings(self.ledger.conn)
            for phase in PHASES:
                if phase.when(self):
                    self._run_phase(phase)
            for name, reason in summary.missing:
                self.reporter.warn(f"published without {name}: {reason}")
            summary.memory["coordinator_peak_mb"] = round(peak_rss_kb() / 1024, 1)
            return summary
        except psycopg2.Error as exc:
            raise as_database_error(exc, "staging tables are kept; rerun the same command to resume") from exc
        finally:
            if self.ledger is not None:
                self.ledger.close()

    def _run_phase(self, phase: Phase) -> None:
        self.reporter.phase(phase.name)
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
        """Start a new load or resume the unfinished one of these tables; lock it; register files."""
        opts, plan, ledger = self.opts, self.plan, self.ledger
        ledger.ensure_tables()
        tables = sorted(plan.tables)
        old = ledger.find_unfinished(plan.catalog.name, tables)
        if old is not None and not ledger.bind(old).try_lock():
            raise UsageError(f"load {old} of {plan.catalog.name} is being run by another process",
                             "wait for it, or stop it and rerun (desi-loader status shows loads)")
        if opts.resume is True and old is None:
            raise UsageError(f"no unfinished load of {plan.catalog.name} in schema {plan.schema} to resume",
                             "run without --resume to start one")
        if old is not None and opts.resume is False:
            ledger.abort()
            self.reporter.info(f"--restart: discarded unfinished load {old}")
            old = None
        if old is not None and not ledger.staging_complete():
            # someone dropped a staging table: its done tasks are gone, and re-running them
            # would duplicate rows in the other tables of the same tasks
            ledger.abort()
            self.reporter.warn(f"staging tables of unfinished load {old} are missing; starting a new load")
            if opts.resume is True:
                raise UsageError(f"load {old} cannot be resumed: its staging tables are missing",
                                 "rerun without --resume to load from scratch")
            old = None
        if old is not None:
            self._resume(old)
        else:
            self._start()
        self.summary.load_id = ledger.load_id

    def _start(self) -> None:
        plan, ledger = self.plan, self.ledger
        ledger.start(plan.catalog.name, sorted(plan.tables), {
            "format": self.opts.fmt, "workers": self.opts.workers, "paths": [fp.info.path for fp in plan.files]})
        ledger.try_lock()
        self.staging = {t: staging_name(t, ledger.load_id) for t in plan.tables}
        ledger.register_files(plan.catalog.name, plan.files)
        prepare_staging(ledger.conn, plan.schema, self.staging, plan.tables)
        ledger.insert_tasks(plan)

    def _resume(self, load_id: int) -> None:
        ledger = self.ledger
        self.staging = {t: staging_name(t, load_id) for t in self.plan.tables}
        kept = self._reconcile()
        retried = ledger.reset_failed()
        counts = ledger.task_counts()
        self.summary.resumed = (f"resuming load {load_id}: {counts['done']} tasks done, {counts['pending']} to do"
                                + (f" ({retried} failed before, retried)" if retried else "")
                                + (f"; {kept} files kept" if kept else ""))
        self.reporter.info(self.summary.resumed)

    def _reconcile(self) -> int:
        """Match the plan's files with the unfinished load: keep, drop and add files."""
        plan, ledger = self.plan, self.ledger
        known = ledger.registered_files()
        current = {fp.info.name: fp for fp in plan.files}
        gone = [fid for name, (fid, size) in known.items()
                if name not in current or current[name].info.size != size]
        ledger.remove_files(gone, self.staging)
        new = set()
        for i, fp in enumerate(plan.files):
            entry = known.get(fp.info.name)
            if entry and entry[1] == fp.info.size:
                fp.file_id = entry[0]
            else:
                new.add(i)
        ledger.register_files(plan.catalog.name, [plan.files[i] for i in new])
        prepare_staging(ledger.conn, plan.schema, self.staging, plan.tables)
        ledger.insert_tasks(plan, new)
        return len(plan.files) - len(new)

    # ----------------------------------------------------------------- copy

    def copy(self) -> None:
        """Run a pool of workers until no task is pending."""
        opts, plan, ledger = self.opts, self.plan, self.ledger
        pending = ledger.task_counts()["pending"]
        if not pending:
            return
        if opts.copy_out:
            os.makedirs(opts.copy_out, exist_ok=True)
        cfg = WorkerConfig(plan.schema, ledger.load_id, opts.fmt, opts.verify_checksum,
                           encoder_plan(plan, self.staging), os.getpid(), opts.copy_out)
        pool = WorkerPool(opts.dsn, cfg, max(1, min(opts.workers, pending)), self.reporter, self._death)
        result = pool.run(ledger.pending_rows(), plan.total_bytes)
        self.summary.memory["worker_peak_mb"] = round(result.worker_peak_kb / 1024, 1)
        if result.first_rows_at is not None:
            # the streaming part of the copy: first rows encoded to last worker done (worker
            # start-up, about half a second each on a laptop, excluded)
            self.summary.phases["copy_stream"] = round(time.perf_counter() - result.first_rows_at, 3)
        if result.fatal:
            raise DatabaseError(result.fatal, "staging tables are kept; fix the cause and rerun the same "
                                "command to resume")

    def _death(self, task: int, why: str) -> bool:
        return self.ledger.resilient(lambda: self.ledger.record_death(task, why, MAX_TASK_ATTEMPTS))

    # ----------------------------------------------------------------- verify

    def verify(self) -> None:
        """Refuse to publish with failed files or wrong row counts (or drop them: --allow-partial)."""
        self._settle_failures()
        self.summary.files = len(self.plan.files)
        self.summary.rows = verify_counts(self.ledger.conn, self.plan.schema, self.staging,
                                          expected_counts(self.plan))
        self.summary.verified = True

    def _checksum_failures(self) -> list:
        """(path, reason) of files whose loaded bytes disagree with DATASUM/CHECKSUM."""
        sums = self.ledger.datasums()
        bad = []
        for fp in self.plan.files:
            for h in fp.info.hdus:
                if h.index not in fp.tables or h.datasum is None:
                    continue
                got = combine(sums.get((fp.file_id, h.index), []))
                if got != h.datasum:
                    bad.append((fp.info.path, f"HDU {h.index} ({h.extname}): DATASUM is {h.datasum} but the "
                                f"data sum to {got} (file corrupt; download it again, or --no-verify-checksum)"))
                elif "CHECKSUM" in h.cards and not checksum_ok(h.header_sum, got):
                    bad.append((fp.info.path, f"HDU {h.index} ({h.extname}): CHECKSUM does not match "
                                "(header or data corrupt; download it again, or --no-verify-checksum)"))
        return bad

    def _settle_failures(self) -> None:
        opts, plan, ledger = self.opts, self.plan, self.ledger
        bad = list(plan.rejected)
        names = {fp.info.name: fp for fp in plan.files}
        bad += [(names[fn].info.path if fn in names else fn, err) for fn, err in ledger.failed_tasks()]
        counts = ledger.task_counts()
        if counts["pending"]:
            bad.append(("(tasks)", f"{counts['pending']} tasks were not run (workers kept dying)"))
        if opts.verify_checksum:
            bad += self._checksum_failures()
        if not bad:
            return
        uniq = list(dict.fromkeys(bad))
        loaded = {os.path.basename(p) for p, _ in uniq} & set(names)
        if not opts.allow_partial or counts["pending"] or len(loaded) == len(plan.files):
            ledger.set_status("failed")
            raise LoadFailed(f"{len({p for p, _ in uniq})} file(s) could not be loaded; the published tables "
                             f"were not replaced (load {ledger.load_id} is kept for resume):" + _reasons(uniq),
                             "fix or re-download the named files and rerun the same command "
                             "(or --allow-partial to publish without them)")
        ledger.remove_files([names[n].file_id for n in loaded], self.staging)
        plan.files = [fp for fp in plan.files if fp.info.name not in loaded]
        self.summary.missing = [(os.path.basename(p), r) for p, r in uniq]

    # ----------------------------------------------------------------- finalize

    def per_table(self, step: Callable[[object, str], None]) -> None:
        """Run ``step(connection, table)`` for every table, tables in parallel (one connection each).

        Index builds, ANALYZE and SET LOGGED are one-backend operations per table; the
        tables of a catalog are independent, so on a many-core server they overlap.
        """
        def one(table: str) -> None:
            c = connect(self.opts.dsn, app_name("finalize", self.ledger.tag))
            try:
                step(c, table)
            finally:
                c.close()

        tables = sorted(self.plan.tables, key=lambda t: -len(self.plan.tables[t].all_columns))   # widest first
        with ThreadPoolExecutor(max_workers=max(1, min(len(tables), self.opts.workers))) as pool:
            for future in [pool.submit(one, t) for t in tables]:
                future.result()

    def index(self) -> None:
        self.per_table(lambda c, t: build_indexes(c, self.plan.schema, self.staging[t], self.plan.tables[t]))

    def durable(self) -> None:
        # before the foreign keys: a logged table may not reference an unlogged one
        self.per_table(lambda c, t: make_logged(c, self.plan.schema, self.staging[t]))

    def add_foreign_keys(self) -> None:
        add_foreign_keys(self.ledger.conn, self.plan.schema, self.staging, self.fkeys)

    def swap(self) -> None:
        swap(self.ledger.conn, self.plan.schema, self.staging, self.ledger.load_id, self.plan.catalog.name,
             self.plan.catalog.views)


#: The phases of a load, in order.  ``open`` and ``copy`` handle their own failures
#: (the pool retries tasks); the finalize phases are idempotent and retried whole.
PHASES = (
    Phase("open", Coordinator.open, retry=False),
    Phase("copy", Coordinator.copy, retry=False),
    Phase("verify", Coordinator.verify),
    Phase("index", Coordinator.index),
    Phase("durable", Coordinator.durable, when=lambda c: not c.opts.unlogged),
    Phase("foreign_keys", Coordinator.add_foreign_keys, when=lambda c: bool(c.fkeys)),
    Phase("swap", Coordinator.swap),
)
