"""The contract, scenario by scenario: every named file is loaded exactly, skipped as
published and unchanged (and said so), or named with its reason and a failing exit code.

The property layer (test_contract_props.py) checks the same promise over random file sets
and command sequences; these are the cases the issue reported, each pinned down.
"""
import json
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from desi_loader.cli import main
from desi_loader.samples.fastspecfit import write_fastspecfit_file
from helpers import NAMES, assert_fastspecfit_exact, empty_fastspecfit, fetch, gzipped, truncated

def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def summary_of(path):
    return json.loads(open(path).read())["loads"]


@pytest.fixture(scope="module")
def fsf(tmp_path_factory):
    """Two good FastSpecFit files (30 rows each) and the damaged kinds, in a pristine folder."""
    d = tmp_path_factory.mktemp("fsf")
    for i, name in enumerate(NAMES[:2]):
        write_fastspecfit_file(str(d / name), 30, seed=i + 1)
    return d


def test_incremental_rerun_names_damaged_files(capsys, tmp_path, fsf, pg_uri, schema, db):
    """Two files published; adding a truncated file and a non-FITS file must not be 'nothing to load'."""
    for name in NAMES[:2]:
        shutil.copy2(fsf / name, tmp_path / name)
    code, _, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1", "-q")
    assert code == 0, err
    truncated(fsf / NAMES[0], tmp_path / NAMES[2])
    (tmp_path / NAMES[3]).write_bytes(b"not FITS at all " * 300)
    code, out, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1, (out, err)
    assert f"{NAMES[2]}: truncated" in err and f"{NAMES[3]}: not a FITS file" in err
    assert "Traceback" not in err
    # the published tables are untouched
    assert assert_fastspecfit_exact(db, schema, [tmp_path / n for n in NAMES[:2]])
    # the dry run names them too, and exits as the load would
    code, out, _ = cli(capsys, "load", tmp_path, "--dry-run")
    assert code == 1 and f"cannot load {NAMES[2]}" in out and f"cannot load {NAMES[3]}" in out
    # --allow-partial: the tables are as they were, the damaged files are listed, exit 4
    js = tmp_path.parent / f"{tmp_path.name}.json"
    code, out, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1",
                         "--allow-partial", "--summary-json", js)
    assert code == 4, (out, err)
    s, = summary_of(js)
    assert sorted(os.path.basename(p) for p in s["files_unchanged"]) == NAMES[:2]
    assert sorted(os.path.basename(p) for p, _ in s["files_failed"]) == NAMES[2:]
    assert f"not loaded: {NAMES[2]}" in out


def test_every_named_file_accounted_in_the_summary(capsys, tmp_path, fsf, pg_uri, schema):
    shutil.copy2(fsf / NAMES[0], tmp_path / NAMES[0])
    code, _, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1", "-q")
    assert code == 0, err
    shutil.copy2(fsf / NAMES[1], tmp_path / NAMES[1])
    js = tmp_path.parent / f"{tmp_path.name}.json"
    code, out, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1",
                         "--summary-json", js)
    assert code == 0, err
    s, = summary_of(js)
    assert [os.path.basename(p) for p in s["files_loaded"]] == [NAMES[1]]
    assert [os.path.basename(p) for p in s["files_unchanged"]] == [NAMES[0]]
    assert s["files_failed"] == []
    assert "named files: 1 loaded, 1 unchanged (published before), 0 not loaded" in out


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_empty_hdus_in_sky_order(capsys, tmp_path, fsf, pg_uri, schema, db, fmt):
    empty_fastspecfit(str(tmp_path / NAMES[2]))
    shutil.copy2(fsf / NAMES[0], tmp_path / NAMES[0])
    code, out, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1",
                         "--format", fmt)
    assert code == 0, (out, err)
    assert "Traceback" not in err and "died" not in err
    assert assert_fastspecfit_exact(db, schema, [tmp_path / NAMES[0], tmp_path / NAMES[2]])
    assert fetch(db, f'SELECT nrows FROM "{schema}".load_files ORDER BY filename') != []


