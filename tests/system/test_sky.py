"""Sky index: HEALPix pixels against astropy-healpix, cone search and cross-match against
brute force (embedded server with the hpx29 B-tree; Debian's server with q3c), sky order."""
import numpy as np
import psycopg2
import pytest
from astropy.table import Table

from desi_loader.queries import cone

from desi_loader import sky
from helpers import load

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

EDGE = 1e-9          # degrees: points this close to the cone's edge may fall either way in float8


def test_ang2pix_matches_astropy_healpix():
    import astropy.units as u
    from astropy_healpix import core
    rng = np.random.default_rng(3)
    ra = np.concatenate([rng.uniform(0, 360, 200_000), [0, 90, 180, 270, 359.9999999999, 45, 45, 0, 0]])
    dec = np.concatenate([np.degrees(np.arcsin(rng.uniform(-1, 1, 200_000))),
                          [90, -90, 0, 41.8103148957786, -41.8103148957786, 89.9999999, -89.9999999,
                           19.47122063449069, -19.47122063449069]])
    for order in (0, 1, 5, 12, 20, 29):
        mine, invalid = sky.ang2pix(ra, dec, order)
        assert not invalid.any()
        ref = core.lonlat_to_healpix(ra * u.deg, dec * u.deg, 1 << order, order="nested")
        differ = np.nonzero(mine != ref)[0]
        # only points on a pixel boundary (ties) may differ; they must lie in or on our pixel
        assert len(differ) <= 12, (order, len(differ))
        lon, lat = core.healpix_to_lonlat(mine[differ], 1 << order, order="nested")
        d = sky.angdist(lon.to_value(u.deg), lat.to_value(u.deg), ra[differ], dec[differ])
        assert (d <= sky.max_pixrad(order) * (1 + 1e-6)).all()
    assert (sky.ang2pix(ra[:1000] + 360, dec[:1000])[0] == sky.ang2pix(ra[:1000], dec[:1000])[0]).all()
    assert (sky.ang2pix(ra[:1000] - 360, dec[:1000])[0] == sky.ang2pix(ra[:1000], dec[:1000])[0]).all()


def test_ang2pix_no_pixel_for_bad_positions():
    pix, invalid = sky.ang2pix([np.nan, 10, 10, np.inf, 10], [0, np.nan, 90.5, 0, 10])
    assert invalid.tolist() == [True, True, True, True, False]


def test_max_pixrad_matches_healpy_values():
    # healpy.max_pixrad(nside) in degrees, nside = 1, 2**12, 2**29 (healpy 1.16)
    assert sky.max_pixrad(0) == pytest.approx(48.1896851042214, rel=1e-12)
    assert sky.max_pixrad(12) == pytest.approx(0.0149522871363438, rel=1e-9)
    assert sky.max_pixrad(29) == pytest.approx(1.1408219053764e-07, rel=1e-6)


def _positions(seed=7, n=30_000):
    """Random sky plus crowds at the poles, on RA = 0/360 and around some centres."""
    rng = np.random.default_rng(seed)
    ra = [rng.uniform(0, 360, n)]
    dec = [np.degrees(np.arcsin(rng.uniform(-1, 1, n)))]
    for c_ra, c_dec, spread in ((0, 89.99, 0.05), (180, -89.95, 0.1), (0.0, 10, 0.02), (359.999, -30, 0.01),
                                (150, 2.2, 0.001), (45, 41.81031489577, 0.005), (270, 0, 0.0005)):
        m = 4000
        d = np.clip(c_dec + rng.normal(0, spread, m), -90, 90)
        r = np.mod(c_ra + rng.normal(0, spread, m) / np.maximum(np.cos(np.radians(d)), 1e-3), 360)
        ra.append(r)
        dec.append(d)
    return np.concatenate(ra), np.concatenate(dec)


