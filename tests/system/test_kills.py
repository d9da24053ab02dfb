"""Repeated kills, as a batch system that kills and requeues jobs: no rerun is refused, nothing lost."""
import os
import signal

import pytest

from desi_loader.samples.fastspecfit import write_fastspecfit_file
from nodes import assert_exact, kill_node, node, paused, q

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

NAMES = [f"fastspec-iron-main-bright-nside1-hp{i:02d}.fits" for i in range(3)]
#: Where the kills land, in turn: a phase (the process has recorded it in its ledger and
#: stops there) or task@N (this run's workers have committed N tasks and go on copying while
#: the coordinator waits).  Each run resumes what the runs before left (or, after a
#: publication, loads everything again: --replace-all); a point a run does not reach (no
#: task left to copy) lets it finish, and the next point is tried on the next run.
POINTS = ["task@1", "task@3", "verify", "index", "task@2", "durable", "index", "swap", "task@1", "verify",
          "durable", "swap"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kills")
    return [write_fastspecfit_file(str(d / n), 300, seed=40 + i) for i, n in enumerate(NAMES)]


def _kill(proc, whole):
    if whole:
        kill_node(proc)
    else:                                    # the coordinator alone: its workers and sessions orphaned
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)


@pytest.mark.parametrize("whole", [True, False], ids=["process-group", "coordinator-only"])
def test_repeated_kills_never_refused_and_exact(files, pg_uri, schema, whole, tmp_path):
    """kill -9 at each point of POINTS in turn (a rendezvous: the kill lands where the test
    says, on a fast machine or a busy one), every rerun accepted, then the catalog exact."""
    hit = []
    for i, point in enumerate(POINTS):
        marker = tmp_path / f"paused-{i}"
        p = node(files, pg_uri, schema, "--replace-all", "--staging", "unlogged", delay="0.01", workers=2,
                 task_rows=40, pause=(point, marker))
        if paused(p, marker):
            assert marker.read_text().split()[1] == point
            _kill(p, whole)
            hit.append(point.split("@")[0])
            err = ""
        else:
            _out, err = p.communicate()
            assert p.returncode == 0, err[-2000:]
            hit.append("finished")
        assert "being run by another process" not in err and "error:" not in err, err[-2000:]
    final = node(files, pg_uri, schema, delay=0, workers=2)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-2000:]
    assert_exact(pg_uri, schema, files)
    assert q(pg_uri, f"SELECT count(*) FROM \"{schema}\".loader_loads WHERE status = 'running'") == [(0,)]
    killed = [h for h in hit if h != "finished"]
    # the rendezvous makes these hold on any machine: the points a run reaches are reached
    assert {"task", "verify", "index", "durable", "swap"} <= set(killed), hit
    assert len(killed) >= 8, hit
    print("kills landed in:", hit)
