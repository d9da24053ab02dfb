"""Every FITS type written by astropy comes back from PostgreSQL exactly, in both formats."""
import decimal

import numpy as np
import pytest
from astropy.io import fits

from helpers import fetch, load, write_all_types

FLOAT_SEND = {">f4": "float4send", ">f8": "float8send"}


@pytest.mark.parametrize("fmt", ["binary", "text"])
def test_every_type_round_trips_exactly(tmp_path, pg_uri, schema, db, fmt):
    path = write_all_types(tmp_path / "things.fits")
    summary = load(pg_uri, schema, [path], catalog="generic", prefix="cat", fmt=fmt, workers=1)
    assert summary.rows == {"cat_things": 40}
    with fits.open(path) as h:
        data = h[1].data
    tbl = f'"{schema}".cat_things'
    n = 40
    # floats: compare the exact bits via float4send/float8send; NaN must be NULL
    for col, dt in (("f8", ">f8"), ("f4", ">f4")):
        got = fetch(db, f"SELECT {FLOAT_SEND[dt]}({col}) FROM {tbl} ORDER BY row_num")
        want = data[col.upper()].astype(dt)
        for r in range(n):
            if np.isnan(want[r]):
                assert got[r][0] is None, (col, r)
            else:
                assert bytes(got[r][0]) == want[r:r + 1].tobytes(), (col, r)
    # integers, widened unsigned, numeric(20,0) for uint64
    rows = fetch(db, f"SELECT i8, i4, i2, u1, u2, u4, u8, l, s, tn, pg_typeof(u2)::text, pg_typeof(u4)::text, "
                     f"pg_typeof(u8)::text, pg_typeof(f4)::text, pg_typeof(u1)::text FROM {tbl} ORDER BY row_num")
    assert rows[0][10:] == ("integer", "bigint", "numeric", "real", "smallint")
    for r, row in enumerate(rows):
        assert row[0] == int(data["I8"][r]) and row[1] == int(data["I4"][r]) and row[2] == int(data["I2"][r])
        assert row[3] == int(data["U1"][r]) and row[4] == int(data["U2"][r]) and row[5] == int(data["U4"][r])
        assert row[6] == decimal.Decimal(int(data["U8"][r]))
        assert row[7] == (None if r == 5 else bool(data["L"][r]))
        assert row[8] == data["S"][r]                   # astropy strips trailing padding too
        assert row[9] == (None if r in (3, 7) else int(data["TN"][r]))
    # arrays: shape as astropy reports; NaN elements NULL; exact element bits
    arr = fetch(db, f"SELECT array_dims(arr5), array_dims(arr23), arr23, "
                    f"(SELECT array_agg(float4send(e) ORDER BY o) FROM unnest(arr5) WITH ORDINALITY u(e, o)) "
                    f"FROM {tbl} ORDER BY row_num")
    for r, (d5, d23, a23, a5) in enumerate(arr):
        assert d5 == "[1:5]" and d23 == "[1:2][1:3]"
        assert a23 == data["ARR23"][r].tolist()
        want = data["ARR5"][r].astype(">f4")
        for i in range(5):
            if np.isnan(want[i]):
                assert a5[i] is None
            else:
                assert bytes(a5[i]) == want[i:i + 1].tobytes()
    # column comment carries the unit
    (comment,) = fetch(db, f"SELECT col_description('{tbl}'::regclass, "
                           f"(SELECT attnum FROM pg_attribute WHERE attrelid = '{tbl}'::regclass AND attname='f8'))")[0]
    assert "Mpc h-1" in comment


def test_hostile_column_name_is_just_a_name(tmp_path, pg_uri, schema, db):
    from astropy.table import Table
    t = Table({'x"; DROP TABLE y; --': np.arange(3, dtype=np.int32)})
    path = tmp_path / "hostile.fits"
    t.write(path)
    load(pg_uri, schema, [path], catalog="generic", prefix="h")
    rows = fetch(db, f'SELECT "x""; drop table y; --" FROM "{schema}".h_hdu1 ORDER BY row_num')
    assert [r[0] for r in rows] == [0, 1, 2]


def test_bad_value_rejects_its_file_and_names_column_and_row(tmp_path, pg_uri, schema, db):
    from astropy.table import Table
    from desi_loader.errors import LoadFailed
    good = tmp_path / "a_good.fits"
    Table({"FLAG": np.array([True, False])}).write(good)
    bad = tmp_path / "b_bad.fits"
    Table({"FLAG": np.array([True, False, True])}).write(bad)
    with fits.open(bad) as h:
        off = h[1].fileinfo()["datLoc"]
    with open(bad, "r+b") as f:                       # row 2 holds 'X', not T/F/0
        f.seek(off + 2)
        f.write(b"X")
    with pytest.raises(LoadFailed) as info:
        load(pg_uri, schema, [good, bad], catalog="generic", prefix="g", verify_checksum=False)
    msg = str(info.value)
    assert "b_bad.fits: " in msg and "column 'FLAG' row 2" in msg and "a_good.fits" not in msg
    # the good file is in staging, waiting: --allow-partial publishes it alone
    summary = load(pg_uri, schema, [good, bad], catalog="generic", prefix="g", verify_checksum=False,
                   allow_partial=True)
    assert summary.rows == {"g_hdu1": 2} and [m[0] for m in summary.left_out] == ["b_bad.fits"]


def test_random_float_bit_patterns_exact_through_the_server_in_text(tmp_path, pg_uri, schema, db):
    from astropy.table import Table
    rng = np.random.default_rng(12)
    n = 3000
    f4 = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    f8 = rng.integers(0, 2 ** 63, n, dtype=np.uint64).view(np.float64) * np.where(rng.random(n) < 0.5, -1, 1)
    f4[:6] = [np.inf, -np.inf, 0.0, -0.0, np.float32(1e-45), np.finfo(np.float32).tiny]
    f8[:6] = [np.inf, -np.inf, 0.0, -0.0, 5e-324, np.finfo(np.float64).tiny]
    path = tmp_path / "bits.fits"
    Table({"F4": f4, "F8": f8}).write(path)
    load(pg_uri, schema, [path], catalog="generic", prefix="b", fmt="text", workers=1)
    rows = fetch(db, f'SELECT float4send(f4), float8send(f8) FROM "{schema}".b_hdu1 ORDER BY row_num')
    for r, (a, b) in enumerate(rows):
        for got, want in ((a, f4[r:r + 1].astype(">f4")), (b, f8[r:r + 1].astype(">f8"))):
            if np.isnan(want[0]):
                assert got is None, r
            else:
                assert bytes(got) == want.tobytes(), r
