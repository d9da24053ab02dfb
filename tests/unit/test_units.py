"""Pure stages, table-driven: config, discover, schema, checksum (no database, no files read)."""
from dataclasses import replace
import os
import pickle

import numpy as np
import pytest

from desi_loader.fits.checksum import checksum_ok, combine, fold, partial_sum
from desi_loader.fits.config import generic, load_settings
from desi_loader.fits.discover import FilePlan, Plan, find_files, group_by_catalog, narrowed, split_tasks
from desi_loader.errors import SchemaError, UsageError
from desi_loader.fits.read import HduInfo
from desi_loader.fits.columns import FitsColumn, PgColumn, TableSpec, classify, parse_tdim, parse_tform, union_columns

# ----------------------------------------------------------------------------- schema

TYPE_CASES = [
    # code, tzero, tscal -> encoder kind, PostgreSQL element type
    ("L", None, None, "bool", "bool"),
    ("A", None, None, "text", "text"),
    ("B", None, None, "uint8", "int2"),
    ("B", -128, None, "uint8", "int2"),
    ("I", None, None, "int", "int2"),
    ("I", 32768, None, "int", "int4"),
    ("J", None, None, "int", "int4"),
    ("J", 2 ** 31, None, "int", "int8"),
    ("K", None, None, "int", "int8"),
    ("K", 2 ** 63, None, "u64", "numeric"),
    ("I", 100, None, "int", "int4"),
    ("J", 7, None, "int", "int8"),
    ("E", None, None, "float", "float4"),
    ("D", None, None, "float", "float8"),
    ("E", 1.0, None, "scaled", "float8"),
    ("I", None, 0.5, "scaled", "float8"),
    ("J", 0.5, None, "scaled", "float8"),
]


@pytest.mark.parametrize("code,tzero,tscal,kind,pgtype", TYPE_CASES)
def test_type_table(code, tzero, tscal, kind, pgtype):
    col = FitsColumn("X", f"1{code}", code, 1, 0, tzero=tzero, tscal=tscal)
    assert classify(col) == (kind, pgtype)


def test_k_with_odd_tzero_is_refused_with_the_column_name():
    with pytest.raises(SchemaError, match="'X'.*TZERO"):
        classify(FitsColumn("X", "1K", "K", 1, 0, tzero=5))


@pytest.mark.parametrize("tform,want", [("E", (1, "E")), ("5E", (5, "E")), ("24A", (24, "A")),
                                        (" 3K ", (3, "K"))])
def test_parse_tform(tform, want):
    assert parse_tform(tform) == want


@pytest.mark.parametrize("tform,message", [("1PE(5)", "variable-length"), ("Z", "unrecognised")])
def test_parse_tform_refuses(tform, message):
    with pytest.raises(SchemaError, match=message):
        parse_tform(tform)


@pytest.mark.parametrize("tdim,repeat,code,dims", [(None, 1, "E", ()), (None, 5, "E", (5,)),
                                                   ("(3,2)", 6, "J", (2, 3)), ("(8,2)", 16, "A", (2,)),
                                                   (None, 8, "A", ())])
def test_parse_tdim(tdim, repeat, code, dims):
    assert parse_tdim(tdim, repeat, code) == dims


def test_union_keeps_order_and_refuses_conflicts():
    a = [PgColumn("x", "int4"), PgColumn("z", "float4")]
    b = [PgColumn("x", "int4"), PgColumn("y", "text"), PgColumn("z", "float4")]
    assert [c.name for c in union_columns("t", [("a", a), ("b", b)])] == ["x", "y", "z"]
    with pytest.raises(SchemaError, match="column 'x' is integer in a but bigint in c"):
        union_columns("t", [("a", a), ("c", [PgColumn("x", "int8")])])


def test_sql_types_from_the_one_table():
    assert [PgColumn("c", t, n).sql_type for t, n in (("float4", 0), ("numeric", 0), ("int2", 2))] == \
        ["real", "numeric(20,0)", "smallint[][]"]


# ----------------------------------------------------------------------------- config

def test_shipped_presets():
    s = load_settings()
    fsf = s.catalogs["fastspecfit"]
    assert s.schema == "desi_dr1"
    assert fsf.table_names() == ["fastspecfit_fastspec", "fastspecfit_metadata", "fastspecfit_specphot"]
    assert fsf.keys["METADATA"] == ("targetid", "survey", "program") and fsf.aligned
    vast = s.catalogs["desivast"]
    assert vast.file_constants("DESIVAST_BGS_VOLLIM_V2_REVOLVER_NGC.fits") == {"algorithm": "REVOLVER", "cap": "NGC"}
    assert vast.required_hdus({"algorithm": "ZOBOV"}) == ("VOIDS", "ZONEVOID", "GALZONE")
    assert vast.fkeys["ZONEVOID"] == (("void0", "VOIDS", "void"), ("void1", "VOIDS", "void"))
    orig = s.catalogs["fastspecfit-original"]
    assert orig.file_constants("fastspec-iron-main-dark-nside1-hp07.fits") == {"healpix": 7}
    assert orig.file_constants("fastspec-iron-sv3-bright.fits") == {"healpix": None}


