"""HPC batch jobs: several loader processes ("nodes", own process groups) on one load."""
import os
import signal
import time

import pytest

from desi_loader.samples.fastspecfit import write_fastspecfit_file
from nodes import assert_exact, done_tasks, kill_node, node, q, secret_files, summaries, wait_until

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

NAMES = [f"fastspec-iron-main-bright-nside1-hp{i:02d}.fits" for i in range(3)]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("nodes")
    return [write_fastspecfit_file(str(d / n), 400, seed=20 + i) for i, n in enumerate(NAMES)]


def test_three_nodes_one_plan_one_finalize_exact(files, pg_uri, schema, tmp_path):
    js = [tmp_path / f"n{i}.json" for i in range(3)]
    procs = [node(files, pg_uri, schema, summary=js[i]) for i in range(3)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1][-1500:] for o in outs]
    assert q(pg_uri, f'SELECT count(*), min(status) FROM "{schema}".loader_loads') == [(1, "published")]
    runs = summaries(js)
    assert sum(r["finalized"] for r in runs) == 1                      # exactly one finalize
    finalizer = next(r["process"] for r in runs if r["finalized"])
    assert all(r["published_by"] == finalizer for r in runs)
    assert sum(r["node_rows"] for r in runs) == 3 * 1200              # every row loaded by exactly one node
    assert sum(1 for r in runs if r["node_rows"]) >= 2                # the work was shared
    assert all(r["rows"] == {"fastspecfit_fastspec": 1200, "fastspecfit_metadata": 1200,
                             "fastspecfit_specphot": 1200} for r in runs)
    assert_exact(pg_uri, schema, files)


def test_node_killed_mid_load_others_finish(files, pg_uri, schema):
    a = node(files, pg_uri, schema, workers=2)
    wait_until(lambda: done_tasks(pg_uri, schema) >= 2, [a])
    b = node(files, pg_uri, schema)
    wait_until(lambda: done_tasks(pg_uri, schema) >= 6, [a, b])
    kill_node(a)                                     # the whole node dies: coordinator and workers
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0, err[-2000:]
    assert_exact(pg_uri, schema, files)


def test_sigterm_stops_cleanly_then_rerun(files, pg_uri, schema):
    before = set(secret_files())
    a = node(files, pg_uri, schema, workers=2)
    wait_until(lambda: done_tasks(pg_uri, schema) >= 2, [a])
    out, err = kill_node(a, signal.SIGTERM)          # a scheduler's time limit: the whole job step
    assert a.returncode == 143, err[-2000:]
    assert "interrupted (SIGTERM)" in err and "rerun the same command" in err
    assert "Traceback" not in err
    assert set(secret_files()) <= before              # nothing left in the temporary directory
    assert q(pg_uri, f'SELECT status FROM "{schema}".loader_loads') == [("running",)]
    b = node(files, pg_uri, schema, delay=0)
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0, err[-2000:]
    assert "resuming load" in out + err
    assert_exact(pg_uri, schema, files)


def test_rerun_right_after_kill_in_index_phase(files, pg_uri, schema):
    a = node(files, pg_uri, schema, delay=0, workers=2)
    wait_until(lambda: q(pg_uri, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                         ("desi-loader % finalize %",))[0][0] > 0, [a], poll=0.005)
    kill_node(a)
    b = node(files, pg_uri, schema, delay=0)          # at once: the killed run's sessions may still live
    out, err = b.communicate(timeout=300)
    assert b.returncode == 0, err[-2000:]
    assert_exact(pg_uri, schema, files)


def test_two_schemas_at_once(files, pg_uri, schema):
    other = schema + "_b"
    try:
        a, b = node(files, pg_uri, schema, delay=0), node(files, pg_uri, other, delay=0)
        for p in (a, b):
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-2000:]
        assert_exact(pg_uri, schema, files)
        assert_exact(pg_uri, other, files)
    finally:
        q(pg_uri, f'DROP SCHEMA IF EXISTS "{other}" CASCADE')


