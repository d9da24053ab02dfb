"""The coordinator and its worker processes.

Coordinator: headers -> plan -> ledger + staging tables -> start workers -> watch
progress and worker health -> verify -> indexes, ANALYZE, SET LOGGED -> swap.
Workers: open their own connection after they start, claim tasks from the ledger,
read row blocks, encode, COPY, and mark the task done in the same transaction.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import psycopg2

from . import __version__, ledger
from .config import load_settings
from .copy import copy_part
from .db import connect, is_transient, mask_dsn, server_settings
from .discover import TASK_BYTES, build_plan, encoder_plan, find_files, foreign_keys, group_by_catalog
from .errors import DatabaseError, LoaderError, LoadFailed
from .finalize import add_foreign_keys, build_indexes, expected_counts, make_logged, swap, verify_counts
from .read import read_info
from .sqlgen import create_staging

log = logging.getLogger(__name__)

#: How often a worker may die (signal, crash) before the coordinator stops replacing it.
MAX_WORKER_RESTARTS = 3
#: Retries of a task after transient database errors (connection lost, server restart ...).
TRANSIENT_RETRIES = 5


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
    dsn: str = ""
    server: dict = field(default_factory=dict)
    plan: list = field(default_factory=list)

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
    def start_copy(self, total_rows: int, total_bytes: int, workers: int) -> None: ...
    def advance(self, worker: int, rows: int, nbytes: int) -> None: ...
    def rewind(self, worker: int, rows: int, nbytes: int) -> None: ...
    def worker_state(self, worker: int, state: str) -> None: ...
    def stop_copy(self) -> None: ...
    def warn(self, message: str) -> None: ...


# --------------------------------------------------------------------------- worker

def _worker_main(worker_id: int, dsn: str, schema: str, load_id: int, fmt: str,
                 enc_plan: dict, messages) -> None:
    """Body of a worker process: claim, COPY, mark done, until no task is left."""
    name = f"{os.uname().nodename}:{os.getpid()}"
    conn = None
    handles: dict = {}
    try:
        box = [connect(dsn, f"desi-loader worker {worker_id}")]
        conn = box
        while _run_one(box, dsn, worker_id, name, schema, load_id, fmt, enc_plan, messages, handles):
            pass
        messages.put(("exit", worker_id, None))
    except DatabaseError as exc:
        messages.put(("fatal", worker_id, str(exc)))
    finally:
        for fh in handles.values():
            fh.close()
        if conn is not None and not conn[0].closed:
            conn[0].close()


def _run_one(box, dsn, worker_id, name, schema, load_id, fmt, enc_plan, messages, handles) -> bool:
    """Claim and load one task; False when none is left.  box[0] is the connection."""
    for attempt in range(TRANSIENT_RETRIES + 1):
        conn = box[0]
        sent = [0, 0]

        def on_block(rows: int, nbytes: int) -> None:
            sent[0] += rows
            sent[1] += nbytes
            messages.put(("rows", worker_id, (rows, nbytes)))

        try:
            with conn.cursor() as cur:
                row = ledger.claim_task(cur, schema, load_id)
                if row is None:
                    conn.rollback()
                    return False
                task_id, file_id, parts, nrows = row
                path, per_hdu = enc_plan[file_id]
                fh = handles.get(path) or handles.setdefault(path, open(path, "rb"))
                messages.put(("task", worker_id, (task_id, os.path.basename(path))))
                try:
                    for hdu_index, _table, start, stop in parts:
                        hdu, stage, fields = per_hdu[hdu_index]
                        copy_part(cur, schema, stage, path, fh, hdu, fields, start, stop, fmt, on_block)
                except LoaderError as exc:
                    conn.rollback()
                    messages.put(("rewind", worker_id, tuple(sent)))
                    ledger.fail_task(conn, schema, load_id, task_id, name, str(exc))
                    messages.put(("failed", worker_id, (task_id, str(exc))))
                    return True
                ledger.finish_task(cur, schema, load_id, task_id, name)
            conn.commit()
            messages.put(("done", worker_id, (task_id, nrows)))
            return True
        except psycopg2.Error as exc:
            messages.put(("rewind", worker_id, tuple(sent)))
            try:
                conn.rollback()
            except psycopg2.Error:
                pass
            if not is_transient(exc) or attempt == TRANSIENT_RETRIES:
                raise DatabaseError(f"worker {worker_id}: {str(exc).strip().splitlines()[0]} "
                                    f"(SQLSTATE {exc.pgcode})") from exc
            time.sleep(min(0.5 * 2 ** attempt, 10))
            if conn.closed:
                try:
                    box[0] = connect(dsn, f"desi-loader worker {worker_id}")
                except DatabaseError:
                    continue
    return False


# --------------------------------------------------------------------------- coordinator

def plan_loads(opts: LoadOptions) -> list:
    """Find files, read headers and build one plan per catalog (no database needed)."""
    settings = load_settings(opts.config)
    files = find_files(opts.paths)
    schema = opts.schema or settings.schema
    plans = []
    for catalog, group in group_by_catalog(files, settings, opts.catalog, opts.prefix):
        infos = [read_info(f) for f in group]
        plans.append(build_plan(infos, catalog, schema, opts.task_bytes, opts.task_rows))
    return plans


def _timed(summary: Summary, reporter, name: str):
    class _T:
        def __enter__(self):
            reporter.phase(name)
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            summary.phases[name] = round(summary.phases.get(name, 0) + time.perf_counter() - self.t, 3)
    return _T()


def _copy_phase(opts: LoadOptions, plan, load_id: int, enc_plan: dict, reporter, summary) -> None:
    ctx = mp.get_context("spawn")   # never fork a process holding a connection
    messages = ctx.Queue()
    nworkers = max(1, min(opts.workers, len(plan.tasks)))
    args = (opts.dsn, plan.schema, load_id, opts.fmt, enc_plan, messages)
    procs = {w: ctx.Process(target=_worker_main, args=(w,) + args, daemon=True) for w in range(nworkers)}
    for p in procs.values():
        p.start()
    reporter.start_copy(plan.total_rows, sum(fp.info.size for fp in plan.files), nworkers)
    inflight = {w: [0, 0] for w in procs}
    exited: set = set()
    restarts = 0
    fatal: Optional[str] = None
    try:
        while len(exited) < len(procs):
            try:
                kind, w, payload = messages.get(timeout=0.5)
            except queue_mod.Empty:
                kind = None
            if kind == "rows":
                inflight[w][0] += payload[0]
                inflight[w][1] += payload[1]
                reporter.advance(w, *payload)
            elif kind == "rewind":
                reporter.rewind(w, *payload)
                inflight[w] = [0, 0]
            elif kind in ("done",):
                inflight[w] = [0, 0]
            elif kind == "task":
                reporter.worker_state(w, f"task {payload[0]} {payload[1]}")
            elif kind == "failed":
                inflight[w] = [0, 0]
                reporter.warn(f"task {payload[0]} failed: {payload[1]}")
            elif kind == "exit":
                exited.add(w)
                reporter.worker_state(w, "finished")
            elif kind == "fatal":
                exited.add(w)
                fatal = fatal or payload
                reporter.worker_state(w, "stopped")
            for w, p in list(procs.items()):
                if w in exited or p.is_alive():
                    continue
                p.join()
                # died without saying goodbye (killed, crashed): its transaction rolled back
                reporter.rewind(w, *inflight[w])
                inflight[w] = [0, 0]
                if restarts < MAX_WORKER_RESTARTS and fatal is None:
                    restarts += 1
                    reporter.warn(f"worker {w} died (exit code {p.exitcode}); starting a new one")
                    procs[w] = ctx.Process(target=_worker_main, args=(w,) + args, daemon=True)
                    procs[w].start()
                else:
                    exited.add(w)
                    reporter.warn(f"worker {w} died (exit code {p.exitcode})")
    except KeyboardInterrupt:
        for p in procs.values():
            p.terminate()
        raise
    finally:
        for p in procs.values():
            p.join(timeout=5)
        reporter.stop_copy()
    if fatal:
        raise DatabaseError(fatal, "staging tables are kept; fix the cause and rerun")


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


def _run_plan(opts: LoadOptions, plan, reporter, plan_s: float) -> Summary:
    """Run a whole load of one plan; raises LoaderError subclasses for anything the user must fix."""
    summary = Summary(workers=opts.workers, fmt=opts.fmt, durable=not opts.unlogged,
                      dsn=mask_dsn(opts.dsn or ""))
    summary.phases["plan"] = plan_s
    summary.catalog, summary.schema = plan.catalog.name, plan.schema
    summary.files, summary.fits_bytes, summary.tasks = len(plan.files), plan.total_bytes, len(plan.tasks)
    summary.plan = [{"table": t, "columns": len(s.all_columns), "key": list(s.key)} for t, s in plan.tables.items()]
    if opts.dry_run:
        summary.rows = {t: sum(n for per in [expected_counts(plan)[t]] for n in per.values())
                        for t in plan.tables}
        return summary

    conn = connect(opts.dsn)
    try:
        summary.server = server_settings(conn)
        ledger.ensure_tables(conn, plan.schema)
        load_id = ledger.start_load(conn, plan.schema, plan.catalog.name, sorted(plan.tables),
                                    {"format": opts.fmt, "workers": opts.workers,
                                     "paths": [fp.info.path for fp in plan.files]})
        summary.load_id = load_id
        ledger.register_files(conn, plan.schema, load_id, plan.catalog.name, plan.files)
        staging = {t: f"{t}__load{load_id}" for t in plan.tables}
        with conn.cursor() as cur:
            for t, spec in plan.tables.items():
                for stmt in create_staging(plan.schema, staging[t], spec):
                    cur.execute(stmt)
        conn.commit()
        ledger.insert_tasks(conn, plan.schema, load_id, plan)

        with _timed(summary, reporter, "copy"):
            _copy_phase(opts, plan, load_id, encoder_plan(plan, staging), reporter, summary)
        counts = ledger.task_counts(conn, plan.schema, load_id)
        if counts["failed"] or counts["pending"]:
            failed = ledger.failed_tasks(conn, plan.schema, load_id)
            ledger.set_status(conn, plan.schema, load_id, "failed")
            lines = sorted({f"{fn}: {err}" for fn, err in failed})
            raise LoadFailed(f"{counts['failed']} task(s) failed, {counts['pending']} not run; "
                             "the published tables were not replaced" + "".join("\n  " + l for l in lines),
                             "fix or remove the named files and rerun")
        with _timed(summary, reporter, "verify"):
            summary.rows = verify_counts(conn, plan.schema, staging, expected_counts(plan))
            summary.verified = True
        with _timed(summary, reporter, "index"):
            for t, spec in plan.tables.items():
                build_indexes(conn, plan.schema, staging[t], spec)
            if foreign_keys(plan):
                add_foreign_keys(conn, plan.schema, staging, foreign_keys(plan))
        if not opts.unlogged:
            with _timed(summary, reporter, "durable"):
                for t in plan.tables:
                    make_logged(conn, plan.schema, staging[t])
        with _timed(summary, reporter, "swap"):
            swap(conn, plan.schema, staging, load_id, plan.catalog.name, plan.catalog.views)
        return summary
    finally:
        conn.close()
