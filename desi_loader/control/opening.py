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

from dataclasses import dataclass, field
from typing import Optional, TYPE_CHECKING

from ..fits.discover import Plan, narrowed
from ..errors import UsageError
from .staging import prepare_staging
from .ledger import Ledger, Tx, staging_name
from ..report import NullReporter

if TYPE_CHECKING:
    from ..control.options import LoadOptions


@dataclass
class Opening:
    """What opening found and did."""

    load_id: int
    plan: Plan                        # the plan of the files this load loads (unchanged ones left out)
    staging_tables: dict              # table -> staging table
    how: str                          # started | resumed | joined | finalizing | nothing
    message: Optional[str] = None
    staging_mode: str = "unlogged"    # unlogged (SET LOGGED in the durable phase) | logged
    durable_path: str = ""            # why
    incremental: bool = False         # merge into the published tables instead of replacing them
    unchanged: list = field(default_factory=list)   # paths of published files skipped: unchanged
    file_ids: dict = field(default_factory=dict)    # file name -> file_id of the load's files


def staging_mode(opts: LoadOptions, wal_level: str) -> tuple[str, str]:
    """How staging becomes durable on this server: (mode, reason for the summary).

    Measured (scripts/bench.py --only whole; 100,000 FastSpecFit galaxies, 2 workers, 2
    cores, PostgreSQL 18): COPY into logged staging took 39.3 s at wal_level=minimal and
    40.0 s at replica; UNLOGGED staging + SET LOGGED 42.9 s and 48.1 s (SET LOGGED rewrites
    every table, and at replica writes it all to WAL once more).  Logged staging is also
    the one a server crash cannot empty.  So it is the default at every WAL level;
    --staging unlogged forces the other path.
    """
    if opts.unlogged:
        return "unlogged", "--unlogged: the tables stay UNLOGGED (a server crash empties them)"
    if opts.staging_mode == "unlogged":
        return "unlogged", "--staging unlogged: UNLOGGED staging, then SET LOGGED"
    if opts.staging_mode == "logged":
        return "logged", "--staging logged: COPY into logged staging (WAL once, nothing lost in a crash)"
    return "logged", (f"wal_level={wal_level}: COPY into logged staging writes the data to WAL once, cheaper "
                      "than UNLOGGED staging + SET LOGGED (which rewrites every table) as measured by the "
                      "benchmark, and a server crash loses nothing")


def incremental(ledger: Ledger, plan: Plan, opts: LoadOptions, tx: Tx) -> tuple[bool, Plan, list]:
    """Decide how the load publishes, and the plan of only the files to load.

    With files of these tables already published (and no --replace-all) the load is
    incremental: published files whose identity did not change are skipped, new files are
    added and changed ones replace their old rows; files not named stay.  Returns
    (incremental, the plan of the files to load, paths of the unchanged files skipped).
    """
    published = {} if opts.replace_all else ledger.published_files(sorted(plan.tables), tx=tx)
    if not published:
        return False, plan, []
    return (True, *_drop_unchanged(plan, opts, published))


def _drop_unchanged(plan: Plan, opts: LoadOptions, published: dict) -> tuple[Plan, list]:
    """The plan of the files that are not published as they are, and the paths of the others."""
    unchanged = {fp.info.name for fp in plan.files
                 if fp.info.name in published and same_file(published[fp.info.name][1], fp.info)}
    skipped = [fp.info.path for fp in plan.files if fp.info.name in unchanged]
    keep = {fp.info.name for fp in plan.files} - unchanged
    return narrowed(plan, keep, opts.task_bytes, opts.task_rows), skipped


