"""Sample DESIVAST DR1 v1.0 files: 4 void finders x 2 caps with the real layout.

HDU order, column order, dtypes (all 8-byte), TUNITs, primary and count cards,
CHECKSUM/DATASUM, and internally consistent IDs: HOLES.VOID -> MAXIMALS.VOID,
GALZONE.ZONE -> ZONEVOID.ZONE, ZONEVOID.VOID0/VOID1 -> VOIDS.VOID, TRIANGLE.VOID ->
VOIDS.VOID, GALVIZ.GID -> GALZONE.GAL; -1 means "none".  GALZONE is the same for the
three V2 algorithms of a cap, and GALZONE.TARGET can be taken from FastSpecFit samples.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..fits.datamodel import datamodel
from ..coords import cartesian, comoving_distance
from ..queries.voids import NGC_RA

ALGORITHMS = ("VoidFinder", "REVOLVER", "VIDE", "ZOBOV")
CAPS = ("NGC", "SGC")
#: default --scale: about 1,200 GALZONE and 10,000 TRIANGLE rows in REVOLVER NGC
DEFAULT_SCALE = 0.002


def file_name(algorithm: str, cap: str) -> str:
    alg = algorithm if algorithm == "VoidFinder" else f"V2_{algorithm}"
    return f"DESIVAST_BGS_VOLLIM_{alg}_{cap}.fits"


def _counts(algorithm: str, cap: str, scale: float) -> dict:
    real = datamodel("desivast")["algorithms"][algorithm]["rows"][cap]
    return {h: max(20, int(round(n * scale))) for h, n in real.items()}


def _table(columns: list, values: dict, n: int):
    from astropy.table import Table
    t = Table()
    for name, tform, *_ in columns:
        dtype = np.int64 if tform == "K" else np.float64
        t[name] = np.asarray(values.get(name, np.zeros(n)), dtype=dtype)
    return t


def _xyz(rng, n, rmax=600.0):
    r = rmax * rng.random(n) ** (1 / 3)
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-0.3, 0.95, n)))
    x = r * np.cos(np.radians(dec)) * np.cos(np.radians(ra))
    y = r * np.cos(np.radians(dec)) * np.sin(np.radians(ra))
    z = r * np.sin(np.radians(dec))
    return x, y, z, r, ra, dec


def _near_galaxies(rng, n: int, cap: str, galaxies) -> Optional[np.ndarray]:
    """n points within 8 Mpc/h of random galaxies of the cap (so sample voids hold galaxies)."""
    ra, dec, z = galaxies
    ngc = (ra > NGC_RA[0]) & (ra < NGC_RA[1])
    pick = np.nonzero((ngc if cap == "NGC" else ~ngc) & (z > 0) & (z <= 0.24))[0]
    if len(pick) == 0:
        return None
    g = rng.choice(pick, n)
    xyz = cartesian(ra[g], dec[g], comoving_distance(z[g], 0.315))
    return xyz + rng.uniform(-8, 8, (n, 3))


def _voidfinder(rng, counts, cap="NGC", galaxies=None):
    nv, nh = counts["MAXIMALS"], counts["HOLES"]
    x, y, z, r, ra, dec = _xyz(rng, nv)
    radius = np.sort(rng.uniform(10, 32, nv))[::-1]
    maximals = dict(X=x, Y=y, Z=z, RADIUS=radius, VOID=np.arange(nv), EDGE=rng.integers(0, 2, nv), R=r,
                    RA=ra, DEC=dec, R_EFF=radius * 1.2, R_EFF_UNCERT=rng.uniform(0.05, 0.2, nv))
    void = np.concatenate([np.arange(nv), rng.integers(0, nv, max(nh - nv, 0))])[:nh]
    hx, hy, hz, _, _, _ = _xyz(rng, nh)
    near = _near_galaxies(rng, nh // 2, cap, galaxies) if galaxies is not None else None
    if near is not None:                      # half the holes around galaxies of the FastSpecFit sample
        hx[:len(near)], hy[:len(near)], hz[:len(near)] = near.T
    holes = dict(X=hx, Y=hy, Z=hz, RADIUS=rng.uniform(10, 25, nh), VOID=void)
    return {"MAXIMALS": maximals, "HOLES": holes}


def _galzone(cap: str, n: int, nzones: int, targets: Optional[np.ndarray], seed: int) -> dict:
    rng = np.random.default_rng(seed + (0 if cap == "NGC" else 1))   # same for every V2 algorithm
    tid = 39627000000000000 + 1000003 * np.arange(n, dtype=np.int64) + (0 if cap == "NGC" else 7)
    if targets is not None:
        targets = targets[(0 if cap == "NGC" else 1)::2]     # a galaxy lies in one cap
        k = min(n, len(targets))
        tid[:k] = targets[:k]
    x, y, z, _, _, _ = _xyz(rng, n)
    out = (rng.random(n) < 0.05).astype(np.int64)
    zone = rng.integers(0, nzones, n)
    zone[(out == 1) & (rng.random(n) < 0.5)] = -1       # buffer galaxies beyond z=0.24: no zone
    return dict(GAL=np.arange(n), TARGET=tid, X=x, Y=y, Z=z, ZONE=zone, DEPTH=rng.integers(0, 5, n),
                EDGE=rng.integers(0, 2, n), OUT=out)


def _v2(rng, algorithm, cap, counts, targets, seed):
    nv, nz, ng = counts["VOIDS"], counts["ZONEVOID"], counts["GALZONE"]
    if algorithm == "ZOBOV":
        nv = counts["VOIDS"] = nz                       # volume-filling: one void per zone
    x, y, z, r, ra, dec = _xyz(rng, nv)
    voids = dict(VOID=np.arange(nv), X=x, Y=y, Z=z, REDSHIFT=r / 2800.0, RA=ra, DEC=dec,
                 RADIUS=rng.uniform(10, 44, nv), TOT_AREA=rng.uniform(1e3, 5e4, nv))
    for k in ("X1", "Y1", "Z1", "X2", "Y2", "Z2", "X3", "Y3", "Z3"):
        voids[k] = rng.normal(0, 5, nv)
    voids["EDGE_AREA"] = voids["TOT_AREA"] * rng.random(nv)
    void0 = rng.integers(0, nv, nz)
    void0[rng.random(nz) < 0.2] = -1                    # zones in no void
    void0[-1] = -1                                      # the last zone collects edge cells
    if algorithm == "ZOBOV":
        void1 = np.where(void0 >= 0, 0, -1)             # full hierarchy: one top-level parent
    elif algorithm == "VIDE":
        void1 = np.where(void0 >= 0, void0 // 2, -1)
    else:
        void1 = void0.copy()
    out = {"VOIDS": voids, "ZONEVOID": dict(ZONE=np.arange(nz), VOID0=void0, VOID1=void1),
           "GALZONE": _galzone(cap, ng, nz, targets, seed)}
    if "TRIANGLE" in counts:
        nt = counts["TRIANGLE"]
        tri = {"VOID": rng.integers(0, nv, nt)}
        for k in ("N_X", "N_Y", "N_Z", "P1_X", "P1_Y", "P1_Z", "P2_X", "P2_Y", "P2_Z", "P3_X", "P3_Y", "P3_Z"):
            tri[k] = rng.normal(0, 100, nt)
        out["TRIANGLE"] = tri
        g2v = np.where(rng.random(ng) < 0.1, rng.integers(0, nv, ng), -1)
        out["GALVIZ"] = dict(GID=np.arange(ng), G2V=g2v, G2V2=np.full(ng, -1))
    return out


def write_desivast_file(path: str, algorithm: str, cap: str, scale: float = DEFAULT_SCALE,
                        seed: int = 0, targets: Optional[np.ndarray] = None, galaxies=None) -> str:
    """Write one DESIVAST file; ``targets`` fill GALZONE.TARGET (e.g. FastSpecFit TARGETIDs),
    ``galaxies`` ((ra, dec, z) of FastSpecFit galaxies) place half the VoidFinder holes
    around them."""
    from astropy.io import fits
    dm = datamodel("desivast")["algorithms"][algorithm]
    rng = np.random.default_rng(seed + ALGORITHMS.index(algorithm) * 10 + CAPS.index(cap))
    counts = _counts(algorithm, cap, scale)
    data = _voidfinder(rng, counts, cap, galaxies) if algorithm == "VoidFinder" else _v2(rng, algorithm, cap, counts,
                                                                          targets, seed)
    prim = fits.Header()
    for key, value, comment in dm["primary_cards"]:
        if value is None:
            continue
        if isinstance(value, str) and "(SGC:" in value:
            value = value.split(" (SGC:")[0].replace("ngc", cap.lower())
        prim[key] = (value, comment)
    hdus = [fits.PrimaryHDU(header=prim)]
    for ext in dm["hdu_order"][1:]:
        cols = dm["hdus"][ext]
        n = len(next(iter(data[ext].values())))
        hdu = fits.BinTableHDU(_table(cols, data[ext], n), name=ext)
        for i, (_, _, _, unit, _) in enumerate(cols, start=1):
            if unit:   # written as the card (astropy's unit parser rejects '(Mpc/h)^2')
                hdu.header.insert(f"TFORM{i}", (f"TUNIT{i}", unit), after=True)
        for key, comment in dm["extension_cards"].get(ext, {}).items():
            value = len(data["MAXIMALS"]["VOID"]) if (ext == "HOLES" and key == "VOID") else n
            hdu.header[key] = (value, comment)
        hdus.append(hdu)
    fits.HDUList(hdus).writeto(path, overwrite=True, checksum=True)
    return path


def write_desivast_sample(outdir: str, scale: float = DEFAULT_SCALE, seed: int = 0,
                          targets: Optional[np.ndarray] = None, galaxies=None) -> list[str]:
    """Write the 8 DESIVAST files into ``outdir``."""
    os.makedirs(outdir, exist_ok=True)
    return [write_desivast_file(os.path.join(outdir, file_name(a, c)), a, c, scale, seed, targets, galaxies)
            for a in ALGORITHMS for c in CAPS]


def fastspecfit_positions(directory: str):
    """(ra, dec, z) of the main-bright FastSpecFit galaxies in ``directory``, or None."""
    import glob
    from astropy.io import fits
    files = sorted(glob.glob(os.path.join(directory, "fastspec-iron-main-bright-*.fits")))
    if not files:
        return None
    data = [fits.getdata(f, "METADATA") for f in files]
    return tuple(np.concatenate([d[c].astype(np.float64) for d in data]) for c in ("RA", "DEC", "Z"))


def fastspecfit_targets(directory: str) -> Optional[np.ndarray]:
    """TARGETIDs of the main-bright FastSpecFit files in ``directory`` (DESIVAST's parent sample)."""
    import glob
    from astropy.io import fits
    files = sorted(glob.glob(os.path.join(directory, "fastspec-iron-main-bright-*.fits")))
    if not files:
        return None
    return np.concatenate([fits.getdata(f, "METADATA")["TARGETID"].astype(np.int64) for f in files])
