"""Positions on the sky -> nested HEALPix pixels, vectorised (the loader's sky index).

Every table with positions gets a column ``hpx29``: the nested HEALPix pixel of (RA, DEC)
at order 29 (nside 2**29, pixels of ~0.4 milliarcsec), computed while encoding.  A pixel
at a coarser order k is a contiguous range of order-29 pixels,
``[p << 2(29-k), (p+1) << 2(29-k))``, so one B-tree on ``hpx29`` answers cone searches
at every scale (sql/sky.sql covers a cone with pixels and turns them into such ranges).
This is the scheme of Gaia's source_id and of healpix-alchemy.

``ang2pix`` follows chealpix's ``ang2pix_nest_z_phi`` (Gorski et al. 2005), in numpy,
and is tested against astropy-healpix.  Positions that are not finite or have
|DEC| > 90 get no pixel (NULL).
"""
from __future__ import annotations

import numpy as np

#: order of the stored pixel index; 4**29 * 12 < 2**63
ORDER = 29
#: the column added to every table with positions
COLUMN = "hpx29"
#: the column's comment; desi-loader cone reads the position columns back from it
COMMENT = "nested HEALPix pixel (order 29, nside 2^29) of ({ra}, {dec}); see desi-loader cone"

_TWO_THIRDS = 2.0 / 3.0


def _spread(v: np.ndarray) -> np.ndarray:
    """Bits b0 b1 b2 ... of 32-bit values -> b0 0 b1 0 b2 ... (Morton interleave)."""
    x = v.astype(np.uint64)
    x = (x | (x << np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    x = (x | (x << np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    x = (x | (x << np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    x = (x | (x << np.uint64(2))) & np.uint64(0x3333333333333333)
    x = (x | (x << np.uint64(1))) & np.uint64(0x5555555555555555)
    return x


def ang2pix(ra, dec, order: int = ORDER) -> tuple[np.ndarray, np.ndarray]:
    """Nested HEALPix pixels of (RA, DEC) in degrees at ``order``.

    Returns
    -------
    pix : numpy.ndarray of int64
        The pixel, 0 where ``invalid``.
    invalid : numpy.ndarray of bool
        Positions with no pixel (NaN, infinite, or |DEC| > 90).
    """
    ra = np.asarray(ra, np.float64)
    dec = np.asarray(dec, np.float64)
    invalid = ~(np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0))
    if invalid.any():
        ra = np.where(invalid, 0.0, ra)
        dec = np.where(invalid, 0.0, dec)
    nside = 1 << order
    d = np.radians(dec)
    z, s = np.sin(d), np.cos(d)
    za = np.abs(z)
    tt = np.mod(np.radians(ra), 2 * np.pi) * (2 / np.pi)     # [0, 4]
    tt = np.where(tt >= 4.0, tt - 4.0, tt)
    face = np.empty(ra.shape, np.int64)
    ix = np.empty(ra.shape, np.int64)
    iy = np.empty(ra.shape, np.int64)

    eq = za <= _TWO_THIRDS                                    # equatorial region
    if eq.any():
        t1 = nside * (0.5 + tt[eq])
        t2 = nside * (z[eq] * 0.75)
        jp = (t1 - t2).astype(np.int64)                       # ascending edge line
        jm = (t1 + t2).astype(np.int64)                       # descending edge line
        ifp, ifm = jp >> order, jm >> order
        face[eq] = np.where(ifp == ifm, ifp | 4, np.where(ifp < ifm, ifp, ifm + 8))
        ix[eq] = jm & (nside - 1)
        iy[eq] = nside - (jp & (nside - 1)) - 1
    po = ~eq                                                  # polar caps
    if po.any():
        t = tt[po]
        ntt = np.minimum(t.astype(np.int64), 3)
        tp = t - ntt
        tmp = nside * s[po] / np.sqrt((1.0 + za[po]) / 3.0)
        jp = np.minimum((tp * tmp).astype(np.int64), nside - 1)
        jm = np.minimum(((1.0 - tp) * tmp).astype(np.int64), nside - 1)
        north = z[po] >= 0
        face[po] = np.where(north, ntt, ntt + 8)
        ix[po] = np.where(north, nside - jm - 1, jp)
        iy[po] = np.where(north, nside - jp - 1, jm)
    pix = (face.astype(np.uint64) << np.uint64(2 * order)) | _spread(ix) | (_spread(iy) << np.uint64(1))
    pix = pix.astype(np.int64)
    if invalid.any():
        pix[invalid] = 0
    return pix, invalid


def max_pixrad(order: int) -> float:
    """Largest angle (degrees) between a pixel's centre and any of its corners at ``order``
    (healpix_base max_pixrad)."""
    nside = 1 << order
    t1 = (1.0 - 1.0 / nside) ** 2
    za, phia = 2.0 / 3.0, np.pi / (4 * nside)
    zb = 1.0 - t1 / 3.0
    va = np.array([np.sqrt(1 - za * za) * np.cos(phia), np.sqrt(1 - za * za) * np.sin(phia), za])
    vb = np.array([np.sqrt(1 - zb * zb), 0.0, zb])
    return float(np.degrees(np.arctan2(np.linalg.norm(np.cross(va, vb)), np.dot(va, vb))))


def angdist(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular distance in degrees (haversine; exact to ~1e-15 rad at every scale)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, np.float64)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))
