"""Void membership for the four void finders, checked against independent computations."""
import numpy as np
import pytest

from desi_loader.queries import voids
from desi_loader.cli import main, write_samples
from desi_loader.control.run import LoadOptions, run_loads
from helpers import fetch

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, pg_uri):
    d = tmp_path_factory.mktemp("voids")
    write_samples(str(d), "all", rows=4000, files=2, scale=0.002)
    schema = "voids_" + tmp_path_factory.getbasetemp().name.replace("-", "_")[-8:]
    run_loads(LoadOptions(paths=(str(d / "fastspecfit"), str(d / "desivast")), dsn=pg_uri, schema=schema,
                          workers=2, replace_all=True))
    return schema


def _distance_by_quadrature(z, omega_m):
    """Comoving distance (Mpc/h) by 64-point Gauss-Legendre per galaxy: independent of the grid."""
    x, w = np.polynomial.legendre.leggauss(64)
    zz = (x[None, :] + 1) / 2 * z[:, None]
    f = 1 / np.sqrt(omega_m * (1 + zz) ** 3 + 1 - omega_m)
    return 2997.92458 * (f * w[None, :]).sum(axis=1) * z / 2


def test_comoving_distance_matches_the_files_distance_limit():
    # DESIVAST's V2 headers: DLIMU = 677.4038194061428 Mpc/h for ZLIMU = 0.24, OMEGAM = 0.315
    assert voids.comoving_distance(np.array([0.24]), 0.315)[0] == pytest.approx(677.4038194061428, abs=1e-6)
    z = np.linspace(0.001, 1.5, 500)
    assert np.allclose(voids.comoving_distance(z, 0.3), _distance_by_quadrature(z, 0.3), rtol=1e-8, atol=1e-8)


def test_in_spheres_equals_all_pairs():
    rng = np.random.default_rng(2)
    pts = rng.uniform(-100, 100, (3000, 3))
    centres, radii = rng.uniform(-100, 100, (200, 3)), rng.uniform(1, 25, 200)
    p, s = voids.in_spheres(pts, centres, radii, chunk=700)
    d2 = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    want = set(zip(*np.nonzero(d2 < radii[None, :] ** 2)))
    assert set(zip(p.tolist(), s.tolist())) == {(int(a), int(b)) for a, b in want} and len(want) > 500