@pytest.mark.parametrize("text,message", [
    ("derive.x = sqrt(SPECPHOT.A)", "bad derived column"),
    ("fk.HOLES = void => MAXIMALS(void)", "bad foreign key"),
    ("constants = a:float", "not text, int2, int4 or int8"),
])
def test_bad_preset_lines_are_named(tmp_path, text, message):
    ini = tmp_path / "c.ini"
    ini.write_text(f"[catalog:bad]\nmatch = x*.fits\nhdus = A\ntable.A = a\n{text}\n")
    with pytest.raises(UsageError, match=message):
        load_settings(str(ini))


def test_user_config_overrides_and_adds(tmp_path):
    ini = tmp_path / "c.ini"
    ini.write_text("[database]\ndsn = host=x\n[catalog:mine]\nmatch = mine_*.fits\nhdus = T\ntable.T = mine_t\n")
    s = load_settings(str(ini))
    assert s.dsn == "host=x" and "mine" in s.catalogs and "fastspecfit" in s.catalogs


@pytest.mark.parametrize("prefix,ok", [("mycat", True), ("my_cat2", True), ("MyCat", False), ("x;y", False)])
def test_generic_prefix(prefix, ok):
    if ok:
        assert generic(prefix).table_for("THINGS", 1) == f"{prefix}_things"
        assert generic(prefix).table_for(None, 2) == f"{prefix}_hdu2"
    else:
        with pytest.raises(UsageError):
            generic(prefix)


# ----------------------------------------------------------------------------- discover

@pytest.mark.parametrize("names,catalogs", [
    (["fastspec-iron-main-bright-nside1-hp00.fits"], ["fastspecfit"]),
    (["DESIVAST_BGS_VOLLIM_VoidFinder_NGC.fits", "fastspec-iron-sv3-dark.fits"], ["desivast", "fastspecfit"]),
])
def test_catalog_detection(names, catalogs):
    groups = group_by_catalog(names, load_settings(), None, None)
    assert sorted(c.name for c, _ in groups) == catalogs


def test_undetectable_file_needs_catalog():
    with pytest.raises(UsageError, match="cannot tell which catalog"):
        group_by_catalog(["other.fits"], load_settings(), None, None)


def test_find_files(tmp_path):
    (tmp_path / "b.fits").write_bytes(b"")
    (tmp_path / "a.fit").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    assert [os.path.basename(f) for f in find_files([str(tmp_path)])] == ["a.fit", "b.fits"]
    with pytest.raises(UsageError, match="no such file"):
        find_files([str(tmp_path / "missing")])
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "x.fits.gz").write_bytes(b"")
    (gz / "y.fits.fz").write_bytes(b"")            # listed, so that read.py names what to do
    assert [os.path.basename(f) for f in find_files([str(gz)])] == ["x.fits.gz", "y.fits.fz"]


class _Info:
    compressed = ""
    name = "f.fits"

    def __init__(self, hdus):
        self.hdus = hdus


def _hdu(index, nrows, row_bytes):
    return HduInfo(index=index, extname=f"H{index}", nrows=nrows, row_bytes=row_bytes, data_offset=0,
                   columns=(), cards={}, header_sum=0)


@pytest.mark.parametrize("aligned,nrows,task_rows,want", [
    (True, 10, 4, [(0, 4), (4, 8), (8, 10)]),
    (True, 0, 4, [(0, 0)]),
    (False, 5, 5, [(0, 5), (0, 5)]),
])
def test_split_tasks(aligned, nrows, task_rows, want):
    cat = load_settings().catalogs["fastspecfit"]
    cat = type(cat)(**{**cat.__dict__, "aligned": aligned})
    fp = FilePlan(_Info([_hdu(1, nrows, 100), _hdu(2, nrows, 50)]), {1: "a", 2: "b"}, {})
    plan = Plan(cat, "s", {"a": TableSpec("a", ()), "b": TableSpec("b", ())}, (fp,), task_bytes=1 << 20,
                task_rows=task_rows)
    tasks = plan.tasks
    assert [(t.parts[0].start, t.parts[0].stop) for t in tasks] == want
    assert all(len(t.parts) == (2 if aligned else 1) for t in tasks)
    assert plan.tasks is tasks and list(tasks) == split_tasks(plan)     # split once, when first read


