"""DESIVAST: 8 files, 7 related tables, exact values, keys, foreign keys, the membership view."""

import numpy as np
import pytest
from astropy.io import fits

from desi_loader.cli import write_samples
from desi_loader.samples.desivast import file_name, write_desivast_file
from helpers import assert_desivast_exact, fetch, load


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    d = tmp_path_factory.mktemp("samples")
    write_samples(str(d), "all", rows=300, files=2, scale=0.001)
    return d


def test_eight_files_load_exactly_with_keys_and_foreign_keys(samples, pg_uri, schema, db):
    summary = load(pg_uri, schema, [samples / "desivast"], task_rows=500)
    assert summary.catalog == "desivast" and summary.files == 8
    assert set(summary.rows) == {"desivast_maximals", "desivast_holes", "desivast_voids", "desivast_zonevoid",
                                 "desivast_galzone", "desivast_triangle", "desivast_galviz"}
    assert_desivast_exact(db, schema, sorted((samples / "desivast").glob("*.fits")))
    fks = fetch(db, "SELECT conrelid::regclass::text, pg_get_constraintdef(oid), convalidated FROM pg_constraint "
                    "WHERE contype = 'f' AND connamespace = %s::regnamespace ORDER BY 1, 2", (schema,))
    assert len(fks) == 8 and all(v for _, _, v in fks)
    assert any("FOREIGN KEY (algorithm, cap, void0) REFERENCES" in d and "desivast_voids(algorithm, cap, void)" in d
               for _, d, _ in fks)
    pk = fetch(db, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'p' AND conrelid = %s::regclass",
               (f'"{schema}".desivast_zonevoid',))
    assert pk == [("PRIMARY KEY (algorithm, cap, zone)",)]


def _tiny_revolver(path):
    """3 voids, 4 zones, 6 galaxies: the membership is known by hand."""
    from desi_loader.fits.datamodel import datamodel
    dm = datamodel("desivast")["algorithms"]["REVOLVER"]
    values = {
        "VOIDS": {"VOID": [0, 1, 2]},
        "ZONEVOID": {"ZONE": [0, 1, 2, 3], "VOID0": [2, -1, 0, 2], "VOID1": [2, -1, 0, 2]},
        "GALZONE": {"GAL": [0, 1, 2, 3, 4, 5], "TARGET": [100, 101, 102, 103, 104, 105],
                    "ZONE": [0, 1, 2, 3, -1, 0], "OUT": [0, 0, 0, 0, 1, 1]},
        "TRIANGLE": {"VOID": [1]},
        "GALVIZ": {"GID": [0, 1, 2, 3, 4, 5], "G2V": [-1] * 6, "G2V2": [-1] * 6},
    }
    from astropy.table import Table
    hdus = [fits.PrimaryHDU()]
    for ext in dm["hdu_order"][1:]:
        n = len(next(iter(values[ext].values())))
        t = Table()
        for name, tform, _, _, _ in dm["hdus"][ext]:
            t[name] = np.asarray(values[ext].get(name, np.zeros(n)), np.int64 if tform == "K" else np.float64)
        hdus.append(fits.BinTableHDU(t, name=ext))
    fits.HDUList(hdus).writeto(path)


def test_void_galaxies_view_on_a_hand_built_case(tmp_path, pg_uri, schema, db):
    _tiny_revolver(tmp_path / "DESIVAST_BGS_VOLLIM_V2_REVOLVER_NGC.fits")
    load(pg_uri, schema, [tmp_path])
    got = fetch(db, f'SELECT algorithm, cap, void, targetid FROM "{schema}".desivast_void_galaxies ORDER BY targetid')
    # zone 0 -> void 2 (gal 0), zone 1 -> none (gal 1), zone 2 -> void 0 (gal 2), zone 3 -> void 2 (gal 3),
    # gal 4 has no zone, gal 5 is a buffer galaxy (OUT=1)
    assert got == [("REVOLVER", "NGC", 2, 100), ("REVOLVER", "NGC", 0, 102), ("REVOLVER", "NGC", 2, 103)]


def test_missing_required_hdu_is_named(tmp_path, pg_uri, schema):
    from desi_loader.errors import LoadFailed
    path = tmp_path / file_name("VoidFinder", "NGC")
    write_desivast_file(str(path), "VoidFinder", "NGC", scale=0.001)
    with fits.open(path) as h:
        fits.HDUList([h[0].copy(), h[1].copy()]).writeto(path, overwrite=True)   # drop HOLES
    with pytest.raises(LoadFailed, match="VoidFinder_NGC.fits: missing HDU HOLES"):
        load(pg_uri, schema, [path])


def test_fastspecfit_and_desivast_together_readme_join(samples, pg_uri, schema, db):
    from desi_loader.control.run import LoadOptions, run_loads
    summaries = run_loads(LoadOptions(paths=(str(samples / "fastspecfit"), str(samples / "desivast")),
                                      dsn=pg_uri, schema=schema, workers=2))
    assert {s.catalog for s in summaries} == {"fastspecfit", "desivast"}
    rows = fetch(db, f"""
        SELECT v.algorithm, v.cap, v.void, s.logmstar
        FROM "{schema}".desivast_void_galaxies v
        JOIN "{schema}".fastspecfit_specphot s
          ON s.targetid = v.targetid AND s.survey = 'main' AND s.program = 'bright'
        WHERE v.algorithm = 'REVOLVER' LIMIT 20""")
    assert len(rows) > 0