def _write_positions(path, ra, dec):
    t = Table()
    t["ID"] = np.arange(len(ra), dtype=np.int64)
    t["RA"] = ra
    t["DEC"] = dec
    t["MAG"] = np.float32(np.linspace(15, 25, len(ra)))
    t.write(path, format="fits", overwrite=True)
    return path


CENTRES = [(0, 90, 0.5), (0, 89.99, 0.02), (123, -90, 1.0), (180, -89.95, 0.2), (0.0, 10, 0.02),
           (359.9995, 10, 0.01), (359.999, -30, 0.005), (0.001, -30, 0.01), (150, 2.2, 1 / 3600),
           (150, 2.2, 1 / 60), (150, 2.2, 0.002), (45, 41.81031489577, 0.01), (270, 0, 5 / 3600),
           (10, 20, 10.0), (200, -45, 30.0), (300, 60, 0.5), (0, 0, 0.0)]


def _check_cones(conn, schema, ra, dec, method):
    with conn.cursor() as cur:
        t = cone.describe(cur, schema, "pos_hdu1")
        rng = np.random.default_rng(11)
        centres = CENTRES + [(rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1))),
                              10 ** rng.uniform(-3.5, 1)) for _ in range(20)]
        nonempty = 0
        for c_ra, c_dec, r in centres:
            d = sky.angdist(ra, dec, c_ra, c_dec)
            want = set(np.nonzero(d <= r)[0].tolist())
            unsure = set(np.nonzero(np.abs(d - r) < EDGE)[0].tolist())
            # the one-statement SQL (LATERAL hpx_cone) and the CLI's form (ranges fetched first)
            for ranges in (None, cone.cone_ranges(cur, schema, c_ra, c_dec, r)):
                cur.execute(cone.cone_query(t, c_ra, c_dec, r, ["id"], method, ranges=ranges))
                got = {row[0] for row in cur.fetchall()}
                assert got - unsure == want - unsure, (c_ra, c_dec, r, len(got), len(want), ranges is None)
            nonempty += bool(want)
        assert nonempty >= 15
    conn.commit()


def _sky_ordered(conn, schema):
    """Rows are stored in hpx29 order (one file, one task: a single sorted run)."""
    with conn.cursor() as cur:
        cur.execute(f'SELECT hpx29 FROM "{schema}".pos_hdu1 ORDER BY ctid')
        pix = np.array([r[0] for r in cur.fetchall()], np.int64)
    conn.commit()
    return bool((np.diff(pix) >= 0).all())


def test_cone_search_exact_with_hpx_btree(tmp_path, pg_uri, schema, db):
    ra, dec = _positions()
    path = _write_positions(tmp_path / "pos.fits", ra, dec)
    load(pg_uri, schema, [path], catalog="generic", prefix="pos", sky="RA,DEC", workers=1)
    with db.cursor() as cur:
        t = cone.describe(cur, schema, None)
        assert (t.table, t.ra, t.dec, t.q3c) == ("pos_hdu1", "ra", "dec", None)
        cur.execute(f'SELECT count(*) FROM "{schema}".pos_hdu1 WHERE hpx29 IS NULL')
        assert cur.fetchone()[0] == 0
        cur.execute("EXPLAIN " + cone.cone_query(t, 150, 2.2, 1 / 60, ["id"]).as_string(db))
        plan = "\n".join(r[0] for r in cur.fetchall())
    db.commit()
    assert "pos_hdu1_hpx29_idx" in plan, plan
    assert _sky_ordered(db, schema)
    _check_cones(db, schema, ra, dec, "hpx")