def test_join_needs_a_running_load_and_the_same_files(files, pg_uri, schema):
    p = node(files, pg_uri, schema, "--join", delay=0)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "no unfinished load" in err
    a = node(files, pg_uri, schema, workers=1, delay="0.05")
    wait_until(lambda: done_tasks(pg_uri, schema) >= 1, [a])
    b = node(files[:2], pg_uri, schema, "--join", delay=0)
    out, err = b.communicate(timeout=120)
    assert b.returncode == 2 and "loads other files than these" in err
    c = node(files, pg_uri, schema, "--join", delay=0)
    out, err = c.communicate(timeout=300)
    assert c.returncode == 0, err[-2000:]
    assert a.wait(timeout=300) == 0
    assert_exact(pg_uri, schema, files)


def test_status_shows_processes_of_a_running_load(files, pg_uri, schema):
    import subprocess
    import sys
    a = node(files, pg_uri, schema, workers=2, delay="0.05")
    try:
        wait_until(lambda: done_tasks(pg_uri, schema) >= 1, [a])
        st = subprocess.run([sys.executable, "-m", "desi_loader.cli", "status", "--dsn", pg_uri, "--schema", schema],
                            capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"))
        assert st.returncode == 0, st.stderr
        assert f":{a.pid}" in st.stdout and "coordinator" in st.stdout and "worker" in st.stdout
        assert "done so far" in st.stdout
    finally:
        kill_node(a)
    time.sleep(0)


def _damaged_copies(files, d):
    """The good files plus a truncated one and a non-FITS one, in folder ``d``."""
    import shutil
    os.makedirs(d, exist_ok=True)
    for f in files[:2]:
        shutil.copy2(f, d)
    data = open(files[2], "rb").read()
    bad = [os.path.join(d, NAMES[2]), os.path.join(d, "fastspec-iron-main-dark-nside1-hp09.fits")]
    open(bad[0], "wb").write(data[:len(data) // 2])
    open(bad[1], "wb").write(b"<html>not found</html>\n" * 50)
    return bad


def test_resume_and_join_name_damaged_files(files, pg_uri, schema, tmp_path):
    """The contract across resume and join: damaged files among the paths of a resumed load and of
    two cooperating nodes are named by every process, which exit 1 (nothing published), then
    --allow-partial publishes exactly the good files (exit 4)."""
    d = str(tmp_path / "in")
    bad = _damaged_copies(files, d)
    # a node killed mid-copy, then the same command resumes: the damaged files are named
    proc = node([d], pg_uri, schema)
    wait_until(lambda: done_tasks(pg_uri, schema) >= 2, [proc])
    kill_node(proc)
    rerun = node([d], pg_uri, schema, delay=0)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 1, err
    assert "resuming load" in out + err
    for path in bad:
        assert os.path.basename(path) in err, err
    # two nodes join the same (failing) load: both exit 1 and name the damaged files
    procs = [node([d], pg_uri, schema, delay=0) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [1, 1], outs
    for _, err in outs:
        assert "Traceback" not in err
        assert all(os.path.basename(path) in err for path in bad), err
    # a process that only waits for the finalizer reads the reason from the ledger: the load
    # is never "failed" there without it (it was, for a moment, and a busy machine showed it)
    (error,), = q(pg_uri, f'SELECT error FROM "{schema}".loader_loads ORDER BY load_id DESC LIMIT 1')
    assert all(os.path.basename(path) in error for path in bad), error
    # --allow-partial on two nodes: published without them, exit 4 everywhere
    js = [tmp_path / f"n{i}.json" for i in range(2)]
    procs = [node([d], pg_uri, schema, "--allow-partial", delay=0, summary=js[i]) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [4, 4], outs
    for _, err in outs:
        assert all(os.path.basename(path) in err for path in bad), err
    assert_exact(pg_uri, schema, files[:2])
