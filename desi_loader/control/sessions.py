"""A loader's server session: its connection (re-opened after a server restart, the load
re-locked, idempotent steps retried), the load's advisory lock (shared while copying, alone
to finalize, resume or abort), and the forensics that tell which sessions belong to a load
and whether their client process still lives (application_name, pg_stat_activity).

No SQL on the loader's own tables here: ``Session`` asks its subclass (ledger.Ledger) for
the OID its lock keys are built from (``_load_oid``).
"""
from __future__ import annotations

import logging
import os
import re
import socket
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, TypeVar

import psycopg2
from psycopg2 import sql

from ..db import connect
from ..errors import UsageError
from .retry import DEFAULT_BUDGET, Backoff, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")

#: key of the advisory lock serialising DDL of the ledger tables between loaders
SETUP_LOCK = 0x6465_7369  # 'desi'

#: advisory-lock sub-key serialising the opening of loads in one schema (load ids start at 1)
_OPEN = 0

def process_name() -> str:
    """host:pid of this process, as it appears in application_name and the ledger."""
    return f"{socket.gethostname()}:{os.getpid()}"


def app_name(role: str, tag: str = "-") -> str:
    """``application_name`` of a loader connection: load tag, role, host:pid.

    A later run reads it in pg_stat_activity to tell which sessions belong to a load and
    whether their client process still exists (same host: does the pid exist?).
    """
    return f"desi-loader {tag} {role} {process_name()}"[:63]


def parse_app_name(name: str) -> Optional[tuple[str, str, str, int]]:
    """(tag, role, host, pid) of a loader's application_name; None for anything else."""
    m = re.match(r"^desi-loader (\S+) (\S+) (.+):(\d+)$", name or "")
    return (m.group(1), m.group(2), m.group(3), int(m.group(4))) if m else None


