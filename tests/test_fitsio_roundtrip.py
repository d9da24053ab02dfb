"""The realistic FastSpecFit layout, every column of every HDU, checked against fitsio.

fitsio (CFITSIO) is a reader independent of the loader's own raw-byte reader and of
astropy (used by the other round-trip tests): every value the database returns must
equal what fitsio reads from the file, bit for bit for floats.
"""
import fitsio
import numpy as np
import pytest

from desi_loader.sample import write_fastspecfit_file
from helpers import load

FILES = ("fastspec-iron-main-bright-nside1-hp03.fits", "fastspec-iron-sv3-bright.fits")
TABLES = {"METADATA": "fastspecfit_metadata", "SPECPHOT": "fastspecfit_specphot",
          "FASTSPEC": "fastspecfit_fastspec"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fitsio")
    return [write_fastspecfit_file(str(d / name), 30, seed=i) or str(d / name) for i, name in enumerate(FILES)]


def _same(col, want, got):
    """Compare one column: fitsio's values ``want`` with the database's ``got`` (a list)."""
    kind = want.dtype.kind
    if kind == "f":
        arr = np.array([np.nan if v is None else v for v in got], dtype=want.dtype.newbyteorder("="))
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(arr), nan), col
        bits = {4: np.uint32, 8: np.uint64}[want.dtype.itemsize]
        assert np.array_equal(arr[~nan].view(bits), want[~nan].astype(arr.dtype).view(bits)), col
    elif kind in "iu":
        assert [int(v) for v in got] == [int(v) for v in want], col
    elif kind == "b":
        assert list(got) == [bool(v) for v in want], col
    else:
        assert list(got) == [str(v).rstrip(" ") for v in want], col


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_every_column_equals_fitsio(files, pg_uri, schema, db, fmt):
    load(pg_uri, schema, files, fmt=fmt)
    checked = 0
    for path in files:
        name = path.rsplit("/", 1)[1]
        for ext, table in TABLES.items():
            data = fitsio.read(path, ext=ext)
            with db.cursor() as cur:
                cur.execute(f'SELECT t.* FROM "{schema}".{table} t JOIN "{schema}".load_files f USING (file_id) '
                            "WHERE f.filename = %s ORDER BY t.row_num", (name,))
                names = [d.name for d in cur.description]
                rows = cur.fetchall()
            db.commit()
            assert len(rows) == len(data), (name, ext)
            for col in data.dtype.names:
                got = [r[names.index(col.lower())] for r in rows]
                want = data[col]
                if want.ndim > 1:                       # COEFF: a real[] per row
                    for r in range(len(want)):
                        _same(col, want[r], got[r])
                else:
                    _same(col, want, got)
                checked += 1
    assert checked == 2 * (54 + 127 + 887) + (67 - 54)
