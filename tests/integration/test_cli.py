"""CLI: user errors are one line with a hint and a non-zero exit; the main job runs."""
import json
import os
import subprocess
import sys

import pytest


from desi_loader.cli import main
from nodes import ROOT



def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err):
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.strip() and " phase " not in l]
    assert len(lines) in (1, 2), lines
    assert lines[0].startswith("error: ")
    assert len(lines) == 1 or lines[1].startswith("  hint: ")


def test_missing_path(capsys, pg_uri):
    code, _, err = run_cli(capsys, "load", "/no/such/dir", "--dsn", pg_uri)
    assert code == 2
    assert "/no/such/dir: no such file or directory" in err
    assert_one_line_error(err)


def test_directory_without_fits(capsys, tmp_path, pg_uri):
    (tmp_path / "notes.txt").write_text("hi")
    code, _, err = run_cli(capsys, "load", str(tmp_path), "--dsn", pg_uri)
    assert code == 2 and "no FITS files found" in err
    assert_one_line_error(err)


def test_not_a_fits_file(capsys, tmp_path, pg_uri):
    bad = tmp_path / "fastspec-iron-main-bright-nside1-hp00.fits"
    bad.write_bytes(b"this is not FITS" * 100)
    code, _, err = run_cli(capsys, "load", str(bad), "--dsn", pg_uri)
    assert code == 1 and "Traceback" not in err
    assert "  fastspec-iron-main-bright-nside1-hp00.fits: not a FITS file" in err


def test_unknown_catalog(capsys, tmp_path, pg_uri):
    from astropy.table import Table
    Table({"A": [1]}).write(tmp_path / "x.fits")
    code, _, err = run_cli(capsys, "load", str(tmp_path / "x.fits"), "--catalog", "nosuch", "--dsn", pg_uri)
    assert code == 2 and "unknown catalog 'nosuch'" in err and "fastspecfit" in err
    assert_one_line_error(err)


def test_unreachable_server_and_password_masked(capsys, tmp_path):
    from astropy.table import Table
    Table({"A": [1]}).write(tmp_path / "x.fits")
    dsn = "postgresql://someone:s3cret-pw@127.0.0.1:1/desi"
    code, out, err = run_cli(capsys, "load", str(tmp_path / "x.fits"), "--prefix", "x", "--dsn", dsn)
    assert code == 3 and "cannot connect" in err
    assert "s3cret-pw" not in err + out
    assert_one_line_error(err)


def test_dry_run_prints_plan_without_database(capsys, tmp_path):
    from desi_loader.samples.fastspecfit import write_fastspecfit_sample
    write_fastspecfit_sample(str(tmp_path), rows=20, files=3)
    code, out, _ = run_cli(capsys, "load", str(tmp_path), "--dry-run", "--dsn", "host=/nonexistent")
    assert code == 0
    # three files of 20 rows each: 60 (before file ids became the load's, every file of a dry
    # run had file_id 0 and the plan's counts collapsed to one file's 20)
    assert ("fastspecfit_metadata: 70 columns, key (targetid, survey, program), sky index hpx29 of (ra, dec), "
            "60 rows") in out.replace("\n", " ")
    assert "dry run: nothing loaded" in out


@pytest.mark.slow
def test_main_job_script_on_sample(tmp_path, pg_uri):
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    js = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "load.py"), "--sample",
                           "--sample-rows", "50", "--sample-files", "2", "--workers", "2", "--dsn", pg_uri,
                           "--schema", "cli_main", "--summary-json", str(js)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "fastspecfit_fastspec" in proc.stdout and "verified" in proc.stdout
    summary = json.loads(js.read_text())
    fsf = [l for l in summary["loads"] if l["catalog"] == "fastspecfit"][0]
    assert fsf["total_rows"] == 300 and fsf["verified"] and fsf["durable"]
    assert set(fsf["phases"]) >= {"plan", "open", "copy", "verify", "index", "swap"}
    assert "logged staging" in fsf["durable_path"]          # no SET LOGGED rewrite needed
    assert {l["catalog"] for l in summary["loads"]} == {"fastspecfit", "desivast"}
    code = subprocess.run([sys.executable, "-m", "desi_loader.cli", "sql",
                           "SELECT count(*) FROM cli_main.fastspecfit_metadata", "--dsn", pg_uri],
                          capture_output=True, text=True, timeout=60)
    assert code.returncode == 0 and "100" in code.stdout
    # the same command again: every file is published and unchanged
    again = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "load.py"), "--sample",
                            "--sample-rows", "50", "--sample-files", "2", "--workers", "2", "--dsn", pg_uri,
                            "--schema", "cli_main"], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "fastspecfit: all 2 files are published and unchanged" in again.stdout
    assert "desivast: all 8 files are published and unchanged" in again.stdout


def test_astropy_imports_after_the_cli_set_up_logging():
    """The CLI imports astropy only where a command needs it; setting up its logging first
    must not break astropy's import (a plain logger named "astropy" did: its AstropyLogger
    lacked _set_defaults, and every load failed in read_info)."""
    code = ("import logging, sys; from desi_loader.cli import main; "
            "assert 'astropy' not in sys.modules, 'the CLI imports astropy before a command needs it'; "
            "main([]); import astropy.io.fits; "
            "print(type(logging.getLogger('astropy')).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("AstropyLogger")


def test_distribute_names_a_table_of_the_load(capsys, tmp_path):
    from desi_loader.samples.fastspecfit import write_fastspecfit_sample
    write_fastspecfit_sample(str(tmp_path), rows=20, files=1)
    code, _, err = run_cli(capsys, "load", str(tmp_path), "--dry-run", "--dsn", "host=/nonexistent",
                           "--distribute", "fastspec=reference")
    assert code == 2 and "--distribute names no table of this load: fastspec" in err
    code, _, err = run_cli(capsys, "load", str(tmp_path), "--dry-run", "--dsn", "host=/nonexistent",
                           "--distribute", "fastspecfit_fastspec=hash(nope)")
    assert code == 2 and "distribution column 'nope' is not one of its columns" in err
    code, out, _ = run_cli(capsys, "load", str(tmp_path), "--dry-run", "--dsn", "host=/nonexistent",
                           "--distribute", "fastspecfit_fastspec=local")
    assert code == 0
