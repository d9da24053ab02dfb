"""What the coordinator tells its user: the reporter interface (progress.py draws it)."""
from __future__ import annotations


class NullReporter:
    """Progress sink that shows nothing; the CLI passes a rich or plain-text subclass."""

    def phase(self, name: str) -> None:
        """A coordinator phase starts (plan, copy, verify, index, durable, swap, ...)."""

    def info(self, message: str) -> None:
        """A one-line message worth showing."""

    def start_copy(self, total_rows: int, total_bytes: int, workers: int) -> None:
        """The copy phase starts with ``workers`` local worker processes."""

    def advance(self, worker: int, rows: int, nbytes: int) -> None:
        """Worker ``worker`` sent ``rows`` rows of ``nbytes`` FITS bytes."""

    def rewind(self, worker: int, rows: int, nbytes: int) -> None:
        """Rows counted by ``advance`` were rolled back (worker died or retried)."""

    def task_done(self, worker: int, task) -> None:
        """Worker ``worker`` committed a task (its rows and its done mark)."""

    def worker_state(self, worker: int, state: str) -> None:
        """What a worker does now (its task, finished, stopped)."""

    def stop_copy(self) -> None:
        """The copy phase ended."""

    def step(self, what: str, state: str) -> None:
        """A step of the finalize (``what``: "table: index NAME", "table: ANALYZE") is at
        ``state``: "start", the server's progress ("building index 40%"), "done in 3.1 s"."""

    def close(self) -> None:
        """The load ended (published or not): stop any live display."""

    def warn(self, message: str) -> None:
        """Something the user should know about."""
