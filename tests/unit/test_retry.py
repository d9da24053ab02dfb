"""The one retry policy (control/retry.py), on a fake clock: a time budget rather than a count
of attempts, jittered exponential delays, one line per wait, and who gives up when."""
import psycopg2
import pytest

from desi_loader.control.retry import CAP, FIRST, Backoff, delay, retrying, transient
from desi_loader.errors import DatabaseError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, secs: float) -> None:
        self.slept.append(secs)
        self.now += secs


def backoff(budget: float, draw: float = 0.5, lines=None) -> tuple:
    clock = Clock()
    lines = [] if lines is None else lines
    return Backoff("worker 1", budget, lines.append, clock=clock, sleep=clock.sleep, draw=lambda: draw), clock, lines


LOST = psycopg2.OperationalError("server closed the connection unexpectedly")


def test_delays_double_from_first_to_the_cap_within_their_upper_half():
    assert [delay(a, 0.0) for a in range(7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [delay(a, 0.999999) for a in range(7)] == pytest.approx([0.5, 1, 2, 4, 8, 16, 16], rel=1e-5)
    assert delay(10_000, 0.5) == 0.75 * CAP and delay(0, 0.5) == 0.75 * FIRST


def test_a_wait_lasts_the_budget_not_a_number_of_attempts():
    b, clock, lines = backoff(budget=300.0)
    tries = 0
    while b.wait(LOST):
        tries += 1
    assert clock.now == pytest.approx(300.0)          # the last sleep is cut to what is left
    assert tries > 20                                  # far more than the old 8 attempts
    assert max(clock.slept) == 0.75 * CAP
    assert len(lines) == 1 and "worker 1: waiting for the server since" in lines[0]
    assert "server closed the connection unexpectedly" in lines[0] and "300 s" in lines[0]


def test_errors_a_retry_cannot_cure_give_up_at_once():
    b, clock, lines = backoff(budget=300.0)
    assert not b.wait(psycopg2.ProgrammingError("syntax error"))
    assert clock.slept == [] and lines == []


def test_transient_sees_through_connect_wrapping():
    wrapped = DatabaseError("cannot connect")
    wrapped.__cause__ = LOST
    assert transient(wrapped) and transient(LOST)
    assert not transient(DatabaseError("no such schema")) and not transient(ValueError("x"))


def test_retrying_reconnects_between_tries_and_raises_the_last_error_when_spent():
    b, clock, _ = backoff(budget=5.0)
    calls, reconnects = [], []

    def step():
        calls.append(clock.now)
        if len(calls) < 4:
            raise LOST
        return "done"
    assert retrying(step, b, lambda: reconnects.append(1)) == "done"
    assert len(calls) == 4 and len(reconnects) == 3

    b, clock, _ = backoff(budget=5.0)

    def never():
        raise psycopg2.OperationalError("the database system is shutting down")
    with pytest.raises(psycopg2.OperationalError, match="shutting down"):
        retrying(never, b, lambda: None)
    assert clock.now == pytest.approx(5.0)


def test_a_reconnect_that_fails_transiently_waits_again():
    b, clock, _ = backoff(budget=60.0)
    state = {"up": False, "tries": 0}

    def step():
        state["tries"] += 1
        if not state["up"]:
            raise LOST
        return state["tries"]

    def reconnect():
        if clock.now < 20:
            raise DatabaseError("cannot connect") from LOST
        state["up"] = True
    assert retrying(step, b, reconnect) > 3
    assert clock.now >= 20


def test_a_waiter_whose_owner_is_gone_stops_waiting():
    clock = Clock()
    owner = {"alive": True}
    b = Backoff("worker 1", 3600.0, lambda line: None, clock=clock, sleep=clock.sleep, draw=lambda: 0.5,
                alive=lambda: owner["alive"])
    assert b.wait(LOST) and b.wait(LOST)
    owner["alive"] = False                             # the coordinator died during the outage
    assert not b.wait(LOST)
    assert clock.now < 5
