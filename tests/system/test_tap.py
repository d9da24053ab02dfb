"""The loaded catalog as a TAP and cone-search service, tested with real clients: GAVO DaCHS
(Debian's gavodachs2-server) serving a Debian PostgreSQL 15 with q3c and pgsphere that the
test starts, pyvo for sync/async/upload queries, STILTS taplint for the service.

One service for the module: FastSpecFit (two main files) and DESIVAST loaded by an ordinary
role, published with ``desi-loader tap publish``; later tests load more into it (a new
table, an incremental merge that adds columns, a --replace-all swap) and check that TAP
follows without any further command.
"""
import io
import os
import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psycopg2
import pytest

import localpg
from pg15 import require_extension

import pyvo
from astropy.table import Table

from desi_loader import cli
from desi_loader.commands import write_samples
from desi_loader import units
from desi_loader.tap import dachs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _sql(dsn, query, params=None, autocommit=True):
    conn = psycopg2.connect(dsn)
    conn.autocommit = autocommit
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tap(tmp_path_factory):
    require_extension("q3c", "postgresql-15 postgresql-15-q3c")
    require_extension("pg_sphere", "postgresql-15-pgsphere")
    if shutil.which("dachs") is None:
        pytest.fail("GAVO DaCHS is not installed (gavodachs2-server): run scripts/provision.sh as root")
    tmp = tmp_path_factory.mktemp("tap")
    old_xdg = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp / "xdg")     # the default instance dir, as a user has it
    data_dir = localpg.base_dir() / f"tap-{uuid.uuid4().hex[:8]}"
    port = localpg.free_port()
    superuser = localpg.start(data_dir, port, version="15")
    _sql(superuser, "CREATE ROLE loader LOGIN")
    _sql(superuser, "CREATE ROLE analyst LOGIN")
    _sql(superuser, "CREATE DATABASE desi OWNER loader")
    admin_dsn = f"postgresql://postgres@127.0.0.1:{port}/desi"
    _sql(admin_dsn, "CREATE EXTENSION q3c")
    dsn = f"postgresql://loader@127.0.0.1:{port}/desi"
    files = write_samples(str(tmp / "sample"), "all", 2000, 3, None)
    fsf = sorted(f for f in files if "fastspec-iron" in f)
    main = [f for f in fsf if "-main-" in f]
    sv3 = [f for f in fsf if "-sv3-" in f]
    assert cli.main(["load", *main, str(tmp / "sample" / "desivast"), "--dsn", dsn, "-q", "--workers", "2"]) == 0
    tap_port = localpg.free_port()
    publish = ["tap", "publish", "--dsn", dsn, "--port", str(tap_port)]
    assert cli.main(publish + ["--admin-dsn", admin_dsn, "--no-start"]) == 0
    inst = dachs.Instance(dachs.default_dir())
    untrusted = inst.query_roles()[1]
    # the plans of what DaCHS runs go to the server's log (auto_explain, for its query role only)
    _sql(superuser, f"ALTER ROLE {untrusted} SET session_preload_libraries = 'auto_explain'")
    _sql(superuser, f"ALTER ROLE {untrusted} SET auto_explain.log_min_duration = 0")
    assert cli.main(publish) == 0                  # the second publish starts the server
    url = f"http://127.0.0.1:{tap_port}/tap"
    ns = SimpleNamespace(dsn=dsn, admin_dsn=admin_dsn, superuser=superuser, url=url, inst=inst, tmp=tmp,
                         main=main, sv3=sv3, desivast=str(tmp / "sample" / "desivast"), publish=publish,
                         log=data_dir / "server.log", service=pyvo.dal.TAPService(url))
    yield ns
    cli.main(["tap", "stop"])
    localpg.stop(data_dir, version="15")
    shutil.rmtree(data_dir, ignore_errors=True)
    if old_xdg is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old_xdg


def _cli_rows(capsys, args) -> list:
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()
    return [tuple(line.split("\t")) for line in out[1:]]


def _keys(table) -> set:
    return {(str(r["targetid"]), str(r["survey"]), str(r["program"])) for r in table}


