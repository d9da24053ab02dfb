"""Parquet files and HATS catalogs into PostgreSQL with the loader's whole contract: every
Arrow type exact (NULLs by the loader's policy), tasks by row group, the sky index, row
counts held against the catalog's metadata, the margin cache and auxiliary files never
loaded, a damaged or missing partition named with nothing partial published, an incremental
load of one changed partition."""
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from arrowdata import all_arrow_types, expected, same
from desi_loader.cli import main
from helpers import fetch, load


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_table_exact(db, schema, table, source: pa.Table, key="ID"):
    """Every row and column of ``source`` in schema.table, value for value."""
    names = [c.lower() for c in source.column_names]
    rows = fetch(db, f'SELECT {", ".join(names)} FROM "{schema}".{table} ORDER BY {key.lower()}')
    order = np.argsort(source.column(key).to_numpy())
    assert len(rows) == source.num_rows
    for name, i in zip(source.column_names, range(len(names))):
        col, t = source.column(name).to_pylist(), source.schema.field(name).type
        for r, src_row in enumerate(order):
            want = expected(col[src_row], t)
            assert same(rows[r][i], want, t), (name, int(src_row), rows[r][i], want)


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_every_arrow_type_loads_exactly(tmp_path, pg_uri, schema, db, fmt):
    table = all_arrow_types(300)
    pq.write_table(table, tmp_path / "many.parquet", row_group_size=70)      # 5 row groups
    summary = load(pg_uri, schema, [tmp_path / "many.parquet"], fmt=fmt, task_rows=100, sky="RA,DEC")
    assert summary.rows == {"many": 300}
    assert summary.tasks == 3                 # whole row groups: 140 + 140 + 20 rows
    assert_table_exact(db, schema, "many", table)
    types = dict(fetch(db, "SELECT column_name, format_type(a.atttypid, a.atttypmod) FROM information_schema.columns c "
                           "JOIN pg_attribute a ON a.attrelid = (quote_ident(table_schema) || '.' || table_name)::regclass "
                           "AND a.attname = c.column_name WHERE table_schema = %s AND table_name = 'many'", (schema,)))
    assert types["f32"] == "real" and types["f16"] == "real" and types["f64"] == "double precision"
    assert types["i8"] == types["u8"] == types["i16"] == "smallint"
    assert types["u16"] == types["i32"] == "integer" and types["u32"] == types["i64"] == "bigint"
    assert types["u64"] == "numeric(20,0)" and types["flag"] == "boolean" and types["name"] == "text"
    assert types["arr"] == "real[]" and types["mat"] == "smallint[]" and types["vl"] == "integer[]"
    # the sky index: every row with a position has its pixel
    assert fetch(db, f'SELECT count(*) FROM "{schema}".many WHERE hpx29 IS NULL')[0][0] == 0
    assert fetch(db, f'SELECT array_dims(mat) FROM "{schema}".many LIMIT 1')[0][0] == "[1:2][1:3]"


def test_units_and_descriptions_from_the_schema(tmp_path, pg_uri, schema, db):
    t = pa.table({"ID": pa.array([1, 2], pa.int64()), "FLUX": pa.array([1.5, 2.5], pa.float32())})
    f = t.schema.field("FLUX").with_metadata({b"unit": b"nanomaggy", b"description": b"g-band flux"})
    t = t.cast(t.schema.set(1, f))
    pq.write_table(t, tmp_path / "fl.parquet")
    load(pg_uri, schema, [tmp_path / "fl.parquet"], prefix="fluxes")
    comment, = fetch(db, f"SELECT col_description('\"{schema}\".fluxes'::regclass, "
                         f"(SELECT attnum FROM pg_attribute WHERE attrelid = '\"{schema}\".fluxes'::regclass "
                         "AND attname = 'flux'))")[0]
    assert comment == "g-band flux [nanomaggy]"


