"""The coordinator: plan, open or resume a load, run the workers, check, finalize, publish.

Coordinator: headers -> plan -> ledger + staging tables -> start workers -> watch
progress and worker health -> checksums, row counts -> indexes, foreign keys, ANALYZE,
SET LOGGED -> swap.  The load's state lives in the database (loader_loads,
loader_tasks, load_files), so rerunning the same command after any interruption
continues where the last run stopped.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import signal
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

from . import __version__, ledger
from .checksum import checksum_ok, combine
from .config import load_settings
from .db import connect, is_transient, mask_dsn, server_settings
from .discover import TASK_BYTES, build_plan, encoder_plan, find_files, foreign_keys, group_by_catalog
from .errors import BadFileError, DatabaseError, LoaderError, LoadFailed, UsageError
from .finalize import (add_foreign_keys, build_indexes, expected_counts, make_logged, prepare_staging, swap,
                       verify_counts)
from .read import read_info
from .worker import WorkerConfig, peak_rss_kb, worker_main

log = logging.getLogger(__name__)

#: How often workers may die (signal, crash) in one run before no new one is started.
MAX_WORKER_RESTARTS = 8
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


class NullReporter:
    """Progress sink interface; the CLI passes a rich or plain-text implementation."""

    def phase(self, name: str) -> None: ...
    def info(self, message: str) -> None: ...
    def start_copy(self, total_rows: int, total_bytes: int, workers: int) -> None: ...
    def advance(self, worker: int, rows: int, nbytes: int) -> None: ...
    def rewind(self, worker: int, rows: int, nbytes: int) -> None: ...
    def worker_state(self, worker: int, state: str) -> None: ...
    def stop_copy(self) -> None: ...
    def warn(self, message: str) -> None: ...


# --------------------------------------------------------------------------- planning

def plan_loads(opts: LoadOptions) -> list:
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


def run_loads(opts: LoadOptions, reporter=None) -> list:
    """Plan, then load each catalog found among the paths; one Summary per catalog."""
    reporter = reporter or NullReporter()
    t0 = time.perf_counter()
    reporter.phase("plan")
    plans = plan_loads(opts)
    plan_s = round(time.perf_counter() - t0, 3)
    return [_run_plan(opts, plan, reporter, plan_s / len(plans)) for plan in plans]


def run_load(opts: LoadOptions, reporter=None) -> Summary:
    """Load files of a single catalog (see run_loads for several)."""
    summaries = run_loads(opts, reporter)
    if len(summaries) != 1:
        raise LoaderError(f"the paths hold {len(summaries)} catalogs; use run_loads")
    return summaries[0]


def _timed(summary: Summary, reporter, name: str):
    class _T:
        def __enter__(self):
            reporter.phase(name)
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            summary.phases[name] = round(summary.phases.get(name, 0) + time.perf_counter() - self.t, 3)
    return _T()


def _reasons(items) -> str:
    return "".join(f"\n  {os.path.basename(p)}: {r}" for p, r in items)


# --------------------------------------------------------------------------- the load

def _open_load(conn, opts: LoadOptions, plan, reporter, summary) -> tuple[int, dict]:
    """Start a new load or resume the unfinished one of these tables; lock it; register files."""
    tables = sorted(plan.tables)
    old = ledger.find_unfinished(conn, plan.schema, plan.catalog.name, tables)
    if old is not None and not ledger.try_lock(conn, old):
        raise UsageError(f"load {old} of {plan.catalog.name} is being run by another process",
                         "wait for it, or stop it and rerun (desi-loader status shows loads)")
    if opts.resume is True and old is None:
        raise UsageError(f"no unfinished load of {plan.catalog.name} in schema {plan.schema} to resume",
                         "run without --resume to start one")
    staging_of = lambda lid: {t: f"{t}__load{lid}" for t in plan.tables}   # noqa: E731
    if old is not None and opts.resume is False:
        ledger.abort(conn, plan.schema, old)
        reporter.info(f"--restart: discarded unfinished load {old}")
        old = None
    if old is not None and not ledger.staging_complete(conn, plan.schema, old):
        # someone dropped a staging table: its done tasks are gone, and re-running them
        # would duplicate rows in the other tables of the same tasks
        ledger.abort(conn, plan.schema, old)
        reporter.warn(f"staging tables of unfinished load {old} are missing; starting a new load")
        if opts.resume is True:
            raise UsageError(f"load {old} cannot be resumed: its staging tables are missing",
                             "rerun without --resume to load from scratch")
        old = None
    if old is not None:
        staging = staging_of(old)
        kept = _reconcile(conn, plan, old, staging)
        retried = ledger.reset_failed(conn, plan.schema, old)
        counts = ledger.task_counts(conn, plan.schema, old)
        summary.resumed = (f"resuming load {old}: {counts['done']} tasks done, {counts['pending']} to do"
                           + (f" ({retried} failed before, retried)" if retried else "")
                           + (f"; {kept} files kept" if kept else ""))
        reporter.info(summary.resumed)
        return old, staging
    load_id = ledger.start_load(conn, plan.schema, plan.catalog.name, tables,
                                {"format": opts.fmt, "workers": opts.workers,
                                 "paths": [fp.info.path for fp in plan.files]})
    ledger.try_lock(conn, load_id)
    staging = staging_of(load_id)
    ledger.register_files(conn, plan.schema, load_id, plan.catalog.name, plan.files)
    prepare_staging(conn, plan.schema, staging, plan.tables)
    ledger.insert_tasks(conn, plan.schema, load_id, plan)
    return load_id, staging


def _reconcile(conn, plan, load_id: int, staging: dict) -> int:
    """Match the plan's files with the unfinished load: keep, drop and add files."""
    known = ledger.registered_files(conn, plan.schema, load_id)
    current = {fp.info.name: fp for fp in plan.files}
    gone = [fid for name, (fid, size) in known.items()
            if name not in current or current[name].info.size != size]
    ledger.remove_files(conn, plan.schema, load_id, gone, staging)
    new = set()
    for i, fp in enumerate(plan.files):
        entry = known.get(fp.info.name)
        if entry and entry[1] == fp.info.size:
            fp.file_id = entry[0]
        else:
            new.add(i)
    ledger.register_files(conn, plan.schema, load_id, plan.catalog.name, [plan.files[i] for i in new])
    prepare_staging(conn, plan.schema, staging, plan.tables)
    ledger.insert_tasks(conn, plan.schema, load_id, plan, new)
    return len(plan.files) - len(new)