def test_cone_search_exact_with_q3c(tmp_path, pg15_uri, schema):
    ra, dec = _positions(seed=8)
    path = _write_positions(tmp_path / "pos.fits", ra, dec)
    summary = load(pg15_uri, schema, [path], catalog="generic", prefix="pos", sky="RA,DEC", workers=1)
    assert summary.rows == {"pos_hdu1": len(ra)}
    conn = psycopg2.connect(pg15_uri)
    try:
        with conn.cursor() as cur:
            t = cone.describe(cur, schema, "pos_hdu1")
            assert t.q3c, "the q3c index was not built on a server with q3c"
            cur.execute("EXPLAIN " + cone.cone_query(t, 150, 2.2, 1 / 60, ["id"]).as_string(conn))
            plan = "\n".join(r[0] for r in cur.fetchall())
        conn.commit()
        assert "pos_hdu1_q3c_idx" in plan, plan
        _check_cones(conn, schema, ra, dec, "q3c")
        _check_cones(conn, schema, ra, dec, "hpx")          # both indexes on the same table
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.commit()
        conn.close()


def test_nearest_neighbour_crossmatch(tmp_path, pg_uri, schema, db):
    rng = np.random.default_rng(5)
    n = 3000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-0.99, 0.99, n)))
    ra[:20], dec[:20] = 359.9999, np.linspace(-60, 60, 20)           # across RA = 0/360
    # B: most of A moved by up to 2 arcsec (some across RA 0), decoys, and nothing near a few
    keep = rng.random(n) < 0.8
    b_ra = np.mod(ra[keep] + rng.uniform(-2, 2, keep.sum()) / 3600 / np.cos(np.radians(dec[keep])), 360)
    b_dec = dec[keep] + rng.uniform(-2, 2, keep.sum()) / 3600
    decoy = rng.choice(np.nonzero(keep)[0], 300)
    b_ra = np.concatenate([b_ra, np.mod(ra[decoy] + 2.5 / 3600, 360)])
    b_dec = np.concatenate([b_dec, dec[decoy]])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    load(pg_uri, schema, [_write_positions(tmp_path / "a" / "a.fits", ra, dec)], catalog="generic",
         prefix="a", sky="RA,DEC")
    load(pg_uri, schema, [_write_positions(tmp_path / "b" / "b.fits", b_ra, b_dec)], catalog="generic",
         prefix="b", sky="RA,DEC")
    radius = 3 / 3600
    with db.cursor() as cur:
        a, b = cone.describe(cur, schema, "a_hdu1"), cone.describe(cur, schema, "b_hdu1")
        cur.execute(cone.crossmatch_query(a, b, radius, ["id"], ["id"]))
        got = {r[0]: (r[1], r[2]) for r in cur.fetchall()}
    db.commit()
    want = {}
    for i in range(n):
        d = sky.angdist(ra[i], dec[i], b_ra, b_dec)
        j = int(np.argmin(d))
        if d[j] <= radius:
            want[i] = j
    assert set(got) == set(want)
    assert all(got[i][0] == want[i] for i in want)
    assert len(want) > 0.75 * n and any(i < 20 for i in want)


def test_cone_cli_prints_rows_and_plan(tmp_path, pg_uri, schema, capsys):
    from desi_loader import display
    from desi_loader.cli import main
    ra, dec = _positions(seed=9, n=2000)
    load(pg_uri, schema, [_write_positions(tmp_path / "pos.fits", ra, dec)], catalog="generic", prefix="pos",
         sky="RA,DEC")
    assert main(["cone", "150", "2.2", "0.0167", "--schema", schema, "--dsn", pg_uri, "--columns", "id,ra,dec"]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    want = int((sky.angdist(ra, dec, 150, 2.2) <= 0.0167).sum())
    assert lines[0] == "id\tra\tdec\tdist" and len(lines) == want + 1 and display.plural(want, "row") in err
    dists = [float(x.split("\t")[3]) for x in lines[1:]]
    assert dists == sorted(dists)                              # nearest first
    assert main(["cone", "150", "2.2", "0.0167", "--schema", schema, "--dsn", pg_uri, "--explain"]) == 0
    assert "pos_hdu1_hpx29_idx" in capsys.readouterr().out       # the plan uses the sky index
    assert main(["cone", "150", "2.2", "1", "--schema", schema, "--dsn", pg_uri, "--table", "nope"]) == 2
    assert "table " + schema + ".nope does not exist" in capsys.readouterr().err
