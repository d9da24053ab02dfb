"""The worker pool of one coordinator: spawn, listen, reap and replace, stop.

Workers are spawned (never forked with an open connection) with the stop signals
blocked, so a Ctrl-C or a scheduler's SIGTERM reaches only the coordinator, which then
stops them.  The spares (below) are forked on Linux when the coordinator has no thread
and no connection yet (``start_method``): they inherit the imports instead of redoing them.
Their configuration goes through a private temporary file that is removed as soon as every
worker has read it; the DSN goes through the spawn pipe only.

A spawned worker's start (a new interpreter importing numpy, psycopg2 and the loader) takes
a good part of a second of CPU; the first pool of a load adopts workers started while the
coordinator connected and opened the load (``Spares``), which wait for the file's name.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import signal
import sys
import tempfile
import threading
import time
from multiprocessing.process import BaseProcess
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..report import NullReporter
from .worker import STOP_SIGNALS, WorkerConfig, worker_main

log = logging.getLogger(__name__)

#: How often workers may die (signal, crash) in one run before no new one is started.
MAX_WORKER_RESTARTS = 8
#: Seconds between checks of worker health while no message arrives.
POLL_SECONDS = 0.5


@dataclass
class PoolResult:
    """What the pool's run tells the coordinator."""

    fatal: Optional[str] = None              # a worker's permanent database error
    worker_peak_kb: int = 0
    worker_cpu: float = 0.0                  # CPU seconds the workers spent on tasks (read, encode, send)
    first_rows_at: Optional[float] = None    # perf_counter of the first rows (start-up excluded)
    last_done_at: Optional[float] = None     # perf_counter of the last task committed (or failed)
    rows: int = 0                            # rows of the tasks its workers committed
    gave_up: bool = False                    # workers kept dying: no new one was started


def start_blocked(ctx, args: tuple) -> BaseProcess:
    """Start a worker process (worker_main(*args)) with the stop signals blocked (the mask
    survives exec).

    A stop signal arriving while the child is being started (in the middle of writing its
    pickled arguments it would leave it half-started) is noted, then re-raised.
    """
    noted: list = []
    handlers = {sig: signal.signal(sig, lambda s, _f: noted.append(s)) for sig in STOP_SIGNALS}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    try:
        proc = ctx.Process(target=worker_main, args=args, daemon=True)
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if noted:
        signal.raise_signal(noted[0])
    return proc


def start_method() -> str:
    """How spare workers start: "fork" on Linux while this process has one thread (called
    before any connection is opened), else "spawn".

    A spawned worker spends 0.5 s of CPU importing what the coordinator imported already
    (numpy, psycopg2, the loader); forked, 0.06 s.  On a 2-core machine that CPU comes out of
    the planning's and the first tasks' time.  Where threads run (a notebook's, a progress
    display's) a lock one of them holds would stay held in the child: spawn there, as on
    macOS, where fork is unsafe."""
    return "fork" if sys.platform.startswith("linux") and threading.active_count() == 1 else "spawn"


class Spares:
    """Workers started before their load is open: they import what they need while the
    files are planned and the coordinator connects, decides and opens the load, then wait
    for the DSN and their configuration's file name (``preload``: modules they import
    meanwhile, as pyarrow when the inputs are Parquet) (on a pipe of their own: the DSN never
    touches a disk; None: not needed, exit; the pipe closed, as when the coordinator is
    killed: exit).  The first pool adopts them (``take``) and lets the rest go (``release``)."""

    def __init__(self, count: int, preload: tuple = ()) -> None:
        self.ctx = mp.get_context("spawn")       # the pool's: workers it starts later are spawned
        self.messages = self.ctx.Queue()
        self.waiting: dict = {}                   # worker id -> (process, the sending end of its pipe)
        starter = mp.get_context(start_method())
        for w in range(count):
            receive, send = self.ctx.Pipe(duplex=False)
            self.waiting[w] = (start_blocked(starter, (w, None, receive, self.messages, preload)), send)
            receive.close()                       # the worker's end: closed here, so it sees EOF when we go

    def take(self, w: int) -> Optional[tuple]:
        """(process, the sending end of its pipe) of spare worker ``w``, if it is still alive."""
        proc, send = self.waiting.pop(w, (None, None))
        return (proc, send) if proc is not None and proc.is_alive() else None

    def release(self) -> None:
        """The spares nobody took end: killed, as they may still be importing (a spare holds
        nothing yet: no connection, no configuration, nothing sent on the message queue)."""
        for proc, send in self.waiting.values():
            send.close()
            if proc.is_alive():
                proc.kill()
        for proc, _ in self.waiting.values():
            proc.join(timeout=10)
        self.waiting.clear()


