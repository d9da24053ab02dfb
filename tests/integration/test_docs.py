"""The documentation site builds with warnings as errors and holds every option and the API;
a new user's walk runs the README's and the guide's examples as written (the pages' text is
checked in tests/unit/test_docs_pages.py)."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from docs_examples import ROOT, all_blocks, commands, example, sql_statements

from desi_loader.cli import build_parser


def _long_options() -> dict:
    """command -> its long options ('' for the top level), from the parser itself."""
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {}
    for name, sub in [("", parser), *subs.choices.items()]:
        out[name] = {o for a in sub._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    return out


@pytest.mark.slow
def test_the_site_builds_with_warnings_as_errors_and_holds_every_option(tmp_path):
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cli = (out / "reference" / "cli.html").read_text()
    missing = [f"{c} {o}" for c, opts in _long_options().items() for o in opts if o not in cli]
    assert not missing, f"options missing from the command-line reference: {missing}"
    for command in _long_options():
        assert not command or f'id="desi-loader-{command}"' in cli, command
    api = (out / "reference" / "api.html").read_text()
    for name in ("desi_loader.load", "desi_loader.query", "desi_loader.export", "desi_loader.tap_url"):
        assert f'id="{name}"' in api, name
    assert "Parameters" in api and "Returns" in api
    changelog = (out / "changelog.html").read_text()
    from desi_loader import __version__
    assert __version__ in changelog and "left_out" in changelog


# -- the examples, run as written on a fresh machine -----------------------------------------

def _fresh_env(home: Path) -> dict:
    """A user's environment with an empty home: no DSN, no libpq variables."""
    env = {k: v for k, v in os.environ.items()
           if not (k.startswith(("PG", "XDG_", "DESI_LOADER_")))}
    env["HOME"] = str(home)
    return env


def _desi_loader(args: list, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "desi_loader.entry", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def _says_rows(args: list, proc: subprocess.CompletedProcess) -> bool:
    """Whether a query command's output holds rows (or wrote some, or counted some)."""
    if "-o" in args or "--output" in args:
        m = re.search(r"wrote ([\d,]+) rows?", proc.stderr)
        return bool(m) and int(m.group(1).replace(",", "")) > 0
    if "--count" in args:
        return int(proc.stdout.split()[-1]) > 0
    if "--explain" in args:
        return "Index" in proc.stdout
    return len([line for line in proc.stdout.splitlines() if line.strip()]) >= 2


def _run_block(name: str, env: dict, cwd: Path, dsn: str) -> None:
    for args in commands(example(name)):
        proc = _desi_loader(args, env, cwd)
        assert proc.returncode == 0, f"{name}: desi-loader {shlex.join(args)}\n{proc.stdout}\n{proc.stderr}"
        if args[0] in ("sql", "cone", "xmatch"):
            assert _says_rows(args, proc), f"{name}: desi-loader {shlex.join(args)} returned no rows\n{proc.stdout}"
        if args[0] == "coverage":
            assert re.search(r": [1-9][\d,]* rows in [1-9]", proc.stdout + proc.stderr), proc.stdout + proc.stderr


def _run_python(name: str, env: dict, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", example(name).code], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)
    assert proc.returncode == 0, f"{name}:\n{proc.stderr}"
    return proc.stdout


@pytest.mark.slow
def test_a_new_user_follows_the_readme_and_the_guide(tmp_path):
    """The README's quick start in an empty home (the embedded server, the sample), then every
    example of the README and the guide that reads the sample, as written: each command exits
    0 and each query returns rows; then the server stops and queries say so."""
    home = tmp_path / "home"
    home.mkdir()
    env = _fresh_env(home)
    quick = example("quick-start").code.strip().split("&&")[-1].split()
    assert quick[:2] == ["python", "scripts/load.py"]
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "load.py"), *quick[2:]], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "query it:" in proc.stdout
    try:
        uri = _desi_loader(["server", "url"], env, tmp_path).stdout.strip()
        for name in ("tour", "first-queries", "sql-commands", "cone-commands", "xmatch-commands",
                     "void-membership", "exports", "hats", "coverage"):
            _run_block(name, env, tmp_path, uri)
        assert "float32" in _run_python("first-python-query", env, tmp_path)
        _run_python("readme-query", env, tmp_path)
        conn = psycopg2.connect(uri)
        try:
            ran = 0
            for block in all_blocks():
                if block.kind == "example" and block.label == "sql":
                    with conn.cursor() as cur:
                        for statement in sql_statements(block):
                            cur.execute(statement)
                        assert cur.fetchall(), f"{block.page}:{block.line} returned no rows"
                    conn.rollback()
                    ran += 1
            assert ran >= 6
        finally:
            conn.close()
        _run_block("server-commands", env, tmp_path, uri)      # it ends with server stop
    finally:
        _run_block("stop-server", env, tmp_path, "")
    proc = _desi_loader(["sql", "SELECT 1"], env, tmp_path)
    assert proc.returncode == 2 and "not running" in proc.stderr