def test_a_plan_is_split_by_the_task_size_decided_for_it():
    cat = load_settings().catalogs["fastspecfit"]
    fp = FilePlan(_Info([_hdu(1, 1000, 100), _hdu(2, 1000, 50)]), {1: "a", 2: "b"}, {})
    plan = Plan(cat, "s", {"a": TableSpec("a", ()), "b": TableSpec("b", ())}, (fp,), task_bytes=150 * 1000)
    assert len(plan.tasks) == 1
    smaller = replace(plan, task_bytes=150 * 100)          # what the coordinator decides for the server
    assert len(smaller.tasks) == 10 and all(t.rows == 200 for t in smaller.tasks)   # 100 galaxies, 2 HDUs
    assert narrowed(smaller, set()).tasks == () and narrowed(smaller, {fp.info.name}) is smaller


# ----------------------------------------------------------------------------- checksum

@pytest.mark.parametrize("data,want", [
    (b"", 0),
    (b"\x00\x00\x00\x01", 1),
    (b"\xff\xff\xff\xff\x00\x00\x00\x01", 1),           # carry folds back: ones'-complement
    (b"\x01", 0x01000000),
    (b"\x00\x00\x00\x01\x02", 0x02000001),
])
def test_partial_sum_words(data, want):
    assert partial_sum(np.frombuffer(data, np.uint8), 0) == want


@pytest.mark.parametrize("seed", range(4))
def test_partial_sums_combine_over_any_split(seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8)
    whole = partial_sum(data, 0)
    cuts = sorted(rng.integers(0, data.size, 4))
    pieces = [(a, data[a:b]) for a, b in zip([0, *cuts], [*cuts, data.size])]
    assert combine(partial_sum(p, off) for off, p in pieces) == whole


def test_checksum_ok_is_negative_zero():
    assert fold(0x1_0000_0000) == 1
    assert checksum_ok(0xFFFF0000, 0x0000FFFF) and not checksum_ok(0xFFFF0000, 0x0000FFFE)


@pytest.mark.parametrize("text,kind,column", [("hash(targetid)", "hash", "targetid"), (" HASH( TargetID ) ", "hash", "targetid"),
                                             ("reference", "reference", None), ("local", "local", None)])
def test_parse_distribution(text, kind, column):
    from desi_loader.fits.config import parse_distribution
    d = parse_distribution(text)
    assert (d.kind, d.column) == (kind, column)


@pytest.mark.parametrize("text", ["hash()", "range(z)", "replicated", "hash(a, b)"])
def test_parse_distribution_refuses(text):
    from desi_loader.fits.config import parse_distribution
    with pytest.raises(UsageError, match="hash\\(COLUMN\\), reference or local"):
        parse_distribution(text)


def test_presets_place_the_catalogs_and_keys_gain_the_distribution_column():
    from desi_loader.servers.citus import unique_columns
    from desi_loader.fits.config import Distribution
    cats = load_settings().catalogs
    fsf, vast = cats["fastspecfit"], cats["desivast"]
    assert {str(fsf.distribution_of(t)) for t in fsf.table_names()} == {"hash(targetid)"}
    assert str(vast.distribution_of("desivast_voids")) == "reference"
    assert str(vast.distribution_of("desivast_triangle")) == "local"
    h = Distribution("hash", "targetid")
    assert unique_columns(("file_id", "row_num"), h) == ("file_id", "row_num", "targetid")
    assert unique_columns(("targetid", "survey", "program"), h) == ("targetid", "survey", "program")
    assert unique_columns(("file_id", "row_num"), Distribution("reference")) == ("file_id", "row_num")


def test_sky_preset_columns_and_none():
    from desi_loader.fits.config import parse_sky
    cats = load_settings().catalogs
    assert cats["fastspecfit"].sky_columns("METADATA") == ("RA", "DEC")
    assert cats["fastspecfit"].sky_columns("FASTSPEC") is None
    assert generic("x", "ra, dec").sky_columns("ANY") == ("RA", "DEC")
    with pytest.raises(UsageError, match="expected two column names"):
        parse_sky("RA")


