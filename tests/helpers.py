"""Shared test helpers: FITS files with every type, loading, fetching."""
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import psycopg2
from astropy.io import fits
from astropy.table import Table

from desi_loader.control.run import LoadOptions, run_load
from desi_loader.samples.fastspecfit import write_fastspecfit_file

SPECIAL_STRINGS = [" lead", "back\\slash", "tab\there", "\\N", "q'uo\"te", "", "new\nline", "x"]


def all_types_table(n=40, seed=0):
    """An astropy Table with every supported FITS type and the awkward values."""
    rng = np.random.default_rng(seed)
    t = Table()
    f8 = rng.standard_normal(n) * 1e10
    f8[:6] = [np.nan, np.inf, -np.inf, -0.0, 5e-324, np.finfo(np.float64).max]
    t["F8"] = f8
    f4 = rng.standard_normal(n).astype(np.float32)
    f4[:6] = [np.nan, np.inf, -np.inf, -0.0, 1e-45, np.finfo(np.float32).max]
    t["F4"] = f4
    i8 = rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64)
    i8[:2] = [-2 ** 63, 2 ** 63 - 1]
    t["I8"] = i8
    t["I4"] = rng.integers(-2 ** 31, 2 ** 31 - 1, n, dtype=np.int32)
    t["I2"] = rng.integers(-2 ** 15, 2 ** 15 - 1, n, dtype=np.int16)
    t["U1"] = rng.integers(0, 256, n, dtype=np.uint8)
    u2 = rng.integers(0, 2 ** 16, n, dtype=np.uint16)
    u2[:2] = [0, 65535]
    t["U2"] = u2
    u4 = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    u4[:2] = [0, 2 ** 32 - 1]
    t["U4"] = u4
    u8 = rng.integers(0, 2 ** 64 - 1, n, dtype=np.uint64)
    u8[:2] = [0, 2 ** 64 - 1]
    t["U8"] = u8
    t["L"] = rng.random(n) < 0.5
    t["S"] = np.array([SPECIAL_STRINGS[i % len(SPECIAL_STRINGS)] for i in range(n)], "S12")
    arr = rng.standard_normal((n, 5)).astype(np.float32)
    arr[1, 2] = np.nan
    arr[2, 0] = -0.0
    t["ARR5"] = arr
    t["ARR23"] = rng.integers(-100, 100, (n, 2, 3)).astype(np.int32)
    t["TN"] = rng.integers(0, 1000, n).astype(np.int32)
    return t


def write_all_types(path, n=40, seed=0):
    """Write the table with a TNULL on TN (value 999 at rows 3 and 7) and a null logical at row 5."""
    t = all_types_table(n, seed)
    t["TN"][3] = 999
    t["TN"][7] = 999
    hdu = fits.BinTableHDU(t, name="THINGS")
    idx = t.colnames.index("TN") + 1
    hdu.header[f"TNULL{idx}"] = 999
    hdu.header[f"TUNIT{t.colnames.index('F8') + 1}"] = "Mpc h-1"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
    # a FITS null logical (0x00) at row 5: patch the byte in place
    with fits.open(path) as h:
        off = h[1].fileinfo()["datLoc"]
        row_bytes = h[1].header["NAXIS1"]
    with open(path, "r+b") as f:
        f.seek(off + 5 * row_bytes + _offset(path, "L"))
        f.write(b"\x00")
    return path


def _offset(path, name):
    with fits.open(path) as h:
        cols = h[1].columns
        off = 0
        for c in cols:
            if c.name == name:
                return off
            off += h[1].data.dtype[c.name].itemsize
    raise KeyError(name)


def load(pg_uri, schema, paths, **kw):
    kw.setdefault("workers", 2)
    opts = LoadOptions(paths=tuple(str(p) for p in paths), dsn=pg_uri, schema=schema, **kw)
    return run_load(opts)


@contextmanager
def polling(uri, query, pause=0.0):
    """A reader running ``query`` again and again on its own autocommit connection while the
    block runs (a user during a load); yields (seen, errors): the set of first result rows
    (a one-column row as its value) and the psycopg2 errors it got."""
    seen, errors, stop = set(), [], threading.Event()

    def reader():
        conn = psycopg2.connect(uri)
        conn.autocommit = True
        while not stop.is_set():
            try:
                with conn.cursor() as cur:
                    cur.execute(query)
                    row = cur.fetchone()
                    seen.add(row[0] if len(row) == 1 else row)
            except psycopg2.Error as exc:
                errors.append(exc)
            time.sleep(pause)
        conn.close()

    th = threading.Thread(target=reader)
    th.start()
    try:
        yield seen, errors
    finally:
        stop.set()
        th.join()


