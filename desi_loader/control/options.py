"""What a load is asked to do (LoadOptions, built by the CLI); what it reports is summary.Summary."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..fits.discover import TASK_BYTES


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
    staging_mode: str = "auto"           # --staging: auto | unlogged (+ SET LOGGED) | logged
    join: bool = False                   # only join a load that other processes run
    wait_timeout: float = 3600.0         # longest wait for other processes of the same load (s)
    faults: Faults = Faults()            # the tests' fault injection (tests/loader_node.py)
