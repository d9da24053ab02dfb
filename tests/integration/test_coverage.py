"""desi-loader coverage: the sky a table covers, from its sky index, as an area, a MOC and a map."""
import os

import astropy.units as u
import numpy as np
import pytest
from mocpy import MOC

from desi_loader.cli import main
from desi_loader.queries.coverage import SKY_DEG2, default_order
from helpers import fetch, load


@pytest.fixture
def sample(tmp_path, pg_uri, schema):
    from desi_loader.commands import write_samples
    write_samples(str(tmp_path / "s"), "all", 300, 1, None)
    load(pg_uri, schema, [str(tmp_path / "s" / "fastspecfit")], workers=2)
    load(pg_uri, schema, [str(tmp_path / "s" / "desivast")], workers=2)
    return tmp_path


@pytest.mark.parametrize("table", ["fastspecfit_metadata", "desivast_voids"])
def test_moc_holds_every_row_and_the_area_is_the_cells(sample, pg_uri, schema, db, table, capsys):
    out = sample / f"{table}.moc.fits"
    assert main(["coverage", table, "--schema", schema, "--dsn", pg_uri, "-o", str(out)]) == 0
    moc = MOC.from_fits(str(out))
    ra, dec = np.array(fetch(db, f'SELECT ra, dec FROM "{schema}".{table}'), float).T
    assert len(ra) and moc.contains_lonlat(np.mod(ra, 360) * u.deg, dec * u.deg).all()
    assert 0 < moc.sky_fraction < 1
    assert main(["coverage", table, "--schema", schema, "--dsn", pg_uri]) == 0
    line = capsys.readouterr().out
    area = float(line.split("): ")[1].split(" deg2")[0].replace(",", ""))
    assert area == pytest.approx(moc.sky_fraction * SKY_DEG2, abs=0.05)       # printed to 0.1 deg2
    assert f"{len(ra):,} rows" in line


def test_json_moc_and_sky_maps(sample, pg_uri, schema):
    for name in ("voids.json", "map.png", "map.pdf"):
        assert main(["coverage", "desivast_voids", "--schema", schema, "--dsn", pg_uri, "--order", "5",
                     "-o", str(sample / name)]) == 0
    assert MOC.load(str(sample / "voids.json"), "json").max_order == 5
    assert (sample / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and os.path.getsize(sample / "map.png") > 20000
    assert (sample / "map.pdf").read_bytes()[:5] == b"%PDF-"


def test_clear_messages(sample, pg_uri, schema, capsys):
    assert main(["coverage", "fastspecfit_specphot", "--schema", schema, "--dsn", pg_uri]) == 2
    assert "has no sky index" in capsys.readouterr().err
    assert main(["coverage", "fastspecfit_metadata", "--schema", schema, "--dsn", pg_uri, "--order", "2"]) == 2
    assert "--order 2" in capsys.readouterr().err
    assert main(["coverage", "fastspecfit_metadata", "--schema", schema, "--dsn", pg_uri, "-o", "x.txt"]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_an_incremental_load_grows_the_coverage(tmp_path, pg_uri, schema, capsys):
    from desi_loader.samples.fastspecfit import write_fastspecfit_sample
    first, second = tmp_path / "a", tmp_path / "b"
    files = write_fastspecfit_sample(str(first), rows=200, files=2, seed=3)
    os.makedirs(second)
    os.rename(files[1], second / os.path.basename(files[1]))
    load(pg_uri, schema, [str(first)], workers=1)
    args = ["coverage", "fastspecfit_metadata", "--schema", schema, "--dsn", pg_uri, "--order", "6"]
    assert main(args) == 0
    before = capsys.readouterr().out
    load(pg_uri, schema, [str(second)], workers=1)          # incremental: a new file, more sky
    assert main(args) == 0
    after = capsys.readouterr().out
    cells = [int(t.split(" rows in ")[1].split(" cells")[0].replace(",", "")) for t in (before, after)]
    assert ": 200 rows" in before and ": 400 rows" in after and cells[1] > cells[0]


def test_default_order():
    assert default_order(6000) == 4 and default_order(18_000_000) == 10 and default_order(5) == 3
