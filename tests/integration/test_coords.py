"""Comoving distances, Cartesian positions and galactic coordinates, in Python and SQL,
against astropy.cosmology and astropy.coordinates."""
import numpy as np
import astropy.units as u
from astropy.coordinates import SkyCoord
from astropy.cosmology import FlatLambdaCDM

from desi_loader import coords
from desi_loader.catalog.skyindex import install_functions
from helpers import fetch

RNG = np.random.default_rng(7)
RA = RNG.uniform(0, 360, 300)
DEC = np.degrees(np.arcsin(RNG.uniform(-1, 1, 300)))
Z = RNG.uniform(0, 2.5, 300)
Z[:3] = [0.0, 1e-6, 0.24]


def test_comoving_distance_matches_astropy_cosmology():
    cosmo = FlatLambdaCDM(H0=100, Om0=0.315, Tcmb0=0)          # h = 1: Mpc are Mpc/h
    want = cosmo.comoving_distance(Z).to_value(u.Mpc)
    got = coords.comoving_distance(Z, 0.315)
    assert np.allclose(got, want, rtol=1e-10, atol=1e-9)
    assert abs(coords.comoving_distance(0.24, 0.315) - 677.40) < 0.005     # DESIVAST's DLIMU card


def test_galactic_matches_astropy_coordinates():
    g = SkyCoord(ra=RA * u.deg, dec=DEC * u.deg, frame="icrs").galactic
    ell, b = coords.galactic(RA, DEC)
    dl = (ell - g.l.deg + 180) % 360 - 180
    assert np.max(np.abs(dl * np.cos(np.radians(b)))) < 1e-9 and np.max(np.abs(b - g.b.deg)) < 1e-9
    assert np.all((ell >= 0) & (ell < 360))


def test_sql_functions_equal_python(db, schema):
    with db.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{schema}"')
    db.commit()
    install_functions(db, schema)
    rows = fetch(db, f'SELECT "{schema}".comoving_distance(z, 0.315), "{schema}".comoving_xyz(ra, dec, z, 0.315), '
                     f'"{schema}".galactic_l(ra, dec), "{schema}".galactic_b(ra, dec), '
                     f'"{schema}".comoving_distance(z) FROM unnest(%s::float8[], %s::float8[], %s::float8[]) '
                     "AS p(ra, dec, z)", (RA.tolist(), DEC.tolist(), Z.tolist()))
    d, xyz, ell, b, d_default = (np.array([r[i] for r in rows], float) for i in range(5))
    assert np.allclose(d, coords.comoving_distance(Z, 0.315), rtol=1e-12, atol=1e-9)
    assert np.array_equal(d, d_default)                            # the default is DESIVAST's 0.315
    assert np.allclose(xyz, coords.comoving_xyz(RA, DEC, Z, 0.315), rtol=1e-12, atol=1e-9)
    l_py, b_py = coords.galactic(RA, DEC)
    assert np.max(np.abs((ell - l_py + 180) % 360 - 180)) < 1e-9 and np.max(np.abs(b - b_py)) < 1e-9