def open_load(ledger: Ledger, plan: Plan, opts: LoadOptions, reporter: NullReporter) -> Opening:
    """Start, resume or join the load of ``plan``'s tables (see the module docstring)."""
    ledger.ensure_tables()
    with ledger.transaction() as tx:
        ledger.lock_open(tx=tx)
        old = ledger.find_unfinished(plan.catalog.name, sorted(plan.tables), tx=tx)
        if old is None:
            if opts.resume is True or opts.join:
                raise UsageError(f"no unfinished load of {plan.catalog.name} in schema {plan.schema} to "
                                 f"{'join' if opts.join else 'resume'}", "run without --resume/--join to start one")
            return _fresh(ledger, plan, opts, tx=tx)
        ledger.bind(old, tx=tx)
        ended = ledger.end_orphans(tx=tx)
        if ended:
            reporter.info(f"ended the server sessions of load {old} left by dead processes {', '.join(ended)}")
        if ledger.try_lock(tx=tx):
            try:
                return _take_over(ledger, plan, opts, reporter, tx=tx)
            finally:
                ledger.unlock(tx=tx)
        return _join(ledger, plan, opts, tx=tx)


def _fresh(ledger: Ledger, plan: Plan, opts: LoadOptions, tx: Tx) -> Opening:
    """A new load, incremental when files of these tables are published (or nothing to do)."""
    inc, plan, skipped = incremental(ledger, plan, opts, tx=tx)
    if not plan.files:
        return Opening(0, plan, {}, "nothing", f"all {len(skipped)} files are published and unchanged: "
                       "nothing to load", incremental=True, unchanged=skipped)
    return _start(ledger, plan, opts, tx, inc, skipped)


def _staging_tables(plan: Plan, load_id: int) -> dict:
    return {t: staging_name(t, load_id) for t in plan.tables}


def _start(ledger: Ledger, plan: Plan, opts: LoadOptions, tx: Tx, inc: bool = False,
           skipped: Optional[list] = None) -> Opening:
    """A new load: its row, the manifest, staging tables and tasks, in the opening transaction."""
    if inc:   # rows go into the published (logged) tables by INSERT: staging is scratch space
        mode, why = "unlogged", "incremental: rows are inserted into the published tables (WAL-logged once)"
    else:
        mode, why = staging_mode(opts, ledger.setting("wal_level", tx=tx))
    ledger.start(plan.catalog.name, sorted(plan.tables), {
        "format": opts.fmt, "workers": opts.workers, "paths": [fp.info.path for fp in plan.files],
        "staging": mode, "durable_path": why, "incremental": inc}, tx=tx)
    staging_tables = _staging_tables(plan, ledger.bound_id())
    file_ids = ledger.register_files(plan.catalog.name, list(plan.files), tx=tx)
    prepare_staging(tx.conn, plan.schema, staging_tables, plan.tables, logged=mode == "logged")
    ledger.insert_tasks(plan.tasks, file_ids, tx=tx)
    if mode == "unlogged":
        ledger.arm_canary(tx=tx)
    ledger.hold_shared(tx=tx)
    skipped = skipped or []
    message = f"incremental load: {len(plan.files)} new or changed file(s), {len(skipped)} unchanged" if inc else None
    return Opening(ledger.bound_id(), plan, staging_tables, "started", message, staging_mode=mode, durable_path=why,
                   incremental=inc, unchanged=skipped, file_ids=file_ids)


def _mode(ledger: Ledger, tx: Tx) -> dict:
    options = ledger.options(tx=tx)
    return {"staging_mode": options.get("staging", "unlogged"), "durable_path": options.get("durable_path", ""),
            "incremental": bool(options.get("incremental"))}


def _skip_published(ledger: Ledger, plan: Plan, opts: LoadOptions, inc: bool, tx: Tx) -> tuple[Plan, list]:
    """For an incremental load being resumed or joined: the plan without the published,
    unchanged files, and their paths."""
    return _drop_unchanged(plan, opts, ledger.published_files(sorted(plan.tables), tx=tx)) if inc else (plan, [])


