"""A Citus cluster on this machine: a coordinator and two workers on loopback ports (Debian's
PostgreSQL 15 with Citus 12.1 built from ../shared/vendor by scripts/provision.sh)."""
import shutil
import uuid

import psycopg2
import pytest

import localpg
from desi_loader.cli import write_samples
from helpers import assert_desivast_exact, assert_fastspecfit_exact, load, polling
from nodes import assert_exact, done_tasks, kill_node, node, paused, q, wait_until
from pg15 import require_extension

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long


@pytest.fixture(scope="module")
def cluster():
    require_extension("citus", "Citus 12.1 for postgresql-15, built by scripts/provision.sh from "
                               "../shared/vendor/citus-12.1.12.tar.gz")
    base = localpg.base_dir() / f"citus-{uuid.uuid4().hex[:8]}"
    ports = [localpg.free_port() for _ in range(3)]
    uri = localpg.citus_cluster(base, ports)
    yield {"uri": uri, "base": base, "ports": ports}
    for i in range(3):
        localpg.stop(base / f"node{i}", version="15")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def cschema(cluster):
    name = "c_" + uuid.uuid4().hex[:10]
    yield name
    q(cluster["uri"], f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("citus")
    write_samples(str(d), "all", rows=300, files=3, scale=0.001)
    return d


def _placement(uri, schema):
    rows = q(uri, "SELECT table_name::text, citus_table_type, distribution_column, colocation_id "
                  "FROM citus_tables WHERE table_name::text LIKE %s", (f"{schema}.%",))
    return {t.split(".", 1)[1]: (kind, col, coloc) for t, kind, col, coloc in rows}


def test_both_catalogs_exact_on_the_cluster(cluster, cschema, samples):
    uri = cluster["uri"]
    fsf = sorted(str(p) for p in (samples / "fastspecfit").glob("*.fits"))
    summaries = [load(uri, cschema, fsf), load(uri, cschema, [samples / "desivast"])]
    assert summaries[0].cluster and "hash(targetid)" in summaries[0].distribution["fastspecfit_metadata"]
    conn = psycopg2.connect(uri)
    try:
        assert assert_fastspecfit_exact(conn, cschema, fsf) == 3 * (54 + 127 + 887) + (67 - 54)
        assert_desivast_exact(conn, cschema, sorted((samples / "desivast").glob("*.fits")))
    finally:
        conn.close()
    placed = _placement(uri, cschema)
    fast = [placed[t] for t in ("fastspecfit_metadata", "fastspecfit_specphot", "fastspecfit_fastspec")]
    assert all(kind == "distributed" and col == "targetid" for kind, col, _ in fast)
    assert len({coloc for _, _, coloc in fast}) == 1                     # co-located
    for t in ("desivast_voids", "desivast_zonevoid", "desivast_galzone", "desivast_maximals", "desivast_holes"):
        assert placed[t][0] == "reference", t
    for t in ("desivast_triangle", "desivast_galviz"):       # local, in Citus metadata for their foreign keys
        assert placed.get(t, ("local",))[0] == "local", t
    ports = {p for (p,) in q(uri, "SELECT DISTINCT nodeport FROM citus_shards WHERE table_name::text = %s",
                                 (f"{cschema}.fastspecfit_metadata",))}
    assert ports == set(cluster["ports"][1:])                             # rows on both workers
    per_worker = q(uri, f'SELECT nodeport, sum(n) FROM (SELECT get_shard_id_for_distribution_column('
                        f"'\"{cschema}\".fastspecfit_metadata', targetid) AS shardid, count(*) n FROM "
                        f'"{cschema}".fastspecfit_metadata GROUP BY 1) s JOIN citus_shards USING (shardid) '
                        "GROUP BY 1")
    assert len(per_worker) == 2 and all(n > 0 for _, n in per_worker)
    uniq = q(uri, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = "
                  "'fastspecfit_metadata_file_id_row_num_idx'", (cschema,))
    assert "(file_id, row_num, targetid)" in uniq[0][0]                   # the key adapted for Citus
    # the void galaxies join FastSpecFit locally on every worker (reference x distributed)
    n = q(uri, f'SELECT count(*) FROM "{cschema}".desivast_void_galaxies v JOIN "{cschema}".fastspecfit_specphot s '
               "ON s.targetid = v.targetid AND s.survey = 'main' AND s.program = 'bright'")[0][0]
    assert n > 0
    _positional_queries_on_the_cluster(uri, cschema)


def _positional_queries_on_the_cluster(uri, schema):
    """cone (both indexes) and xmatch (reference x distributed) against brute force."""
    import subprocess
    import sys
    import numpy as np
    from desi_loader import sky
    gal = q(uri, f'SELECT targetid, ra, dec FROM "{schema}".fastspecfit_metadata')
    tid = np.array([r[0] for r in gal])
    ra, dec = np.array([r[1] for r in gal]), np.array([r[2] for r in gal])

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "desi_loader.cli", *args, "--dsn", uri, "--schema", schema],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return [line.split("\t") for line in out.stdout.strip().splitlines()[1:]]

    for method in ("hpx", "q3c"):
        for c_ra, c_dec, r in ((150, 30, 5), (10, -20, 0.7), (359.9, 0.5, 3)):
            got = {int(row[0]) for row in cli("cone", str(c_ra), str(c_dec), str(r), "--method", method,
                                              "--columns", "targetid")}
            assert got == set(tid[sky.angdist(ra, dec, c_ra, c_dec) <= r].tolist()), (method, c_ra, c_dec, r)
    voids = q(uri, f'SELECT algorithm, cap, void, ra, dec FROM "{schema}".desivast_voids')
    want = set()
    for alg, cap, void, v_ra, v_dec in voids:
        d = sky.angdist(ra, dec, v_ra, v_dec)
        if d.min() <= 2.0:
            want.add((alg, cap, void, int(tid[int(np.argmin(d))])))
    got = {(a, c, int(v), int(t)) for a, c, v, t, _ in cli("xmatch", "desivast_voids", "fastspecfit_metadata", "2",
                                                           "--columns-a", "algorithm,cap,void",
                                                           "--columns-b", "targetid")}
    assert got == want and len(want) > 20


