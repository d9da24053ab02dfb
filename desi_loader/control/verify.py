"""Verification before publishing: failed files and tasks (or, with --allow-partial, the
files left out), DATASUM/CHECKSUM of the bytes the workers loaded, rows per file and HDU
against NAXIS2; and, after a server crash, the done tasks whose rows UNLOGGED staging lost.
Each takes the load.Load it verifies and returns what it found (results.Verified).
"""
from __future__ import annotations

import os
from typing import Optional, TYPE_CHECKING

from psycopg2 import sql

from ..fits.checksum import checksum_ok, combine
from ..fits.discover import Plan, narrowed
from .results import FailedFile, Verified
from ..errors import LoadFailed
from .staging import FINALIZE_LOCK_TIMEOUT

if TYPE_CHECKING:
    from ..control.load import Load
    from ..db import Connection


def reasons(items) -> str:
    """'\n  name: reason' lines of (path, reason) pairs."""
    return "".join(f"\n  {os.path.basename(p)}: {r}" for p, r in items)


class RowsLost(Exception):
    """A server crash emptied UNLOGGED staging: ``tasks`` done tasks were made pending again."""

    def __init__(self, tasks: int) -> None:
        super().__init__(tasks)
        self.tasks = tasks


def verify(load: Load, unchanged: int) -> Verified:
    """Refuse to publish with failed files or wrong row counts (or drop them: --allow-partial).

    ``unchanged``: published files this load skips.  Returns a results.Verified naming the
    files to publish (the load's files without those --allow-partial left out)."""
    plan, left_out = settle_failures(load, unchanged)
    loaded = load.ledger.loaded_rows()          # what each COPY reported, committed with its task
    if loaded is None:                          # tasks of an older version: count staging
        loaded = count_staging(load.conn, load.schema, load.staging_tables, load.tables)
    rows = check_counts(loaded, expected_counts(plan, load.file_ids))
    return Verified(rows, tuple(fp.info.path for fp in plan.files), left_out)


def check_canary(load: Load) -> None:
    """Raise RowsLost (after making them pending) when a crash emptied UNLOGGED staging.

    The finalizer calls it before trusting staging: after the election, and before
    each step that makes the result permanent (SET LOGGED, the swap, the merge).
    """
    ledger = load.ledger
    if load.staging_mode != "unlogged" or not ledger.canary_lost():
        return
    lost = lost_tasks(load.conn, load.schema, load.staging_tables, ledger.done_tasks(), load.file_ids)
    ledger.reset_tasks(lost)
    ledger.arm_canary()
    if lost:
        raise RowsLost(len(lost))


def checksum_failures(load: Load, incomplete: set) -> list:
    """(path, reason) of files whose loaded bytes disagree with DATASUM/CHECKSUM
    (files in ``incomplete``, with failed or pending tasks, are not all loaded: skipped)."""
    sums = load.ledger.datasums()
    bad = []
    for fp in load.plan.files:
        if fp.info.name in incomplete:
            continue
        for h in fp.info.hdus:
            if h.index not in fp.tables or h.datasum is None:
                continue
            got = combine(sums.get((load.file_ids[fp.info.name], h.index), []))
            if got != h.datasum:
                bad.append((fp.info.path, f"HDU {h.index} ({h.extname}): DATASUM is {h.datasum} but the "
                            f"data sum to {got} (file corrupt; download it again, or --no-verify-checksum)"))
            elif "CHECKSUM" in h.cards and not checksum_ok(h.header_sum, got):
                bad.append((fp.info.path, f"HDU {h.index} ({h.extname}): CHECKSUM does not match "
                            "(header or data corrupt; download it again, or --no-verify-checksum)"))
    return bad


def settle_failures(load: Load, unchanged: int) -> tuple[Plan, tuple]:
    """Failed files (plan-time rejections, failed tasks, bad sums): LoadFailed, or with
    --allow-partial the load goes on without them (recorded for the other processes).

    Returns the plan of the files to publish and the files left out (results.FailedFile)."""
    opts, plan, ledger, ids = load.opts, load.plan, load.ledger, load.file_ids
    bad = list(plan.failed)
    names = {fp.info.name: fp for fp in plan.files}
    failed = ledger.failed_tasks()
    bad += [(names[fn].info.path if fn in names else fn, err) for fn, err in failed]
    counts = ledger.task_counts()
    if counts["pending"]:
        bad.append(("(tasks)", f"{counts['pending']} tasks were not run (workers kept dying)"))
    incomplete = {fn for fn, _ in failed} | (set(names) if counts["pending"] else set())
    corrupt = checksum_failures(load, incomplete) if opts.verify_checksum else []
    bad += corrupt
    if not bad:
        return plan, ()
    # forget the rows of files that failed their checksum: a rerun after a re-download
    # (same name, even the same size) loads them again instead of keeping stale rows
    ledger.remove_files(sorted({ids[os.path.basename(p)] for p, _ in corrupt}), load.staging_tables)
    uniq = list(dict.fromkeys(bad))
    loaded = {os.path.basename(p) for p, _ in uniq} & set(names)
    # with every file of the load failed, --allow-partial has nothing to publish -- unless
    # other named files are published and unchanged: the tables stay as they are (exit 4)
    if not opts.allow_partial or counts["pending"] or (len(loaded) == len(plan.files) and not unchanged):
        # the status is set with this message by the coordinator (one place: a process waiting
        # for this load must never see "failed" without the reason, which names the files)
        raise LoadFailed(f"{len({p for p, _ in uniq})} file(s) could not be loaded; the published tables "
                         f"were not replaced (load {ledger.load_id} is kept for resume):" + reasons(uniq),
                         "fix or re-download the named files and rerun the same command "
                         "(or --allow-partial to publish without them)")
    ledger.remove_files([ids[n] for n in loaded], load.staging_tables)
    left_out = tuple(FailedFile(p, r) for p, r in uniq)
    ledger.set_left_out(list(left_out))
    kept = {fp.info.name for fp in plan.files} - loaded
    return narrowed(plan, kept), left_out


