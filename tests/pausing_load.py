"""``desi-loader load ARGS`` that stops at a named point and waits there to be killed: the
fault tests' rendezvous, so a kill lands exactly where the test says, whatever the speed of
the machine.

    python tests/pausing_load.py POINT MARKER ARGS...

POINT is a phase of the load (open, copy, verify, index, durable, foreign_keys, swap, ...;
the process has written the phase to its ledger when it stops) or ``task@N`` (this process's
workers have committed N tasks; they go on copying while the coordinator waits).  At the
point the process writes its pid to MARKER and sleeps; a run that never reaches the point
finishes as usual.  The seam is the reporter the load is given (desi_loader.cli.main's
``reporter``), nothing in the library reads the environment for it.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from desi_loader.cli import main  # noqa: E402
from desi_loader.progress import PlainReporter  # noqa: E402


class Pausing(PlainReporter):
    def __init__(self, point: str, marker: str) -> None:
        super().__init__()
        self.point, self.marker, self.done = point, marker, 0

    def _stop(self, where: str) -> None:
        tmp = self.marker + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {where}\n")
        os.replace(tmp, self.marker)
        while True:                       # until the test kills this process
            time.sleep(60)

    def phase(self, name: str) -> None:
        super().phase(name)
        if name == self.point:
            self._stop(name)

    def task_done(self, worker: int, task) -> None:
        self.done += 1
        if self.point == f"task@{self.done}":
            self._stop(self.point)


if __name__ == "__main__":
    point, marker, *args = sys.argv[1:]
    sys.exit(main(["load", *args], reporter=Pausing(point, marker)))
