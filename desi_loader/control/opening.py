"""Opening a load: start a new one, resume an abandoned one, or join one that runs.

Every process running the same command (one per HPC node, say) opens the load under
one transaction-level advisory lock per schema, so exactly one of them plans it (load
row, manifest, staging tables, tasks: one transaction) and the others find it:

- nobody works on it (its exclusive lock is free): **resume** -- reconcile the files
  with the plan (kept, gone, new), retry failed tasks;
- other processes copy (they hold its lock shared): **join** -- the same files are
  required, no file is added or removed under their feet;
- its finalizer holds it alone: **wait** for the outcome (coordinator.Coordinator.await_outcome).

Sessions of this load whose client process provably died are ended first, so a rerun
right after a kill does not find the load held by its own ghosts.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, TYPE_CHECKING

from ..fits.discover import Plan
from ..errors import UsageError
from . import publishing
from .load import Load
from .publishing import Publishing, same_file
from .staging import prepare_staging
from .ledger import Ledger, Tx, staging_name
from ..report import NullReporter

if TYPE_CHECKING:
    from .options import LoadOptions
    from .target import Server


@dataclass(frozen=True)
class Opening:
    """What opening found and did (the open load itself is a load.Load)."""

    load_id: int
    how: str                          # started | resumed | joined | finalizing | nothing
    publishing: Publishing            # Swap, or Merge (incremental)
    message: Optional[str] = None
    durable_path: str = ""            # how staging becomes durable, and why
    unchanged: tuple = ()             # paths of published files skipped: unchanged
    fits_bytes: int = 0               # of the files the load opened with (open_load fills it in)
    tasks: int = 0                    # likewise


@dataclass(frozen=True)
class _Asked:
    """What every step of the opening takes besides the plan: the ledger, options, target."""

    ledger: Ledger
    opts: LoadOptions
    target: Server

    def load(self, plan: Plan, how: Publishing, staging_tables: dict, file_ids: dict, mode: str) -> Load:
        return Load(self.opts, plan, self.ledger, self.target, how, staging_tables, file_ids, mode)


def open_load(ledger: Ledger, plan: Plan, opts: LoadOptions, target: Server,
              reporter: NullReporter) -> tuple[Load, Opening]:
    """Start, resume or join the load of ``plan``'s tables (see the module docstring): the
    open load, and how it was opened."""
    load, opening = _open(_Asked(ledger, opts, target), plan, reporter)
    return load, replace(opening, fits_bytes=load.plan.total_bytes, tasks=len(load.plan.tasks))


def _open(asked: _Asked, plan: Plan, reporter: NullReporter) -> tuple[Load, Opening]:
    ledger, opts = asked.ledger, asked.opts
    ledger.ensure_tables()
    with ledger.transaction() as tx:
        ledger.lock_open(tx=tx)
        old = ledger.find_unfinished(plan.catalog.name, sorted(plan.tables), tx=tx)
        if old is None:
            if opts.resume is True or opts.join:
                raise UsageError(f"no unfinished load of {plan.catalog.name} in schema {plan.schema} to "
                                 f"{'join' if opts.join else 'resume'}", "run without --resume/--join to start one")
            return _fresh(asked, plan, tx=tx)
        ledger.bind(old, tx=tx)
        ended = ledger.end_orphans(tx=tx)
        if ended:
            reporter.info(f"ended the server sessions of load {old} left by dead processes {', '.join(ended)}")
        if ledger.try_lock(tx=tx):
            try:
                return _take_over(asked, plan, reporter, tx=tx)
            finally:
                ledger.unlock(tx=tx)
        return _join(asked, plan, tx=tx)


def _fresh(asked: _Asked, plan: Plan, tx: Tx) -> tuple[Load, Opening]:
    """A new load, incremental when files of these tables are published (or nothing to do)."""
    how = publishing.choose(asked.ledger, plan, asked.opts, tx=tx)
    plan, skipped = how.narrow(asked.ledger, plan, tx=tx)
    if not plan.files:
        return asked.load(plan, how, {}, {}, "unlogged"), Opening(
            0, "nothing", how, f"all {len(skipped)} files are published and unchanged: nothing to load",
            unchanged=tuple(skipped))
    return _start(asked, plan, how, skipped, tx)


def _staging_tables(plan: Plan, load_id: int) -> dict:
    return {t: staging_name(t, load_id) for t in plan.tables}


def _start(asked: _Asked, plan: Plan, how: Publishing, skipped: list, tx: Tx) -> tuple[Load, Opening]:
    """A new load: its row, the manifest, staging tables and tasks, in the opening transaction."""
    ledger, opts = asked.ledger, asked.opts
    mode, why = how.staging(opts, ledger.setting("wal_level", tx=tx))
    ledger.start(plan.catalog.name, sorted(plan.tables), {
        "format": opts.fmt, "workers": opts.workers, "paths": [fp.info.path for fp in plan.files],
        "staging": mode, "durable_path": why, "incremental": how.incremental}, tx=tx)
    staging_tables = _staging_tables(plan, ledger.bound_id())
    file_ids = ledger.register_files(plan.catalog.name, list(plan.files), tx=tx)
    prepare_staging(tx.conn, plan.schema, staging_tables, plan.tables, asked.target, logged=mode == "logged")
    ledger.insert_tasks(plan.tasks, file_ids, tx=tx)
    if mode == "unlogged":
        ledger.arm_canary(tx=tx)
    ledger.hold_shared(tx=tx)
    return asked.load(plan, how, staging_tables, file_ids, mode), Opening(
        ledger.bound_id(), "started", how, how.message(plan, skipped), durable_path=why, unchanged=tuple(skipped))


def _recorded(asked: _Asked, plan: Plan, tx: Tx) -> tuple[Publishing, Plan, list, dict]:
    """An unfinished load as its ledger row says: how it publishes, the plan of the files it
    loads and the published, unchanged ones it skips, how its staging becomes durable."""
    options = asked.ledger.options(tx=tx)
    how = publishing.recorded(options)
    plan, unchanged = how.narrow(asked.ledger, plan, tx=tx)
    mode = {"staging": options.get("staging", "unlogged"), "durable_path": options.get("durable_path", "")}
    return how, plan, unchanged, mode


def _take_over(asked: _Asked, plan: Plan, reporter: NullReporter, tx: Tx) -> tuple[Load, Opening]:
    """Nobody works on the unfinished load: restart it, or resume it with this plan's files."""
    ledger, opts, name = asked.ledger, asked.opts, plan.catalog.name
    old = ledger.bound_id()
    if opts.join:
        raise UsageError(f"load {old} of {name} is not running (no process works on it)",
                         "run without --join to resume it")
    if opts.resume is False:
        ledger.abort(tx=tx)
        reporter.info(f"--restart: discarded unfinished load {old}")
        return _fresh(asked, plan, tx=tx)
    if not ledger.staging_complete(tx=tx):
        # someone dropped a staging table: its done tasks are gone, and re-running them
        # would duplicate rows in the other tables of the same tasks
        if opts.resume is True:
            raise UsageError(f"load {old} cannot be resumed: its staging tables are missing",
                             "rerun without --resume to load from scratch")
        ledger.abort(tx=tx)
        reporter.warn(f"staging tables of unfinished load {old} are missing; starting a new load")
        return _fresh(asked, plan, tx=tx)
    how, plan, unchanged, mode = _recorded(asked, plan, tx)
    staging_tables = _staging_tables(plan, old)
    file_ids, kept = _reconcile(ledger, plan, staging_tables, asked.target, mode["staging"] == "logged", tx=tx)
    retried = ledger.reset_failed(tx=tx)
    counts = ledger.task_counts(tx=tx)
    message = (f"resuming load {old}: {counts['done']} tasks done, {counts['pending']} to do"
               + (f" ({retried} failed before, retried)" if retried else "")
               + (f"; {kept} files kept" if kept else ""))
    ledger.hold_shared(tx=tx)
    return asked.load(plan, how, staging_tables, file_ids, mode["staging"]), Opening(
        old, "resumed", how, message, mode["durable_path"], tuple(unchanged))