def nothing_but_failures(load: Load, unchanged: int) -> Verified:
    """Every loadable file is published and unchanged, but some named files cannot load:
    that is a failure to report (exit 1), or with --allow-partial a partial result (exit 4):
    a results.Verified that counted nothing."""
    failed = load.plan.failed
    if not load.opts.allow_partial:
        raise LoadFailed(f"{len(failed)} file(s) could not be loaded ({unchanged} "
                         f"published file(s) unchanged; the published tables were not changed):"
                         + reasons(failed), "fix or re-download the named files and rerun the same "
                         "command (or --allow-partial to accept the tables without them)")
    return Verified(None, (), tuple(FailedFile(p, r) for p, r in failed))


# --------------------------------------------------------------------------- counts

def expected_counts(plan: Plan, file_ids: Optional[dict] = None) -> dict:
    """{table: {file_id: rows}} the plan promises (keyed by file name without ``file_ids``)."""
    out: dict = {}
    for fp in plan.files:
        key = file_ids[fp.info.name] if file_ids is not None else fp.info.name
        for h in fp.info.hdus:
            if h.index in fp.tables:
                out.setdefault(fp.tables[h.index], {})[key] = h.nrows
    return out


def count_staging(conn: Connection, schema: str, staging: dict, tables) -> dict:
    """{table: {file_id: rows}} counted in the staging tables (a full scan of each)."""
    out = {}
    with conn.cursor() as cur:
        cur.execute("SET LOCAL lock_timeout = %s", (FINALIZE_LOCK_TIMEOUT,))
        for table in tables:
            cur.execute(sql.SQL("SELECT file_id, count(*) FROM {} GROUP BY file_id").format(
                sql.Identifier(schema, staging[table])))
            out[table] = dict(cur.fetchall())
    conn.commit()
    return out


def check_counts(loaded: dict, expected: dict) -> dict:
    """Rows per table; raises LoadFailed when a file's rows in a table differ from its NAXIS2.

    ``loaded`` is {table: {file_id: rows}} as the ledger recorded them (the rows each COPY
    reported, committed with its task) or as counted in staging.
    """
    report = {}
    for table, per_file in expected.items():
        got = loaded.get(table, {})
        bad = {f: (n, got.get(f, 0)) for f, n in per_file.items() if got.get(f, 0) != n}
        extra = set(got) - set(per_file)
        if bad or extra:
            f, (want, have) = next(iter(bad.items())) if bad else (next(iter(extra)), (0, got[next(iter(extra))]))
            raise LoadFailed(f"verification failed for {table}: file_id {f} has {have} rows, expected {want}",
                             "nothing was published; rerun with --restart to load these files from scratch")
        report[table] = sum(got.values())
    return report


def lost_tasks(conn: Connection, schema: str, staging: dict, done: list, file_ids: dict) -> list:
    """Done tasks (discover.Task) whose rows are not (all) in staging: after a server crash
    emptied UNLOGGED tables.

    One scan per staging table finds the files whose rows are short; only their tasks are
    then counted range by range.  A task with some rows left has them deleted, so that
    reloading it cannot duplicate anything.  Returns the task ids to reload.
    """
    per_table: dict = {}
    for task in done:
        for table, start, stop in {(p.table, p.start, p.stop) for p in task.parts}:
            per_file = per_table.setdefault(table, {})
            per_file[file_ids[task.file]] = per_file.get(file_ids[task.file], 0) + stop - start
    have = count_staging(conn, schema, staging, per_table)
    short = {(t, f) for t, files in per_table.items() for f, n in files.items() if have[t].get(f, 0) != n}
    lost = []
    with conn.cursor() as cur:
        for task in done:
            file_id = file_ids[task.file]
            ranges = {(p.table, p.start, p.stop) for p in task.parts}
            if not any((t, file_id) in short for t, _a, _b in ranges):
                continue
            counts = []
            for table, start, stop in ranges:
                cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE file_id = %s AND row_num >= %s AND row_num < %s")
                            .format(sql.Identifier(schema, staging[table])), (file_id, start, stop))
                counts.append((table, start, stop, cur.fetchone()[0]))
            if all(n == stop - start for _t, start, stop, n in counts):
                continue
            for table, start, stop, n in counts:
                if n:
                    cur.execute(sql.SQL("DELETE FROM {} WHERE file_id = %s AND row_num >= %s AND row_num < %s")
                                .format(sql.Identifier(schema, staging[table])), (file_id, start, stop))
            lost.append(task.task_id)
    conn.commit()
    return lost
