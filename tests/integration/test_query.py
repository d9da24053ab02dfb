"""Query results back out: astropy Tables with the FITS dtypes, units, descriptions and
masked NULLs; files in FITS, VOTable, ECSV and CSV; the round trip FITS -> PostgreSQL ->
FITS, value for value."""
import io
import json
from contextlib import redirect_stdout

import astropy.cosmology.units as cu
import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits, votable
from astropy.table import Table

from desi_loader import query, units as units_mod
from desi_loader.queries import export
from desi_loader.queries.tables import iter_tables
from desi_loader.db import connect
from docs_examples import all_blocks, example
from helpers import FASTSPECFIT_TABLES, load, write_all_types


def _bits(a: np.ndarray) -> np.ndarray:
    """Raw bytes per element in one byte order (NaN payloads and -0.0 kept)."""
    a = np.ascontiguousarray(a)
    if a.dtype.kind in "U" or a.dtype == object:
        return a
    return a.astype(a.dtype.newbyteorder("<")).view(np.uint8)


def _native(dt: np.dtype) -> np.dtype:
    return dt.newbyteorder("=") if dt.kind in "iufcb" else dt


def assert_same_column(name, want, got):
    assert _native(got.dtype) == _native(want.dtype), (name, want.dtype, got.dtype)
    assert got.shape == want.shape, (name, want.shape, got.shape)
    wmask = np.ma.getmaskarray(want)
    gmask = np.ma.getmaskarray(got)
    assert np.array_equal(wmask, gmask), name
    w, g = np.ma.getdata(want), np.ma.getdata(got)
    if w.dtype == object:
        assert all(np.array_equal(a, b) for a, b in zip(w, g)), name
    else:                                    # what a mask hides has no value to compare
        assert np.array_equal(_bits(w[~wmask]), _bits(g[~wmask])), name


def _things(tmp_path, pg_uri, schema):
    path = write_all_types(tmp_path / "things.fits")
    load(pg_uri, schema, [path], catalog="generic", prefix="cat", workers=1)
    return path


def test_query_gives_each_column_as_the_fits_file_had_it(tmp_path, pg_uri, schema):
    path = _things(tmp_path, pg_uri, schema)
    got = query(f'SELECT * FROM "{schema}".cat_things ORDER BY row_num', dsn=pg_uri)
    with fits.open(path) as h:
        raw, units = h[1].data, {c.name: c.unit for c in h[1].columns}
        # the loader's NULL policy: NaN (also inside arrays), TNULL and a FITS null logical are NULL
        nulls = {n: np.isnan(raw[n]) for n in ("F8", "F4", "ARR5")}
        nulls["TN"] = np.isin(np.arange(40), [3, 7])
        nulls["L"] = np.arange(40) == 5
        want = {n: np.ma.array(raw[n], mask=nulls.get(n, np.zeros(raw[n].shape, bool))) for n in raw.names}
    assert got.colnames[:2] == ["file_id", "row_num"]
    for name, col in want.items():
        assert_same_column(name, col, got[name.lower()])
        assert got[name.lower()].unit == units_mod.astropy_unit(units[name]), name     # the unit the file meant
    assert got["u2"].dtype == np.uint16 and got["u8"].dtype == np.uint64 and got["f4"].dtype == np.float32
    assert got["arr23"].shape == (40, 2, 3)
    assert got["tn"].mask[3] and np.ma.getdata(got["tn"])[3] == 999    # a NULL holds the file's TNULL
    assert got["l"].mask[5]                                   # a FITS null logical
    assert got["f8"].unit == u.Mpc / cu.littleh and got["f8"].meta["tunit"] == "Mpc h-1"   # little h, not the hour
    assert got["file_id"].dtype == np.int64 and got["file_id"].description == "key of load_files"


def test_query_without_a_fits_source_uses_postgresql_types(pg_uri):
    t = query("SELECT 1::int2 AS a, 2.5::real AS b, NULL::int8 AS c, 'x' AS d, ARRAY[[1,2],[3,4]] AS e, "
              "ARRAY[1.5::float8, NULL] AS f", dsn=pg_uri)
    assert [t[c].dtype for c in "abc"] == [np.int16, np.float32, np.int64]
    assert t["c"].mask[0] and t["d"][0] == "x"
    assert t["e"].shape == (1, 2, 2) and t["e"][0].tolist() == [[1, 2], [3, 4]]
    assert t["f"].mask[0].tolist() == [False, True]


