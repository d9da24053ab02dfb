"""The benchmark's smallest configuration runs end to end and writes its JSON and chart."""
import json
import os
import subprocess
import sys

from nodes import ROOT
import pytest

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long


# The sections that start services of their own (tap: DaCHS; citus: a 3-node cluster) are left
# out: 30 s of the suite's time for figures their system tests do not need.
SECTIONS = "copy,alternatives,nodes,whole,sky,export,statistics"


def test_bench_quick_writes_json_and_chart(tmp_path, pg_uri):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "bench.py"), "--quick", "--dsn", pg_uri,
                           "--out", str(out), "--only", SECTIONS],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    methods = {m["method"].split(" (")[0] for m in result["methods"]}
    assert {"ceiling binary", "desi-loader binary: copy phase", "astropy -> pandas -> to_csv -> copy_expert",
            "pandas.to_sql(method=None)", "original script, 12 columns"} <= methods
    assert all(m["rows_per_s"] > 0 for m in result["methods"])
    assert set(result["ratios"]) >= {"binary_w1_vs_ceiling_1_backend", "binary_vs_pandas_to_csv",
                                     "text_vs_pandas_to_csv", "original_12_columns_vs_original_script"}
    assert any(m["method"].endswith("processes x 1 worker: copy window") for m in result["methods"])
    assert any(k.endswith("_processes_vs_1_process_x_2_workers") or k.startswith("1_processes")
               for k in result["ratios"])
    assert result["nodes_estimate"]["copy_minutes"] > 0
    ratios = result["ratios"]                             # whole command, sky index, exports
    assert {"whole_server's_unlogged_vs_by_hand", "whole_server's_logged_vs_by_hand",
            "incremental_1_file_seconds_vs_full_reload", "sky_index_whole_load_cost"} <= set(ratios)
    assert any(m["method"].startswith("export vot:") for m in result["methods"])
    split = result["time_split"]["text"]                  # where the time goes, per worker count
    assert split["encode_s"] > 0 and split["server_parse_cpu_s"] > 0
    assert split["w1"]["workers_cpu_s"] > 0 and split["w1"]["bound_s"] > 0
    assert result["machine"]["cores"] and result["machine"]["server"]["server_version"]
    assert (out / "bench.png").stat().st_size > 1000
    stats = result["statistics"]                          # the loader's statistics are ANALYZE's
    assert stats["pg_stats_rows"] == stats["columns"] > 800
    assert stats["loader_pg_stats_identical"] == stats["loader_files_pg_stats_identical"] == stats["pg_stats_rows"]
    assert "values read from the files" in stats["loader_files_how"] and "files" not in stats["loader_how"]
