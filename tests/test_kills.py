"""Repeated kills, as a batch system that kills and requeues jobs: no rerun is refused, nothing lost."""
import os
import random
import signal
import time

import pytest

from desi_loader.samples.fastspecfit import write_fastspecfit_file
from nodes import assert_exact, kill_node, node, q

NAMES = [f"fastspec-iron-main-bright-nside1-hp{i:02d}.fits" for i in range(3)]
#: Phases a kill is aimed at, in turn; "copy@N" waits for N done tasks.  Phases a run
#: passes too fast to be seen are hit by the kill at a random moment instead.
TARGETS = ["copy@1", "copy@5", "copy@9", "verify", "index", "index", "durable", "swap", "copy@3", "index",
           "durable", "verify"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("kills")
    return [write_fastspecfit_file(str(d / n), 300, seed=40 + i) for i, n in enumerate(NAMES)]


def _state(dsn, schema):
    try:
        rows = q(dsn, f"""SELECT l.phase, (SELECT count(*) FROM "{schema}".loader_tasks t
                          WHERE t.load_id = l.load_id AND t.status = 'done')
                          FROM "{schema}".loader_loads l WHERE l.status = 'running'""")
    except Exception:
        return None, 0
    return rows[0] if rows else (None, 0)


def _aim(proc, dsn, schema, target, deadline):
    """Wait until the run reaches ``target`` (or the deadline); returns the phase it was in."""
    phase_wanted, _, n = target.partition("@")
    while time.time() < deadline and proc.poll() is None:
        phase, done = _state(dsn, schema)
        if phase_wanted == "copy" and phase is None and done >= int(n):
            return "copy"
        if phase == phase_wanted:
            return phase
        time.sleep(0.003)
    return _state(dsn, schema)[0] or "copy/open"


def _kill(proc, whole):
    if whole:
        kill_node(proc)
    else:                                    # the coordinator alone: its workers and sessions orphaned
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=120)


@pytest.mark.parametrize("whole", [True, False], ids=["process-group", "coordinator-only"])
def test_repeated_kills_never_refused_and_exact(files, pg_uri, schema, whole):
    rng = random.Random(7 if whole else 8)
    hit = []
    for target in TARGETS:
        # --replace-all: every run after a publication loads everything again (not "nothing to load")
        p = node(files, pg_uri, schema, "--replace-all", "--staging", "unlogged", delay="0.01", workers=2, task_rows=40, phase_delay=0.3)
        # copy: a random moment (0.3-7 s); a finalize phase: a random moment inside it
        wait = rng.uniform(0.3, 7) if target.startswith("copy") else 120
        where = _aim(p, pg_uri, schema, target, time.time() + wait)
        if not target.startswith("copy"):
            time.sleep(rng.uniform(0, 0.4))
        out_err = None
        if p.poll() is None:
            _kill(p, whole)
            hit.append(where)
        else:
            out_err = p.communicate()
            assert p.returncode == 0, out_err[1][-2000:]
            hit.append("finished")
        err = out_err[1] if out_err else ""
        assert "being run by another process" not in err and "error:" not in err, err[-2000:]
    final = node(files, pg_uri, schema, delay=0, workers=2)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err[-2000:]
    assert_exact(pg_uri, schema, files)
    assert q(pg_uri, f"SELECT count(*) FROM \"{schema}\".loader_loads WHERE status = 'running'") == [(0,)]
    killed = [h for h in hit if h != "finished"]
    assert len(killed) >= 10, hit
    assert {"copy", "index"} <= set(killed) and len(set(killed) & {"verify", "durable", "swap"}) >= 2, hit
    print("kills landed in:", hit)