def test_membership_of_all_four_algorithms(loaded, pg_uri, db, capsys):
    schema = loaded
    assert main(["void-membership", "--schema", schema, "--dsn", pg_uri]) == 0
    out = capsys.readouterr().out
    assert "VoidFinder" in out and "REVOLVER" in out and "fraction" in out
    got = fetch(db, f'SELECT algorithm, cap, void, targetid, parent_void, method, void_edge, galaxy_edge '
                    f'FROM "{schema}".desivast_void_membership')
    by_alg = {}
    for r in got:
        by_alg.setdefault(r[0], set()).add(r)
    assert set(by_alg) == {"VoidFinder", "REVOLVER", "VIDE", "ZOBOV"}

    # V2: exactly the rows of the authors' rule (the view desivast_void_galaxies)
    view = fetch(db, f'SELECT algorithm, cap, void, targetid FROM "{schema}".desivast_void_galaxies')
    assert {r[:4] for r in got if r[0] != "VoidFinder"} == set(view)

    # VoidFinder: an independent brute force over every (galaxy, hole) pair
    headers = {name: h for name, h in fetch(db, f'SELECT filename, header FROM "{schema}".load_files '
                                                f"WHERE catalog = 'desivast' AND published")}
    want = set()
    for cap in ("NGC", "SGC"):
        h = headers[f"DESIVAST_BGS_VOLLIM_VoidFinder_{cap}.fits"]
        gal = fetch(db, f"""
            SELECT m.targetid, m.ra, m.dec, m.z FROM "{schema}".fastspecfit_metadata m
            JOIN "{schema}".fastspecfit_specphot s ON s.targetid = m.targetid AND s.survey = m.survey
                 AND s.program = m.program
            WHERE m.survey = 'main' AND m.program = 'bright' AND m.spectype = 'GALAXY' AND m.zwarn = 0
              AND m.deltachi2 > 40 AND m.z > %s AND m.z <= %s
              AND s.absmag01_sdss_r + 0.97 * (m.z - 0.1) <= %s""", (h["ZLIML"], h["ZLIMU"], h["MAGLIM"]))
        g = np.array([r[1:] for r in gal], float)
        tid = np.array([r[0] for r in gal], np.int64)
        ngc = (g[:, 0] > 83) & (g[:, 0] < 304)
        sel = ngc if cap == "NGC" else ~ngc
        g, tid = g[sel], tid[sel]
        r = _distance_by_quadrature(g[:, 2], h["OMEGAM"])
        a, d = np.radians(g[:, 0]), np.radians(g[:, 1])
        xyz = np.stack([r * np.cos(d) * np.cos(a), r * np.cos(d) * np.sin(a), r * np.sin(d)], axis=1)
        holes = np.array(fetch(db, f"SELECT x, y, z, radius, void FROM \"{schema}\".desivast_holes "
                                   f"WHERE algorithm = 'VoidFinder' AND cap = %s", (cap,)), float)
        dist = np.sqrt(((xyz[:, None, :] - holes[None, :, :3]) ** 2).sum(axis=2))
        inside = dist < holes[None, :, 3]
        assert not (np.abs(dist - holes[None, :, 3]) < 1e-6).any()        # no galaxy on a hole's surface
        for gi, hi in zip(*np.nonzero(inside)):
            want.add(("VoidFinder", cap, int(holes[hi, 4]), int(tid[gi])))
    vf = {r[:4] for r in by_alg["VoidFinder"]}
    assert vf == want and len(want) >= 5
    edges = dict(fetch(db, f"SELECT cap || ':' || void, edge FROM \"{schema}\".desivast_maximals "
                           f"WHERE algorithm = 'VoidFinder'"))
    assert all(r[6] == edges[f"{r[1]}:{r[2]}"] and r[5] == "holes" for r in by_alg["VoidFinder"])
    assert all(r[5] == "zone" and r[7] in (0, 1) and r[6] in (0, 1) for r in got if r[0] != "VoidFinder")

    # rebuilding replaces the table (same rows); a reader's grant and a user's view carry over
    t = f'"{schema}".desivast_void_membership'
    for stmt in ("DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'astro_reader') "
                 "THEN CREATE ROLE astro_reader; END IF; END$$", f"GRANT SELECT ON {t} TO astro_reader",
                 f'CREATE VIEW "{schema}".vf_members AS SELECT * FROM {t} WHERE algorithm = \'VoidFinder\''):
        with db.cursor() as cur:
            cur.execute(stmt)
        db.commit()
    assert main(["void-membership", "--schema", schema, "--dsn", pg_uri]) == 0
    again = fetch(db, f'SELECT algorithm, cap, void, targetid, parent_void, method, void_edge, galaxy_edge '
                      f'FROM "{schema}".desivast_void_membership')
    assert set(again) == set(got) and len(again) == len(got)
    assert fetch(db, f"SELECT has_table_privilege('astro_reader', '{t}', 'SELECT'), "
                     f'(SELECT count(*) FROM "{schema}".vf_members)') == [(True, len(by_alg["VoidFinder"]))]


def test_membership_needs_desivast(pg_uri, schema, capsys):
    assert main(["void-membership", "--schema", schema, "--dsn", pg_uri]) == 2
    assert "no DESIVAST files are published" in capsys.readouterr().err


def _readme_sql(start: str) -> str:
    """The guide's SQL example that starts with ``start``, as written."""
    from docs_examples import all_blocks
    found = [b.code for b in all_blocks() if b.lang == "sql" and b.code.startswith(start)]
    assert len(found) == 1, start
    return found[0]


def test_guide_void_galaxy_and_cone_examples_run(loaded, pg_uri, db):
    schema = loaded
    assert main(["void-membership", "--schema", schema, "--dsn", pg_uri]) == 0
    rows = fetch(db, _readme_sql("WITH parent AS").replace("desi_dr1.", f'"{schema}".'))
    assert [r[0] for r in rows] == ["REVOLVER", "VIDE", "VoidFinder", "ZOBOV"]
    assert all(r[1] > 0 and 0 < r[2] <= 1 for r in rows)
    cone_sql = _readme_sql("SELECT t.targetid, t.ra, t.dec").replace("desi_dr1.", f'"{schema}".')
    got = {r[0] for r in fetch(db, cone_sql)}
    want = {r[0] for r in fetch(db, f'SELECT targetid FROM "{schema}".fastspecfit_metadata '
                                    f'WHERE "{schema}".angdist(ra, dec, 150, 30) <= 5')}
    assert got == want and got