#: (ra, dec, radius); None: near the galaxy with the smallest TARGETID (a cone of 0.5 degrees)
CONES = [(150.0, 30.0, 5.0), (0.3, 10.0, 4.0), (359.7, -5.0, 3.0), (10.0, 89.0, 14.0), (None, None, 0.5)]


@pytest.mark.parametrize("ra,dec,radius", CONES, ids=["plain", "ra0", "ra360", "pole", "small"])
def test_adql_cones_equal_cli_cone(tap, capsys, ra, dec, radius):
    """CONTAINS/CIRCLE and DISTANCE, sync and async: exactly the rows of desi-loader cone."""
    if ra is None:
        ra, dec = _sql(tap.dsn, "SELECT ra, dec + 0.3 FROM desi_dr1.fastspecfit_metadata ORDER BY targetid LIMIT 1")[0]
    want = {r[:3] for r in _cli_rows(capsys, ["cone", str(ra), str(dec), str(radius), "--dsn", tap.dsn,
                                              "--columns", "targetid,survey,program"])}
    assert want, "a cone with no rows proves nothing"
    point = "POINT('ICRS', ra, dec)"
    contains = (f"SELECT targetid, survey, program FROM desi_dr1.fastspecfit_metadata "
                f"WHERE 1 = CONTAINS({point}, CIRCLE('ICRS', {ra}, {dec}, {radius}))")
    distance = (f"SELECT targetid, survey, program FROM desi_dr1.fastspecfit_metadata "
                f"WHERE DISTANCE({point}, POINT('ICRS', {ra}, {dec})) < {radius}")
    assert _keys(tap.service.run_sync(contains).to_table()) == want
    assert _keys(tap.service.run_sync(distance).to_table()) == want
    assert _keys(tap.service.run_async(contains).to_table()) == want


def test_one_arcsec_cone_and_index_scan(tap, capsys):
    ra, dec, tid = _sql(tap.dsn, "SELECT ra, dec, targetid FROM desi_dr1.fastspecfit_metadata "
                                 "ORDER BY targetid LIMIT 1")[0]
    r = 1 / 3600
    want = _cli_rows(capsys, ["cone", repr(ra), repr(dec), repr(r), "--dsn", tap.dsn, "--columns", "targetid"])
    marker = uuid.uuid4().hex[:8]
    got = tap.service.run_sync(f"SELECT targetid, {marker!r} AS probe FROM desi_dr1.fastspecfit_metadata "
                               f"WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra!r}, {dec!r}, {r!r}))")
    assert [str(x) for x in got.to_table()["targetid"]] == [w[0] for w in want] == [str(tid)]
    # the plan of the SQL DaCHS ran (auto_explain in the server's log): the q3c index
    log = tap.log.read_text(errors="replace")
    plan = log[log.rindex(marker):].split("LOG:")[0]
    assert "q3c_join" in plan or "q3c_radial_query" in plan
    assert re.search(r"(Bitmap Index Scan on|Index Scan using) fastspecfit_metadata_q3c_idx", plan), plan


