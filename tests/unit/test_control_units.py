"""The control plane's pure decisions, table-driven (no server, no process): row checks,
table order, staging mode, file identity, connection names, DSN masking, task chunks, the
index phase's plan of jobs and its progress lines."""
from dataclasses import replace
from types import SimpleNamespace

import pytest

from desi_loader.control import indexes, jobs
from desi_loader.control.publishing import same_file, staging_mode
from desi_loader.control.target import Cluster, Server
from desi_loader.fits.config import Distribution
from desi_loader.servers import citus
from desi_loader.control.sessions import app_name, parse_app_name
from desi_loader.control.staging import table_order
from desi_loader.control.verify import check_counts
from desi_loader.control.worker import chunks
from desi_loader.db import mask_dsn
from desi_loader.errors import LoadFailed
from desi_loader.fits.discover import ForeignKey
from desi_loader.fits.columns import PgColumn, TableSpec
from desi_loader.pipeline.stream import PartSource


def test_check_counts_sums_good_tables_and_names_the_first_bad_file():
    expected = {"meta": {1: 10, 2: 5}, "fast": {1: 10, 2: 5}}
    assert check_counts({"meta": {1: 10, 2: 5}, "fast": {2: 5, 1: 10}}, expected) == {"meta": 15, "fast": 15}
    with pytest.raises(LoadFailed, match="fast: file_id 2 has 4 rows, expected 5"):
        check_counts({"meta": {1: 10, 2: 5}, "fast": {1: 10, 2: 4}}, expected)
    with pytest.raises(LoadFailed, match="meta: file_id 3 has 7 rows, expected 0"):
        check_counts({"meta": {1: 10, 2: 5, 3: 7}}, expected)
    with pytest.raises(LoadFailed, match="file_id 1 has 0 rows, expected 10"):
        check_counts({}, expected)


def fk(child, parent):
    return ForeignKey(child, ("c",), parent, ("p",))


@pytest.mark.parametrize("tables,keys,order", [
    (["a", "b", "c"], [], ["a", "b", "c"]),
    (["child", "parent"], [("child", "parent")], ["parent", "child"]),
    (["c", "b", "a"], [("c", "b"), ("b", "a")], ["a", "b", "c"]),
    (["x", "y"], [("x", "y"), ("y", "x")], ["x", "y"]),                 # a cycle keeps the given order
    (["self"], [("self", "self")], ["self"]),
])
def test_table_order_puts_parents_first(tables, keys, order):
    assert table_order(tables, [fk(c, p) for c, p in keys]) == order


@pytest.mark.parametrize("unlogged,staging,mode", [
    (False, "auto", "logged"), (False, "logged", "logged"), (False, "unlogged", "unlogged"), (True, "auto", "unlogged"),
])
def test_staging_mode(unlogged, staging, mode):
    got, why = staging_mode(SimpleNamespace(unlogged=unlogged, staging_mode=staging), "replica")
    assert got == mode and why


def test_same_file_compares_size_mtime_and_sums_and_tolerates_old_records():
    info = SimpleNamespace(identity={"size": 100, "mtime_ns": 5, "sums": ["a", "b"]})
    assert same_file({"size": 100, "mtime_ns": 5, "sums": ["a", "b"]}, info)
    assert same_file({"size": 100}, info)                          # a record of an older ledger
    assert not same_file({"size": 100, "mtime_ns": 6, "sums": ["a", "b"]}, info)
    assert not same_file({"size": 100, "mtime_ns": 5, "sums": ["a", "c"]}, info)
    assert not same_file({"size": 99}, info)


def test_application_names_round_trip_and_others_are_not_ours():
    tag, role, host, pid = parse_app_name(app_name("worker3", "L7@1234"))
    assert (tag, role) == ("L7@1234", "worker3") and pid > 0 and host
    assert parse_app_name("desi-loader L1@5 finalize node-7.cluster:4242") == ("L1@5", "finalize", "node-7.cluster", 4242)
    for other in ("psql", "", None, "desi-loader oops", "pgAdmin 4 - DB:postgres"):
        assert parse_app_name(other) is None


@pytest.mark.parametrize("dsn,masked", [
    ("postgresql://me:secret@host/db", "postgresql://me:***@host/db"),
    ("host=h password=secret user=me", "host=h password=*** user=me"),
    ("host=h password='s e c' user=me", "host=h password=*** user=me"),
    ("postgresql://me@host/db?password=secret&sslmode=require", "postgresql://me@host/db?password=***&sslmode=require"),
    ("postgresql://me@host/db", "postgresql://me@host/db"),
])
def test_mask_dsn(dsn, masked):
    assert mask_dsn(dsn) == masked


