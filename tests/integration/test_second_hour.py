"""The second hour of a new user: read-only APIs start nothing, commands keep their word,
hints name the target and the argument they need, help says what every argument is."""
import argparse
import io
import json
import os
import subprocess
import sys

from pathlib import Path

import pytest

from desi_loader import cli, display
from desi_loader.progress import PlainReporter
from desi_loader.tap import dachs

ROOT = Path(__file__).resolve().parents[2]

def _empty_home_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "XDG_", "DESI_LOADER_"))}
    env["HOME"] = str(home)
    return env

def test_query_in_an_empty_home_starts_nothing_and_says_how(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = ("from desi_loader import query\n"
            "from desi_loader.errors import QueryError\n"
            "try:\n    query('SELECT 1')\nexcept QueryError as exc:\n    print('QueryError:', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_empty_home_env(home),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "QueryError: no embedded server" in proc.stdout and "hint: load first" in proc.stdout
    assert not (home / ".local" / "share" / "desi-loader" / "pgdata").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(home) not in ps, "a server was started in the empty home"

def test_bench_takes_its_help_and_options(capsys):
    assert cli.main(["bench", "--help"]) == 0
    assert "--only" in capsys.readouterr().out
    assert cli.main(["bench", "-h"]) == 0
    assert cli.main(["-v", "bench", "--help"]) == 0

def test_a_typo_shows_the_commands_own_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["cone", "150", "30", "5", "--limt", "3"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage: desi-loader cone" in err and "unrecognized arguments: --limt 3" in err

def test_every_argument_of_every_command_says_what_it_is():
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    undescribed = [f"{name} {a.dest}" for name, sub in subs.choices.items() for a in sub._actions
                   if not isinstance(a, argparse._HelpAction) and not a.help]
    assert not undescribed, undescribed
    server = subs.choices["server"].format_help()
    for action in ("start", "stop", "url", "psql"):
        assert f"\n  {action} " in server

def test_plurals():
    assert display.plural(2, "match") == "2 matches" and display.plural(1, "match") == "1 match"
    assert display.plural(2, "row") == "2 rows"

def test_plain_progress_leaves_out_short_finalize_steps():
    stream = io.StringIO()
    r = PlainReporter(stream)
    for i in range(20):
        r.step(f"t: index {i}", "start")
        r.step(f"t: index {i}", "done in 0.1 s")
    assert stream.getvalue() == ""
    r.step("t: statistics", "start")
    r.step_started["t: statistics"] -= 60
    r.step("t: statistics", "done in 60.0 s")
    assert stream.getvalue().count("\n") == 1 and "statistics: done in 60.0 s" in stream.getvalue()

def test_tap_url_finds_the_instance_published_with_tap_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["tap", "url"]) == 2
    err = capsys.readouterr().err
    assert "no TAP service" in err and "--tap-dir" in err
    elsewhere = tmp_path / "services" / "vo"
    elsewhere.mkdir(parents=True)
    (elsewhere / "instance.json").write_text(json.dumps({"host": "127.0.0.1", "port": 8123, "database": "x"}))
    dachs.remember(elsewhere)             # what tap publish --tap-dir services/vo records
    assert cli.main(["tap", "url"]) == 0
    assert capsys.readouterr().out.strip() == "http://127.0.0.1:8123/tap"
    from desi_loader import tap_url
    assert tap_url() == "http://127.0.0.1:8123/tap"
    (elsewhere / "instance.json").unlink()
    with pytest.raises(Exception, match="--tap-dir"):
        tap_url()

@pytest.mark.slow
def test_hints_after_a_load_name_its_database_and_missing_tables_are_named(tmp_path, pg_uri, schema, capsys):
    from desi_loader.samples.fastspecfit import write_fastspecfit_sample
    write_fastspecfit_sample(str(tmp_path), rows=30, files=1)
    assert cli.main(["load", str(tmp_path), "--dsn", pg_uri, "--schema", schema, "--workers", "1"]) == 0
    out = capsys.readouterr().out
    hint = [line for line in out.splitlines() if line.startswith("query it:")][0]
    assert "--dsn" in hint and f"{schema}.fastspecfit_metadata" in hint
    assert cli.main(["cone", "150", "30", "5", "--table", "nosuch", "--schema", schema, "--dsn", pg_uri]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["cone", "150", "30", "5", "--table", "fastspecfit_specphot", "--schema", schema,
                     "--dsn", pg_uri]) == 2
    assert "has no sky index" in capsys.readouterr().err

def test_help_links_work_offline():
    for name, page in cli.GUIDE.items():
        assert Path(cli.guide_link(name)).is_file(), (name, page)


def test_export_from_python_says_what_the_command_says(tmp_path, pg_uri):
    """desi_loader.export keeps its docstring's word as the command does: a file that cannot
    be written is a UsageError naming it (not an OSError), and a query the server refuses
    is a QueryError with the caret under the refused name of the text sent, parameters
    filled in."""
    from desi_loader import export
    from desi_loader.errors import QueryError, UsageError
    long_name = tmp_path / ("x" * 300 + ".csv")                # the file system refuses the name
    with pytest.raises(UsageError, match=r"--output .*: File name too long \(hint: choose a file"):
        export("SELECT 1 AS one", str(long_name), dsn=pg_uri)
    with pytest.raises(QueryError) as refused:
        export("SELECT %s AS a, nosuch FROM generate_series(1, 2)", str(tmp_path / "r.csv"),
               ("a long parameter value",), dsn=pg_uri)
    lines = str(refused.value).splitlines()
    sent = next(ln for ln in lines if "generate_series" in ln)
    caret = lines[lines.index(sent) + 1]
    assert sent[caret.index("^"):].startswith("nosuch"), lines
    assert not (tmp_path / "r.csv").exists()
    assert export("SELECT %s AS a", str(tmp_path / "ok.csv"), (7,), dsn=pg_uri) == 1


def test_server_shrink_gives_back_the_wal_files_kept_for_the_next_load(pg_uri):
    """After a checkpoint the embedded server keeps the WAL it wrote as future segments (up to
    max_wal_size=32GB); shrink removes them, leaves wal_recycle as it was, and the data."""
    import psycopg2
    from desi_loader.servers import embedded

    def wal(cur) -> int:
        cur.execute("SELECT coalesce(sum(size), 0) FROM pg_ls_waldir()")
        return int(cur.fetchone()[0])
    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("DROP TABLE IF EXISTS shrink_me; CREATE TABLE shrink_me (pad text)")
            cur.execute("INSERT INTO shrink_me SELECT repeat(md5(g::text), 60) FROM generate_series(1, 60000) g")
            cur.execute("CHECKPOINT")
            kept = wal(cur)
            assert kept > 100e6, kept                      # the rows written to WAL, kept
            before, after = embedded.shrink_wal(pg_uri)
            assert before >= kept and after == wal(cur) and after <= 48e6, (kept, before, after)
            cur.execute("SHOW wal_recycle")
            assert cur.fetchone()[0] == "on"
            cur.execute("SELECT count(*) FROM shrink_me")
            assert cur.fetchone()[0] == 60000
            cur.execute("DROP TABLE shrink_me")
    finally:
        conn.close()