def test_unexpected_task_error_is_a_task_failure(capsys, tmp_path, pg_uri, schema, monkeypatch):
    """A bug in a task (here: an encoder that raises) fails that task once, naming file, HDU and
    rows; the worker is not treated as killed, and the traceback is only shown with -v."""
    from astropy.table import Table
    Table({"A": np.arange(10, dtype=np.int32)}).write(tmp_path / "a.fits")
    Table({"A": np.arange(10, dtype=np.int32)}).write(tmp_path / "b.fits")
    from desi_loader.cli import main
    from desi_loader.control.options import Faults
    code = main(["load", str(tmp_path), "--catalog", "generic", "--prefix", "x", "--dsn", pg_uri, "--schema", schema,
                 "-w", "1"], faults=Faults(fail_file="b.fits"))
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    line = next(l for l in err.splitlines() if "b.fits" in l and "RuntimeError" in l)
    assert "HDU 1" in line and "rows 0-9" in line
    assert "died" not in err and "Traceback" not in err
    assert fetch_tasks(pg_uri, schema) == [(1, 1)]          # one failed task, tried once


def fetch_tasks(uri, schema):
    import psycopg2
    conn = psycopg2.connect(uri)
    rows = fetch(conn, f'SELECT count(*), max(attempts) FROM "{schema}".loader_tasks WHERE status = %s', ("failed",))
    conn.close()
    return rows


def test_bad_path_touches_nothing(capsys, tmp_path, monkeypatch):
    """A mistake in the arguments neither starts (nor initialises) the embedded server."""
    data = tmp_path / "pgdata"
    for var in ("DESI_LOADER_DSN", "PGHOST", "PGSERVICE", "PGDATABASE"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = cli(capsys, "load", "/no/such/path", "--data-dir", data)
    assert code == 2 and "no such file or directory" in err
    code, _, err = cli(capsys, "load", tmp_path, "--data-dir", data)
    assert code == 2 and "no FITS files found" in err
    code, _, err = cli(capsys, "load", tmp_path, "--catalog", "nosuch", "--data-dir", data)
    assert code == 2
    assert not data.exists()


def _long_names_file(path, names):
    cols = [fits.Column(name=n, format="J", array=np.arange(3, dtype=np.int32) + i) for i, n in enumerate(names)]
    hdu = fits.BinTableHDU.from_columns(cols, name="T")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)


