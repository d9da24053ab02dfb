"""Worker processes: claim a task, COPY its rows, mark it done, in one transaction.

A worker opens its connection after it starts (never inherited across fork), reports
counts to the coordinator through a queue, and exits when no task is left, when its
coordinator is gone, or on a permanent database error.  Transient errors (connection
lost, server restarting, too many connections, deadlock) are retried with backoff; the
failed transaction rolled back, so a retry never duplicates rows.
"""
from __future__ import annotations

import os
import pickle
import resource
import signal
import time
from dataclasses import dataclass

import psycopg2

from . import ledger
from .copy import copy_parts
from .db import connect, is_transient
from .errors import DatabaseError, LoaderError

#: Retries of one task after transient database errors; with the backoff below the
#: last retry comes about a minute after the first failure (a server restart fits).
TRANSIENT_RETRIES = 7
BACKOFF_START, BACKOFF_MAX = 0.5, 16.0
#: Fault-injection aid for the test suite: seconds to sleep after each block, so that a
#: kill or a server restart reliably lands in the middle of a load.  0 in normal use.
BLOCK_DELAY = float(os.environ.get("DESI_LOADER_TEST_BLOCK_DELAY", "0") or 0)


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a load gets (pickled once at spawn)."""

    dsn: str
    schema: str
    load_id: int
    fmt: str
    checksum: bool
    enc_plan: dict        # file_id -> (path, {hdu index: (HduInfo, staging table, fields)})
    parent_pid: int


def worker_main(worker_id: int, cfg_path: str, messages) -> None:
    """Body of a worker process; its WorkerConfig is pickled in ``cfg_path``.

    The configuration (with every column's encoder fields) comes from a file rather than
    through the spawn pipe, so starting a worker does not wait for the previous one to
    boot: all workers start in parallel.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # Ctrl-C is the coordinator's business
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    with open(cfg_path, "rb") as f:
        cfg = pickle.load(f)
    state = _State(worker_id, cfg, messages)
    try:
        state.conn = connect(cfg.dsn, f"desi-loader worker {worker_id}")
        while os.getppid() == cfg.parent_pid and state.run_one():
            pass
        messages.put(("exit", worker_id, peak_rss_kb()))
    except DatabaseError as exc:
        messages.put(("fatal", worker_id, str(exc)))
    except KeyboardInterrupt:
        pass
    finally:
        state.close()


def peak_rss_kb() -> int:
    """Peak resident memory of this process in kB.

    VmHWM of /proc/self/status where there is one: getrusage's ru_maxrss would report
    the parent's size for a spawned child (Linux carries it over fork and exec).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class _State:
    def __init__(self, worker_id: int, cfg: WorkerConfig, messages) -> None:
        self.id, self.cfg, self.messages = worker_id, cfg, messages
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.conn = None
        self.handles: dict = {}
        self.sent = [0, 0]

    def close(self) -> None:
        for fh in self.handles.values():
            fh.close()
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def on_block(self, rows: int, nbytes: int) -> None:
        if BLOCK_DELAY:
            time.sleep(BLOCK_DELAY)
        self.sent[0] += rows
        self.sent[1] += nbytes
        self.messages.put(("rows", self.id, (rows, nbytes)))

    def run_one(self) -> bool:
        """Claim and load one task; False when none is left."""
        for attempt in range(TRANSIENT_RETRIES + 1):
            self.sent = [0, 0]
            try:
                return self._attempt()
            except psycopg2.Error as exc:
                self.messages.put(("rewind", self.id, tuple(self.sent)))
                self._rollback()
                if not is_transient(exc) or attempt == TRANSIENT_RETRIES:
                    code = f" (SQLSTATE {exc.pgcode})" if exc.pgcode else ""
                    raise DatabaseError(f"worker {self.id}: {_first_line(exc)}{code}") from exc
                self.messages.put(("retry", self.id, f"{_first_line(exc)}; retry {attempt + 1}"))
                time.sleep(min(BACKOFF_START * 2 ** attempt, BACKOFF_MAX))
                self._reconnect(exc)
        return False

    def _attempt(self) -> bool:
        cfg = self.cfg
        with self.conn.cursor() as cur:
            row = ledger.claim_task(cur, cfg.schema, cfg.load_id)
            if row is None:
                self.conn.rollback()
                return False
            task_id, file_id, parts, _nrows = row
            path, per_table = cfg.enc_plan[file_id]
            self.messages.put(("task", self.id, (task_id, os.path.basename(path))))
            sums: dict = {}
            ranges = {}
            for _hdu, table, start, stop in parts:      # a joined table has one part per HDU
                ranges[table] = (start, stop)
            try:
                fh = self.handles.get(path) or self.handles.setdefault(path, open(path, "rb"))
                work = [(per_table[t][0], per_table[t][1], per_table[t][2], start, stop)
                        for t, (start, stop) in ranges.items()]
                got = copy_parts(cur, cfg.schema, path, fh, work, cfg.fmt, self.on_block, cfg.checksum)
                for hdu_index, value in got.items():
                    sums.setdefault(str(hdu_index), []).append(value)
            except (LoaderError, OSError) as exc:
                self.conn.rollback()
                self.messages.put(("rewind", self.id, tuple(self.sent)))
                reason = str(exc) if isinstance(exc, LoaderError) else f"{path}: {exc}"
                ledger.fail_task(self.conn, cfg.schema, cfg.load_id, task_id, self.name, reason)
                self.messages.put(("failed", self.id, (task_id, reason)))
                return True
            ledger.finish_task(cur, cfg.schema, cfg.load_id, task_id, self.name, sums)
        self.conn.commit()
        self.messages.put(("done", self.id, task_id))
        return True

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except psycopg2.Error:
            pass

    def _reconnect(self, exc: BaseException) -> None:
        lost = isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) and exc.pgcode is None
        if self.conn is None or self.conn.closed or lost:
            try:
                self.conn.close()
            except Exception:
                pass
            try:
                self.conn = connect(self.cfg.dsn, f"desi-loader worker {self.id}")
            except DatabaseError:
                self.conn = _Closed()


class _Closed:
    """Stands in for a connection that could not be re-opened; using it raises a transient error."""

    closed = True

    def cursor(self):
        raise psycopg2.OperationalError("no connection to the server")

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