def _take_over(ledger: Ledger, plan: Plan, opts: LoadOptions, reporter: NullReporter, tx: Tx) -> Opening:
    """Nobody works on the unfinished load: restart it, or resume it with this plan's files."""
    old = ledger.bound_id()
    if opts.join:
        raise UsageError(f"load {old} of {plan.catalog.name} is not running (no process works on it)",
                         "run without --join to resume it")
    if opts.resume is False:
        ledger.abort(tx=tx)
        reporter.info(f"--restart: discarded unfinished load {old}")
        return _fresh(ledger, plan, opts, tx=tx)
    if not ledger.staging_complete(tx=tx):
        # someone dropped a staging table: its done tasks are gone, and re-running them
        # would duplicate rows in the other tables of the same tasks
        if opts.resume is True:
            raise UsageError(f"load {old} cannot be resumed: its staging tables are missing",
                             "rerun without --resume to load from scratch")
        ledger.abort(tx=tx)
        reporter.warn(f"staging tables of unfinished load {old} are missing; starting a new load")
        return _fresh(ledger, plan, opts, tx=tx)
    staging_tables = _staging_tables(plan, old)
    mode = _mode(ledger, tx=tx)
    plan, unchanged = _skip_published(ledger, plan, opts, mode["incremental"], tx=tx)
    file_ids, kept = _reconcile(ledger, plan, staging_tables, mode["staging_mode"] == "logged", tx=tx)
    retried = ledger.reset_failed(tx=tx)
    counts = ledger.task_counts(tx=tx)
    message = (f"resuming load {old}: {counts['done']} tasks done, {counts['pending']} to do"
               + (f" ({retried} failed before, retried)" if retried else "")
               + (f"; {kept} files kept" if kept else ""))
    ledger.hold_shared(tx=tx)
    return Opening(old, plan, staging_tables, "resumed", message, unchanged=unchanged, file_ids=file_ids, **mode)


def same_file(identity: dict, info) -> bool:
    """True when a registered file's identity (size, mtime, declared sums) matches this one's."""
    mine = info.identity
    return all(identity.get(k, mine[k]) == mine[k] for k in ("size", "mtime_ns", "sums"))


def _reconcile(ledger: Ledger, plan: Plan, staging_tables: dict, logged: bool, tx: Tx) -> tuple[dict, int]:
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
    prepare_staging(tx.conn, plan.schema, staging_tables, plan.tables, logged)
    ledger.insert_tasks([t for t in plan.tasks if t.file not in kept], file_ids, tx=tx)
    return file_ids, len(kept)


def _join(ledger: Ledger, plan: Plan, opts: LoadOptions, tx: Tx) -> Opening:
    """Other processes work on the load: copy along with them (same files), or await its finalizer."""
    old = ledger.bound_id()
    holders = ", ".join(ledger.holders(tx=tx)) or "another process"
    if opts.resume is False:
        raise UsageError(f"load {old} of {plan.catalog.name} is being run by {holders}; --restart would "
                         "discard their work", "stop them first (desi-loader status shows who), then rerun")
    mode = _mode(ledger, tx=tx)
    plan, unchanged = _skip_published(ledger, plan, opts, mode["incremental"], tx=tx)
    known = ledger.registered_files(tx=tx)
    mine = {fp.info.name: fp for fp in plan.files}
    differ = sorted(set(known) ^ set(mine)) + sorted(n for n in set(known) & set(mine)
                                                    if not same_file(known[n][1], mine[n].info))
    if differ:
        raise UsageError(f"load {old} of {plan.catalog.name}, run by {holders}, loads other files than these "
                         f"(first difference: {differ[0]})",
                         "give every process the same paths, or wait until that load is published")
    file_ids = {name: known[name][0] for name in mine}
    staging_tables = _staging_tables(plan, old)
    if not ledger.hold_shared(tx=tx):
        return Opening(old, plan, staging_tables, "finalizing", f"load {old} is being finalized by {holders}",
                       unchanged=unchanged, file_ids=file_ids, **mode)
    counts = ledger.task_counts(tx=tx)
    return Opening(old, plan, staging_tables, "joined", f"joining load {old} (run by {holders}): "
                   f"{counts['done']} tasks done, {counts['pending']} to do", unchanged=unchanged, file_ids=file_ids,
                   **mode)