def part(staging, start, stop, block_bytes):
    return PartSource(staging, (SimpleNamespace(block_bytes=block_bytes),), None, start, stop)


def test_chunks_split_rows_and_keep_row_aligned_parts_together():
    sources = {"meta": part("m", 0, 1000, 100), "fast": part("f", 0, 1000, 900), "void": part("v", 0, 10, 10)}
    out = chunks(sources, chunk_bytes=100_000)                    # 1,000 bytes a row for meta + fast
    aligned = [c for c in out if "meta" in c]
    assert [(c["meta"].start, c["meta"].stop) for c in aligned] == [(0, 100), (100, 200), (200, 300), (300, 400),
                                                                     (400, 500), (500, 600), (600, 700), (700, 800),
                                                                     (800, 900), (900, 1000)]
    assert all(set(c) == {"meta", "fast"} and c["fast"].start == c["meta"].start for c in aligned)
    assert [(c["void"].start, c["void"].stop) for c in out if "void" in c] == [(0, 10)]
    empty = chunks({"meta": part("m", 5, 5, 100)})
    assert [(c["meta"].start, c["meta"].stop) for c in empty] == [(5, 5)]   # an empty part still runs once


def spec(ncols=3, indexes_=(("z",),), sky=None):
    cols = tuple(PgColumn(f"c{i}", "float4", 0, "") for i in range(ncols))
    return TableSpec("t", cols, key=("file_id", "row_num"), indexes=indexes_, sky=sky)


def test_index_jobs_build_beside_each_other_then_attach_the_key_and_take_statistics():
    planned = Server().index_jobs("s", "t", "t__load1", spec(), pages=100, q3c=None,
                                  user=[("CREATE INDEX u ...", "u")], has_key=False)
    builds, finish = planned[:-1], planned[-1]
    assert [j.what for j in builds][0] == "primary key index"
    assert "index u (yours)" in [j.what for j in builds]
    assert all(j.after == 0 for j in builds)
    assert finish.after == len(builds) and finish.what == "primary key, statistics" and finish.then is not None
    resumed = jobs.table_jobs("s", "t", "t__load1", spec(), 100, None, [], has_key=True)
    assert "primary key index" not in [j.what for j in resumed] and resumed[-1].what == "statistics"


def test_a_cluster_builds_a_distributed_table_in_one_job_and_a_local_one_as_a_server_does():
    cluster = Cluster(citus.Cluster("13.0", 2))
    hashed = replace(spec(), distribution=Distribution("hash", "c0"))
    one = cluster.index_jobs("s", "t", "t__load1", hashed, 100, None, [], has_key=False)
    assert len(one) == 1 and one[0].what == "keys, indexes, ANALYZE"
    assert len(one[0].statements) == 3              # ADD PRIMARY KEY, the index on z, ANALYZE
    assert one[0].unique == "file_id, row_num"
    kept = cluster.index_jobs("s", "t", "t__load1", spec(), 100, None, [], has_key=False)
    assert [j.what for j in kept] == [j.what for j in Server().index_jobs("s", "t", "t__load1", spec(), 100, None, [],
                                                                             has_key=False)]


@pytest.mark.parametrize("args,text", [
    (("building index", 40, 100, 0, 0), "building index 40%"),
    (("loading tuples in tree", 0, 0, 250, 1000), "loading tuples in tree 25%"),
    (("initializing", 0, 0, 0, 0), "initializing"),
])
def test_progress_text(args, text):
    assert indexes.progress_text(*args) == text


def test_a_server_gone_after_the_load_costs_the_coverage_lines_not_the_exit_code():
    """The summary's sky coverage is read after publishing; a server that went away since
    (nothing listens on port 1 here) gives a line saying so, not an error."""
    from desi_loader.commands import _sky_coverage
    from desi_loader.control.summary import Summary
    summary = Summary(schema="s", plan=[{"table": "t", "columns": 3, "key": ["k"], "sky": ["ra", "dec"]}])
    (line,) = _sky_coverage(summary, "postgresql://u@127.0.0.1:1/db?connect_timeout=2")
    assert line.startswith("not read (") and "desi-loader coverage TABLE" in line
