"""The one retry policy of the loader: which errors a retry can cure, how long to go on
trying, how long to wait between tries, and what the user is told.

- **Which**: ``transient`` — lost connections, a server starting up or shutting down, too
  many connections, serialization failures, deadlocks, lock timeouts (db.is_transient, by
  SQLSTATE), also when ``connect()`` wrapped them in a DatabaseError.
- **How long**: a time budget, ``--wait-timeout`` (an hour by default): a production
  server's restart or failover takes minutes, not a fixed number of attempts.
- **Between tries**: exponential backoff from FIRST doubling up to CAP seconds, each delay
  drawn in its upper half (jitter: the 16 workers of 64 nodes do not come back in step).
- **Told**: one line when a wait begins ("... waiting for the server since 14:02:07"), none
  per try; when the budget is spent the caller raises its own error.

Every caller (workers' tasks, the coordinator's reconnects and phases, the swap's lock
waits) uses ``Backoff``; nothing else sleeps to retry.
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, TypeVar

import psycopg2

from ..db import first_line, is_transient
from ..errors import DatabaseError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: first delay and the longest one, seconds
FIRST, CAP = 0.5, 16.0

#: the budget when the caller has none of its own (--wait-timeout's default)
DEFAULT_BUDGET = 3600.0


def transient(exc: BaseException) -> bool:
    """True for errors a reconnect and retry can cure (also when connect() wrapped them)."""
    if isinstance(exc, DatabaseError) and isinstance(exc.__cause__, psycopg2.Error):
        exc = exc.__cause__                  # connect() failed while the server restarts
    return isinstance(exc, psycopg2.Error) and is_transient(exc)


def delay(attempt: int, draw: float, first: float = FIRST, cap: float = CAP) -> float:
    """Seconds before try ``attempt + 1`` (``draw`` in [0, 1)): the upper half of
    min(cap, first * 2 ** attempt)."""
    base = min(cap, first * 2 ** min(attempt, 62))
    return base * (0.5 + 0.5 * draw)


@dataclass
class Backoff:
    """One stretch of retrying: ``wait(exc)`` after each failure sleeps and says True while
    the error is transient and the budget lasts, else False (the caller then raises)."""

    what: str                                          # who waits: "worker 3", "index phase"
    budget: float = DEFAULT_BUDGET
    notify: Callable[[str], None] = log.warning
    waiting_for: str = "the server"
    first: float = FIRST
    cap: float = CAP
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    draw: Callable[[], float] = random.random
    alive: Callable[[], bool] = lambda: True          # False: whoever waits for this is gone (a worker's coordinator)
    attempts: int = 0
    started: Optional[float] = field(default=None)

    def wait(self, exc: BaseException, cure: Callable[[BaseException], bool] = transient) -> bool:
        if not cure(exc) or not self.alive():
            return False
        now = self.clock()
        if self.started is None:
            self.started = now
            self.notify(f"{self.what}: waiting for {self.waiting_for} since {time.strftime('%H:%M:%S')} "
                        f"({first_line(exc)}); retrying for up to {self.budget:.0f} s")
        left = self.budget - (now - self.started)
        if left <= 0:
            return False
        self.sleep(min(delay(self.attempts, self.draw(), self.first, self.cap), left))
        self.attempts += 1
        log.debug("%s: try %d after %s", self.what, self.attempts + 1, first_line(exc))
        return True

    @property
    def waited(self) -> float:
        return 0.0 if self.started is None else self.clock() - self.started


def retrying(step: Callable[[], T], backoff: Backoff, between: Optional[Callable[[], None]] = None) -> T:
    """``step()`` until it succeeds; after a transient error ``backoff.wait`` then
    ``between()`` (reconnect, re-lock); the last error raised when the budget is spent."""
    while True:
        try:
            return step()
        except (psycopg2.Error, DatabaseError) as exc:
            if not backoff.wait(exc):
                raise
            if between is not None:
                try:
                    between()
                except (psycopg2.Error, DatabaseError) as again:
                    if not transient(again):
                        raise
                    # still down: the next try fails fast and waits again