def test_kill_loader_and_restart_a_worker_node_then_rerun(cluster, cschema, samples, tmp_path):
    uri = cluster["uri"]
    files = sorted(str(p) for p in (samples / "fastspecfit").glob("*.fits"))
    a = node(files, uri, cschema, workers=2)
    wait_until(lambda: done_tasks(uri, cschema) >= 2, [a], timeout=300)
    kill_node(a)                                                   # kill -9 of the loader mid-load
    b = node(files, uri, cschema, workers=2)
    wait_until(lambda: done_tasks(uri, cschema) >= 5, [b], timeout=300)
    total = q(uri, f'SELECT count(*) FROM "{cschema}".loader_tasks')[0][0]
    localpg.restart(cluster["base"] / "node1", mode="immediate", version="15")   # a worker node crashes
    assert done_tasks(uri, cschema) < total                        # ... in the middle of the copy
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err[-3000:]                          # the COPY that lost the node is retried
    assert_exact(uri, cschema, files)
    c = node(files, uri, cschema, workers=2, delay=0)              # and the same command again: nothing to do
    out, err = c.communicate(timeout=600)
    assert c.returncode == 0 and "nothing to load" in out + err, err[-3000:]


def test_reader_sees_no_error_during_the_swap(cluster, cschema, samples):
    uri = cluster["uri"]
    files = sorted(str(p) for p in (samples / "fastspecfit").glob("*.fits"))
    load(uri, cschema, files[:2])
    old = q(uri, f'SELECT count(*) FROM "{cschema}".fastspecfit_metadata')[0][0]
    t = f'"{cschema}".fastspecfit_metadata'
    for stmt in ("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'astro_reader') "
                 "THEN CREATE ROLE astro_reader; END IF; END$$",
                 f'GRANT USAGE ON SCHEMA "{cschema}" TO astro_reader', f"GRANT SELECT ON {t} TO astro_reader",
                 f"COMMENT ON TABLE {t} IS 'FastSpecFit v3.0 metadata'",
                 f'CREATE VIEW "{cschema}".low_z AS SELECT targetid, z FROM {t} WHERE z < 0.3',
                 f"CREATE INDEX users_z_idx ON {t} (z)"):
        q(uri, stmt)                                   # what users attach to the published table
    join = (f'SELECT count(*) FROM "{cschema}".fastspecfit_metadata m JOIN '
            f'"{cschema}".fastspecfit_specphot s USING (targetid, survey, program)')
    with polling(uri, join, pause=0.01) as (counts, errors):
        summary = load(uri, cschema, files, replace_all=True)
    new = summary.rows["fastspecfit_metadata"]
    assert not errors, errors[:3]
    assert old in counts and counts <= {old, new}, (old, new, counts)   # the old tables or the new ones
    assert q(uri, f'SELECT count(*) FROM "{cschema}".fastspecfit_metadata')[0][0] == new
    assert_exact(uri, cschema, files)
    assert q(uri, f"SELECT has_table_privilege('astro_reader', '{t}', 'SELECT'), obj_description('{t}'::regclass), "
                  f'(SELECT count(*) > 0 FROM "{cschema}".low_z), '
                  "(SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = 'users_z_idx')",
             (cschema,)) == [(True, "FastSpecFit v3.0 metadata", True, 1)]


