"""``desi-loader load ARGS`` with a test's faults, passed in explicitly (cli.main's ``reporter``
and ``faults``; nothing in the library reads the environment for them):

    python tests/loader_node.py [--pause POINT MARKER] [--block-delay S] [--fail-file NAME] ARGS...

``--pause``: the load stops at POINT and waits there to be killed, the fault tests'
rendezvous, so a kill lands exactly where the test says whatever the speed of the machine.
POINT is a phase of the load (open, copy, verify, index, durable, foreign_keys, swap, ...;
the process has written the phase to its ledger when it stops) or ``task@N`` (this process's
workers have committed N tasks; they go on copying while the coordinator waits).  At the point
the process writes "PID POINT" to MARKER and sleeps; a run that never reaches the point
finishes as usual.  ``--block-delay``: each worker sleeps S seconds after each block (a kill
or a server restart then lands mid-load).  ``--fail-file``: tasks of that file raise an
unexpected error, as a bug would.
"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from desi_loader.cli import main  # noqa: E402
from desi_loader.control.options import Faults  # noqa: E402
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


def parse(argv: list) -> tuple:
    reporter, delay, fail = None, 0.0, ""
    while argv and argv[0] in ("--pause", "--block-delay", "--fail-file"):
        flag = argv.pop(0)
        if flag == "--pause":
            reporter = Pausing(argv.pop(0), argv.pop(0))
        elif flag == "--block-delay":
            delay = float(argv.pop(0))
        else:
            fail = argv.pop(0)
    return reporter, Faults(block_delay=delay, fail_file=fail), argv


if __name__ == "__main__":
    reporter, faults, args = parse(sys.argv[1:])
    sys.exit(main(["load", *args], reporter=reporter, faults=faults))