def test_query_in_chunks_equals_query_whole(tmp_path, pg_uri, schema):
    _things(tmp_path, pg_uri, schema)
    conn = connect(pg_uri)
    try:
        chunks = list(iter_tables(conn, f'SELECT * FROM "{schema}".cat_things ORDER BY row_num', chunk_rows=7))
    finally:
        conn.close()
    assert [len(c) for c in chunks] == [7] * 5 + [5]
    whole = query(f'SELECT * FROM "{schema}".cat_things ORDER BY row_num', dsn=pg_uri)
    from astropy.table import vstack
    joined = vstack(chunks)
    for name in whole.colnames:
        assert_same_column(name, whole[name], joined[name])


@pytest.mark.parametrize("ext", [".fits", ".vot", ".ecsv", ".csv"])
def test_export_formats_keep_units_descriptions_and_values(tmp_path, pg_uri, schema, ext):
    _things(tmp_path, pg_uri, schema)
    sql = (f'SELECT row_num, f8, f4, i8, u2, u8, l, s, arr5, arr23, tn FROM "{schema}".cat_things '
           "ORDER BY row_num")
    conn = connect(pg_uri)
    out = str(tmp_path / f"result{ext}")
    try:
        written = export.write(iter_tables(conn, sql, chunk_rows=9), out)
    finally:
        conn.close()
    whole = query(sql, dsn=pg_uri)
    assert written.rows == 40 and written.bytes > 0
    if ext == ".csv":
        back = Table.read(out, format="ascii.csv")
        assert len(back) == 40 and back.colnames == whole.colnames
        assert back["i8"].tolist() == whole["i8"].tolist()
        assert json.loads(back["arr23"][4]) == whole["arr23"][4].tolist()
        return
    if ext == ".vot":
        report = io.StringIO()
        assert votable.validate(out, output=report), report.getvalue()
    with u.add_enabled_units(cu):                       # ECSV writes astropy's littleh
        back = Table.read(out, character_as_bytes=False) if ext == ".fits" else Table.read(out)
    assert back.colnames == whole.colnames
    for name in whole.colnames:
        if whole[name].dtype.kind == "U":               # '' may come back masked (astropy's mask_invalid)
            got = back[name].filled("") if hasattr(back[name], "filled") else back[name]
            if ext == ".ecsv":                          # astropy's ECSV writer drops a string's outer blanks
                assert got.tolist() == [v.strip() for v in whole[name].tolist()], name
                continue
            assert got.tolist() == whole[name].tolist(), name
            continue
        if ext == ".vot" and whole[name].dtype.kind == "u" and whole[name].dtype.itemsize > 1:
            # VOTable has no unsigned short/int/long: widened losslessly, uint64 as decimal text
            assert [int(v) for v in back[name]] == [int(v) for v in whole[name]], name
            continue
        if ext == ".fits" and name == "l":              # FITS logical: a NULL is 0x00, read as False
            assert back[name].tolist() == whole[name].filled(False).tolist()
            continue
        want = whole[name]
        assert_same_column(name, want, back[name])
        if name != "f8":
            assert back[name].unit == want.unit, name
    # little h: FITS keeps the file's TUNIT, VOTable the quoted VOUnit (TAP's), ECSV astropy's littleh
    if ext == ".fits":
        assert fits.getheader(out, 1)[f"TUNIT{back.colnames.index('f8') + 1}"] == "Mpc h-1"
    elif ext == ".vot":
        assert "unit=\"Mpc.&#x27;h&#x27;**-1\"" in open(out).read() and not back["f8"].unit.is_equivalent(u.Mpc / u.hour)
    else:
        assert back["f8"].unit == u.Mpc / cu.littleh


def test_export_of_an_empty_result(tmp_path, pg_uri, schema):
    _things(tmp_path, pg_uri, schema)
    conn = connect(pg_uri)
    try:
        for ext in (".fits", ".vot", ".ecsv"):
            out = str(tmp_path / f"empty{ext}")
            w = export.write(iter_tables(conn, f'SELECT f4, s FROM "{schema}".cat_things WHERE false'), out)
            back = Table.read(out)
            assert w.rows == 0 and len(back) == 0 and back.colnames == ["f4", "s"], ext
    finally:
        conn.close()


