"""Verification before publishing: failed files and tasks (or, with --allow-partial, the
files left out), DATASUM/CHECKSUM of the bytes the workers loaded, rows per file and HDU
against NAXIS2.  Functions of the Coordinator whose load they verify.
"""
from __future__ import annotations

import os

from .checksum import checksum_ok, combine
from .errors import LoadFailed
from .finalize import check_counts, count_staging, expected_counts


def reasons(items) -> str:
    """'\n  name: reason' lines of (path, reason) pairs."""
    return "".join(f"\n  {os.path.basename(p)}: {r}" for p, r in items)


def verify(c) -> None:
    """Refuse to publish with failed files or wrong row counts (or drop them: --allow-partial)."""
    settle_failures(c)
    c.summary.files = len(c.plan.files)
    loaded = c.ledger.loaded_rows()          # what each COPY reported, committed with its task
    if loaded is None:                          # tasks of an older version: count staging
        loaded = count_staging(c.ledger.conn, c.plan.schema, c.staging, c.plan.tables)
    c.summary.rows = check_counts(loaded, expected_counts(c.plan))
    c.summary.verified = True


def checksum_failures(c, incomplete: set) -> list:
    """(path, reason) of files whose loaded bytes disagree with DATASUM/CHECKSUM
    (files in ``incomplete``, with failed or pending tasks, are not all loaded: skipped)."""
    sums = c.ledger.datasums()
    bad = []
    for fp in c.plan.files:
        if fp.info.name in incomplete:
            continue
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


def settle_failures(c) -> None:
    """Failed files (plan-time rejections, failed tasks, bad sums): LoadFailed, or with
    --allow-partial the load goes on without them (recorded for the other processes)."""
    opts, plan, ledger = c.opts, c.plan, c.ledger
    bad = list(plan.rejected)
    names = {fp.info.name: fp for fp in plan.files}
    failed = ledger.failed_tasks()
    bad += [(names[fn].info.path if fn in names else fn, err) for fn, err in failed]
    counts = ledger.task_counts()
    if counts["pending"]:
        bad.append(("(tasks)", f"{counts['pending']} tasks were not run (workers kept dying)"))
    incomplete = {fn for fn, _ in failed} | (set(names) if counts["pending"] else set())
    corrupt = checksum_failures(c, incomplete) if opts.verify_checksum else []
    bad += corrupt
    if not bad:
        return
    # forget the rows of files that failed their checksum: a rerun after a re-download
    # (same name, even the same size) loads them again instead of keeping stale rows
    ledger.remove_files(sorted({names[os.path.basename(p)].file_id for p, _ in corrupt}), c.staging)
    uniq = list(dict.fromkeys(bad))
    loaded = {os.path.basename(p) for p, _ in uniq} & set(names)
    # with every file of the load failed, --allow-partial has nothing to publish -- unless
    # other named files are published and unchanged: the tables stay as they are (exit 4)
    if not opts.allow_partial or counts["pending"] or (len(loaded) == len(plan.files)
                                                       and not c.summary.files_unchanged):
        ledger.set_status("failed")
        raise LoadFailed(f"{len({p for p, _ in uniq})} file(s) could not be loaded; the published tables "
                         f"were not replaced (load {ledger.load_id} is kept for resume):" + reasons(uniq),
                         "fix or re-download the named files and rerun the same command "
                         "(or --allow-partial to publish without them)")
    ledger.remove_files([names[n].file_id for n in loaded], c.staging)
    plan.files = [fp for fp in plan.files if fp.info.name not in loaded]
    c.summary.missing = [(os.path.basename(p), r) for p, r in uniq]
    c.summary.files_failed = uniq
    ledger.set_left_out(c.summary.missing)