def _copy_phase(opts: LoadOptions, plan, load_id: int, enc_plan: dict, box: list, reporter,
                summary: Summary) -> None:
    """Run workers until no task is pending; box[0] is the coordinator's connection (may be renewed)."""
    conn = box[0]
    pending = ledger.task_counts(conn, plan.schema, load_id)["pending"]
    if not pending:
        return
    ctx = mp.get_context("spawn")   # never fork a process holding a connection
    messages = ctx.Queue()
    cfg = WorkerConfig(opts.dsn, plan.schema, load_id, opts.fmt, opts.verify_checksum, enc_plan, os.getpid())
    fd, cfg_path = tempfile.mkstemp(prefix="desi-loader-", suffix=".pickle")
    with os.fdopen(fd, "wb") as f:      # private (0600): it holds the DSN
        pickle.dump(cfg, f, protocol=pickle.HIGHEST_PROTOCOL)
    nworkers = max(1, min(opts.workers, pending))

    def spawn(w: int):
        # Children start with SIGINT blocked (the mask survives exec) and ignore it from
        # worker_main on: Ctrl-C is the coordinator's business.  Here a Ctrl-C is only noted
        # while a child is being started (an interrupt in the middle of writing its pickled
        # arguments would leave it half-started), then raised.
        noted: list = []
        handler = signal.signal(signal.SIGINT, lambda *_: noted.append(True))
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            procs[w] = ctx.Process(target=worker_main, args=(w, cfg_path, messages), daemon=True)
            procs[w].start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            signal.signal(signal.SIGINT, handler)
        if noted:
            raise KeyboardInterrupt

    procs: dict = {}
    first_rows: Optional[float] = None
    todo = ledger.pending_rows(conn, plan.schema, load_id)
    inflight = {w: [0, 0] for w in range(nworkers)}
    current: dict = {}
    exited: set = set()
    restarts = 0
    fatal: Optional[str] = None
    try:
        for w in range(nworkers):
            spawn(w)
        reporter.start_copy(todo, sum(fp.info.size for fp in plan.files), nworkers)
        while len(exited) < len(procs):
            try:
                kind, w, payload = messages.get(timeout=0.5)
            except queue_mod.Empty:
                kind = None
            if kind == "rows":
                if first_rows is None:
                    first_rows = time.perf_counter()
                inflight[w][0] += payload[0]
                inflight[w][1] += payload[1]
                reporter.advance(w, *payload)
            elif kind == "rewind":
                reporter.rewind(w, *payload)
                inflight[w] = [0, 0]
            elif kind == "done":
                inflight[w] = [0, 0]
                current.pop(w, None)
            elif kind == "task":
                current[w] = payload[0]
                reporter.worker_state(w, f"task {payload[0]} {payload[1]}")
            elif kind == "retry":
                reporter.warn(f"worker {w}: {payload}")
            elif kind == "failed":
                inflight[w] = [0, 0]
                current.pop(w, None)
                reporter.warn(f"task {payload[0]} failed: {payload[1]}")
            elif kind == "exit":
                exited.add(w)
                summary.memory["worker_peak_mb"] = max(summary.memory.get("worker_peak_mb", 0),
                                                       round(payload / 1024, 1))
                reporter.worker_state(w, "finished")
            elif kind == "fatal":
                exited.add(w)
                fatal = fatal or payload
                reporter.worker_state(w, "stopped")
            for w, p in list(procs.items()):
                if w in exited or p.is_alive():
                    continue
                p.join()
                # died without a word (killed, crashed): its transaction rolled back
                reporter.rewind(w, *inflight[w])
                inflight[w] = [0, 0]
                task = current.pop(w, None)
                why = f"worker died (exit code {p.exitcode}) while loading this task"
                conn = box[0] = _fresh(conn, opts.dsn, load_id)
                if task is not None and ledger.record_death(conn, plan.schema, load_id, task, why,
                                                            MAX_TASK_ATTEMPTS):
                    reporter.warn(f"task {task} failed: its worker died {MAX_TASK_ATTEMPTS} times")
                if restarts < MAX_WORKER_RESTARTS and fatal is None:
                    restarts += 1
                    reporter.warn(f"worker {w} died (exit code {p.exitcode}); task {task} goes back to "
                                  "the queue, starting a new worker")
                    spawn(w)
                else:
                    exited.add(w)
                    reporter.warn(f"worker {w} died (exit code {p.exitcode})")
    except KeyboardInterrupt:
        for p in procs.values():
            if p.pid is not None:
                p.terminate()
        raise
    finally:
        for p in procs.values():
            if p.pid is not None:
                p.join(timeout=10)
        os.unlink(cfg_path)
        reporter.stop_copy()
    if first_rows is not None:
        # the streaming part of the copy: first rows encoded to last worker done (worker
        # start-up, about half a second each on a laptop, excluded)
        summary.phases["copy_stream"] = round(time.perf_counter() - first_rows, 3)
    if fatal:
        raise DatabaseError(fatal, "staging tables are kept; fix the cause and rerun the same command "
                            "to resume")


