"""Sample FITS files with the exact on-disk layout of the DESI DR1 catalogs.

FastSpecFit Iron v3.0: real file names, PRIMARY cards, METADATA (54 or 67 columns),
SPECPHOT (127, with the 5E COEFF array) and FASTSPEC (887, with the logical column),
per-file string widths with NUL padding, rows aligned across the three HDUs,
unmeasured quantities 0 with IVAR 0, and CHECKSUM/DATASUM cards.  The layout comes
from desi_loader/data/fastspecfit.json (derived from the project's data model notes).
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

import numpy as np

from ..fits.datamodel import datamodel

_NUMPY = {"K": ">i8", "J": ">i4", "I": ">i2", "E": ">f4", "D": ">f8", "L": "?", "B": "u1"}

#: files written by default: two main-bright healpix files and one sv3 file (67 METADATA columns)
DEFAULT_FILES = ("fastspec-iron-main-bright-nside1-hp02.fits",
                 "fastspec-iron-main-bright-nside1-hp06.fits",
                 "fastspec-iron-sv3-bright.fits")


def _dtype(columns: Sequence[list], widths: dict) -> np.dtype:
    fields: list[tuple] = []
    for name, tform, *_ in columns:
        m = re.match(r"(\d*)([A-Z])", tform)
        if m is None:
            raise ValueError(f"{name}: TFORM {tform!r} is not a repeat and a type code")
        repeat, code = int(m.group(1) or 1), m.group(2)
        if code == "A":
            fields.append((name, "S%d" % widths.get(name, repeat)))
        elif repeat > 1:
            fields.append((name, _NUMPY[code], (repeat,)))
        else:
            fields.append((name, _NUMPY[code]))
    return np.dtype(fields)


def _fill_float(name: str, n: int, rng: np.random.Generator) -> np.ndarray:
    u = rng.random(n)
    if name.endswith("_IVAR") or "_IVAR_" in name:
        v = rng.lognormal(0.0, 1.0, n)
        v[u < 0.2] = 0.0                        # unmeasured: IVAR 0
        return v
    if name in ("Z", "Z_RR"):
        return 0.001 + rng.gamma(2.0, 0.12, n)
    if name == "DELTACHI2":                     # redshift confidence: mostly secure (> 40), a tail not
        return 10 ** rng.normal(2.5, 0.8, n)
    if name in ("RA",):
        return rng.uniform(0, 360, n)
    if name in ("DEC",):
        return np.degrees(np.arcsin(rng.uniform(-0.33, 0.98, n)))
    if name.startswith("MW_TRANSMISSION"):
        return rng.uniform(0.7, 1.0, n)
    if name == "LOGMSTAR":
        return rng.normal(10.48, 0.68, n)
    if name == "VDISP":
        return np.where(u < 0.6, 250.0, rng.uniform(75, 500, n))
    if name.startswith("ABSMAG"):
        return rng.uniform(-25, -12, n)
    if name.startswith("KCORR"):
        return rng.uniform(-3, 3, n)
    if name == "EBV":
        return rng.uniform(0, 0.3, n)
    if name in ("AGE",):
        return rng.uniform(0, 13.7, n)
    if name in ("ZZSUN",):
        return np.zeros(n)
    if name.startswith("DN4000"):
        return np.where(u < 0.1, 0.0, rng.uniform(0.8, 2.5, n))
    if "VSHIFT" in name:
        return rng.normal(0, 100, n)
    if "SIGMA" in name:
        return rng.uniform(1, 750, n)
    v = rng.lognormal(1.0, 1.5, n)
    v[u < 0.15] = 0.0                           # lines outside coverage: 0
    return v


def _tileids(n: int, width: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n, "S%d" % width)
    for i in range(n):
        tiles = sorted(set(int(t) for t in rng.integers(1, 42000, rng.integers(1, 4))))
        text = " ".join(str(t) for t in tiles)
        while len(text) > width:
            text = text.rsplit(" ", 1)[0] if " " in text else text[:width]
        out[i] = text.encode()
    return out


def _fill(hdu_cols: Sequence[list], widths: dict, shared: dict, n: int,
          rng: np.random.Generator) -> np.ndarray:
    arr = np.zeros(n, _dtype(hdu_cols, widths))
    for name, tform, _, _, _ in hdu_cols:
        if name in shared:
            arr[name] = shared[name]
            continue
        code = tform[-1]
        if code == "E" or code == "D":
            if tform == "5E":
                arr[name] = rng.lognormal(0, 1, (n, 5)).astype(">f4")
            else:
                arr[name] = _fill_float(name, n, rng)
        elif code == "L":
            arr[name] = rng.random(n) < 0.1
        elif code == "J" and name.endswith("_NPIX"):
            arr[name] = rng.integers(0, 60, n)
        elif code == "K" and name.endswith("TARGET"):
            arr[name] = np.where(rng.random(n) < 0.8, 1 << 60, 1 << 61) | rng.integers(0, 1 << 20, n)
        elif code == "K" and name == "SEED":
            arr[name] = rng.integers(0, 2 ** 32, n)
        elif code == "K" and name == "LS_ID":
            arr[name] = (9010 << 40) | (rng.integers(0, 600000, n) << 16) | rng.integers(0, 5000, n)
        elif code == "A" and name == "SPECTYPE":
            arr[name] = rng.choice(np.array([b"GALAXY", b"QSO", b"STAR"]), n, p=[0.9, 0.05, 0.05])
        elif code == "A" and name == "SUBTYPE":
            arr[name] = rng.choice(np.array([b"", b"LOZ", b"K", b"WD"]), n, p=[0.9, 0.04, 0.04, 0.02])
        elif code == "A" and name == "PHOTSYS":
            arr[name] = rng.choice(np.array([b"N", b"S"]), n)
        elif code == "A" and name == "TILEID_LIST":
            arr[name] = _tileids(n, widths.get(name, 23), rng)
        elif code in "IJK":
            arr[name] = (rng.random(n) < 0.05) * rng.integers(0, 64, n)
    return arr


def _primary_header(fname: str, nside1: Optional[int]):
    from astropy.io import fits
    dm = datamodel("fastspecfit")
    hdr = fits.Header()
    hdr["EXTNAME"] = "PRIMARY"
    for key, value, comment in dm["primary_cards"]:
        if key in ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "EXTNAME"):
            continue
        if key in ("NSIDE", "NEST") and nside1 is None:
            continue
        hdr[key] = (value, comment)
    for key, value in dm["dependency_cards"]:
        hdr[key] = value
    return hdr


def write_fastspecfit_file(path: str, nrows: int, seed: int = 0,
                           targetids: Optional[np.ndarray] = None, like: Optional[str] = None) -> str:
    """Write one FastSpecFit Iron v3.0 file named like the real one (basename of ``path``).

    Parameters
    ----------
    path : str
        Output path; its basename must be a real v3.0 file name.
    nrows : int
        Rows per HDU (the three HDUs are row-aligned).
    seed : int
        Random seed.
    targetids : numpy.ndarray, optional
        TARGETIDs to use for the first rows (so other samples can join on them).
    like : str, optional
        The real file name whose layout to use when ``path`` has another name.
    """
    from astropy.io import fits

    dm = datamodel("fastspecfit")
    fname = like or os.path.basename(path)
    meta = {f[0]: f for f in dm["files"]}
    if fname not in meta:
        raise ValueError(f"{fname} is not a FastSpecFit Iron v3.0 file name")
    _, survey, program, nside1, _, w_survey, w_program, w_tiles = meta[fname]
    widths = {"SURVEY": int(w_survey[:-1]), "PROGRAM": int(w_program[:-1]),
              "TILEID_LIST": int(w_tiles[:-1])}
    rng = np.random.default_rng(seed)
    tid = 39627000000000000 + np.arange(nrows, dtype=np.int64) * 7919 + seed * 10 ** 9
    if targetids is not None:
        tid[:len(targetids)] = targetids[:nrows]
    if nside1 is not None:
        healpix = nside1 * 4096 + rng.integers(0, 4096, nrows)
    else:
        healpix = rng.integers(0, 12 * 4096, nrows)
    shared = {"TARGETID": tid, "SURVEY": survey.encode(), "PROGRAM": program.encode(),
              "HEALPIX": healpix.astype(np.int32)}
    meta_cols = dm["hdus"]["METADATA" if survey in ("main", "special") else "METADATA_sv_cmx"]
    hdus = [fits.PrimaryHDU(header=_primary_header(fname, nside1))]
    for extname, cols in (("METADATA", meta_cols), ("SPECPHOT", dm["hdus"]["SPECPHOT"]),
                          ("FASTSPEC", dm["hdus"]["FASTSPEC"])):
        data = _fill(cols, widths, shared, nrows, rng)
        if extname == "METADATA":
            shared.update({"RA": data["RA"], "DEC": data["DEC"], "Z": data["Z"]})
        coldefs = fits.ColDefs(data)
        for c, (_, _, _, unit, _) in zip(coldefs, cols):
            c.unit = unit                                # the real files carry TUNITn as the data model lists them
        hdu = fits.BinTableHDU.from_columns(coldefs, name=extname)
        for i, (_, _, tdim, _, _) in enumerate(cols, start=1):
            if tdim and f"TDIM{i}" not in hdu.header:    # and TDIM6 = '(5)'
                hdu.header.insert(f"TFORM{i}", (f"TDIM{i}", tdim), after=True)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    return path


def write_fastspecfit_sample(outdir: str, rows: int = 2000, files: int = 3, seed: int = 1,
                             targetids: Optional[np.ndarray] = None) -> list[str]:
    """Write ``files`` FastSpecFit sample files of ``rows`` rows each into ``outdir``.

    The first files are main-bright healpix files and one sv3 file (to exercise the
    54/67-column METADATA union); more files continue through the real file list.
    """
    os.makedirs(outdir, exist_ok=True)
    dm = datamodel("fastspecfit")
    names = list(DEFAULT_FILES) + [f[0] for f in dm["files"] if f[0] not in DEFAULT_FILES]
    paths = []
    for i, name in enumerate(names[:files]):
        tids = targetids if (targetids is not None and i == 0) else None
        paths.append(write_fastspecfit_file(os.path.join(outdir, name), rows, seed + i, tids))
    return paths