def test_tap_upload_crossmatch_equals_cli_xmatch(tap, capsys):
    """A VOTable of positions uploaded and cross-matched in ADQL: the pairs of desi-loader xmatch."""
    rows = _sql(tap.dsn, "SELECT ra, dec FROM desi_dr1.fastspecfit_metadata ORDER BY targetid LIMIT 40")
    rng = np.random.default_rng(7)
    ra = np.array([r[0] for r in rows] + list(rng.uniform(0, 360, 10)))
    dec = np.array([r[1] for r in rows] + list(rng.uniform(-20, 70, 10)))
    ra[:40] += rng.normal(0, 0.3 / 3600, 40) / np.cos(np.radians(dec[:40]))
    dec[:40] += rng.normal(0, 0.3 / 3600, 40)
    positions = Table({"ID": np.arange(50, dtype=np.int32), "RA": ra % 360, "DEC": dec})
    positions.meta["EXTNAME"] = "POS"
    path = tap.tmp / "upl" / "positions.fits"
    path.parent.mkdir(exist_ok=True)
    positions.write(path, overwrite=True)
    assert cli.main(["load", str(path), "--catalog", "generic", "--prefix", "upl", "--sky", "RA,DEC",
                     "--dsn", tap.dsn, "-q"]) == 0
    r = 2 / 3600
    want = {(int(a), int(b)) for a, b, _d in _cli_rows(capsys, ["xmatch", "upl_pos", "fastspecfit_metadata", repr(r),
                                                               "--columns-a", "id", "--columns-b", "targetid",
                                                               "--dsn", tap.dsn])}
    assert len(want) >= 35
    upload = Table({"id": positions["ID"], "ra": positions["RA"], "dec": positions["DEC"]})
    got = tap.service.run_sync(
        "SELECT u.id, m.targetid, DISTANCE(POINT('ICRS', u.ra, u.dec), POINT('ICRS', m.ra, m.dec)) AS d "
        "FROM TAP_UPLOAD.pos AS u JOIN desi_dr1.fastspecfit_metadata AS m "
        f"ON 1 = CONTAINS(POINT('ICRS', m.ra, m.dec), CIRCLE('ICRS', u.ra, u.dec, {r!r}))",
        uploads={"pos": upload}).to_table()
    nearest = {}
    for row in got:
        if row["id"] not in nearest or row["d"] < nearest[row["id"]][1]:
            nearest[row["id"]] = (int(row["targetid"]), row["d"])
    assert {(int(i), t) for i, (t, _d) in nearest.items()} == want
    # the new table loaded into the served schema is served too, with no further command
    assert len(tap.service.run_sync("SELECT id FROM desi_dr1.upl_pos").to_table()) == 50


def test_tap_schema_metadata_is_what_the_loader_recorded(tap):
    recorded = _sql(tap.admin_dsn, "SELECT table_name, column_name, unit, description FROM desi_dr1.loader_columns "
                                   "WHERE table_name LIKE 'fastspecfit%%' OR table_name LIKE 'desivast%%'")
    served = {(t.split(".")[1], c.strip('"')): (u, d, ucd) for t, c, u, d, ucd in _sql(
        tap.admin_dsn, "SELECT table_name, column_name, unit, description, ucd FROM tap_schema.columns "
                       "WHERE table_name LIKE 'desi_dr1.%%'")}
    assert len(recorded) > 1000
    for table, column, unit, description in recorded:
        tap_unit, tap_description, _ucd = served[(table, column)]
        assert (tap_unit or "") == units.translate(unit).vounit, (table, column, unit)
        assert (tap_description or "").startswith((description or "").strip()), (table, column)
    ucds = {k: v[2] for k, v in served.items()}
    assert ucds[("fastspecfit_metadata", "ra")] == "pos.eq.ra;meta.main"
    assert ucds[("fastspecfit_metadata", "dec")] == "pos.eq.dec;meta.main"
    assert ucds[("fastspecfit_metadata", "targetid")] == "meta.id;meta.main"
    assert ucds[("fastspecfit_metadata", "z")] == "src.redshift"
    assert ucds[("fastspecfit_metadata", "flux_g")] == "phot.flux"
    assert ucds[("fastspecfit_metadata", "flux_ivar_g")] == "stat.weight;phot.flux"
    assert ucds[("desivast_voids", "z")] == "pos.cartesian.z"
    assert ucds[("desivast_voids", "void")] == "meta.id;meta.main"
    assert served[("desivast_voids", "radius")][0] == "Mpc.'h'**-1"     # little h, quoted as VOUnit says