def test_text_copy_on_the_cluster(cluster, cschema, samples):
    uri = cluster["uri"]
    files = sorted(str(p) for p in (samples / "fastspecfit").glob("*.fits"))[:1]
    load(uri, cschema, files, fmt="text")
    conn = psycopg2.connect(uri)
    try:
        assert assert_fastspecfit_exact(conn, cschema, files) == 54 + 127 + 887
    finally:
        conn.close()


def test_incremental_load_on_the_cluster(cluster, cschema, samples):
    uri = cluster["uri"]
    files = sorted(str(p) for p in (samples / "fastspecfit").glob("*.fits"))
    load(uri, cschema, files[:2], staging_mode="unlogged")             # UNLOGGED staging + SET LOGGED on shards
    conn = psycopg2.connect(cluster["uri"].replace(str(cluster["ports"][0]), str(cluster["ports"][1])))
    try:
        with conn.cursor() as cur:
            cur.execute("SET citus.override_table_visibility TO off")   # show the shards
            cur.execute("SELECT relpersistence, count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
                        "c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r' GROUP BY 1", (cschema,))
            persistence = dict(cur.fetchall())
    finally:
        conn.close()
    assert set(persistence) == {"p"} and persistence["p"] > 3, persistence    # shards durable too
    summary = load(uri, cschema, files)                            # one new file: merged
    assert summary.incremental and summary.files == 1
    assert_exact(uri, cschema, files)
    assert _placement(uri, cschema)["fastspecfit_metadata"][1] == "targetid"


def _running_phase(uri, schema):
    try:
        rows = q(uri, f"SELECT phase FROM \"{schema}\".loader_loads WHERE status = 'running'")
    except psycopg2.Error:
        return None
    return rows[0][0] if rows else None


@pytest.mark.parametrize("phase", ["index", "swap"])
def test_kill_in_the_finalize_phases_then_rerun(cluster, cschema, samples, phase, tmp_path):
    """kill -9 of the loader inside a phase that runs DDL on the distributed tables (index builds
    on the shards, the swap's renames and drops), then the same command at once."""
    uri = cluster["uri"]
    files = sorted(str(p) for p in (samples / "fastspecfit").glob("*.fits"))
    if phase == "swap":
        load(uri, cschema, files[:2])                          # a published catalog to swap out
    marker = tmp_path / "paused"
    a = node(files, uri, cschema, "--replace-all", delay=0, workers=2, pause=(phase, marker))
    assert paused(a, marker)                                   # stopped in the phase, waiting to be killed
    assert _running_phase(uri, cschema) == phase
    kill_node(a)
    b = node(files, uri, cschema, "--replace-all", delay=0, workers=2)
    out, err = b.communicate(timeout=600)
    assert b.returncode == 0, err[-3000:]
    assert_exact(uri, cschema, files)


def test_contract_on_the_cluster(cluster, cschema, tmp_path, capsys):
    """Empty HDUs in sky order, a gzip'd file and damaged files on Citus: the good files exact, the
    damaged named (exit 1), then --allow-partial publishes the good ones (exit 4)."""
    from desi_loader.cli import main
    from helpers import NAMES, empty_fastspecfit, gzipped, truncated
    from desi_loader.samples.fastspecfit import write_fastspecfit_file
    uri, d = cluster["uri"], tmp_path / "in"
    d.mkdir()
    src = write_fastspecfit_file(str(tmp_path / NAMES[0]), 40, seed=3)
    gzipped(src, d / (NAMES[0] + ".gz"))
    empty_fastspecfit(str(d / NAMES[1]))
    truncated(src, d / NAMES[2])
    args = ["load", str(d), "--dsn", uri, "--schema", cschema, "-w", "2"]
    assert main(args) == 1
    out, err = capsys.readouterr()
    assert f"{NAMES[2]}: truncated" in err and "Traceback" not in err
    assert main(args + ["--allow-partial"]) == 4
    conn = psycopg2.connect(uri)
    try:
        with conn.cursor() as cur:
            cur.execute(f'UPDATE "{cschema}".load_files SET filename = %s WHERE filename = %s',
                        (NAMES[0], NAMES[0] + ".gz"))
        conn.commit()
        assert assert_fastspecfit_exact(conn, cschema, [src, d / NAMES[1]])
    finally:
        conn.close()
