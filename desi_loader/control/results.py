"""What the phases of a load return (typed, frozen): the coordinator keeps them in its
summary.Facts and summary.summarize turns them into the Summary."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple, Optional

from .pool import PoolResult


@dataclass(frozen=True)
class CopyStats:
    """What this process's worker pools did in the copy phase (summed over its pool runs)."""

    rows: int = 0                    # rows its workers committed (galaxies x tables)
    seconds: float = 0.0             # time its pools ran
    stream_s: float = 0.0            # first rows encoded to last task committed (start-up and exit excluded)
    worker_cpu: float = 0.0          # CPU seconds the workers spent on tasks
    coordinator_cpu: float = 0.0
    worker_peak_kb: int = 0

    def plus(self, result: PoolResult, seconds: float, coordinator_cpu: float, end: float) -> "CopyStats":
        """These figures and one more pool run's (``end``: perf_counter when it returned)."""
        stream = 0.0
        if result.first_rows_at is not None:
            stream = (result.last_done_at or end) - result.first_rows_at
        return CopyStats(self.rows + result.rows, self.seconds + seconds, self.stream_s + stream,
                         self.worker_cpu + result.worker_cpu, self.coordinator_cpu + coordinator_cpu,
                         max(self.worker_peak_kb, result.worker_peak_kb))


class FailedFile(NamedTuple):
    """A named file that was not loaded: its path as named, and why.  The one shape of a failed
    file from verify to the ledger to the Summary, on every process of a load."""

    path: str
    reason: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass(frozen=True)
class Outcome:
    """The await phase: another process published the load."""

    published_by: str
    rows: dict                       # table -> rows
    left_out: tuple                  # FailedFile: the files --allow-partial published without


@dataclass(frozen=True)
class Verified:
    """The verify phase: rows per table checked, and the files published."""

    rows: Optional[dict]             # table -> rows; None: nothing to count (every loadable file unchanged)
    published: tuple                 # paths of the files published (--allow-partial leaves failed ones out)
    left_out: tuple = ()             # FailedFile: the files published without (--allow-partial)


@dataclass(frozen=True)
class Merged:
    """The merge phase (incremental): columns added, rows of replaced files deleted."""

    added: tuple
    replaced_rows: dict
