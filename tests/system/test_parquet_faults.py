"""A HATS catalog's load killed and resumed, with real processes: the tables equal the
catalog, every row once."""
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nodes import done_tasks, node, q, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """A HATS catalog of 3,000 rows in about ten partitions, made by hats-import."""
    from dask.distributed import Client
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    d = tmp_path_factory.mktemp("hatsfault")
    rng = np.random.default_rng(2)
    n = 3000
    table = pa.table({"ID": pa.array(np.arange(n, dtype=np.int64)), "RA": rng.uniform(0, 360, n),
                      "DEC": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
                      "MAG": rng.uniform(15, 24, n).astype(np.float32)})
    pq.write_table(table, d / "in.parquet")
    args = ImportArguments(output_artifact_name="objs", input_file_list=[str(d / "in.parquet")], file_reader="parquet",
                           ra_column="RA", dec_column="DEC", output_path=d / "out", pixel_threshold=400,
                           progress_bar=False, tmp_dir=d / "tmp")
    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        pipeline_with_client(args, client)
    return d / "out" / "objs", table


def test_coordinator_killed_then_rerun_loads_the_catalog_exactly(catalog, pg_uri, schema):
    path, table = catalog
    parts = list((path / "dataset").rglob("Npix=*.parquet"))
    assert len(parts) >= 6
    proc = node([path], pg_uri, schema, delay="0.3", workers=2)
    wait_until(lambda: done_tasks(pg_uri, schema) >= 2, [proc], timeout=120, poll=0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert done_tasks(pg_uri, schema) < len(parts)                       # killed mid-load
    rerun = node([path], pg_uri, schema, delay="0", workers=2)
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert "resuming load" in out + err
    rows = q(pg_uri, f'SELECT id, ra, dec, mag FROM "{schema}".objs ORDER BY id')
    assert len(rows) == table.num_rows
    want = list(zip(table.column("ID").to_pylist(), table.column("RA").to_pylist(), table.column("DEC").to_pylist(),
                    table.column("MAG").to_numpy()))
    assert all(r[:3] == w[:3] and np.float32(r[3]) == w[3] for r, w in zip(rows, want))
    assert q(pg_uri, f'SELECT status, count(*) FROM "{schema}".loader_loads GROUP BY 1') == [("published", 1)]