def _fresh(conn, dsn: str, load_id: int):
    """The coordinator's connection, re-opened (and the load re-locked) if the server dropped it."""
    import psycopg2
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        conn.commit()
        return conn
    except psycopg2.Error:
        try:
            conn.close()
        except psycopg2.Error:
            pass
    for attempt in range(8):
        try:
            new = connect(dsn)
            if not ledger.try_lock(new, load_id):
                raise UsageError(f"load {load_id} was taken over by another process while the server restarted")
            return new
        except DatabaseError:
            time.sleep(min(0.5 * 2 ** attempt, 16))
    return connect(dsn)


def _transient(exc: BaseException) -> bool:
    import psycopg2
    if isinstance(exc, DatabaseError) and isinstance(exc.__cause__, psycopg2.Error):
        exc = exc.__cause__                  # connect() failed while the server restarts
    return isinstance(exc, psycopg2.Error) and is_transient(exc)


def _resilient(box: list, opts: LoadOptions, load_id: int, step, attempts: int = 7):
    """Run ``step(connection)``; after a transient error (server restart, lost connection)
    reconnect, re-lock the load and run it again.  Every finalize step is idempotent."""
    for attempt in range(attempts):
        try:
            return step(box[0])
        except (Exception, DatabaseError) as exc:
            if not _transient(exc) or attempt == attempts - 1:
                raise
            log.warning("finalize step interrupted (%s); retrying", str(exc).strip().splitlines()[0])
            time.sleep(min(0.5 * 2 ** attempt, 16))
            box[0] = _fresh(box[0], opts.dsn, load_id)