@pytest.mark.slow
def test_round_trip_fastspecfit_and_desivast_hdus_bit_for_bit(tmp_path, pg_uri, schema):
    """A table exported back to FITS, the loader's own columns left out, holds the HDU it
    was loaded from: same names, units, dtypes and stored values."""
    from desi_loader.commands import write_samples
    fss = write_samples(str(tmp_path / "in"), "fastspecfit", 30, 1, None)
    vast = [p for p in write_samples(str(tmp_path / "in"), "desivast", 30, 1, 0.002) if "V2_REVOLVER" in p][:1]
    load(pg_uri, schema, fss, workers=1)
    load(pg_uri, schema, vast, workers=1)
    cases = [(fss[0], ext, FASTSPECFIT_TABLES[ext]) for ext in ("METADATA", "SPECPHOT")]
    cases.append((vast[0], "ZONEVOID", None))
    for path, ext, table in cases:
        with fits.open(path) as h:
            want = h[ext].data
            names, units = want.columns.names, [c.unit for c in want.columns]
        if table is None:                                 # DESIVAST: the preset names its table
            from desi_loader.fits.config import load_settings
            table = load_settings().catalogs["desivast"].table_for(ext, 0)
        cols = ", ".join(f'"{n.lower()}"' for n in names)
        sql = (f'SELECT {cols} FROM "{schema}".{table} t JOIN "{schema}".load_files f USING (file_id) '
               f"WHERE f.filename = %s ORDER BY t.row_num")
        conn = connect(pg_uri)
        try:
            out = str(tmp_path / f"{ext}.fits")
            export.write(iter_tables(conn, sql, (path.rsplit("/", 1)[1],), fits_names=True), out)
        finally:
            conn.close()
        with fits.open(out) as h:
            got = h[1].data
            assert got.columns.names == names, ext
            assert [c.unit for c in got.columns] == units, ext
            for n in names:
                assert got[n].dtype == want[n].dtype and got[n].shape == want[n].shape, (ext, n)
                assert np.array_equal(_bits(np.asarray(want[n])), _bits(np.asarray(got[n]))), (ext, n)


def test_cli_output_writes_the_file_and_says_how_fast(tmp_path, pg_uri, schema, capsys):
    from desi_loader.cli import main
    _things(tmp_path, pg_uri, schema)
    out = tmp_path / "cli.vot"
    code = main(["sql", f'SELECT f8, s FROM "{schema}".cat_things', "--output", str(out), "--dsn", pg_uri])
    err = capsys.readouterr().err
    assert code == 0 and "wrote 40 rows" in err and "rows/s" in err
    assert len(Table.read(out)) == 40
    code = main(["sql", "SELECT 1", "--output", str(tmp_path / "x.txt"), "--dsn", pg_uri])
    assert code == 2 and "unknown format" in capsys.readouterr().err


def _drop_desi_dr1(pg_uri):
    conn = connect(pg_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA IF EXISTS desi_dr1 CASCADE")
    conn.close()


@pytest.mark.slow
def test_guide_notebook_and_void_distance_examples_run_as_written(tmp_path, pg_uri, monkeypatch):
    from desi_loader import coords
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DESI_LOADER_DSN", pg_uri)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))    # a fresh checkout: no sample files yet
    _drop_desi_dr1(pg_uri)
    try:
        out = io.StringIO()
        with redirect_stdout(out):
            block = example("notebook")
            exec(compile(block.code, block.page, "exec"), {"__name__": "__main__"})
        n, dtype, unit = out.getvalue().strip().splitlines()[-1].split(maxsplit=2)
        assert dtype == "float32" and unit.strip() not in ("", "None")
        report = io.StringIO()
        assert votable.validate(str(tmp_path / "cone.vot"), output=report), report.getvalue()
        back = Table.read(tmp_path / "cone.vot")
        assert len(back) == int(n) > 0 and back["flux_r"].dtype == np.float32
        # the void-distance example: as written, then checked against coords.py
        sql = next(b.code for b in all_blocks() if b.lang == "sql" and "r_over_reff" in b.code)
        t = query(sql.strip().rstrip(";"))
        assert len(t) > 0 and np.all(t["r_over_reff"] < 2)
        g = query("SELECT m.targetid, m.ra, m.dec, m.z FROM desi_dr1.fastspecfit_metadata m WHERE m.targetid = ANY(%s)",
                  ([int(x) for x in t["targetid"][:20]],))
        v = query("SELECT cap, void, x, y, z, radius FROM desi_dr1.desivast_voids WHERE algorithm = 'REVOLVER'")
        pos = {int(r["targetid"]): coords.comoving_xyz(r["ra"], r["dec"], r["z"]) for r in g}
        cen = {(r["cap"], int(r["void"])): (np.array([r["x"], r["y"], r["z"]]), r["radius"]) for r in v}
        for r in t[:20]:
            c, rad = cen[(r["cap"], int(r["void"]))]
            assert abs(np.linalg.norm(pos[int(r["targetid"])] - c) / rad - r["r_over_reff"]) < 1e-9
    finally:
        _drop_desi_dr1(pg_uri)