def test_names_postgresql_cannot_hold(capsys, tmp_path, pg_uri, schema, db):
    """68-character FITS names: a unique cut is loaded under its 63-byte name, with the full
    FITS name in the comment; two names alike in their first 63 bytes are refused by name."""
    long_a = "A" * 63 + "_FLUX"
    long_b = "A" * 63 + "_IVAR"
    ok = tmp_path / "ok" / "ok.fits"
    ok.parent.mkdir()
    _long_names_file(ok, [long_a, "B"])
    code, out, err = cli(capsys, "load", ok, "--catalog", "generic", "--prefix", "n", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1")
    assert code == 0, (out, err)
    got = fetch(db, f'SELECT {"a" * 63}, b FROM "{schema}".n_t ORDER BY row_num')
    assert got == [(0, 1), (1, 2), (2, 3)]
    comment = fetch(db, "SELECT col_description(%s::regclass, 3)", (f'"{schema}".n_t',))[0][0]
    assert long_a in comment
    assert f"T.{long_a} -> {'a' * 63}" in err
    bad = tmp_path / "bad.fits"
    _long_names_file(bad, [long_a, long_b])
    code, out, err = cli(capsys, "load", bad, "--catalog", "generic", "--prefix", "m", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1")
    assert code == 1 and "Traceback" not in err
    assert f"column '{long_a}' and column '{long_b}' would both be PostgreSQL column" in err
    assert "cut at 63 bytes" in err
    case = tmp_path / "case.fits"
    _long_names_file(case, ["Flux", "FLUX_", "ROW_NUM"])
    code, out, err = cli(capsys, "load", case, "--catalog", "generic", "--prefix", "c", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1")
    assert code == 1 and "the file has a column 'ROW_NUM', which the loader adds to every table" in err


def _new_types_file(path, n=9, seed=0, emax=True):
    """Variable-length arrays (P and Q, floats with NaN, ints, strings, empty ones), bits and
    complex columns, written by astropy with CHECKSUM/DATASUM (which cover the heap)."""
    rng = np.random.default_rng(seed)
    vf, vi = np.empty(n, object), np.empty(n, object)
    for i in range(n):
        vf[i] = rng.standard_normal(i % 4).astype(np.float32)
        vi[i] = (np.arange(i % 3) - 5).astype(np.int16)
    if n > 2:
        vf[2] = np.array([np.nan, -0.0], np.float32)
    vs = np.array([["", "a", "bc\tx", "longer one", "z\\N"][i % 5] for i in range(n)], object)
    cols = [fits.Column(name="VF", format="PE(3)" if emax else "PE", array=vf),
            fits.Column(name="VI", format="QI(2)", array=vi),
            fits.Column(name="VS", format="PA(10)", array=vs),
            fits.Column(name="BITS", format="11X", array=rng.random((n, 11)) < 0.5),
            fits.Column(name="BIT1", format="1X", array=rng.random((n, 1)) < 0.5),
            fits.Column(name="C1", format="C", array=(rng.standard_normal(n) + 1j * rng.standard_normal(n))
                        .astype(np.complex64)),
            fits.Column(name="C3", format="3M", array=rng.standard_normal((n, 3)) + 1j * rng.standard_normal((n, 3)))]
    hdu = fits.BinTableHDU.from_columns(cols, name="T")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True, checksum=True)
    return path


def _same_floats(want, got):
    want = np.asarray(want)
    got = np.array([np.nan if g is None else g for g in got], want.dtype)
    assert want.shape == got.shape
    assert (want.view(f"u{want.itemsize}") == got.view(f"u{want.itemsize}")).all() or \
        np.array_equal(want, got, equal_nan=True) and (np.signbit(want) == np.signbit(got)).all()


def assert_new_types_exact(db, schema, table, path):
    import fitsio                     # astropy's chararray drops a tab inside a PA string
    data = fits.getdata(path, 1)
    strings = fitsio.read(str(path), 1, columns=["VS"])["VS"] if len(data) else []
    rows = fetch(db, f'SELECT vf, vi, vs, bits, bit1, c1, c3 FROM "{schema}".{table} ORDER BY row_num')
    assert len(rows) == len(data)
    for r, s, (vf, vi, vs, bits, bit1, c1, c3) in zip(data, strings, rows):
        _same_floats(np.asarray(r["VF"], np.float32), vf)
        assert vi == [int(x) for x in r["VI"]]
        assert vs == s.rstrip(" ")
        assert bits == [bool(b) for b in r["BITS"]] and bit1 == [bool(r["BIT1"][0])]
        _same_floats(np.array([r["C1"].real, r["C1"].imag], np.float32), c1)
        want = np.stack([r["C3"].real, r["C3"].imag], axis=-1)
        for k in range(3):
            _same_floats(want[k], c3[k])


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_variable_length_bit_and_complex_columns(capsys, tmp_path, pg_uri, schema, db, fmt):
    _new_types_file(tmp_path / "a.fits")
    _new_types_file(tmp_path / "b.fits", n=0, seed=1)
    _new_types_file(tmp_path / "c.fits", n=40, seed=2, emax=False)
    code, out, err = cli(capsys, "load", tmp_path, "--catalog", "generic", "--prefix", "v", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1", "--format", fmt, "--task-rows", "4")
    assert code == 0, (out, err)
    types = dict(fetch(db, "SELECT column_name, format_type(atttypid, atttypmod) FROM information_schema.columns c "
                           "JOIN pg_attribute a ON a.attrelid = %s::regclass AND a.attname = c.column_name "
                           "WHERE table_schema = %s AND table_name = 'v_t'", (f'"{schema}".v_t', schema)))
    assert (types["vf"], types["vi"], types["vs"], types["bits"], types["c1"], types["c3"]) == (
        "real[]", "smallint[]", "text", "boolean[]", "real[]", "double precision[]")
    for name in ("a", "b", "c"):
        ids = fetch(db, f'SELECT file_id FROM "{schema}".load_files WHERE filename = %s', (f"{name}.fits",))
        want = fits.getdata(tmp_path / f"{name}.fits", 1)
        got = fetch(db, f'SELECT count(*) FROM "{schema}".v_t WHERE file_id = %s', ids[0])
        assert got == [(len(want),)]
    db.rollback()
    with db.cursor() as cur:
        cur.execute(f'CREATE TEMP VIEW only_a AS SELECT t.* FROM "{schema}".v_t t JOIN "{schema}".load_files f '
                    "USING (file_id) WHERE f.filename = 'a.fits'")
    assert_new_types_exact(db, "pg_temp", "only_a", tmp_path / "a.fits")
    assert fetch(db, f'SELECT vf, vi FROM "{schema}".v_t t JOIN "{schema}".load_files f USING (file_id) '
                     "WHERE f.filename = 'a.fits' AND row_num = 0") == [([], [])]


def test_damaged_heap_is_refused(capsys, tmp_path, pg_uri, schema):
    """A heap pointer past the heap: the task fails naming file, HDU, row and column."""
    path = _new_types_file(tmp_path / "a.fits")
    with fits.open(path) as h:
        off, naxis1 = h[1].fileinfo()["datLoc"], h[1].header["NAXIS1"]
    with open(path, "r+b") as f:                   # row 3's VF descriptor: 2 elements at offset 10**6
        f.seek(off + 3 * naxis1)
        f.write(np.array([2, 10 ** 6], ">i4").tobytes())
    code, out, err = cli(capsys, "load", path, "--catalog", "generic", "--prefix", "v", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1", "--no-verify-checksum")
    assert code == 1, (out, err)
    assert "a.fits: HDU 1 (T) row 3, column VF: variable-length array of 2 elements" in err


@pytest.mark.slow
def test_gzip_files_load_exactly_and_damaged_ones_are_named(capsys, tmp_path, fsf, pg_uri, schema, db):
    """.fits.gz FastSpecFit files are recognised by the preset and load exactly (sky order, checksums);
    a truncated gzip file is named; a VLA table inside gzip loads too."""
    d = tmp_path / "in"
    d.mkdir()
    gzipped(fsf / NAMES[0], d / (NAMES[0] + ".gz"))
    shutil.copy2(fsf / NAMES[1], d / NAMES[1])
    js = tmp_path / "s.json"
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "-w", "2", "--summary-json", js)
    assert code == 0, (out, err)
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy2(fsf / NAMES[0], plain / NAMES[0])
    # compare with the uncompressed content, as the loader names the file by its .gz name
    db.rollback()
    with db.cursor() as cur:
        cur.execute(f'UPDATE "{schema}".load_files SET filename = %s WHERE filename = %s', (NAMES[0], NAMES[0] + ".gz"))
    assert assert_fastspecfit_exact(db, schema, [plain / NAMES[0], d / NAMES[1]])
    db.rollback()
    s, = summary_of(js)
    assert sorted(os.path.basename(p) for p in s["files_loaded"]) == sorted([NAMES[0] + ".gz", NAMES[1]])
    # truncated gzip: named, exit 1
    gzipped(fsf / NAMES[1], d / (NAMES[2] + ".gz"), cut=3000)
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1 and "Traceback" not in err, (out, err)
    assert f"{NAMES[2]}.gz: truncated or corrupt gzip stream" in err, err


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_gzip_with_variable_length_arrays(capsys, tmp_path, pg_uri, schema, db, fmt):
    src = _new_types_file(tmp_path / "a.fits", n=50, seed=3)
    d = tmp_path / "gz"
    d.mkdir()
    gzipped(src, d / "a.fits.gz")
    code, out, err = cli(capsys, "load", d, "--catalog", "generic", "--prefix", "v", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1", "--format", fmt)
    assert code == 0, (out, err)
    assert_new_types_exact(db, schema, "v_t", src)


def test_tile_compressed_table_refused_by_name(capsys, tmp_path, pg_uri, schema):
    path = tmp_path / "t.fits.fz"
    hdu = fits.BinTableHDU.from_columns([fits.Column(name="A", format="J", array=np.arange(3))], name="T")
    hdu.header["ZTABLE"] = True
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    code, out, err = cli(capsys, "load", tmp_path, "--catalog", "generic", "--prefix", "z", "--dsn", pg_uri,
                         "--schema", schema, "-w", "1")
    assert code == 1
    assert "t.fits.fz: HDU 1 (T) is a tile-compressed table (ZTABLE)" in err and "funpack" in err


def test_allow_partial_when_every_new_file_fails_after_copy(capsys, tmp_path, fsf, pg_uri, schema, db):
    """Incremental, --allow-partial, the only new file fails its DATASUM (found after the copy):
    the published tables stay as they are, the file is named, exit 4 (as for plan-time failures)."""
    shutil.copy2(fsf / NAMES[0], tmp_path / NAMES[0])
    code, _, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1", "-q")
    assert code == 0, err
    data = bytearray(open(fsf / NAMES[1], "rb").read())
    with fits.open(fsf / NAMES[1]) as h:
        data[h[2].fileinfo()["datLoc"] + 5] ^= 0x11
    open(tmp_path / NAMES[1], "wb").write(bytes(data))
    code, out, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1 and f"{NAMES[1]}: HDU 2 (SPECPHOT): DATASUM is" in err
    code, out, err = cli(capsys, "load", tmp_path, "--dsn", pg_uri, "--schema", schema, "-w", "1", "--allow-partial")
    assert code == 4, (out, err)
    assert f"published WITHOUT {NAMES[1]}" in out
    assert assert_fastspecfit_exact(db, schema, [tmp_path / NAMES[0]])
    assert fetch(db, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata') == [(30,)]


def test_desivast_incremental_rerun_names_damaged_files(capsys, tmp_path, pg_uri, schema, db):
    """The other preset: DESIVAST files published, then one re-downloaded truncated and a gzip'd
    copy of another beside a non-FITS file named like a DESIVAST file: named, exit 1; the
    published tables unchanged; --allow-partial takes the gzip'd file (exit 4)."""
    from desi_loader.samples.desivast import file_name, write_desivast_file
    from helpers import assert_desivast_exact
    d = tmp_path / "vast"
    d.mkdir()
    good = [write_desivast_file(str(d / file_name(a, "NGC")), a, "NGC", 0.0005, seed=2)
            for a in ("REVOLVER", "VoidFinder")]
    code, _, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "-w", "1", "-q")
    assert code == 0, err
    kept = tmp_path / "kept"
    kept.mkdir()
    for p in good:
        shutil.copy2(p, kept)
    truncated(good[0], d / file_name("REVOLVER", "NGC"))
    zobov = write_desivast_file(str(tmp_path / file_name("ZOBOV", "SGC")), "ZOBOV", "SGC", 0.0005, seed=3)
    gzipped(zobov, d / (file_name("ZOBOV", "SGC") + ".gz"))
    (d / file_name("VIDE", "SGC")).write_bytes(b"")
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1, (out, err)
    assert f"{file_name('REVOLVER', 'NGC')}: truncated" in err and f"{file_name('VIDE', 'SGC')}: empty file" in err
    assert_desivast_exact(db, schema, [kept / os.path.basename(p) for p in good])
    db.rollback()
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "-w", "1", "--allow-partial")
    assert code == 4, (out, err)
    assert f"published WITHOUT {file_name('REVOLVER', 'NGC')}" in out
    assert fetch(db, f'SELECT filename FROM "{schema}".load_files WHERE published ORDER BY 1') == sorted(
        [(os.path.basename(good[0]),), (os.path.basename(good[1]),), (file_name("ZOBOV", "SGC") + ".gz",)])
