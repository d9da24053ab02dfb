"""What a load reports (``Summary``: the final table and --summary-json) and the one place it
is filled: ``summarize`` turns what the phases returned (``Facts``) into it.

The phases do not write the Summary: each returns a typed result (``opening.Opening``,
``CopyStats``, ``Outcome``, ``Verified``, ``Merged``, ``indexes.IndexResult``) that the
coordinator keeps in its ``Facts``, each field set by one phase.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Optional

from .. import __version__
from ..db import mask_dsn
from ..fits.discover import Plan
from .indexes import IndexResult
from .ledger import process_name
from .opening import Opening
from .options import LoadOptions
from .results import CopyStats, Merged, Outcome, Verified

__all__ = ["Summary", "Facts", "summarize", "dry_run", "CopyStats", "Merged", "Outcome", "Verified"]


@dataclass
class Facts:
    """What a coordinator learnt on the way, each field set once, by the step named."""

    plan_s: float = 0.0
    phases: dict = field(default_factory=dict)   # phase -> seconds (Coordinator._run_phase)
    server: dict = field(default_factory=dict)   # db.server_settings, once connected
    notes: list = field(default_factory=list)    # advice on the server's settings (Coordinator.run)
    opening: Optional[Opening] = None            # open
    cluster: Optional[tuple] = None              # open: (Citus description, {table: placement})
    copy: CopyStats = CopyStats()                # copy
    outcome: Optional[Outcome] = None            # await (another process published)
    verified: Optional[Verified] = None          # verify (this process finalizes)
    merged: Optional[Merged] = None              # merge
    indexed: Optional[IndexResult] = None        # index
    finalizer: bool = False                      # this process verified, indexed and published
    coordinator_peak_kb: int = 0


@dataclass
class Summary:
    """What one load of one catalog did: what the final table shows and ``--summary-json``
    writes.

    Its fields are listed, with their meaning, in the reference of the summary JSON
    (docs/reference/summary-json.md): ``rows`` per table, ``files_loaded``,
    ``files_unchanged``, ``files_failed``, ``left_out``, ``phases`` and the rest.
    """

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
    left_out: list = field(default_factory=list)     # (file name, reason) published without (--allow-partial)
    dsn: str = ""
    server: dict = field(default_factory=dict)
    plan: list = field(default_factory=list)
    memory: dict = field(default_factory=dict)       # peak RSS in MB: coordinator, largest worker
    cpu: dict = field(default_factory=dict)          # copy phase CPU seconds: workers (on tasks), coordinator
    durable_path: str = ""           # which durable path was used, and why
    incremental: bool = False        # merged into the published tables (new and changed files only)
    unchanged_files: int = 0         # published files skipped because they did not change
    # every named file, accounted for: loaded (published by this load), unchanged (published
    # before, skipped), failed ((path, reason): not published, or left out by --allow-partial)
    files_loaded: list = field(default_factory=list)
    files_unchanged: list = field(default_factory=list)
    files_failed: list = field(default_factory=list)
    notes: list = field(default_factory=list)          # the plan's notes (column names cut ...)
    replaced_rows: dict = field(default_factory=dict)   # table -> rows of replaced files deleted
    role: str = ""                   # started | resumed | joined | finalizing (how this process opened it)
    finalized: bool = False          # this process verified, indexed and published the load
    published_by: Optional[str] = None   # host:pid of the process that published it
    process: str = field(default_factory=process_name)
    node_rows: int = 0               # rows this process's workers loaded (galaxies x tables)
    node_seconds: float = 0.0        # time its worker pools ran
    cluster: str = ""                # "Citus <version>, <n> workers" when the server is a Citus coordinator
    distribution: dict = field(default_factory=dict)    # table -> placement on the cluster
    index_steps: dict = field(default_factory=dict)     # "table: step" -> seconds (index phase)
    index_sessions: int = 0                             # sessions the index phase ran in

    def as_dict(self) -> dict:
        """The summary as the JSON object ``--summary-json`` writes for this load.

        Returns
        -------
        dict
            Every field, and ``total_rows``, ``copy_rows_per_s``, ``copy_mb_per_s`` and
            ``loader_version``.
        """
        copy_s = self.phases.get("copy", 0) or 0
        total = sum(self.rows.values())
        # rates of the rows this process copied in this run only (a resumed load's earlier rows
        # and a zero-length copy make no rate), over a measured interval
        copied = self.node_rows if self.node_rows and copy_s >= 0.01 else 0
        share = copied / total if total else 0
        return {**self.__dict__, "total_rows": total,
                "copy_rows_per_s": round(copied / copy_s, 1) if copied else None,
                "copy_mb_per_s": round(self.fits_bytes * share / 1e6 / copy_s, 2) if copied else None,
                "loader_version": __version__}


def _base(opts: LoadOptions, plan: Plan, facts: Facts) -> Summary:
    """What every summary of ``plan`` says, whatever the load did."""
    return Summary(
        workers=opts.workers, fmt=opts.fmt, durable=not opts.unlogged, dsn=mask_dsn(opts.dsn or ""),
        catalog=plan.catalog.name, schema=plan.schema, files=len(plan.files), fits_bytes=plan.total_bytes,
        tasks=len(plan.tasks), checksums=_checksums(plan, opts),
        plan=[{"table": t, "columns": len(s.all_columns), "key": list(s.key), "sky": list(s.sky)}
              for t, s in plan.tables.items()],
        notes=list(plan.notes) + list(facts.notes), phases={"plan": facts.plan_s, **facts.phases},
        server=dict(facts.server))


def dry_run(opts: LoadOptions, plan: Plan, expected: dict, plan_s: float) -> Summary:
    """The summary of --dry-run: what the load would do (``expected``: table -> rows)."""
    s = _base(opts, plan, Facts(plan_s=plan_s))
    return replace(s, rows=expected, left_out=[(os.path.basename(p), r) for p, r in plan.failed],
                   files_loaded=[fp.info.path for fp in plan.files], files_failed=list(plan.failed))


def _failed(s: Summary, files: tuple) -> None:
    """The Summary's two views of the files a load was published without (results.FailedFile):
    ``files_failed`` their paths, ``left_out`` their names, the same on every process."""
    s.files_failed = [(f.path, f.reason) for f in files]
    s.left_out = [(f.name, f.reason) for f in files]


def summarize(opts: LoadOptions, plan: Plan, facts: Facts) -> Summary:
    """The Summary of a load this process took part in (``plan``: the open load's), from what
    its phases returned."""
    opening = facts.opening
    s = _base(opts, plan, facts)
    if opening is not None:
        s.load_id, s.role, s.incremental = opening.load_id, opening.how, opening.publishing.incremental
        s.fits_bytes, s.tasks = opening.fits_bytes, opening.tasks
        s.durable_path = opening.durable_path
        s.unchanged_files, s.files_unchanged = len(opening.unchanged), list(opening.unchanged)
        s.resumed = opening.message if opening.how == "resumed" else None
        if opening.how != "nothing":
            s.files_loaded = [fp.info.path for fp in plan.files]
    if facts.cluster is not None:
        s.cluster, s.distribution = facts.cluster
    c = facts.copy
    s.node_rows, s.node_seconds = c.rows, c.seconds
    if c.seconds:
        s.cpu = {"workers_s": round(c.worker_cpu, 3), "coordinator_s": round(c.coordinator_cpu, 3)}
        s.memory["worker_peak_mb"] = round(c.worker_peak_kb / 1024, 1)
    if c.stream_s:
        s.phases["copy_stream"] = round(c.stream_s, 3)
    if facts.outcome is not None:
        s.published_by, s.rows = facts.outcome.published_by, dict(facts.outcome.rows)
        _failed(s, facts.outcome.left_out)
    if facts.verified is not None:
        v = facts.verified
        _failed(s, v.left_out)
        if v.rows is not None:
            s.rows, s.verified, s.files = dict(v.rows), True, len(v.published)
            s.files_loaded = list(v.published)
    if facts.merged is not None:
        s.replaced_rows = dict(facts.merged.replaced_rows)
    if facts.indexed is not None:
        s.index_steps, s.index_sessions = dict(facts.indexed.steps), facts.indexed.sessions
    s.finalized = facts.finalizer
    if facts.finalizer:
        s.published_by = process_name()
    s.memory["coordinator_peak_mb"] = round(facts.coordinator_peak_kb / 1024, 1)
    return s


def _checksums(plan, opts) -> str:
    """What the summary says of checksums: FITS CHECKSUM/DATASUM, or a Parquet file's page CRCs."""
    if not opts.verify_checksum:
        return "not verified (--no-verify-checksum)"
    return "verified (Parquet page CRCs, where written)" if plan.catalog.name == "parquet" else "verified"