def test_result_votable_has_fits_units_float32_arrays_and_nulls(tap):
    import astropy.units as u
    t = tap.service.run_sync("SELECT TOP 20 m.targetid, m.ra, m.flux_g, s.vdisp, s.coeff "
                             "FROM desi_dr1.fastspecfit_metadata AS m JOIN desi_dr1.fastspecfit_specphot AS s "
                             "ON s.targetid = m.targetid AND s.survey = m.survey AND s.program = m.program").to_table()
    assert len(t) == 20
    assert t["ra"].unit == u.deg and t["vdisp"].unit == u.Unit("km / s")
    # the quoted VOUnit 'nmgy' reads back as the FITS unit (astropy may keep the quotes when
    # another unit format was enabled before)
    assert str(t["flux_g"].unit).strip("'") == "nmgy"
    assert t["flux_g"].dtype == np.float32 and t["vdisp"].dtype == np.float32
    assert t["targetid"].dtype == np.int64
    assert t["coeff"].dtype == np.float32 and t["coeff"].shape[1:] == (5,)
    want = _sql(tap.dsn, "SELECT coeff FROM desi_dr1.fastspecfit_specphot WHERE targetid = %s AND survey = %s",
                (int(t["targetid"][0]), "main"))[0][0]
    assert np.array_equal(np.asarray(t["coeff"][0], dtype=np.float32), np.asarray(want, dtype=np.float32))
    z = tap.service.run_sync("SELECT algorithm, cap, \"zone\", void0, void1 FROM desi_dr1.desivast_zonevoid").to_table()
    nulls = _sql(tap.dsn, "SELECT count(*) FROM desi_dr1.desivast_zonevoid WHERE void1 IS NULL")[0][0]
    assert nulls > 0 and int(np.ma.count_masked(z["void1"])) == nulls