def _checksum_failures(conn, plan, load_id: int) -> list:
    """(path, reason) of files whose loaded bytes disagree with DATASUM/CHECKSUM."""
    sums = ledger.datasums(conn, plan.schema, load_id)
    bad = []
    for fp in plan.files:
        for h in fp.info.hdus:
            if h.index not in fp.tables or h.datasum is None:
                continue
            got = combine(sums.get((fp.file_id, h.index), []))
            if got != h.datasum:
                bad.append((fp.info.path, f"HDU {h.index} ({h.extname}): DATASUM is {h.datasum} but the data "
                            f"sum to {got} (file corrupt; download it again, or --no-verify-checksum)"))
            elif "CHECKSUM" in h.cards and not checksum_ok(h.header_sum, got):
                bad.append((fp.info.path, f"HDU {h.index} ({h.extname}): CHECKSUM does not match "
                            "(header or data corrupt; download it again, or --no-verify-checksum)"))
    return bad


def _settle_failures(conn, opts, plan, load_id: int, staging: dict, summary) -> None:
    """Refuse to publish with failed files, or (--allow-partial) take them out and go on."""
    bad = list(plan.rejected)
    failed = ledger.failed_tasks(conn, plan.schema, load_id)
    names = {fp.info.name: fp for fp in plan.files}
    bad += [(names[fn].info.path if fn in names else fn, err) for fn, err in failed]
    counts = ledger.task_counts(conn, plan.schema, load_id)
    if counts["pending"]:
        bad.append(("(tasks)", f"{counts['pending']} tasks were not run (workers kept dying)"))
    if opts.verify_checksum:
        bad += _checksum_failures(conn, plan, load_id)
    if not bad:
        return
    uniq = list(dict.fromkeys(bad))
    loaded = {os.path.basename(p) for p, _ in uniq} & set(names)
    if not opts.allow_partial or counts["pending"] or len(loaded) == len(plan.files):
        ledger.set_status(conn, plan.schema, load_id, "failed")
        raise LoadFailed(f"{len({p for p, _ in uniq})} file(s) could not be loaded; the published tables "
                         f"were not replaced (load {load_id} is kept for resume):" + _reasons(uniq),
                         "fix or re-download the named files and rerun the same command "
                         "(or --allow-partial to publish without them)")
    ledger.remove_files(conn, plan.schema, load_id, [names[n].file_id for n in loaded], staging)
    plan.files = [fp for fp in plan.files if fp.info.name not in loaded]
    summary.missing = [(os.path.basename(p), r) for p, r in uniq]


