"""The SLURM recipe, run for real on a one-machine SLURM cluster (Debian's slurm-wlm + munge).

Three tasks of one job stand in for three nodes; the job is stopped with
``scancel --signal=TERM`` in the middle of the load, the recipe requeues itself, and the
requeued job finishes the load exactly.
"""
import os
import shutil
import subprocess
import sys
import time

import pytest

from desi_loader.samples.fastspecfit import write_fastspecfit_file
from nodes import ROOT, assert_exact, done_tasks, q

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

RECIPE = os.path.join(ROOT, "scripts", "slurm", "load.sbatch")
CLUSTER = os.path.join(ROOT, "scripts", "slurm", "test-cluster.sh")
MISSING = [exe for exe in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(exe) is None]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    if MISSING:
        # scripts/provision.sh installs them (CI always does); a machine where Debian packages
        # cannot be installed (not root, no apt) cannot run this test -- it fails, saying why
        pytest.fail(f"SLURM is not installed here ({', '.join(MISSING)} missing): run scripts/provision.sh "
                    "as root (it installs slurm-wlm and munge with apt-get)")
    d = tmp_path_factory.mktemp("slurm")
    out = subprocess.run([CLUSTER, "start", str(d)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    env = dict(os.environ, SLURM_CONF=str(d / "slurm.conf"))
    yield env, d
    subprocess.run([CLUSTER, "stop", str(d)], timeout=60)


def _job_state(env, jid):
    out = subprocess.run(["scontrol", "show", "job", jid], capture_output=True, text=True, env=env).stdout
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return fields.get("JobState"), int(fields.get("Restarts", 0))


def test_recipe_on_a_slurm_cluster_with_scancel_and_requeue(slurm, tmp_path, pg_uri, schema):
    env, d = slurm
    data = tmp_path / "data"
    data.mkdir()
    files = [write_fastspecfit_file(str(data / f"fastspec-iron-main-bright-nside1-hp{i:02d}.fits"), 300, seed=60 + i)
             for i in range(3)]
    env = dict(env, DESI_LOADER_DSN=pg_uri, DESI_DATA=str(data), DESI_LOADER_WORKERS="1",
               DESI_LOADER=f"{sys.executable} {os.path.join(ROOT, 'tests', 'loader_node.py')} --block-delay 0.03",
               DESI_LOADER_ARGS=f"--schema {schema} --task-rows 30")
    log = tmp_path / "job-%j.log"
    jid = subprocess.run(["sbatch", "--parsable", "--nodes=1", "--ntasks=3", "--ntasks-per-node=3",
                          "--cpus-per-task=1", f"--output={log}", RECIPE], capture_output=True, text=True,
                         env=env, check=True).stdout.strip()
    coordinators = ("SELECT count(DISTINCT application_name) FROM pg_stat_activity WHERE application_name LIKE %s",
                    ("desi-loader % coordinator %",))
    t0 = time.time()
    while done_tasks(pg_uri, schema) < 4 or q(pg_uri, *coordinators)[0][0] < 3:   # three tasks (nodes) share it
        assert time.time() - t0 < 120, (_job_state(env, jid), done_tasks(pg_uri, schema), q(pg_uri, *coordinators))
        time.sleep(0.05)
    subprocess.run(["scancel", "--signal=TERM", jid], env=env, check=True)
    t0, failed_since = time.time(), None     # the test cluster requeues after cred_expire=10 s
    while True:
        state, restarts = _job_state(env, jid)
        if state == "COMPLETED":
            break
        if state in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):    # for good, not on the way to requeue
            failed_since = failed_since or time.time()
            assert time.time() - failed_since < 15, (state, open(str(log).replace("%j", jid)).read())
        else:
            failed_since = None
        assert time.time() - t0 < 300, (state, restarts)
        time.sleep(0.5)
    text = open(str(log).replace("%j", jid)).read()
    assert restarts == 1, text
    assert "interrupted (SIGTERM)" in text and "requeued" in text, text
    assert "loaders exited with 0" in text, text
    assert q(pg_uri, f'SELECT count(*), min(status) FROM "{schema}".loader_loads') == [(1, "published")]
    assert_exact(pg_uri, schema, files)