@dataclass
class _Slot:
    proc: Optional[BaseProcess] = None
    task: Optional[int] = None
    inflight: list = field(default_factory=lambda: [0, 0])
    exited: bool = False
    ready: bool = False          # it has read the configuration file


class WorkerPool:
    """``size`` worker processes copying tasks of one load until none is left.

    ``on_death(task_id, reason)`` is called when a worker dies holding a task; it returns
    True when that task has now failed for good (the coordinator counts deaths in the ledger).
    """

    def __init__(self, dsn: str, cfg: WorkerConfig, size: int, reporter: NullReporter,
                 on_death: Callable[[int, str], bool], spares: Optional[Spares] = None) -> None:
        self.dsn, self.cfg, self.size = dsn, cfg, size
        self.reporter, self.on_death = reporter, on_death
        self.spares = spares
        self.ctx = spares.ctx if spares is not None else mp.get_context("spawn")
        self.messages = spares.messages if spares is not None else self.ctx.Queue()
        self.slots = {w: _Slot() for w in range(size)}
        self.restarts = 0
        self.result = PoolResult()
        self._cfg_path: Optional[str] = None
        self._unread = 0
        self.waiting = False               # a worker said it waits for the server (one line per outage)
        self.handlers: dict[str, Callable[[int, Any], None]] = {
                         "rows": self._on_rows, "rewind": self._on_rewind, "done": self._on_done,
                         "task": self._on_task, "retry": self._on_retry, "failed": self._on_failed,
                         "exit": self._on_exit, "fatal": self._on_fatal, "ready": self._on_ready,
                         "traceback": self._on_traceback}

    # ----------------------------------------------------------------- lifecycle

    def run(self, total_rows: int, total_bytes: int) -> PoolResult:
        """Start the workers and serve them until every one has exited."""
        try:
            for w in self.slots:
                self._spawn(w)
            if self.spares is not None:
                self.spares.release()
            self.reporter.start_copy(total_rows, total_bytes, self.size)
            while not all(s.exited for s in self.slots.values()):
                try:
                    kind, w, payload = self.messages.get(timeout=POLL_SECONDS)
                    self.handlers[kind](w, payload)
                except queue_mod.Empty:
                    pass
                self._reap()
        except BaseException:
            self.stop()
            raise
        finally:
            self._join()
            self._remove_cfg()
            self.reporter.stop_copy()
        return self.result

    def _spawn(self, w: int) -> None:
        """Give slot ``w`` a worker: the spare of that number when there is one, told the
        configuration's file, else a new process (start_blocked)."""
        if self._cfg_path is None:
            self._write_cfg()
        slot = self.slots[w]
        spare = self.spares.take(w) if self.spares is not None else None
        if spare is not None:
            slot.proc = spare[0]
            spare[1].send((self.dsn, self._cfg_path))
            spare[1].close()
        else:
            slot.proc = start_blocked(self.ctx, (w, self.dsn, self._cfg_path, self.messages))
        slot.exited, slot.ready, slot.task, slot.inflight = False, False, None, [0, 0]
        self._unread += 1

    def _reap(self) -> None:
        """Replace workers that died without a word (killed, crashed): their transaction rolled back."""
        for w, slot in self.slots.items():
            proc = slot.proc
            if slot.exited or proc is None or proc.is_alive():
                continue
            proc.join()
            code = proc.exitcode
            self.reporter.rewind(w, *slot.inflight)
            task, slot.task, slot.inflight = slot.task, None, [0, 0]
            if not slot.ready:
                self._unread -= 1
            if task is not None and self.on_death(task, f"worker died (exit code {code}) while loading this task"):
                self.reporter.warn(f"task {task} failed: its worker died too often")
            if self.restarts < MAX_WORKER_RESTARTS and self.result.fatal is None:
                self.restarts += 1
                self.reporter.warn(f"worker {w} died (exit code {code}); task {task} goes back to the "
                                   "queue, starting a new worker")
                self._spawn(w)
            else:
                slot.exited = True
                self.result.gave_up = self.result.fatal is None
                self.reporter.warn(f"worker {w} died (exit code {code})")

    def stop(self) -> None:
        """Kill the workers: their open transactions roll back, nothing half-loaded stays."""
        for slot in self.slots.values():
            if slot.proc is not None and slot.proc.pid is not None and slot.proc.is_alive():
                slot.proc.kill()

    def _join(self) -> None:
        for slot in self.slots.values():
            if slot.proc is not None and slot.proc.pid is not None:
                slot.proc.join(timeout=10)

    def _write_cfg(self) -> None:
        fd, self._cfg_path = tempfile.mkstemp(prefix="desi-loader-", suffix=".pickle")
        with os.fdopen(fd, "wb") as f:                  # private (0600), no secrets in it
            pickle.dump(self.cfg, f, protocol=pickle.HIGHEST_PROTOCOL)

    def _remove_cfg(self) -> None:
        if self._cfg_path is not None:
            try:
                os.unlink(self._cfg_path)
            except FileNotFoundError:
                pass
            self._cfg_path = None

    # ----------------------------------------------------------------- messages

    def _on_ready(self, w: int, _payload) -> None:
        self.slots[w].ready = True
        self._unread -= 1
        if self._unread <= 0:
            self._remove_cfg()       # every worker has it: nothing stays on a node-local disk

    def _on_rows(self, w: int, payload) -> None:
        if self.result.first_rows_at is None:
            self.result.first_rows_at = time.perf_counter()
        slot = self.slots[w]
        slot.inflight[0] += payload[0]
        slot.inflight[1] += payload[1]
        self.reporter.advance(w, *payload)

    def _on_rewind(self, w: int, payload) -> None:
        self.reporter.rewind(w, *payload)
        self.slots[w].inflight = [0, 0]

    def _on_done(self, w: int, _task) -> None:
        if self.waiting:
            self.waiting = False
            self.reporter.warn("the server answers again; copying")
        self.result.last_done_at = time.perf_counter()
        slot = self.slots[w]
        self.result.rows += slot.inflight[0]
        slot.inflight, slot.task = [0, 0], None
        self.reporter.task_done(w, _task)

    def _on_task(self, w: int, payload) -> None:
        self.slots[w].task = payload[0]
        self.reporter.worker_state(w, f"task {payload[0]} {payload[1]}")

    def _on_retry(self, w: int, payload) -> None:
        # one line per outage: the first worker that waits says so, the others wait quietly
        if not self.waiting:
            self.reporter.warn(payload)
        self.waiting = True

    def _on_failed(self, w: int, payload) -> None:
        slot = self.slots[w]
        slot.inflight, slot.task = [0, 0], None
        self.reporter.warn(f"task {payload[0]} failed: {payload[1]}")

    def _on_traceback(self, w: int, text: str) -> None:
        log.info("worker %d: task error\n%s", w, text)     # shown with -v

    def _on_exit(self, w: int, payload: tuple) -> None:
        peak_kb, cpu = payload
        self.slots[w].exited = True
        self.result.worker_peak_kb = max(self.result.worker_peak_kb, peak_kb)
        self.result.worker_cpu += cpu
        self.reporter.worker_state(w, "finished")

    def _on_fatal(self, w: int, message: str) -> None:
        self.slots[w].exited = True
        self.result.fatal = self.result.fatal or message
        self.reporter.worker_state(w, "stopped")
