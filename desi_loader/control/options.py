"""What a load is asked to do (LoadOptions, built by the CLI) and what it reports (Summary)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .. import __version__
from ..fits.discover import TASK_BYTES
from .ledger import process_name


@dataclass(frozen=True)
class Faults:
    """Faults a test injects into a load, passed in explicitly (nothing reads them from the
    environment); none in normal use."""

    block_delay: float = 0.0           # seconds a worker sleeps after each block: a kill or restart lands mid-load
    fail_file: str = ""                # tasks of the file of this name raise an unexpected error, as a bug would


@dataclass(frozen=True)
class LoadOptions:
    """Everything a load needs; the CLI builds it from arguments."""

    paths: tuple
    dsn: str
    schema: Optional[str] = None
    catalog: Optional[str] = None
    prefix: Optional[str] = None
    sky: Optional[str] = None          # generic catalogs: 'RA,DEC' columns of the sky index
    distribute: tuple = ()             # TABLE=SPEC overrides of the preset's Citus placement
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
    replace_all: bool = False            # publish exactly these files (default: add new, replace changed)
    staging: str = "auto"                # auto | unlogged (+ SET LOGGED) | logged: how staging becomes durable
    join: bool = False                   # only join a load that other processes run
    wait_timeout: float = 3600.0         # longest wait for other processes of the same load (s)
    faults: Faults = Faults()            # the tests' fault injection (tests/loader_node.py)


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

    def opened(self, opening, plan) -> None:
        """What the opening (an opening.Opening) decided about ``plan``'s load."""
        self.incremental = opening.incremental
        self.unchanged_files = len(opening.unchanged)
        self.files_unchanged = list(opening.unchanged)
        self.files, self.tasks, self.fits_bytes = len(plan.files), len(plan.tasks), plan.total_bytes
        self.durable_path = opening.durable_path
        self.load_id = opening.load_id
        self.role = opening.how
        if opening.how == "resumed":
            self.resumed = opening.message

    def as_dict(self) -> dict:
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