def fetch(db, q, args=()):
    """All rows of one query (committed, so the connection holds no snapshot)."""
    with db.cursor() as cur:
        cur.execute(q, args)
        rows = cur.fetchall()
    db.commit()
    return rows


#: DESIVAST columns whose -1 sentinel is stored as NULL
SENTINELS = {"ZONEVOID": {"VOID0", "VOID1"}, "GALZONE": {"ZONE"}, "GALVIZ": {"G2V", "G2V2"}}


def assert_desivast_exact(db, schema, paths):
    """Every value of every HDU of the DESIVAST files as in the database (float8 bit for bit,
    -1 references as NULL), and the PRIMARY header in load_files."""
    from pathlib import Path
    paths = [Path(p) for p in paths]
    for path in paths:
        alg, cap = path.stem.split("_")[-2:]
        alg = "VoidFinder" if alg == "VoidFinder" else alg
        with fits.open(path) as hdul:
            assert hdul[0].header["INFILE"]
            (hdr,) = fetch(db, f'SELECT header FROM "{schema}".load_files WHERE filename = %s', (path.name,))[0]
            assert hdr["OMEGAM"] == hdul[0].header["OMEGAM"] and hdr["ZLIMU"] == hdul[0].header["ZLIMU"]
            for hdu in hdul[1:]:
                table = f'"{schema}".desivast_{hdu.name.lower()}'
                cols = hdu.columns.names
                exprs = [f"float8send({c.lower()})" if hdu.columns[c].format == "D" else c.lower() for c in cols]
                rows = fetch(db, f"SELECT row_num, {', '.join(exprs)} FROM {table} t JOIN \"{schema}\".load_files f "
                                 "USING (file_id) WHERE f.filename = %s AND t.algorithm = %s AND t.cap = %s "
                                 "ORDER BY row_num", (path.name, alg, cap))
                assert len(rows) == hdu.header["NAXIS2"], (path.name, hdu.name)
                for c_i, c in enumerate(cols, start=1):
                    want = hdu.data[c]
                    got = [r[c_i] for r in rows]
                    if hdu.columns[c].format == "D":
                        assert [bytes(g) for g in got] == [want[i:i + 1].astype(">f8").tobytes()
                                                          for i in range(len(want))], (hdu.name, c)
                    elif c in SENTINELS.get(hdu.name, ()):
                        assert got == [None if v == -1 else int(v) for v in want], (hdu.name, c)
                    else:
                        assert got == [int(v) for v in want], (hdu.name, c)

FASTSPECFIT_TABLES = {"METADATA": "fastspecfit_metadata", "SPECPHOT": "fastspecfit_specphot",
                      "FASTSPEC": "fastspecfit_fastspec"}


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


def assert_fastspecfit_exact(db, schema, files):
    """Every column of every HDU of the FastSpecFit files equals what fitsio (CFITSIO, a reader
    independent of the loader's) reads, bit for bit for floats; returns the columns checked."""
    import fitsio
    checked = 0
    for path in map(str, files):
        name = path.rsplit("/", 1)[1]
        for ext, table in FASTSPECFIT_TABLES.items():
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
    return checked


# ----------------------------------------------------------------- damaged and edge-case files

NAMES = ["fastspec-iron-main-bright-nside1-hp00.fits", "fastspec-iron-main-bright-nside1-hp01.fits",
         "fastspec-iron-main-bright-nside1-hp02.fits", "fastspec-iron-main-bright-nside1-hp03.fits"]


def truncated(src, dst):
    """``src`` less its last 20,000 bytes, written to ``dst``."""
    data = open(src, "rb").read()
    open(dst, "wb").write(data[: len(data) - 20000])


def empty_fastspecfit(path):
    """A FastSpecFit file whose three HDUs have no rows (a HEALPix without targets)."""
    src = os.path.dirname(path) + "/.src.fits"
    write_fastspecfit_file(src, 3, seed=7, like=os.path.basename(path))
    with fits.open(src) as h:
        out = [h[0].copy()] + [fits.BinTableHDU(data=h[i].data[:0], header=h[i].header, name=h[i].name)
                               for i in (1, 2, 3)]
        fits.HDUList(out).writeto(path, overwrite=True, checksum=True)
    os.remove(src)


def gzipped(src, dst, cut=0):
    """``src`` gzip'd into ``dst`` (less its last ``cut`` bytes)."""
    import gzip

    data = gzip.compress(open(src, "rb").read())
    open(dst, "wb").write(data[:len(data) - cut] if cut else data)
