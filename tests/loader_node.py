"""``desi-loader load ARGS`` with a test's faults, passed in explicitly (cli.main's ``reporter``
and ``faults``; nothing in the library reads the environment for them):

    python tests/loader_node.py [--pause POINT MARKER] [--hold POINT MARKER]... [--block-delay S]
                                [--fail-file NAME] ARGS...

``--pause``: the load stops at POINT and waits there to be killed, the fault tests'
rendezvous, so a kill lands exactly where the test says whatever the speed of the machine.
POINT is a phase of the load (open, copy, verify, index, durable, foreign_keys, swap, ...;
the process has written the phase to its ledger when it stops) or ``task@N`` (this process's
workers have committed N tasks; they go on copying while the coordinator waits).  At the point
the process writes "PID POINT" to MARKER and sleeps; a run that never reaches the point
finishes as usual.  ``--hold``: the same, but the process goes on once the test creates
MARKER.go (several may be given, each met once); POINT may also be ``step:TEXT``, the start of
the first finalize step whose label holds TEXT ("step:fastspecfit_fastspec: index").
``--block-delay``: each worker sleeps S seconds after each block (a kill
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
    """Stops at each point of ``points`` [(point, marker, hold)]: forever (a pause, until
    killed) or until the test creates marker + ".go" (a hold)."""

    def __init__(self, points: list) -> None:
        super().__init__()
        self.points, self.done = list(points), 0

    def _meet(self, matches) -> None:
        for entry in list(self.points):
            point, marker, hold = entry
            if not matches(point):
                continue
            self.points.remove(entry)
            tmp = marker + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{os.getpid()} {point}\n")
            os.replace(tmp, marker)
            while not (hold and os.path.exists(marker + ".go")):   # a pause: until the test kills us
                time.sleep(0.05)

    def phase(self, name: str) -> None:
        super().phase(name)
        self._meet(lambda point: point == name)

    def task_done(self, worker: int, task) -> None:
        self.done += 1
        self._meet(lambda point: point == f"task@{self.done}")
        super().task_done(worker, task)

    def step(self, what: str, state: str) -> None:
        super().step(what, state)
        if state == "start":
            self._meet(lambda point: point.startswith("step:") and point[5:] in what)


def parse(argv: list) -> tuple:
    points, delay, fail = [], 0.0, ""
    while argv and argv[0] in ("--pause", "--hold", "--block-delay", "--fail-file"):
        flag = argv.pop(0)
        if flag in ("--pause", "--hold"):
            points.append((argv.pop(0), argv.pop(0), flag == "--hold"))
        elif flag == "--block-delay":
            delay = float(argv.pop(0))
        else:
            fail = argv.pop(0)
    return (Pausing(points) if points else None), Faults(block_delay=delay, fail_file=fail), argv


if __name__ == "__main__":
    reporter, faults, args = parse(sys.argv[1:])
    sys.exit(main(["load", *args], reporter=reporter, faults=faults))