def test_damaged_and_unsupported_parquet_named(capsys, tmp_path, pg_uri, schema, db):
    good = all_arrow_types(50)
    d = tmp_path / "cat"
    d.mkdir()
    pq.write_table(good, d / "a.parquet")
    pq.write_table(good, d / "b.parquet")
    data = (d / "b.parquet").read_bytes()
    (d / "b.parquet").write_bytes(data[: len(data) // 2])                  # its footer gone
    pq.write_table(pa.table({"T": pa.array([1, 2], pa.timestamp("s"))}), d / "c.parquet")
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1, (out, err)
    assert "b.parquet: not a readable Parquet file" in err
    assert "c.parquet: Parquet table: column 'T': Arrow type timestamp[ms] is not loaded" in err
    assert "Traceback" not in err
    assert fetch(db, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 'cat'", (schema,))[0][0] == 0


def test_parquet_without_pyarrow_names_the_extra(monkeypatch):
    import builtins

    from desi_loader.errors import UsageError
    from desi_loader.fits import arrow

    real = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(UsageError) as info:
        arrow.pyarrow()
    assert "desi-loader[hats]" in info.value.hint


# --------------------------------------------------------------------------- HATS


def _positions(n, seed):
    rng = np.random.default_rng(seed)
    return pa.table({
        "ID": pa.array(np.arange(n, dtype=np.int64) + 1000 * seed),
        "RA": rng.uniform(0, 360, n), "DEC": np.degrees(np.arcsin(rng.uniform(-1, 1, n))),
        "MAG": pa.array(rng.uniform(15, 24, n).astype(np.float32), mask=rng.random(n) < 0.05),
        "KIND": pa.array([["GALAXY", "QSO", "STAR ", None][i % 4] for i in range(n)]),
        "SPEC": pa.FixedSizeListArray.from_arrays(pa.array(rng.normal(size=2 * n).astype(np.float32)), 2),
    })


@pytest.fixture(scope="module")
def hats_catalog(tmp_path_factory):
    """A HATS collection made by hats-import (a catalog and its 10 arcsec margin cache) from a
    generated Parquet file: (collection directory, the source table)."""
    from dask.distributed import Client
    from hats_import.collection.arguments import CollectionArguments
    from hats_import.pipeline import pipeline_with_client

    d = tmp_path_factory.mktemp("hats")
    table = _positions(4000, seed=3)
    pq.write_table(table, d / "input.parquet")
    pq.write_metadata(table.schema, d / "schema.parquet")
    args = (CollectionArguments(output_artifact_name="objs", output_path=d / "out", progress_bar=False,
                                tmp_dir=d / "tmp")
            .catalog(input_file_list=[str(d / "input.parquet")], file_reader="parquet", ra_column="RA",
                     dec_column="DEC", pixel_threshold=600, use_schema_file=str(d / "schema.parquet"))
            .add_margin(margin_threshold=10.0, is_default=True))
    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        pipeline_with_client(args, client)
    return d / "out" / "objs", table


def _partitions(catalog_dir):
    return sorted(p for p in (catalog_dir / "objs" / "dataset").rglob("Npix=*.parquet"))


def test_hats_collection_loads_exactly_without_its_margin(hats_catalog, pg_uri, schema, db, tmp_path):
    coll, table = hats_catalog
    margin = [p for p in coll.iterdir() if p.is_dir() and p.name != "objs"]
    assert margin and any(margin[0].rglob("*.parquet"))          # hats-import wrote a margin cache
    summary = load(pg_uri, schema, [coll])
    parts = _partitions(coll)
    assert len(parts) > 4 and summary.rows == {"objs": 4000}      # the margin's rows are not loaded
    assert sorted(os.path.basename(p) for p in summary.files_loaded) == sorted(p.name for p in parts)
    assert_table_exact(db, schema, "objs", table)
    # the loader's sky pixel is HATS's own _healpix_29 (both nested HEALPix order 29)
    assert fetch(db, f'SELECT count(*) FROM "{schema}".objs WHERE hpx29 IS DISTINCT FROM _healpix_29')[0][0] == 0


def test_hats_damaged_and_missing_partitions_named(capsys, hats_catalog, pg_uri, schema, db, tmp_path):
    coll, _ = hats_catalog
    copy = tmp_path / "objs"
    shutil.copytree(coll, copy)
    parts = _partitions(copy)
    data = parts[0].read_bytes()
    parts[0].write_bytes(data[:-100])                                       # damaged
    parts[1].unlink()                                                       # missing
    code, out, err = cli(capsys, "load", copy, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1, (out, err)
    rel0 = os.path.relpath(parts[0], copy / "objs" / "dataset")
    assert f"{parts[0].name}: not a readable Parquet file" in err, err
    assert f"{parts[1].name}: partition Norder=" in err and "is missing" in err, err
    assert rel0.startswith("Norder=")
    assert "Traceback" not in err
    assert fetch(db, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename = 'objs'", (schema,))[0][0] == 0


def test_hats_partition_rows_held_against_the_catalog(capsys, hats_catalog, pg_uri, schema, tmp_path):
    coll, _ = hats_catalog
    copy = tmp_path / "objs"
    shutil.copytree(coll, copy)
    part = _partitions(copy)[2]
    t = pq.read_table(part)
    pq.write_table(t.slice(0, t.num_rows - 1), part)                       # one row lost, footer intact
    code, out, err = cli(capsys, "load", copy, "--dsn", pg_uri, "--schema", schema, "-w", "1")
    assert code == 1, (out, err)
    assert f"{part.name}: holds {t.num_rows - 1} rows, the catalog's dataset/_metadata says {t.num_rows}" in err


def test_hats_incremental_reload_of_one_changed_partition(capsys, hats_catalog, pg_uri, schema, db, tmp_path):
    coll, table = hats_catalog
    copy = tmp_path / "objs"
    shutil.copytree(coll, copy)
    code, _, err = cli(capsys, "load", copy, "--dsn", pg_uri, "--schema", schema, "-w", "2", "-q")
    assert code == 0, err
    part = _partitions(copy)[3]
    t = pq.read_table(part)
    mags = pa.compute.add(t.column("MAG"), pa.scalar(1.0, pa.float32()))
    pq.write_table(t.set_column(t.column_names.index("MAG"), t.schema.field("MAG"), mags), part)
    code, out, err = cli(capsys, "load", copy, "--dsn", pg_uri, "--schema", schema, "-w", "2")
    assert code == 0, err
    assert "named files: 1 loaded" in out and "unchanged (published before)" in out
    changed = set(t.column("ID").to_pylist())
    ids = table.column("ID").to_numpy()
    want = table.column("MAG").to_numpy(zero_copy_only=False).astype(np.float32)
    want = np.where(np.isin(ids, list(changed)), want + np.float32(1), want)
    got = dict(fetch(db, f'SELECT id, mag FROM "{schema}".objs'))
    assert len(got) == 4000
    for i, w in zip(ids, want):
        g = got[int(i)]
        assert (g is None and np.isnan(w)) or np.float32(g) == w


# --------------------------------------------------------------------------- both ways


def test_round_trip_table_to_hats_and_back(capsys, tmp_path, pg_uri, schema, db):
    """A published table -> HATS (sql --format hats) -> loaded back: equal row for row, every
    value bit for bit, units and descriptions kept; lsdb opens the export with its margin."""
    import lsdb

    table = all_arrow_types(400, seed=5)
    f = table.schema.field("F32").with_metadata({b"unit": b"nanomaggy", b"description": b"a flux"})
    table = table.cast(table.schema.set(table.column_names.index("F32"), f))
    pq.write_table(table, tmp_path / "src.parquet", row_group_size=150)
    load(pg_uri, schema, [tmp_path / "src.parquet"], prefix="src", sky="RA,DEC")
    out = tmp_path / "export"
    code, _, err = cli(capsys, "sql", f'SELECT * FROM "{schema}".src', "--output", out, "--format", "hats",
                       "--margin", "30", "--dsn", pg_uri)
    assert code == 0, err
    assert f"wrote 400 rows to a HATS catalog (with its margin cache) at {out}" in err
    assert "INFO" not in err and "Warning" not in err
    cat = lsdb.read_hats(out)
    assert cat.margin is not None and cat.hc_structure.catalog_info.total_rows == 400
    df = cat.compute()
    assert str(df["f32"].dtype) == "float[pyarrow]" and str(df["u64"].dtype) == "uint64[pyarrow]"
    assert "file_id" not in df.columns and "hpx29" not in df.columns
    back = f"{schema}_back"
    try:
        summary = load(pg_uri, back, [out])
        assert summary.rows == {"export": 400}
        cols = [c.lower() for c in table.column_names]
        a = fetch(db, f'SELECT {", ".join(cols)} FROM "{schema}".src ORDER BY id')
        b = fetch(db, f'SELECT {", ".join(cols)} FROM "{back}".export ORDER BY id')
        diffs = [(i, j, x[j], y[j]) for i, (x, y) in enumerate(zip(a, b)) for j in range(len(x)) if x[j] != y[j]]
        assert not diffs, (cols, diffs[:5])
        types = f"""SELECT attname, format_type(atttypid, atttypmod), col_description(attrelid, attnum)
                    FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND attname = ANY(%s) ORDER BY attname"""
        assert fetch(db, types, (f'"{schema}".src', cols)) == fetch(db, types, (f'"{back}".export', cols))
        assert dict((r[0], r[2]) for r in fetch(db, types, (f'"{back}".export', cols)))["f32"] == "a flux [nanomaggy]"
    finally:
        with db.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{back}" CASCADE')
        db.commit()


def test_hats_output_refusals(capsys, tmp_path, pg_uri):
    code, _, err = cli(capsys, "sql", "SELECT 1 AS x", "--output", tmp_path / "h", "--format", "hats", "--dsn", pg_uri)
    assert code == 2 and "has no ra and dec columns" in err and "--sky RA,DEC" in err
    (tmp_path / "there").mkdir()
    code, _, err = cli(capsys, "sql", "SELECT 1.0 AS ra, 2.0 AS dec", "--output", tmp_path / "there", "--format",
                       "hats", "--dsn", pg_uri)
    assert code == 2 and "exists; a HATS catalog is written as a new directory" in err
    code, _, err = cli(capsys, "sql", "SELECT 1", "--format", "hats", "--dsn", pg_uri)
    assert code == 2 and "--format is for --output" in err
    code, _, err = cli(capsys, "sql", "SELECT 1.0 AS ra", "--output", tmp_path / "x.csv", "--margin", "5",
                       "--dsn", pg_uri)
    assert code == 2 and "--sky and --margin are for --format hats" in err
    assert not (tmp_path / "h").exists() and not list(tmp_path.glob(".h.part*"))


def test_lsdb_crossmatch_of_the_export_gives_the_pairs_of_xmatch(capsys, tmp_path, pg_uri, schema, db):
    """A HATS catalog made by hats-import (objects near some DESI galaxies) cross-matched in
    LSDB against the DESI table exported as HATS (small partitions: LSDB finds the pairs across
    their edges in the export's margin cache): the same pairs as ``desi-loader xmatch`` of the
    two tables in PostgreSQL."""
    import lsdb
    from dask.distributed import Client
    from hats_import.catalog.arguments import ImportArguments
    from hats_import.pipeline import pipeline_with_client

    from desi_loader.queries.hats import write_hats
    from desi_loader.queries.tables import iter_tables
    from desi_loader.samples.fastspecfit import write_fastspecfit_file
    from helpers import NAMES

    for i, name in enumerate(NAMES[:2]):
        write_fastspecfit_file(str(tmp_path / name), 400, seed=i + 11)
    load(pg_uri, schema, [tmp_path / n for n in NAMES[:2]])
    gal = np.array(fetch(db, f'SELECT ra, dec FROM "{schema}".fastspecfit_metadata ORDER BY targetid'))
    rng = np.random.default_rng(7)
    near = gal[rng.random(len(gal)) < 0.6]
    sep = rng.uniform(0, 2.5, len(near)) / 3600                               # within 2.5 arcsec
    angle = rng.uniform(0, 2 * np.pi, len(near))
    ra = np.concatenate([near[:, 0] + sep * np.cos(angle) / np.cos(np.radians(near[:, 1])),
                         rng.uniform(0, 360, 1500)]) % 360
    dec = np.concatenate([np.clip(near[:, 1] + sep * np.sin(angle), -90, 90),
                          np.degrees(np.arcsin(rng.uniform(-1, 1, 1500)))])
    objs = pa.table({"OBJID": pa.array(np.arange(len(ra), dtype=np.int64)), "RA": ra, "DEC": dec})
    pq.write_table(objs, tmp_path / "objs.parquet")
    args = ImportArguments(output_artifact_name="objs", input_file_list=[str(tmp_path / "objs.parquet")],
                           file_reader="parquet", ra_column="RA", dec_column="DEC", pixel_threshold=300,
                           output_path=tmp_path / "hats", progress_bar=False, tmp_dir=tmp_path / "tmp")
    with Client(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as client:
        pipeline_with_client(args, client)
    load(pg_uri, schema, [tmp_path / "hats" / "objs"])

    radius = 3.0                                                              # arcsec
    code, _, err = cli(capsys, "xmatch", "objs", "fastspecfit_metadata", radius / 3600, "--columns-a", "objid",
                       "--columns-b", "targetid", "--schema", schema, "--dsn", pg_uri,
                       "--output", tmp_path / "pairs.csv")
    assert code == 0, err
    from astropy.table import Table
    sql_pairs = {(int(r["objid"]), int(r["targetid"])) for r in Table.read(tmp_path / "pairs.csv")}

    write_hats(iter_tables(db, f'SELECT targetid, ra, dec FROM "{schema}".fastspecfit_metadata'),
               str(tmp_path / "desi"), partition_bytes=4000)
    desi = lsdb.read_hats(tmp_path / "desi")
    assert desi.margin is not None and len(desi.get_healpix_pixels()) > 4         # partition edges to cross
    matched = lsdb.read_hats(tmp_path / "hats" / "objs").crossmatch(
        desi, radius_arcsec=radius, n_neighbors=1, suffixes=("_a", "_b")).compute()
    lsdb_pairs = {(int(a), int(b)) for a, b in zip(matched["OBJID_a"], matched["targetid_b"])}
    assert len(sql_pairs) >= 0.5 * len(near) and lsdb_pairs == sql_pairs


def test_incremental_rerun_with_a_damaged_page_and_an_empty_file(capsys, tmp_path, pg_uri, schema, db):
    """Published files stay as they were when a new file has a page whose CRC fails (found
    while copying, named with its rows); an empty file loads (nothing) in sky order."""
    d = tmp_path / "inc"
    d.mkdir()
    first = all_arrow_types(120, seed=1)
    pq.write_table(first, d / "a.parquet")
    code, _, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "--sky", "RA,DEC", "-w", "1", "-q")
    assert code == 0, err
    second = all_arrow_types(120, seed=2)
    pq.write_table(second, d / "b.parquet", write_page_checksum=True, compression="none", row_group_size=60)
    data = bytearray((d / "b.parquet").read_bytes())
    meta = pq.ParquetFile(d / "b.parquet").metadata
    col = meta.row_group(1).column(first.column_names.index("F64"))
    data[col.data_page_offset + col.total_compressed_size // 2] ^= 0xFF        # one byte of a data page
    (d / "b.parquet").write_bytes(bytes(data))
    pq.write_table(first.slice(0, 0), d / "c.parquet")                            # no rows
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "--sky", "RA,DEC", "-w", "1",
                         "--task-rows", "60")
    assert code == 1, (out, err)
    assert "b.parquet: row group 1 (rows 60-119): unreadable" in err and "CRC" in err, err
    assert "Traceback" not in err
    assert_table_exact(db, schema, "inc", first)                                  # as published before
    (d / "b.parquet").unlink()
    code, out, err = cli(capsys, "load", d, "--dsn", pg_uri, "--schema", schema, "--sky", "RA,DEC", "-w", "1")
    assert code == 0, err
    assert "named files: 1 loaded, 1 unchanged" in out
    assert_table_exact(db, schema, "inc", first)