def test_workers_reuse_freed_blocks_without_page_faults():
    # a worker frees and allocates blocks of a few MB all the time; after keep_freed_memory
    # glibc hands the same pages back instead of faulting in fresh ones (run in a child
    # process: it changes the allocator of the process that calls it)
    import subprocess
    import sys
    code = """
import resource, sys
import numpy as np
from desi_loader.control.worker import keep_freed_memory
if sys.argv[1] == "tuned":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def block():                     # a few blocks of a few MB alive at once, then freed
    blocks = [np.ones(6 << 20, np.uint8) for _ in range(4)]
    del blocks
for _ in range(3):
    block()
before = faults()
for _ in range(20):
    block()
print(faults() - before)
"""
    got = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                    check=True).stdout) for mode in ("default", "tuned")}
    assert got["default"] > 10_000                          # glibc default: fresh pages again and again
    assert got["tuned"] < 100, got


def test_read_ahead_sends_blocks_in_socket_sized_messages_and_keeps_part_ends():
    from desi_loader.pipeline.stream import SEND_BYTES, ReadAhead
    big = bytes(range(256)) * (SEND_BYTES // 256 * 3 + 7)      # three messages and a bit
    blocks = [b"head", big, b"", b"next part", b""]
    reader = ReadAhead(iter(blocks))
    got = []
    try:
        while len([x for x in got if x == b""]) < 2:
            got.append(reader.read(1 << 20))
    finally:
        reader.close()
    assert all(len(x) <= SEND_BYTES for x in got)
    first_end = got.index(b"")
    assert b"".join(got[:first_end]) == b"head" + big
    assert len(got[:first_end]) == 1 + 4
    assert got[first_end + 1:] == [b"next part", b""]


def test_read_ahead_delivers_the_reader_thread_error():
    from desi_loader.pipeline.stream import ReadAhead

    def blocks():
        yield b"x" * 10
        raise ValueError("bad row 7")
    reader = ReadAhead(blocks())
    try:
        assert reader.read() == b"x" * 10
        with pytest.raises(ValueError, match="bad row 7"):
            reader.read()
        assert isinstance(reader.error, ValueError)
    finally:
        reader.close()


def test_block_bounds_short_first_block_then_full_blocks_cover_each_row_once():
    from desi_loader.pipeline.stream import FIRST_BLOCK, block_bounds
    for start, stop, step in [(0, 20, 8), (5, 6, 100), (0, 0, 4), (3, 1000, 64), (0, 7, 1)]:
        b = list(block_bounds(start, stop, step))
        rows = [r for s, e in b for r in range(s, e)]
        assert rows == list(range(start, stop))
        if b:
            assert b[0][1] - b[0][0] == min(stop - start, max(1, step // FIRST_BLOCK))
            assert all(e - s <= step for s, e in b)


@pytest.mark.parametrize("tform,want", [("1PE(5)", ("P", "E", 5)), ("QD", ("Q", "D", None)), ("PA(80)", ("P", "A", 80)),
                                        ("5E", None)])
def test_parse_vla(tform, want):
    from desi_loader.fits.columns import parse_vla
    assert parse_vla(tform) == want


@pytest.mark.parametrize("tform,message", [("PX(8)", "bits"), ("1PC(3)", "complex"), ("QM", "complex")])
def test_parse_vla_refuses(tform, message):
    from desi_loader.fits.columns import parse_vla
    with pytest.raises(SchemaError, match=message):
        parse_vla(tform)


def test_checkpoint_advice_when_max_wal_size_is_below_the_load():
    from desi_loader.control.settle import checkpoint_advice
    advice = checkpoint_advice({"max_wal_size": "8192MB"}, 4_200_000_000)      # 1M FastSpecFit galaxies
    assert advice and "max_wal_size = 10GB" in advice
    assert checkpoint_advice({"max_wal_size": "32768MB"}, 4_200_000_000) is None
    assert checkpoint_advice({"max_wal_size": "1024MB"}, 50_000_000) is None
    assert checkpoint_advice({}, 10 ** 12) is None


def _task_streams(tmp_path, nrows=300, task_rows=120):
    """A FastSpecFit file's plan split into tasks of ``task_rows`` and each task's parts (sky first)."""
    from desi_loader.control.options import LoadOptions
    from desi_loader.control.run import plan_loads
    from desi_loader.pipeline.encodings import encoder_plan
    from desi_loader.pipeline.stream import sky_first
    from desi_loader.samples.fastspecfit import write_fastspecfit_file
    path = write_fastspecfit_file(str(tmp_path / "fastspec-iron-main-bright-nside1-hp07.fits"), nrows, seed=7)
    plan = plan_loads(LoadOptions(paths=(path,), dsn="x", task_rows=task_rows))[0]
    enc = encoder_plan(plan, {t: t for t in plan.tables}, {plan.files[0].info.name: 1})[plan.files[0].info.name]
    return enc.path, [[p for _, p in sky_first(enc.sources(t))] for t in plan.tasks]


@pytest.mark.parametrize("catalog", ["fastspecfit", "fastspecfit-original"])
def test_encoder_plan_of_many_files_is_each_files_own(tmp_path, catalog):
    """Files whose fields differ in their file id only share one compiled Codec, copied
    with each file's id: every file's fields and column runs are those compiled for it
    alone (two kinds of METADATA, a one-table catalog's shifted and derived columns)."""
    from desi_loader.control.options import LoadOptions
    from desi_loader.control.run import plan_loads
    from desi_loader.fits.columns import FILE_ID
    from desi_loader.pipeline.encodings import encoder_plan
    from desi_loader.samples.fastspecfit import write_fastspecfit_file
    names = ["fastspec-iron-main-bright-nside1-hp07.fits", "fastspec-iron-main-bright-nside1-hp08.fits",
             "fastspec-iron-sv3-bright.fits", "fastspec-iron-main-dark-nside1-hp07.fits"]
    paths = tuple(write_fastspecfit_file(str(tmp_path / n), 20, seed=k) for k, n in enumerate(names))
    plan = plan_loads(LoadOptions(paths=paths, dsn="x", catalog=catalog))[0]
    staging = {t: t + "_s" for t in plan.tables}
    ids = {fp.info.name: 10 + k for k, fp in enumerate(plan.files)}
    together = encoder_plan(plan, staging, ids)
    for fp in plan.files:
        alone = encoder_plan(replace(plan, files=(fp,)), staging, ids)[fp.info.name]
        got = together[fp.info.name]
        assert got.tables.keys() == alone.tables.keys() and got.path == alone.path
        for t, te in alone.tables.items():
            codec = got.tables[t].fields
            assert tuple(codec) == tuple(te.fields) and codec.runs == te.fields.runs, (fp.info.name, t)
            assert next(f.value for f in codec if f.name == FILE_ID) == ids[fp.info.name]
            assert got.tables[t].hdus == te.hdus and got.tables[t].staging == t + "_s"
    back = pickle.loads(pickle.dumps(together))          # as every worker reads it
    for name, fe in together.items():
        for t, te in fe.tables.items():
            codec = back[name].tables[t].fields
            assert tuple(codec) == tuple(te.fields) and codec.runs == te.fields.runs
            members = {id(f) for f in codec}                 # the runs hold the codec's own fields
            assert all(id(f) in members for run in codec.runs for f in run)


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_sky_ordered_parts_read_ahead_into_reused_buffers_give_the_same_bytes(tmp_path, fmt):
    """A task whose parts are all in sky order has them read whole ahead, into buffers the
    worker keeps from task to task (Scratch); its COPY bytes and checksums are those of
    reading each part when its turn comes, whatever size the task before it had."""
    from desi_loader.pipeline.stream import Scratch, TaskStream, part_blocks, reads_whole
    path, tasks = _task_streams(tmp_path)
    assert [p.stop - p.start for p in (t[0] for t in tasks)] == [120, 120, 60]
    scratch = Scratch()
    with open(path, "rb") as fh:
        for parts in [tasks[2], tasks[0], tasks[2], tasks[1]]:      # smaller, larger, smaller again
            assert reads_whole(parts)
            want_sums: dict = {}
            orders: dict = {}
            want = []
            for part in parts:
                want += list(part_blocks(path, fh, part, fmt, lambda r, b: None, want_sums, orders)) + [b""]
            stream = TaskStream(path, fh, parts, fmt, lambda r, b: None, True, scratch)
            got = list(stream)
            assert got == want
            assert stream.hdu_sums() and stream.hdu_sums() == {i: combine(v) for i, v in want_sums.items()}
            assert stream.orders.keys() == orders.keys()


def test_a_file_cut_short_while_read_ahead_fails_its_task_with_the_file_named(tmp_path):
    """The rows read ahead by a thread of their own: a short read there reaches the stream's
    reader as the file's error, and the thread is gone when the stream is closed."""
    import threading
    from desi_loader.errors import BadFileError
    from desi_loader.pipeline.stream import Scratch, TaskStream
    path, tasks = _task_streams(tmp_path)
    with open(path, "r+b") as f:                          # FASTSPEC's rows end past the new end
        f.truncate(tasks[0][-1].hdus[0].data_offset + 100 * tasks[0][-1].hdus[0].row_bytes)
    with open(path, "rb") as fh:
        stream = TaskStream(path, fh, tasks[0], "binary", lambda r, b: None, False, Scratch())
        with pytest.raises(BadFileError, match="short read at row 100"):
            list(stream)
        stream.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("whole-parts")]
