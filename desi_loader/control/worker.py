"""Worker processes: claim a task, COPY its rows, mark it done, in one transaction.

A worker opens its connection after it starts (never inherited across fork), reports
counts to the coordinator through a queue, and exits when no task is left, when its
coordinator is gone, or on a permanent database error.  Transient errors (connection
lost, server restarting, too many connections, deadlock) are retried as retry.py says
(within --wait-timeout); the failed transaction rolled back, so a retry never duplicates rows.
"""
from __future__ import annotations

import ctypes
import dataclasses
import importlib
import os
import pickle
import re
import resource
import signal
import time
import traceback
from dataclasses import dataclass
from typing import Optional, TYPE_CHECKING

import psycopg2

from ..pipeline.copy import copy_statement, send
from ..db import first_line, is_transient
from .retry import DEFAULT_BUDGET, Backoff, retrying
from ..errors import DatabaseError, LoaderError
from .ledger import Ledger
from .options import Faults
from . import settle
from ..fits.read import decompressed
from ..pipeline.stream import ReadAhead, Scratch, TaskStream, copy_out_paths, sky_first, tee

if TYPE_CHECKING:
    from ..db import Cursor

@dataclass(frozen=True)
class WorkerConfig:
    """What every worker of a load gets (pickled once at spawn)."""

    schema: str
    load_id: int
    fmt: str
    checksum: bool
    encodings: dict       # file name -> pipeline.encodings.FileEncoding
    parent_pid: int
    copy_out: Optional[str] = None    # directory for the exact COPY bytes of every task (debugging)
    faults: Faults = Faults()         # a test's injected faults (options.Faults); none in normal use
    wait_timeout: float = DEFAULT_BUDGET   # how long a task waits out the server (retry.py)
    settle: bool = False              # set the hint bits of each task's pages after its commit (settle.py)
    commit_wait: bool = True          # a task's commit waits for its WAL flush (target.task_commits_wait)

    def coordinator_alive(self) -> bool:
        """False once the process that spawned the workers is gone (they are orphaned)."""
        return os.getppid() == self.parent_pid


#: Signals that stop a load: the coordinator handles them and stops its workers.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def worker_main(worker_id: int, dsn: Optional[str], cfg_path, messages, preload: tuple = ()) -> None:
    """Body of a worker process; its WorkerConfig is pickled in the file ``cfg_path`` (or, for
    a spare worker (pool.Spares), ``cfg_path`` is a pipe on which it receives the DSN and the
    file's name; None there, or the pipe closed: not needed, exit); a spare imports the
    modules named in ``preload`` (pyarrow for Parquet inputs) while it waits.

    The configuration (with every column's encoder fields) comes from a file rather than
    through the spawn pipe, so starting a worker does not wait for the previous one to
    boot: all workers start in parallel.  The DSN (it may hold a password) comes through
    the pipe and never touches a disk.
    """
    for sig in STOP_SIGNALS:                 # Ctrl-C, scancel, hang-up: the coordinator's business
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, set(STOP_SIGNALS))
    keep_freed_memory()
    if not isinstance(cfg_path, str):
        for module in preload:
            try:
                importlib.import_module(module)
            except ImportError:          # said when a file is read (fits/arrow.pyarrow)
                break
        try:
            given = cfg_path.recv()
        except (EOFError, OSError):
            given = None
        if given is None:
            return
        dsn, cfg_path = given
    assert dsn is not None
    with open(cfg_path, "rb") as f:
        cfg = pickle.load(f)
    messages.put(("ready", worker_id, None))
    state = _State(worker_id, cfg, messages)
    try:
        state._ledger = _connect(worker_id, dsn, cfg, messages)
        while cfg.coordinator_alive() and state.run_one():
            pass
        messages.put(("exit", worker_id, (peak_rss_kb(), round(state.cpu, 3))))
    except DatabaseError as exc:
        messages.put(("fatal", worker_id, str(exc)))
    except KeyboardInterrupt:
        pass
    finally:
        state.close()