def test_a_parquet_table_is_served_like_any_other(tap, capsys):
    """A Parquet file loaded into the served schema: in TAP at once, float32 and int64 exact,
    strings with their NULLs, fixed arrays, units; an ADQL cone gives the rows of desi-loader cone."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from arrowdata import all_arrow_types
    table = all_arrow_types(n=400, seed=3)
    units = {"RA": {b"unit": b"deg"}, "F32": {b"unit": b"km/s"}}
    table = table.cast(pa.schema([f.with_metadata(units[f.name]) if f.name in units else f for f in table.schema]))
    path = tap.tmp / "types.parquet"
    pq.write_table(table, path)
    assert cli.main(["load", str(path), "--dsn", tap.dsn, "-q", "--prefix", "parquet_types", "--sky", "ra,dec"]) == 0
    t = tap.service.run_sync("SELECT id, ra, f32, i64, name, arr FROM desi_dr1.parquet_types", maxrec=10000).to_table()
    assert len(t) == 400
    got = {int(r["id"]): r for r in t}
    ids = table.column("ID").to_numpy()
    f32 = table.column("F32")
    assert t["f32"].dtype == np.float32 and t["i64"].dtype == np.int64 and t["arr"].shape[1:] == (3,)
    for i in range(400):
        row, want = got[int(ids[i])], f32[i].as_py()
        if want is None or want != want:                        # NULL and NaN: NULL (the FITS policy)
            assert np.ma.is_masked(row["f32"])
        else:
            assert np.float32(row["f32"]).tobytes() == np.float32(want).tobytes()
        name = table.column("NAME")[i].as_py()
        served = None if np.ma.is_masked(row["name"]) else str(row["name"])
        # a NULL string comes back from DaCHS's VOTable as NULL in some runs and as '' in others
        # (the table holds NULL: below); every other string exactly
        assert served == name or (name is None and served == ""), f"row {i}: {name!r} served as {served!r}"
        assert (np.ma.is_masked(row["i64"]) if table.column("I64")[i].as_py() is None
                else int(row["i64"]) == table.column("I64")[i].as_py())
    nulls = table.column("NAME").null_count
    assert nulls and _sql(tap.dsn, "SELECT count(*) FROM desi_dr1.parquet_types WHERE name IS NULL")[0][0] == nulls
    assert str(t["ra"].unit) == "deg" and str(t["f32"].unit) == "km / s"
    rows = tap.service.run_sync("SELECT * FROM desi_dr1.parquet_types", maxrec=10000).to_table()
    assert len(rows) == 400 and "vl" in rows.colnames     # lists with NULL elements: a null stand-in
    assert "mat" not in rows.colnames                     # 2-D arrays: left out (DaCHS serves 1-D ones)
    want = {r[0] for r in _cli_rows(capsys, ["cone", "150", "20", "40", "--table", "parquet_types", "--dsn", tap.dsn,
                                             "--columns", "id"])}
    assert 0 < len(want) < 400
    cone = tap.service.run_sync("SELECT id FROM desi_dr1.parquet_types WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), "
                                "CIRCLE('ICRS', 150, 20, 40))", maxrec=10000).to_table()
    assert {str(v) for v in cone["id"]} == want


def test_taplint_reports_no_errors(tap):
    proc = subprocess.run(["stilts", "taplint", f"tapurl={tap.url}", "report=EW", "maxrepeat=3"],
                          capture_output=True, text=True, timeout=600)
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", proc.stdout)
    assert totals, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E-")]
    assert totals.group(1) == "0", "\n".join(errors)


def test_cone_search_service(tap, capsys):
    scs = pyvo.dal.SCSService(tap.url.replace("/tap", "/desi_dr1/q/cone_fastspecfit_metadata/scs.xml"))
    got = scs.search(pos=(150.0, 30.0), radius=5.0).to_table()
    want = _cli_rows(capsys, ["cone", "150", "30", "5", "--dsn", tap.dsn, "--columns", "targetid"])
    assert sorted(str(x) for x in got["targetid"]) == sorted(w[0] for w in want)


def test_query_role_reads_only_published_tables(tap):
    _sql(tap.dsn, "CREATE TABLE desi_dr1.fastspecfit_metadata_staging_probe AS SELECT 1 AS x")
    untrusted = tap.inst.profile_dsn("untrustedquery")
    for table in ("loader_tasks", "loader_loads", "loader_columns", "load_files", "fastspecfit_metadata_staging_probe"):
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            _sql(untrusted, f"SELECT 1 FROM desi_dr1.{table} LIMIT 1")
        with pytest.raises(pyvo.dal.DALQueryError):
            tap.service.run_sync(f"SELECT * FROM desi_dr1.{table}")
    assert _sql(untrusted, "SELECT count(*) FROM desi_dr1.fastspecfit_metadata")[0][0] > 0
    _sql(tap.dsn, "DROP TABLE desi_dr1.fastspecfit_metadata_staging_probe")


def test_adql_cannot_write_and_limits_hold(tap):
    before = _sql(tap.dsn, "SELECT count(*) FROM desi_dr1.fastspecfit_metadata")[0][0]
    for bad in ("DELETE FROM desi_dr1.fastspecfit_metadata",
                "SELECT 1 FROM desi_dr1.fastspecfit_metadata; DROP TABLE desi_dr1.fastspecfit_metadata",
                "UPDATE desi_dr1.fastspecfit_metadata SET z = 0"):
        with pytest.raises(pyvo.dal.DALQueryError):
            tap.service.run_sync(bad)
    assert _sql(tap.dsn, "SELECT count(*) FROM desi_dr1.fastspecfit_metadata")[0][0] == before
    result = tap.service.run_sync("SELECT targetid FROM desi_dr1.fastspecfit_metadata", maxrec=7)
    assert len(result) == 7 and result.query_status == "OVERFLOW"
    # a query longer than its execution duration is cancelled: the job ends in ERROR
    job = tap.service.submit_job("SELECT COUNT(*) FROM desi_dr1.fastspecfit_fastspec AS a, "
                                 "desi_dr1.fastspecfit_fastspec AS b, desi_dr1.fastspecfit_metadata AS c")
    job.execution_duration = 2
    job.run()
    job.wait(phases=["COMPLETED", "ERROR", "ABORTED"], timeout=300)
    assert job.phase in ("ERROR", "ABORTED")
    job.delete()


def test_loader_role_keeps_its_rights(tap):
    _sql(tap.dsn, "GRANT USAGE ON SCHEMA desi_dr1 TO analyst")
    _sql(tap.dsn, "GRANT SELECT ON desi_dr1.fastspecfit_specphot TO analyst")
    assert cli.main(tap.publish) == 0
    assert cli.main(tap.publish) == 0
    tables = [r[0] for r in _sql(tap.dsn, "SELECT DISTINCT table_name FROM desi_dr1.loader_columns")]
    every = "SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER"
    for t in tables + ["loader_tasks", "loader_loads", "load_files"]:
        assert _sql(tap.admin_dsn, "SELECT has_table_privilege('loader', %s, %s)", (f"desi_dr1.{t}", every))[0][0], t
    assert _sql(tap.admin_dsn, "SELECT has_schema_privilege('loader', 'desi_dr1', 'CREATE, USAGE')")[0][0]
    assert _sql(tap.admin_dsn, "SELECT has_table_privilege('analyst', 'desi_dr1.fastspecfit_specphot', 'SELECT')")[0][0]
    assert not _sql(tap.admin_dsn, "SELECT has_table_privilege('analyst', 'desi_dr1.fastspecfit_metadata', "
                                   "'SELECT')")[0][0]


def _declared_cells(tap) -> set:
    from desi_loader.tap import rd
    text = tap.inst.rd_path("desi_dr1").read_text()
    return rd._cells(re.search(r"<spatial>([^<]*)</spatial>", text).group(1))


def test_incremental_load_adding_columns_is_served_at_once(tap, capsys):
    with pytest.raises(pyvo.dal.DALQueryError):
        tap.service.run_sync("SELECT TOP 1 sv3_desi_target FROM desi_dr1.fastspecfit_metadata")
    declared = _declared_cells(tap)
    assert cli.main(["load", *tap.sv3, "--dsn", tap.dsn, "-q"]) == 0       # sv3: 13 more METADATA columns
    assert _declared_cells(tap) > declared          # more sky, declared in the RD with no further command
    t = tap.service.run_sync("SELECT sv3_desi_target FROM desi_dr1.fastspecfit_metadata WHERE survey = 'sv3'",
                             maxrec=100000).to_table()
    assert len(t) == 2000 and not np.ma.count_masked(t["sv3_desi_target"])
    capsys.readouterr()
    assert cli.main(["tap", "status"]) == 0
    assert re.search(r"desi_dr1: \d+ tables, in sync with the published tables", capsys.readouterr().out)


def test_queries_during_replace_all_swap_see_old_or_new(tap):
    # the columns the swap below publishes (sv3's too), so that the swap changes rows only: the
    # sync after it leaves DaCHS's RD in place (DaCHS 2.7 cannot reload an RD under queries)
    assert cli.main(["load", *tap.main, *tap.sv3, "--replace-all", "--dsn", tap.dsn, "-q"]) == 0
    counts, errors, stop = [], [], threading.Event()
    old = _sql(tap.dsn, "SELECT count(*) FROM desi_dr1.fastspecfit_metadata")[0][0]
    rd_written = tap.inst.rd_path("desi_dr1").stat().st_mtime_ns

    def ask():
        service = pyvo.dal.TAPService(tap.url)
        while not stop.is_set():
            try:
                t = service.run_sync("SELECT COUNT(*) AS n FROM desi_dr1.fastspecfit_metadata AS m "
                                     "JOIN desi_dr1.fastspecfit_specphot AS s ON s.targetid = m.targetid "
                                     "AND s.survey = m.survey AND s.program = m.program").to_table()
                counts.append(int(t["n"][0]))
            except Exception as exc:            # any error a client sees is a failure
                errors.append(repr(exc))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        assert cli.main(["load", tap.main[0], *tap.sv3, "--replace-all", "--dsn", tap.dsn, "-q"]) == 0
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=120)
    new = _sql(tap.dsn, "SELECT count(*) FROM desi_dr1.fastspecfit_metadata")[0][0]
    assert new != old and counts
    assert tap.inst.rd_path("desi_dr1").stat().st_mtime_ns == rd_written     # synced, nothing to reload
    assert errors == []
    assert set(counts) <= {old, new}
    final = tap.service.run_sync("SELECT COUNT(*) AS n FROM desi_dr1.fastspecfit_metadata").to_table()
    assert int(final["n"][0]) == new


def test_clear_messages_without_dachs_pgsphere_or_the_served_database(tap, pg_uri, capsys, monkeypatch):
    _sql(tap.superuser, "CREATE DATABASE other OWNER loader")
    other = tap.dsn.rsplit("/", 1)[0] + "/other"
    assert cli.main(["tap", "publish", "--dsn", other]) == 2
    err = capsys.readouterr().err
    assert "serves 127.0.0.1:" in err and "/desi, not 127.0.0.1:" in err and "Traceback" not in err
    assert cli.main(["tap", "publish", "--dsn", pg_uri]) == 3            # the embedded server: no pgsphere
    err = capsys.readouterr().err
    assert "has no pgsphere" in err and "postgresql-15-pgsphere" in err and "Traceback" not in err
    monkeypatch.setenv("PATH", str(tap.tmp))
    assert cli.main(["tap", "publish", "--dsn", tap.dsn]) == 2
    err = capsys.readouterr().err
    assert "GAVO DaCHS is not installed" in err and "gavodachs2-server" in err
    monkeypatch.setenv("XDG_DATA_HOME", str(tap.tmp / "nowhere"))
    assert cli.main(["tap", "url"]) == 2
    assert "no TAP service" in capsys.readouterr().err


def test_guide_pyvo_session_runs_as_written(tap):
    from docs_examples import example
    block = example("pyvo")
    namespace = {"__name__": "__main__"}
    exec(compile(block.code, block.page, "exec"), namespace)
    assert len(namespace["cone"]) > 0 and len(namespace["galaxies"]) > 0
    assert list(namespace["matches"]["name"]) == ["first"]
    assert list(namespace["cone"]["dist"]) == sorted(namespace["cone"]["dist"])


def test_non_superuser_load_then_admin_publish_serves_cone_search(tap, capsys, monkeypatch, tmp_path):
    """#36: an ordinary role loads into a database without q3c (it cannot create it, and the
    load says who can); tap publish --admin-dsn creates q3c and builds the q3c index without a
    reload; stilts cone then returns the rows desi-loader cone returns; tap url finds the
    instance published with --tap-dir without being told."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))       # this user's own registry of instances
    _sql(tap.superuser, "CREATE DATABASE vo2 OWNER loader")
    port = re.search(r":(\d+)/", tap.admin_dsn).group(1)
    dsn, admin = f"postgresql://loader@127.0.0.1:{port}/vo2", f"postgresql://postgres@127.0.0.1:{port}/vo2"
    capsys.readouterr()
    assert cli.main(["load", tap.main[0], "--dsn", dsn, "-q", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "only a superuser can create it" in err and "CREATE EXTENSION q3c;" in err and "--admin-dsn" in err
    assert _sql(admin, "SELECT count(*) FROM pg_extension WHERE extname = 'q3c'")[0][0] == 0
    tap_dir, tap_port = tmp_path / "vo2-tap", localpg.free_port()
    try:
        assert cli.main(["tap", "publish", "--dsn", dsn, "--admin-dsn", admin, "--tap-dir", str(tap_dir),
                         "--port", str(tap_port)]) == 0
        out = capsys.readouterr().out
        assert "q3c index" in out and "built" in out
        scs = re.search(r"cone search on fastspecfit_metadata: (\S+)", out).group(1)
        assert cli.main(["tap", "url"]) == 0                           # no --tap-dir: the one just published
        assert capsys.readouterr().out.strip() == f"http://127.0.0.1:{tap_port}/tap"
        want = sorted(w[0] for w in _cli_rows(capsys, ["cone", "150", "30", "5", "--dsn", dsn,
                                                        "--columns", "targetid"]))
        assert want
        out_file = tmp_path / "cone.csv"
        proc = subprocess.run(["stilts", "cone", f"serviceurl={scs}", "lon=150", "lat=30", "radius=5",
                               "ofmt=csv", f"out={out_file}"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        got = Table.read(out_file, format="ascii.csv")
        assert sorted(str(x) for x in got["targetid"]) == want
    finally:
        cli.main(["tap", "stop", "--tap-dir", str(tap_dir)])


def _get(url: str) -> bytes:
    import urllib.request
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def test_landing_page_lists_every_served_table_with_its_coverage(tap, capsys):
    """#38: tap url --web prints the schema's landing page; it lists each served table with its
    row count, covered area and coverage picture, and links its search form."""
    capsys.readouterr()
    assert cli.main(["tap", "url", "--web"]) == 0
    page_url = capsys.readouterr().out.strip()
    assert page_url == tap.url.replace("/tap", "/desi_dr1/q/web/static/")
    page = _get(page_url).decode()
    served = [t for (t,) in _sql(tap.admin_dsn, "SELECT table_name FROM tap_schema.tables "
                                                "WHERE schema_name = 'desi_dr1'")]
    assert served and all(f'id="{t.split(".")[1]}"' in page for t in served)
    assert 'src="fastspecfit_metadata.png"' in page and "% of the sky" in page
    assert _get(page_url + "fastspecfit_metadata.png")[:8] == b"\x89PNG\r\n\x1a\n"
    assert "/desi_dr1/q/cone_fastspecfit_metadata/form" in page


def test_search_form_returns_the_rows_of_desi_loader_cone(tap, capsys):
    """The cone form (DaCHS's hscs_pos, hscs_sr in arcminutes) at (150, 30), 300 arcmin: the
    rows desi-loader cone 150 30 5 returns; its VOTable reads back with units; a column
    constraint narrows it."""
    import urllib.parse
    want = {w[0] for w in _cli_rows(capsys, ["cone", "150", "30", "5", "--dsn", tap.dsn, "--columns", "targetid"])}
    assert want
    form = tap.url.replace("/tap", "/desi_dr1/q/cone_fastspecfit_metadata/form")
    query = {"__nevow_form__": "genForm", "hscs_pos": "150, 30", "hscs_sr": "300", "_FORMAT": "VOTable",
             "_VERB": "3", "MAXREC": "100000"}
    out = tap.tmp / "form.vot"
    out.write_bytes(_get(form + "?" + urllib.parse.urlencode(query)))
    got = Table.read(out)
    assert {str(t) for t in got["targetid"]} == want
    assert str(got["ra"].unit) == "deg"
    query["z"] = "0.5 .. 10"
    narrowed = Table.read(io.BytesIO(_get(form + "?" + urllib.parse.urlencode(query))), format="votable")
    assert len(narrowed) < len(got) and all(z >= 0.5 for z in narrowed["z"])


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium (Debian's chromium and chromium-driver) driven by selenium."""
    if shutil.which("chromedriver") is None or shutil.which("chromium") is None:
        pytest.fail("chromium and chromium-driver are not installed: run scripts/provision.sh as root")
    os.environ.setdefault("SE_OFFLINE", "true")           # selenium: never fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


def test_in_a_browser_landing_page_and_cone_form(tap, capsys, browser):
    """#38 in headless Chromium: the landing page shows every served table with its coverage
    picture loaded; the form of fastspecfit_metadata at (150, 30) with 300 arcmin shows the
    rows desi-loader cone 150 30 5 gives; the same search as a VOTable reads back with units."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    capsys.readouterr()
    assert cli.main(["tap", "url", "--web"]) == 0
    browser.get(capsys.readouterr().out.strip())
    rows = browser.find_elements(By.CSS_SELECTOR, "#tables tr.table")
    served = _sql(tap.admin_dsn, "SELECT count(*) FROM tap_schema.tables WHERE schema_name = 'desi_dr1'")[0][0]
    assert len(rows) == served
    images = browser.find_elements(By.CSS_SELECTOR, "img.coverage")
    assert images and all(browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)
                          for i in images)
    browser.save_screenshot(str(tap.tmp / "landing.png"))
    browser.find_element(By.CSS_SELECTOR, "#fastspecfit_metadata a[href$='/form']").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.NAME, "hscs_pos"))
    browser.find_element(By.NAME, "hscs_pos").send_keys("150, 30")
    browser.find_element(By.NAME, "hscs_sr").send_keys("300")
    browser.find_element(By.CSS_SELECTOR, "form input[type=submit]").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.results"))
    want = _cli_rows(capsys, ["cone", "150", "30", "5", "--dsn", tap.dsn, "--columns", "targetid"])
    shown = browser.find_elements(By.CSS_SELECTOR, "table.results tbody tr")
    assert want and len(shown) == len(want)
    browser.save_screenshot(str(tap.tmp / "results.png"))
    # the same search as a VOTable, downloaded as a user does: the output format, then Go
    downloads = tap.tmp / "downloads"
    downloads.mkdir(exist_ok=True)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    Select(browser.find_element(By.NAME, "_FORMAT")).select_by_value("VOTable")
    browser.find_element(By.CSS_SELECTOR, "form input[type=submit]").click()
    WebDriverWait(browser, 120).until(lambda d: [f for f in downloads.iterdir() if not f.name.endswith(".crdownload")])
    got = Table.read(next(downloads.iterdir()), format="votable")
    assert {str(t) for t in got["targetid"]} == {w[0] for w in want} and str(got["ra"].unit) == "deg"
