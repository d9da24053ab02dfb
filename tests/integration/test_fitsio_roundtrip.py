"""The realistic FastSpecFit layout, every column of every HDU, checked against fitsio.

fitsio (CFITSIO) is a reader independent of the loader's own raw-byte reader and of
astropy (used by the other round-trip tests): every value the database returns must
equal what fitsio reads from the file, bit for bit for floats.
"""
import pytest

from desi_loader.samples.fastspecfit import write_fastspecfit_file
from helpers import assert_fastspecfit_exact, load

FILES = ("fastspec-iron-main-bright-nside1-hp03.fits", "fastspec-iron-sv3-bright.fits")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fitsio")
    return [write_fastspecfit_file(str(d / name), 30, seed=i) or str(d / name) for i, name in enumerate(FILES)]


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_every_column_equals_fitsio(files, pg_uri, schema, db, fmt):
    load(pg_uri, schema, files, fmt=fmt)
    checked = assert_fastspecfit_exact(db, schema, files)
    assert checked == 2 * (54 + 127 + 887) + (67 - 54)