def client_alive(host: str, pid: int) -> Optional[bool]:
    """Whether the loader process host:pid exists: True/False on this host, None elsewhere."""
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Tx:
    """A transaction a Session opened (``Session.transaction``): the ledger's statements given
    it run in it and leave the commit to the ``with`` block; without one, each runs in its own."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn


class Session:
    """One connection of a loader process and the load it works on (``load_id``: None until
    bound); the advisory lock of that load and the sessions of its other processes."""

    def __init__(self, dsn: str, schema: str, role: str = "coordinator", budget: float = DEFAULT_BUDGET,
                 notify: Optional[Callable[[str], None]] = None, alive: Callable[[], bool] = lambda: True) -> None:
        self.dsn, self.schema, self.role = dsn, schema, role
        self.budget, self.notify = budget, notify or log.warning    # how long to wait out the server (retry.py)
        self.alive = alive                                          # False: stop waiting (a worker orphaned)
        self.load_id: Optional[int] = None
        self.locked = False
        self.shared = False
        self._oid: Optional[int] = None
        self._open: Optional[Tx] = None       # the transaction transaction() holds open, if any
        self.conn = connect(dsn, app_name(role))

    def close(self) -> None:
        if not self.conn.closed:
            self.conn.close()

    def _end(self, tx: Optional[Tx]) -> None:
        """End a statement's work: commit it when it ran in its own transaction (``tx`` None);
        inside the caller's ``tx`` the caller commits.  A statement given no ``tx`` while a
        transaction is open is a bug (it would commit the caller's work): it raises."""
        if tx is not None:
            return
        if self._open is not None:
            raise RuntimeError("a ledger statement without the open transaction: pass it tx")
        self.conn.commit()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """A transaction the statements given its Tx run in; committed at the end of the block,
        rolled back on an exception."""
        if self._open is not None:
            raise RuntimeError("a transaction is open already")
        tx = self._open = Tx(self.conn)
        try:
            yield tx
            self._open = None
            self.conn.commit()
        except BaseException:
            self._open = None
            try:
                self.conn.rollback()
            except psycopg2.Error:
                pass
            raise

    def _run(self, text: str, args: tuple = (), tx: Optional[Tx] = None) -> Any:
        """One statement (``{s}`` is the schema), in ``tx`` or its own transaction; its rows, if any."""
        with self.conn.cursor() as cur:
            cur.execute(sql.SQL(text).format(s=sql.Identifier(self.schema)), args)
            rows = cur.fetchall() if cur.description else None
        self._end(tx)
        return rows

    def bound_id(self) -> int:
        """The load this session works on (bind or start first)."""
        if self.load_id is None:
            raise RuntimeError("no load bound to this session")
        return self.load_id

    @property
    def tag(self) -> str:
        """Short name of the load for application_name: L<load id>@<oid of loader_loads>."""
        return f"L{self.load_id}@{self._oid}" if self.load_id is not None else "-"

    def _key(self, n: int) -> int:
        if self._oid is None:
            raise RuntimeError("the ledger's OID is not known yet (ensure_tables or bind first)")
        key = (self._oid << 32) | (n & 0xFFFF_FFFF)
        return key - (1 << 64) if key >= 1 << 63 else key

    @property
    def lock_key(self) -> int:
        """The load's advisory-lock key, unique on the server.

        Advisory locks are per database; the OID of this schema's ``loader_loads`` is
        unique within the database, so (oid, load id) names one load of one schema.
        Every process working on the load holds it shared; its finalizer holds it alone.
        """
        return self._key(self.bound_id())

    def bind(self, load_id: int, tx: Optional[Tx] = None) -> "Session":
        """Work on load ``load_id`` from now on (names this connection after it)."""
        if self._oid is None:
            self._load_oid(tx)
        self.load_id = load_id
        with self.conn.cursor() as cur:
            cur.execute("SET application_name = %s", (app_name(self.role, self.tag),))
        self._end(tx)
        return self

    def reconnect(self) -> None:
        """Re-open the connection if the server dropped it, re-taking the load's lock."""
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT 1")
            self.conn.commit()
            return
        except psycopg2.Error:
            try:
                self.conn.close()
            except psycopg2.Error:
                pass
        def connected() -> None:
            self.conn = connect(self.dsn, app_name(self.role, self.tag))
        # silent: whoever called this has said that it waits (resilient, a worker's task)
        retrying(connected, Backoff(f"{self.role} (reconnect)", self.budget, log.info, alive=self.alive))
        if self.locked and not self._try_lock():
            raise UsageError(f"load {self.load_id} was taken over by another process while the "
                             "server restarted")
        if self.shared:
            self.shared = False
            self.hold_shared()

    def resilient(self, step: Callable[[], T], what: str = "step") -> T:
        """Run ``step()``; after a transient error (server restart, lost connection, lock
        timeout) wait (retry.py), reconnect, re-lock and run it again, within the session's
        budget.  Steps given here are idempotent."""
        return retrying(step, Backoff(what, self.budget, self.notify, alive=self.alive), self.reconnect)

    def lock_open(self, tx: Tx) -> None:
        """Serialise opening loads in this schema until the current transaction ends.

        Finding an unfinished load and starting a new one then happen atomically: two
        processes started at the same moment never create two loads of the same tables.
        """
        with tx.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SETUP_LOCK,))    # no ledger DDL meanwhile
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._key(_OPEN),))

    def _try_lock(self, tx: Optional[Tx] = None) -> bool:
        (ok,), = self._run("SELECT pg_try_advisory_lock(%s)", (self.lock_key,), tx)
        return ok

    def try_lock(self, tx: Optional[Tx] = None) -> bool:
        """Take the load's lock alone: no other process works on it (finalize, resume, abort).
        A session-level lock: it outlives ``tx``."""
        self.locked = self._try_lock(tx) or self.locked
        return self.locked

    def unlock(self, tx: Optional[Tx] = None) -> None:
        """Give up the exclusive lock taken by try_lock."""
        if self.locked:
            self._run("SELECT pg_advisory_unlock(%s)", (self.lock_key,), tx)
            self.locked = False

    def hold_shared(self, tx: Optional[Tx] = None) -> bool:
        """Take the load's lock shared (a process that copies); False while a finalizer holds it."""
        (ok,), = self._run("SELECT pg_try_advisory_lock_shared(%s)", (self.lock_key,), tx)
        self.shared = self.shared or ok
        return ok

    def release_shared(self) -> None:
        """Release every shared hold of the load's lock taken by hold_shared."""
        while self.shared and self._run("SELECT pg_advisory_unlock_shared(%s)", (self.lock_key,))[0][0]:
            pass
        self.shared = False

    def sessions(self, tx: Optional[Tx] = None) -> list:
        """Server sessions of this load's processes: (pid, tag, role, host, client pid, state, since, holds)."""
        hi, lo = (self.lock_key >> 32) & 0xFFFF_FFFF, self.lock_key & 0xFFFF_FFFF
        rows = self._run(
            "SELECT a.pid, a.application_name, a.state, a.state_change, "
            "(SELECT string_agg(l.mode, ',') FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory' "
            " AND l.granted AND l.classid = %s::bigint::oid AND l.objid = %s::bigint::oid AND l.objsubid = 1) "
            "FROM pg_stat_activity a WHERE a.application_name LIKE %s AND a.pid <> pg_backend_pid()",
            (hi, lo, f"desi-loader {self.tag} %"), tx)
        out = []
        for pid, name, state, since, holds in rows:
            parsed = parse_app_name(name)
            if parsed:
                out.append((pid, *parsed, state, since, holds))
        return out

    def end_orphans(self, tx: Optional[Tx] = None) -> list:
        """End the server sessions of this load whose client process provably died.

        A killed loader's session lives on until it next talks to its client: a finalize
        statement (ANALYZE, CREATE INDEX) or a lock wait can keep it, and its locks, for
        minutes.  Sessions of a process on this host that no longer exists are ended
        (``pg_terminate_backend`` needs only the same role); others are left alone.
        Returns the host:pid of the processes whose sessions were ended.
        """
        ended = []
        for pid, _tag, _role, host, cpid, _state, _since, _holds in self.sessions(tx):
            if client_alive(host, cpid) is False:
                terminate = ("SELECT pg_terminate_backend(%s, 5000)" if self.conn.server_version >= 140000
                             else "SELECT pg_terminate_backend(%s)")     # 14+: waits until the session is gone
                try:
                    self._guarded(terminate, (pid,), tx)
                except psycopg2.Error as exc:        # not ours to end (another role): leave it
                    log.info("could not end session %s of %s:%s: %s", pid, host, cpid, exc)
                    continue
                ended.append(f"{host}:{cpid}")
        return sorted(set(ended))

    def _guarded(self, text: str, args: tuple, tx: Optional[Tx]) -> None:
        """A statement that may fail without failing ``tx`` (a savepoint inside it)."""
        if tx is None:
            try:
                self._run(text, args)
            except psycopg2.Error:
                self.conn.rollback()
                raise
            return
        with self.conn.cursor() as cur:
            cur.execute("SAVEPOINT desi_loader_guard")
            try:
                cur.execute(text, args)
            except psycopg2.Error:
                cur.execute("ROLLBACK TO SAVEPOINT desi_loader_guard")
                raise
            cur.execute("RELEASE SAVEPOINT desi_loader_guard")

    def holders(self, tx: Optional[Tx] = None) -> list:
        """'host:pid (role)' of the processes whose sessions hold this load's lock."""
        return sorted({f"{host}:{cpid} ({role})" for _p, _t, role, host, cpid, _s, _since, holds
                       in self.sessions(tx) if holds})

    def _load_oid(self, tx: Optional[Tx] = None) -> bool:      # ledger.Ledger: the OID of loader_loads
        raise NotImplementedError