def _connect(worker_id: int, dsn: str, cfg: WorkerConfig, messages) -> Ledger:
    """The worker's session, bound to the load; a server that restarts (or fails over) while
    the worker starts is waited out as retry.py says, like a connection lost later (a worker
    that boots slowly on a busy node met a restart's "the database system is shutting down")."""
    def session() -> Ledger:
        ledger = Ledger(dsn, cfg.schema, f"worker{worker_id}", budget=cfg.wait_timeout, alive=cfg.coordinator_alive)
        try:
            return ledger.bind(cfg.load_id)
        except BaseException:
            ledger.close()
            raise
    return retrying(session, Backoff(f"worker {worker_id}", cfg.wait_timeout,
                                     lambda text: messages.put(("retry", worker_id, text)),
                                     alive=cfg.coordinator_alive))


#: glibc mallopt parameters: blocks above MMAP_THRESHOLD get their own mapping; free memory
#: at the top of the heap above TRIM_THRESHOLD goes back to the kernel
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Let glibc reuse freed blocks instead of mapping fresh pages for every block.

    A worker allocates and frees blocks of a few MB all the time (FITS rows, character
    matrices, the COPY bytes).  glibc serves those from fresh mmaps, so every block starts
    with page faults: 35,594 minor faults and 0.13 s of 0.67 s of client CPU for 4 x 5,000
    FastSpecFit rows in text (0 faults and 0.54 s with these settings).  The price is that
    a worker keeps up to ``trim_threshold`` of freed memory until it exits.  False where
    malloc is not glibc's (nothing changes there).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))


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
        self._ledger: Optional[Ledger] = None
        self.handles: dict = {}
        self.sent = [0, 0]
        self.stream: Optional[TaskStream] = None   # the task's stream being sent (its sky orders name rows)
        self.current: dict = {}               # the parts (by table) being sent now
        self.scratch = Scratch()              # what the tasks' sky-ordered parts are read into
        self.cpu = 0.0                        # CPU seconds (all threads) spent on tasks

    @property
    def conn(self):
        return self.ledger.conn

    @property
    def ledger(self) -> Ledger:
        """The worker's session (connected at the start of worker_main)."""
        if self._ledger is None:
            raise RuntimeError("the worker is not connected yet")
        return self._ledger

    def close(self) -> None:
        for fh in self.handles.values():
            fh.close()
        if self._ledger is not None:
            self._ledger.close()

    def on_block(self, rows: int, nbytes: int) -> None:
        if self.cfg.faults.block_delay:
            time.sleep(self.cfg.faults.block_delay)
        self.sent[0] += rows
        self.sent[1] += nbytes
        self.messages.put(("rows", self.id, (rows, nbytes)))

    def run_one(self) -> bool:
        """Claim and load one task; False when none is left."""
        t0 = time.process_time()
        try:
            return self._run_one()
        finally:
            self.cpu += time.process_time() - t0

    def _run_one(self) -> bool:
        backoff = Backoff(f"worker {self.id}", self.cfg.wait_timeout,
                          lambda text: self.messages.put(("retry", self.id, text)),
                          alive=self.cfg.coordinator_alive)      # no waiting on for a dead coordinator
        while True:
            self.sent = [0, 0]
            try:
                return self._attempt()
            except psycopg2.Error as exc:
                self.messages.put(("rewind", self.id, tuple(self.sent)))
                self._rollback()
                if not backoff.wait(exc, is_transient):
                    code = f" (SQLSTATE {exc.pgcode})" if exc.pgcode else ""
                    raise DatabaseError(f"worker {self.id}: {first_line(exc)}{code}") from exc
                self._reconnect()

    def _copy(self, cur: Cursor, task_id: int, path: str, by_table: dict, fh, chunk: int = 0) -> tuple[dict, dict]:
        """Stream the task's parts into staging: ({hdu index: [partial sum]}, {table: rows})."""
        cfg = self.cfg
        tables = sky_first(by_table)
        sources = [part for _, part in tables]
        self.current = by_table
        if cfg.faults.fail_file and os.path.basename(path) == cfg.faults.fail_file:
            raise RuntimeError("injected fault (Faults.fail_file)")
        self.stream = stream = TaskStream(path, fh, sources, cfg.fmt, self.on_block, cfg.checksum, self.scratch)
        blocks = iter(stream)
        statements = [copy_statement(cfg.schema, p.staging, [f.name for f in p.fields], cfg.fmt) for p in sources]
        if cfg.copy_out:
            outs = copy_out_paths(cfg.copy_out, task_id, sources, cfg.fmt, chunk)
            for out, stmt in zip(outs, statements):       # the statement that replays it (columns in copy order)
                with open(out + ".sql", "w") as f:
                    f.write(stmt.as_string(self.conn) + "\n")
            blocks = tee(blocks, outs)
        reader = ReadAhead(blocks)
        try:
            counts = send(cur, statements, reader)
        finally:
            reader.close()
            stream.close()
        return {str(i): [v] for i, v in stream.hdu_sums().items()}, dict(zip((t for t, _ in tables), counts))

    def _attempt(self) -> bool:
        with self.conn.cursor() as cur:
            if not self.cfg.commit_wait:
                cur.execute("SET LOCAL synchronous_commit TO off")
            task = self.ledger.claim(cur)
            if task is None:
                self.conn.rollback()
                return False
            enc = self.cfg.encodings[task.file]
            task_id, path, sources = task.task_id, enc.path, enc.sources(task)
            self.current, self.stream = sources, None
            self.messages.put(("task", self.id, (task_id, task.file)))
            staging = sorted({p.staging for p in sources.values()})
            before = settle.extents(cur, self.cfg.schema, staging) if self.cfg.settle else None
            try:
                sums, rows = self._copy_task(cur, task_id, enc, sources)
            except Exception as exc:                  # noqa: BLE001 -- every task error is the task's
                if isinstance(exc, psycopg2.Error) and not is_data_error(exc):
                    raise                             # connection and server trouble: retried or fatal
                self.conn.rollback()
                self.messages.put(("rewind", self.id, tuple(self.sent)))
                reason = task_error(exc, path, self.current, self.stream.orders if self.stream else {})
                if not isinstance(exc, (LoaderError, psycopg2.Error)):
                    self.messages.put(("traceback", self.id, traceback.format_exc()))
                self.ledger.fail(task_id, self.name, reason)
                self.messages.put(("failed", self.id, (task_id, reason)))
                return True
            after = settle.extents(cur, self.cfg.schema, staging) if before is not None else {}
            self.ledger.finish(cur, task_id, self.name, sums, rows)
        self.conn.commit()
        self.messages.put(("done", self.id, task_id))
        if before is not None:
            self._settle(before, after)
        return True

    def _settle(self, before: dict, after: dict) -> None:
        """Hint bits of the committed task's pages (settle.py); a failure here costs WAL later,
        never data: the next claim meets a lost connection and retries as usual."""
        try:
            with self.conn.cursor() as cur:
                settle.settle(cur, self.cfg.schema, before, after)
            self.conn.commit()
        except psycopg2.Error:
            self._rollback()

    def _copy_task(self, cur: Cursor, task_id: int, enc, sources: dict) -> tuple[dict, dict]:
        """All of a task's rows, in one transaction: a plain file's task in one go; a gzip
        file's (the whole file) decompressed once into a temporary file, then in chunks."""
        path = enc.path
        if not enc.compressed:
            fh = self.handles.get(path) or self.handles.setdefault(path, open(path, "rb"))
            return self._copy(cur, task_id, path, sources, fh)
        sums: dict = {}
        rows: dict = {}
        with decompressed(path) as fh:
            for k, chunk in enumerate(chunks(sources)):
                s, r = self._copy(cur, task_id, path, chunk, fh, k)
                for hdu, v in s.items():
                    sums.setdefault(hdu, []).extend(v)
                for t, n in r.items():
                    rows[t] = rows.get(t, 0) + n
        return sums, rows

    def _rollback(self) -> None:
        try:
            self.conn.rollback()
        except psycopg2.Error:
            pass

    def _reconnect(self) -> None:
        try:
            self.ledger.reconnect()
        except DatabaseError:
            self.ledger.conn = _Closed()     # a stand-in until the next reconnect


