"""Progress reporters: rich bars on a terminal, plain periodic lines in batch logs."""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TaskProgressColumn,
                           TextColumn, TimeElapsedColumn, TimeRemainingColumn)

from .report import NullReporter

#: seconds between plain progress lines when stderr is not a terminal (SLURM logs)
PLAIN_INTERVAL = 5.0

#: the share of the rows copied before an ETA is shown (rows are counted as tasks commit, so
#: the first commits say little about the rest)
ETA_AFTER = 0.1


def _rate(n: float, secs: float) -> float:
    return n / secs if secs > 0 else 0.0


class RichReporter(NullReporter):
    """Overall bar (rows, rows/s, MB/s, ETA) plus one line per worker."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: Any = None              # rich Progress of the copy, once it starts
        self.t0 = time.perf_counter()
        self.bytes = 0
        self.wbytes: dict = {}
        self.wrows: dict = {}
        self.steps: Any = None             # the finalize's running steps (one line each)
        self.step_ids: dict = {}

    def phase(self, name: str) -> None:
        self._end_steps()
        if name != "copy":
            self.console.print(f"[bold]{name}[/bold] ...")

    def step(self, what: str, state: str) -> None:
        if self.steps is None:
            self.steps = Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.fields[state]}"),
                                  TimeElapsedColumn(), console=self.console, transient=True, refresh_per_second=4)
            self.steps.start()
        if state == "start":
            self.step_ids[what] = self.steps.add_task(f"  {what}", total=None, state="")
        elif what in self.step_ids:
            if state.startswith("done"):
                self.steps.remove_task(self.step_ids.pop(what))
                self.console.print(f"  {what} [dim]{state}[/dim]")
            else:
                self.steps.update(self.step_ids[what], state=f"[dim]{state}[/dim]")

    def _end_steps(self) -> None:
        if self.steps is not None:
            self.steps.stop()
            self.steps, self.step_ids = None, {}

    def info(self, message: str) -> None:
        self.console.print(message)

    def start_copy(self, total_rows: int, total_bytes: int, workers: int) -> None:
        self.total_bytes = total_bytes
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                 transient=False, refresh_per_second=4)
        self.progress.start()
        self.t0 = time.perf_counter()
        self.overall = self.progress.add_task("[bold]rows", total=total_rows, rate="")
        self.workers = {w: self.progress.add_task(f"  worker {w}", total=None, rate="starting")
                        for w in range(workers)}

    def _refresh(self, worker: int) -> None:
        secs = time.perf_counter() - self.t0
        done = self.progress.tasks[self.overall].completed
        self.progress.update(self.overall, rate=f"{_rate(done, secs):,.0f} rows/s "
                             f"{_rate(self.bytes, secs) / 1e6:,.1f} MB/s")
        self.progress.update(self.workers[worker], completed=self.wrows.get(worker, 0),
                             rate=f"{_rate(self.wrows.get(worker, 0), secs):,.0f} rows/s "
                             f"{_rate(self.wbytes.get(worker, 0), secs) / 1e6:,.1f} MB/s")

    def advance(self, worker: int, rows: int, nbytes: int) -> None:
        self.bytes += nbytes
        self.wrows[worker] = self.wrows.get(worker, 0) + rows
        self.wbytes[worker] = self.wbytes.get(worker, 0) + nbytes
        self.progress.advance(self.overall, rows)
        self._refresh(worker)

    def rewind(self, worker: int, rows: int, nbytes: int) -> None:
        if rows:
            self.advance(worker, -rows, -nbytes)

    def worker_state(self, worker: int, state: str) -> None:
        if self.progress and worker in self.workers:
            self.progress.update(self.workers[worker], description=f"  worker {worker} {state[:40]}")

    def stop_copy(self) -> None:
        if self.progress:
            self.progress.stop()

    def close(self) -> None:
        self._end_steps()

    def warn(self, message: str) -> None:
        self.console.print(f"[yellow]warning:[/yellow] {message}")


class PlainReporter(NullReporter):
    """One line every PLAIN_INTERVAL seconds; no cursor movement (for batch job logs)."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.rows = self.bytes = self.total = 0
        self.t0 = self.last = time.perf_counter()
        self.step_last: dict = {}
        self.step_started: dict = {}

    def _line(self, text: str) -> None:
        print(time.strftime("%H:%M:%S ") + text, file=self.stream, flush=True)

    def phase(self, name: str) -> None:
        self._line(f"phase {name}")

    def step(self, what: str, state: str) -> None:
        """A step of the finalize (an index, the statistics): a log line only for a step that
        lasts (its progress every PLAIN_INTERVAL, its end), not a start and an end for each
        of the dozens of short ones a load has."""
        now = time.perf_counter()
        if state == "start":
            self.step_last[what] = self.step_started[what] = now
        elif state.startswith("done"):
            if now - self.step_started.pop(what, now) >= PLAIN_INTERVAL:
                self._line(f"  {what}: {state}")
        elif now - self.step_last.get(what, now) >= PLAIN_INTERVAL:
            self.step_last[what] = now
            self._line(f"  {what}: {state}")

    def info(self, message: str) -> None:
        self._line(message)

    def start_copy(self, total_rows: int, total_bytes: int, workers: int) -> None:
        self.total = total_rows
        self.rows = self.bytes = 0                   # a run may load several catalogs
        self.t0 = self.last = time.perf_counter()
        self._line(f"copy: {total_rows:,} rows, {total_bytes / 1e6:,.1f} MB, {workers} workers")

    def advance(self, worker: int, rows: int, nbytes: int) -> None:
        self.rows += rows
        self.bytes += nbytes
        now = time.perf_counter()
        if now - self.last >= PLAIN_INTERVAL:
            self.last = now
            secs = now - self.t0
            rate = _rate(self.rows, secs)
            # counts arrive when tasks commit: an ETA from the first few is noise
            late = rate and self.rows >= ETA_AFTER * self.total
            eta = f" eta {(self.total - self.rows) / rate:,.0f}s" if late else ""
            self._line(f"copy: {self.rows:,}/{self.total:,} rows ({100 * self.rows / max(self.total, 1):.0f}%) "
                       f"{rate:,.0f} rows/s {_rate(self.bytes, secs) / 1e6:,.1f} MB/s{eta}")

    def rewind(self, worker: int, rows: int, nbytes: int) -> None:
        self.rows -= rows
        self.bytes -= nbytes

    def stop_copy(self) -> None:
        secs = time.perf_counter() - self.t0
        if not self.rows:
            self._line("copy: no rows copied in this run")
            return
        self._line(f"copy: {self.rows:,} rows in {secs:,.1f}s ({_rate(self.rows, secs):,.0f} rows/s)")

    def warn(self, message: str) -> None:
        self._line(f"warning: {message}")


class QuietReporter(NullReporter):
    """--quiet: no progress; warnings still go to stderr."""

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)