def _per_table(opts: LoadOptions, plan, step) -> None:
    """Run ``step(connection, table)`` for every table, tables in parallel (one connection each).

    Index builds, ANALYZE and SET LOGGED are one-backend operations per table; the
    tables of a catalog are independent, so on a many-core server they overlap.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(table: str) -> None:
        c = connect(opts.dsn, "desi-loader finalize")
        try:
            step(c, table)
        finally:
            c.close()

    tables = sorted(plan.tables, key=lambda t: -len(plan.tables[t].all_columns))   # widest first
    with ThreadPoolExecutor(max_workers=max(1, min(len(tables), opts.workers))) as pool:
        for future in [pool.submit(one, t) for t in tables]:
            future.result()


def _run_plan(opts: LoadOptions, plan, reporter, plan_s: float) -> Summary:
    """Run the load of one plan; raises LoaderError subclasses for anything the user must fix."""
    summary = Summary(workers=opts.workers, fmt=opts.fmt, durable=not opts.unlogged,
                      dsn=mask_dsn(opts.dsn or ""), catalog=plan.catalog.name, schema=plan.schema)
    summary.phases["plan"] = plan_s
    summary.files, summary.fits_bytes, summary.tasks = len(plan.files), plan.total_bytes, len(plan.tasks)
    summary.plan = [{"table": t, "columns": len(s.all_columns), "key": list(s.key)} for t, s in plan.tables.items()]
    summary.checksums = "verified" if opts.verify_checksum else "not verified (--no-verify-checksum)"
    if not plan.files:
        raise LoadFailed(f"no {plan.catalog.name} file could be loaded:" + _reasons(plan.rejected),
                         "fix or re-download the named files")
    if opts.dry_run:
        summary.rows = {t: sum(per.values()) for t, per in expected_counts(plan).items()}
        summary.missing = [(os.path.basename(p), r) for p, r in plan.rejected]
        return summary

    conn = connect(opts.dsn)
    box = [conn]          # the coordinator's connection; renewed after a server restart
    try:
        summary.server = server_settings(conn)
        ledger.ensure_tables(conn, plan.schema)
        load_id, staging = _open_load(conn, opts, plan, reporter, summary)
        summary.load_id = load_id
        with _timed(summary, reporter, "copy"):
            _copy_phase(opts, plan, load_id, encoder_plan(plan, staging), box, reporter, summary)
        box[0] = _fresh(box[0], opts.dsn, load_id)
        with _timed(summary, reporter, "verify"):
            _resilient(box, opts, load_id, lambda c: _settle_failures(c, opts, plan, load_id, staging, summary))
            summary.files = len(plan.files)
            summary.rows = _resilient(box, opts, load_id, lambda c: verify_counts(
                c, plan.schema, staging, expected_counts(plan)))
            summary.verified = True
        with _timed(summary, reporter, "index"):
            _resilient(box, opts, load_id, lambda _: _per_table(
                opts, plan, lambda c, t: build_indexes(c, plan.schema, staging[t], plan.tables[t])))
        if not opts.unlogged:
            # before the foreign keys: a logged table may not reference an unlogged one
            with _timed(summary, reporter, "durable"):
                _resilient(box, opts, load_id, lambda _: _per_table(
                    opts, plan, lambda c, t: make_logged(c, plan.schema, staging[t])))
        if foreign_keys(plan):
            with _timed(summary, reporter, "foreign_keys"):
                _resilient(box, opts, load_id, lambda c: add_foreign_keys(c, plan.schema, staging,
                                                                         foreign_keys(plan)))
        with _timed(summary, reporter, "swap"):
            _resilient(box, opts, load_id, lambda c: swap(c, plan.schema, staging, load_id, plan.catalog.name,
                                                          plan.catalog.views))
        for name, reason in summary.missing:
            reporter.warn(f"published without {name}: {reason}")
        summary.memory["coordinator_peak_mb"] = round(peak_rss_kb() / 1024, 1)
        return summary
    except LoaderError:
        raise
    except Exception as exc:
        import psycopg2
        if isinstance(exc, psycopg2.Error):
            raise DatabaseError(f"{str(exc).strip().splitlines()[0]}"
                                + (f" (SQLSTATE {exc.pgcode})" if exc.pgcode else ""),
                                "staging tables are kept; rerun the same command to resume") from exc
        raise
    finally:
        for c in (conn, box[0]):
            if not c.closed:
                c.close()