#: SQLSTATE classes of a value or row the server refuses: data exceptions (22), integrity
#: violations (23, e.g. a CHECK a DBA put on the table), program limits (54, a row too big).
#: They fail the task (and so its file), not the load.
DATA_ERROR_CLASSES = ("22", "23", "54")
_COPY_CONTEXT = re.compile(r"COPY (?P<table>[^,]+), line (?P<line>\d+)(?:, column (?P<column>[^:]+))?")


def is_data_error(exc: psycopg2.Error) -> bool:
    return bool(exc.pgcode) and exc.pgcode[:2] in DATA_ERROR_CLASSES


def locate(exc: psycopg2.Error, path: str, by_table: dict, orders: Optional[dict] = None) -> str:
    """The server's refusal of a COPY, told as file, HDU, row and column of the FITS file.

    PostgreSQL names the COPY's line (its row, 1-based, in binary format too) and often the
    column; the task's part for that staging table says which FITS rows the COPY held.
    """
    where = path
    m = _COPY_CONTEXT.search(getattr(exc.diag, "context", None) or "")
    part = next((p for p in by_table.values() if m and p.staging == m.group("table").strip('"')), None)
    if m and part is not None:
        line = int(m.group("line")) - 1
        order = (orders or {}).get((part.start, part.stop))  # rows sent in sky order
        row = part.start + (int(order[line]) if order is not None and line < len(order) else line)
        hdus = " + ".join(f"HDU {h.index} ({h.extname})" for h in part.hdus)
        where = f"{path}: {hdus}, row {row}" + (f", column {m.group('column').upper()}" if m.group("column") else "")
    return (f"{where}: the server refused the value: {first_line(exc)} (SQLSTATE {exc.pgcode}); "
            "fix the file or the table's constraint, then rerun")


