"""Coordinates void science needs, in Python (numpy) and as SQL functions of the same
formulas: comoving distance and Cartesian position in the frame and cosmology of the
DESIVAST files, and galactic (l, b).

- Comoving distance, Mpc/h: flat LCDM without radiation, h = 1 (H0 = 100 h km/s/Mpc),
  D = c/H0 * integral_0^z dz' / sqrt(Om (1+z')^3 + 1 - Om), by 24-point Gauss-Legendre
  quadrature on [0, z] (exact to about 1e-13 relative for z < 5: the integrand is smooth).
  DESIVAST's files give Om in their PRIMARY header (OMEGAM = 0.315).
- Cartesian: observer at the origin, x = D cos(dec) cos(ra), y = D cos(dec) sin(ra),
  z = D sin(dec), as the DESIVAST catalogs give void centres.
- Galactic: the ICRS -> Galactic rotation astropy.coordinates uses (the matrix below was
  taken from astropy 6; the tests check both against astropy).

The SQL functions (``sql_functions``) are installed in the loaded schema with the cone
search's: comoving_distance(z, omega_m), comoving_xyz(ra, dec, z, omega_m) -> float8[3],
galactic_l(ra, dec), galactic_b(ra, dec).  All IMMUTABLE and PARALLEL SAFE.
"""
from __future__ import annotations

import numpy as np

#: c / H0 for h = 1, in Mpc/h
HUBBLE_DISTANCE = 299792.458 / 100.0
#: DESIVAST's matter density (the OMEGAM card of its files)
DESIVAST_OMEGA_M = 0.315

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(24)

#: ICRS unit vector -> Galactic unit vector (rows: galactic x, y, z)
ICRS_TO_GALACTIC = np.array([
    [-0.05487565771259163, -0.8734370519556159, -0.48383507361671546],
    [0.4941094371927268, -0.4448297212232952, 0.7469821839866676],
    [-0.8676661375596576, -0.19807633727300053, 0.4559838136873016],
])


def comoving_distance(z, omega_m: float = DESIVAST_OMEGA_M) -> np.ndarray:
    """Line-of-sight comoving distance in Mpc/h (see the module docstring)."""
    z = np.asarray(z, np.float64)
    t = z[..., None] * (0.5 * (_NODES + 1))                 # nodes on [0, z]
    f = 1.0 / np.sqrt(omega_m * (1 + t) ** 3 + 1 - omega_m)
    return HUBBLE_DISTANCE * 0.5 * z * (f @ _WEIGHTS)


def cartesian(ra, dec, r) -> np.ndarray:
    """(n, 3) Cartesian positions of (ra, dec) in degrees at distance ``r``."""
    a, d = np.radians(ra), np.radians(dec)
    return np.stack([r * np.cos(d) * np.cos(a), r * np.cos(d) * np.sin(a), r * np.sin(d)], axis=-1)


def comoving_xyz(ra, dec, z, omega_m: float = DESIVAST_OMEGA_M) -> np.ndarray:
    """(n, 3) comoving Cartesian positions in Mpc/h."""
    return cartesian(ra, dec, comoving_distance(z, omega_m))


def galactic(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """Galactic (l, b) in degrees of ICRS (ra, dec) in degrees; l in [0, 360)."""
    g = cartesian(ra, dec, 1.0) @ ICRS_TO_GALACTIC.T
    ell = np.degrees(np.arctan2(g[..., 1], g[..., 0])) % 360.0
    b = np.degrees(np.arcsin(np.clip(g[..., 2], -1.0, 1.0)))
    return ell, b


def sql_functions(schema_sql: str) -> str:
    """CREATE OR REPLACE FUNCTION statements of the same formulas in ``schema_sql`` (a quoted
    identifier)."""
    s = schema_sql
    quad = " + ".join(f"{w!r} / sqrt($2 * (1 + $1 * {0.5 * (x + 1)!r}) ^ 3 + 1 - $2)"
                      for x, w in zip(_NODES.tolist(), _WEIGHTS.tolist()))
    m = ICRS_TO_GALACTIC.tolist()

    def row(i: int) -> str:
        return (f"{m[i][0]!r} * cosd($2) * cosd($1) + {m[i][1]!r} * cosd($2) * sind($1) "
                f"+ {m[i][2]!r} * sind($2)")

    immutable = "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE"
    return f"""
CREATE OR REPLACE FUNCTION {s}.comoving_distance(z float8, omega_m float8 DEFAULT {DESIVAST_OMEGA_M})
RETURNS float8 {immutable} AS $$
  SELECT {HUBBLE_DISTANCE!r} * 0.5 * $1 * ({quad})
$$;
COMMENT ON FUNCTION {s}.comoving_distance(float8, float8) IS
  'comoving distance in Mpc/h: flat LCDM, h = 1, omega_m as the DESIVAST files (OMEGAM = 0.315)';
CREATE OR REPLACE FUNCTION {s}.comoving_xyz(ra_deg float8, dec_deg float8, z float8,
                                            omega_m float8 DEFAULT {DESIVAST_OMEGA_M})
RETURNS float8[] {immutable} AS $$
  SELECT ARRAY[d * cosd($2) * cosd($1), d * cosd($2) * sind($1), d * sind($2)]
  FROM (SELECT {s}.comoving_distance($3, $4) AS d) q
$$;
COMMENT ON FUNCTION {s}.comoving_xyz(float8, float8, float8, float8) IS
  'comoving Cartesian (x, y, z) in Mpc/h, observer at the origin, the frame of the DESIVAST void centres';
CREATE OR REPLACE FUNCTION {s}.galactic_l(ra_deg float8, dec_deg float8)
RETURNS float8 {immutable} AS $$
  SELECT CASE WHEN l < 0 THEN l + 360 ELSE l END FROM (SELECT atan2d({row(1)}, {row(0)}) AS l) q
$$;
CREATE OR REPLACE FUNCTION {s}.galactic_b(ra_deg float8, dec_deg float8)
RETURNS float8 {immutable} AS $$
  SELECT asind(greatest(-1, least(1, {row(2)})))
$$;
COMMENT ON FUNCTION {s}.galactic_l(float8, float8) IS 'galactic longitude (deg) of ICRS ra, dec (deg)';
COMMENT ON FUNCTION {s}.galactic_b(float8, float8) IS 'galactic latitude (deg) of ICRS ra, dec (deg)';
"""