def _reconcile(ledger: Ledger, plan: Plan, staging_tables: dict, target: Server, logged: bool,
               tx: Tx) -> tuple[dict, int]:
    """Match the plan's files with the unfinished load: keep, drop and add files.

    A file is the same when its identity is (a re-downloaded or re-processed file of the
    same name and size has another mtime or other sums): its rows and tasks are kept.
    Returns ({file name: file_id}, files kept).
    """
    known = ledger.registered_files(tx=tx)
    current = {fp.info.name: fp for fp in plan.files}
    gone = [fid for name, (fid, identity) in known.items()
            if name not in current or not same_file(identity, current[name].info)]
    ledger.remove_files(gone, staging_tables, tx=tx)
    kept = {name: known[name][0] for name, fp in current.items()
            if name in known and same_file(known[name][1], fp.info)}
    new = [fp for fp in plan.files if fp.info.name not in kept]
    file_ids = {**kept, **ledger.register_files(plan.catalog.name, new, tx=tx)}
    prepare_staging(tx.conn, plan.schema, staging_tables, plan.tables, target, logged)
    ledger.insert_tasks([t for t in plan.tasks if t.file not in kept], file_ids, tx=tx)
    return file_ids, len(kept)


def _join(asked: _Asked, plan: Plan, tx: Tx) -> tuple[Load, Opening]:
    """Other processes work on the load: copy along with them (same files), or await its finalizer."""
    ledger, name = asked.ledger, plan.catalog.name
    old = ledger.bound_id()
    holders = ", ".join(ledger.holders(tx=tx)) or "another process"
    if asked.opts.resume is False:
        raise UsageError(f"load {old} of {name} is being run by {holders}; --restart would "
                         "discard their work", "stop them first (desi-loader status shows who), then rerun")
    how, plan, unchanged, mode = _recorded(asked, plan, tx)
    known = ledger.registered_files(tx=tx)
    mine = {fp.info.name: fp for fp in plan.files}
    differ = sorted(set(known) ^ set(mine)) + sorted(n for n in set(known) & set(mine)
                                                    if not same_file(known[n][1], mine[n].info))
    if differ:
        raise UsageError(f"load {old} of {name}, run by {holders}, loads other files than these "
                         f"(first difference: {differ[0]})",
                         "give every process the same paths, or wait until that load is published")
    load = asked.load(plan, how, _staging_tables(plan, old), {n: known[n][0] for n in mine}, mode["staging"])
    if not ledger.hold_shared(tx=tx):
        return load, Opening(old, "finalizing", how, f"load {old} is being finalized by {holders}",
                             mode["durable_path"], tuple(unchanged))
    counts = ledger.task_counts(tx=tx)
    return load, Opening(old, "joined", how, f"joining load {old} (run by {holders}): "
                         f"{counts['done']} tasks done, {counts['pending']} to do", mode["durable_path"],
                         tuple(unchanged))