#: Rows of a gzip file's task go to the server in chunks of about this many FITS bytes
#: (a chunk's sky order is held in memory, like a plain file's task of discover.TASK_BYTES).
CHUNK_BYTES = 256 * 1024 * 1024


def chunks(sources: dict, chunk_bytes: int = CHUNK_BYTES) -> list:
    """A task's parts ({table: PartSource}) as chunks of at most ``chunk_bytes`` of rows each;
    parts over the same rows (row-aligned HDUs) stay together in every chunk."""
    groups: dict = {}
    for table, part in sources.items():
        groups.setdefault((part.start, part.stop), {})[table] = part
    out = []
    for (start, stop), parts in groups.items():
        width = sum(h.block_bytes for p in parts.values() for h in p.hdus)
        step = max(1, chunk_bytes // max(width, 1))
        for s in range(start, stop, step) if stop > start else [start]:
            e = min(stop, s + step)
            out.append({t: dataclasses.replace(p, start=s, stop=e) for t, p in parts.items()})
    return out


def describe_parts(by_table: dict) -> str:
    """'HDU 1 (METADATA) + HDU 2 (SPECPHOT), rows 0-999' for a task's parts."""
    parts = list(by_table.values())
    hdus = " + ".join(f"HDU {h.index} ({h.extname})" for p in parts for h in p.hdus)
    spans = sorted({(p.start, p.stop) for p in parts})
    rows = ", ".join(f"rows {a}-{b - 1}" if b > a else "no rows" for a, b in spans)
    return f"{hdus}, {rows}"


def task_error(exc: Exception, path: str, by_table: dict, orders: Optional[dict] = None) -> str:
    """One line naming file, HDU and rows for whatever made a task fail.

    A problem of the file (LoaderError) or a value the server refused says where itself;
    anything else (a bug, an unexpected file layout) is a failure of this task, not a
    dead worker: deterministic, so it is not retried, and its traceback goes to the
    coordinator's log (shown with -v).
    """
    if isinstance(exc, psycopg2.Error):
        return locate(exc, path, by_table, orders)
    if isinstance(exc, LoaderError):
        return f"{exc} ({exc.hint})" if exc.hint else str(exc)
    what = f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)
    return (f"{path}: {describe_parts(by_table)}: {what} (an unexpected error; rerun with -v for the "
            "traceback and report it)")


class _Closed:
    """Stands in for a connection that could not be re-opened; using it raises a transient error."""

    closed = True

    def cursor(self):
        raise psycopg2.OperationalError("no connection to the server")

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass
