"""Helpers for tests that run loader processes as separate "nodes" (own process groups)."""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import psycopg2
from astropy.io import fits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TABLES = ("fastspecfit_metadata", "fastspecfit_specphot", "fastspecfit_fastspec")


def _default_signals():
    # a suite started in the background inherits SIGINT ignored; the loaders need the default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def node(paths, dsn, schema, *extra, delay="0.02", workers=1, summary=None, task_rows=50,
         new_session=True, pause=None, holds=()):
    """Start one loader process in its own session (process group), like a node of a batch job
    (``new_session=False``: in the test's process group, as a command typed in a shell).
    ``delay``: seconds each worker sleeps after each block; ``pause=(POINT, MARKER)``: it stops
    at POINT and waits to be killed; ``holds=[(POINT, MARKER)]``: it stops at each POINT until
    ``release(MARKER)`` (all passed explicitly, by tests/loader_node.py)."""
    faults = ["--block-delay", str(delay)] + (["--pause", pause[0], str(pause[1])] if pause else [])
    for point, marker in holds:
        faults += ["--hold", point, str(marker)]
    cmd = [sys.executable, os.path.join(ROOT, "tests", "loader_node.py"), *faults, *map(str, paths), "--dsn", dsn,
           "--schema", schema, "--workers", str(workers), "--task-rows", str(task_rows), *extra]
    if summary:
        cmd += ["--summary-json", str(summary)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=new_session, preexec_fn=_default_signals)


def paused(proc, marker, timeout=600) -> bool:
    """Wait until a ``node(..., pause=...)`` process reached its point (True) or ended (False).
    A rendezvous, not a race: the only way to fail is a process that hangs past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker):
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            raise AssertionError(f"the loader neither reached its pause point nor ended in {timeout} s")
        time.sleep(0.05)
    return True


def release(marker) -> None:
    """Let a process held at ``marker``'s point (node(..., holds=...)) go on."""
    open(f"{marker}.go", "w").close()


def kill_node(proc, sig=signal.SIGKILL):
    """Kill a node's whole process group (its coordinator and workers)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    return proc.communicate(timeout=120)


def q(dsn, sql, args=None, user=None):
    """Rows of one statement (None for a command), committed; ``user`` connects as that role."""
    if user:
        dsn = dsn.replace("postgres:@", f"{user}:@")
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            rows = cur.fetchall() if cur.description else None
        conn.commit()
        return rows
    finally:
        conn.close()


def done_tasks(dsn, schema):
    try:
        return q(dsn, f"SELECT count(*) FROM \"{schema}\".loader_tasks WHERE status = 'done'")[0][0]
    except psycopg2.Error:
        return 0


def wait_until(cond, procs=(), timeout=120, poll=0.01):
    t0 = time.time()
    while not cond():
        for p in procs:
            assert p.poll() is None, p.communicate()
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(poll)


def assert_exact(dsn, schema, files):
    """Every row once, and every value of TARGETID, Z, RA (float8) and LOGMSTAR (float4) as in the files."""
    for path in files:
        name = os.path.basename(path)
        with fits.open(path) as h:
            meta, sp = h["METADATA"].data, h["SPECPHOT"].data
        rows = q(dsn, f'SELECT m.row_num, m.targetid, float8send(m.z), float8send(m.ra), float4send(s.logmstar) '
                      f'FROM "{schema}".fastspecfit_metadata m JOIN "{schema}".fastspecfit_specphot s '
                      f'USING (file_id, row_num, targetid) JOIN "{schema}".load_files f USING (file_id) '
                      f'WHERE f.filename = %s ORDER BY m.row_num', (name,))
        assert [r[0] for r in rows] == list(range(len(meta))), name
        assert [r[1] for r in rows] == [int(t) for t in meta["TARGETID"]], name
        assert b"".join(bytes(r[2]) for r in rows) == np.asarray(meta["Z"], ">f8").tobytes(), name
        assert b"".join(bytes(r[3]) for r in rows) == np.asarray(meta["RA"], ">f8").tobytes(), name
        assert b"".join(bytes(r[4]) for r in rows) == np.asarray(sp["LOGMSTAR"], ">f4").tobytes(), name
    total = sum(fits.getheader(p, "METADATA")["NAXIS2"] for p in files)
    for t in TABLES:
        (n, distinct), = q(dsn, f'SELECT count(*), count(DISTINCT (file_id, row_num)) FROM "{schema}".{t}')
        assert n == distinct == total, t
    assert q(dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename ~ '__(load|old)[0-9]+$'",
             (schema,)) == [(0,)]


def assert_rows_once(dsn, schema, nrows):
    """Each FastSpecFit table holds ``nrows`` rows, every (file_id, row_num) once."""
    for t in TABLES:
        (n, distinct), = q(dsn, f'SELECT count(*), count(DISTINCT (file_id, row_num)) FROM "{schema}".{t}')
        assert n == distinct == nrows, t


def summaries(paths):
    return [json.load(open(p))["loads"][0] for p in paths]


def secret_files():
    """Configuration files of worker pools left in the temporary directory."""
    return glob.glob(os.path.join(tempfile.gettempdir(), "desi-loader-*.pickle"))
