"""FastSpecFit samples end to end: schema union, task splitting, swap, manifest."""
import os
import subprocess
import sys

import psycopg2
import pytest

from desi_loader.samples.fastspecfit import write_fastspecfit_file
from helpers import load, polling
from nodes import ROOT

MAIN = "fastspec-iron-main-bright-nside1-hp02.fits"
SV3 = "fastspec-iron-sv3-bright.fits"


@pytest.fixture(scope="module")
def fsf_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fsf")
    return [write_fastspecfit_file(str(d / MAIN), 300, seed=1), write_fastspecfit_file(str(d / SV3), 200, seed=2)]


def scalar(db, sql, args=()):
    with db.cursor() as cur:
        cur.execute(sql, args)
        v = cur.fetchone()[0]
    db.commit()
    return v


def test_union_of_54_and_67_metadata_columns(fsf_files, pg_uri, schema, db):
    summary = load(pg_uri, schema, fsf_files)
    assert summary.catalog == "fastspecfit"
    assert summary.rows == {"fastspecfit_metadata": 500, "fastspecfit_specphot": 500, "fastspecfit_fastspec": 500}
    ncols = scalar(db, "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                       "AND table_name = 'fastspecfit_metadata'", (schema,))
    assert ncols == 67 + 3                      # union of 54 and 67, plus file_id, row_num, hpx29
    # sv-only columns are NULL for main rows, set for sv3 rows
    nulls = scalar(db, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata m JOIN "{schema}".load_files f '
                       "USING (file_id) WHERE f.filename = %s AND m.sv3_desi_target IS NULL", (MAIN,))
    assert nulls == 300
    assert scalar(db, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata WHERE survey = %s '
                      "AND sv3_desi_target IS NOT NULL", ("sv3",)) == 200
    # keys, durability, comments, manifest
    assert scalar(db, "SELECT relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE nspname = %s AND relname = 'fastspecfit_fastspec'", (schema,)) == "p"
    pk = scalar(db, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = "
                    f"'\"{schema}\".fastspecfit_metadata'::regclass AND contype = 'p'")
    assert pk == "PRIMARY KEY (targetid, survey, program)"
    assert scalar(db, f'SELECT count(*) FROM "{schema}".load_files WHERE published') == 2
    assert scalar(db, f"""SELECT header->>'SPECPROD' FROM "{schema}".load_files WHERE filename = %s""", (MAIN,)) == "iron"
    # rows of the three HDUs are aligned: same targetid at the same (file_id, row_num)
    assert scalar(db, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata m JOIN "{schema}".fastspecfit_fastspec f '
                      "USING (file_id, row_num) WHERE m.targetid = f.targetid") == 500


def test_file_split_into_many_tasks_loads_every_row_once(fsf_files, pg_uri, schema, db):
    summary = load(pg_uri, schema, fsf_files, task_rows=37, fmt="text")
    assert summary.tasks == 9 + 6                  # ceil(300/37) + ceil(200/37)
    for t in ("fastspecfit_metadata", "fastspecfit_specphot", "fastspecfit_fastspec"):
        assert scalar(db, f'SELECT count(*) FROM "{schema}".{t}') == 500
        assert scalar(db, f'SELECT count(DISTINCT (file_id, row_num)) FROM "{schema}".{t}') == 500
    assert scalar(db, f"SELECT count(*) FROM \"{schema}\".loader_tasks WHERE status = 'done'") == 15


@pytest.mark.slow
def test_previous_table_readable_until_swap_commits(fsf_files, pg_uri, schema, db):
    load(pg_uri, schema, fsf_files[:1])
    first_ids = scalar(db, f'SELECT array_agg(DISTINCT file_id) FROM "{schema}".fastspecfit_metadata')
    # a long-running reader holds the published table; the second load must queue behind it at
    # the swap (seen in pg_locks: its lock request on the table is not granted) and finish only
    # after the reader commits -- no sleeps: every step waits for an observed state
    holder = psycopg2.connect(pg_uri)
    hc = holder.cursor()
    hc.execute(f'SELECT count(*) FROM "{schema}".fastspecfit_metadata')
    assert hc.fetchone()[0] == 300
    with polling(pg_uri, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata') as (seen, errors):
        proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "load.py"), *fsf_files, "--dsn", pg_uri,
                                 "--schema", schema, "--workers", "2", "-q", "--replace-all"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        waiting = f"""SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                      WHERE NOT l.granted AND l.relation = '"{schema}".fastspecfit_metadata'::regclass
                      AND a.application_name LIKE 'desi-loader %% coordinator %%'"""
        while not scalar(db, waiting):
            assert proc.poll() is None, proc.communicate()
        assert proc.poll() is None                        # the swap waits for the reader ...
        assert scalar(db, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata WHERE file_id = ANY(%s)',
                      (first_ids,)) == 300               # ... which still has the old table
        holder.commit()                                   # the reader ends: the swap goes through
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    holder.close()
    assert not errors
    assert seen <= {300, 500} and 500 in seen       # old table or new one, never partial
    assert scalar(db, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata') == 500
    assert scalar(db, f'SELECT count(*) FROM "{schema}".load_files') == 2     # old load's rows replaced
    new_ids = scalar(db, f'SELECT array_agg(DISTINCT file_id) FROM "{schema}".fastspecfit_metadata')
    assert not set(first_ids) & set(new_ids)
    assert scalar(db, "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename ~ '__(load|old)[0-9]+$'",
                  (schema,)) == 0


def test_original_script_preset_selects_joins_and_derives(fsf_files, pg_uri, schema, db):
    import numpy as np
    from astropy.io import fits
    summary = load(pg_uri, schema, fsf_files, catalog="fastspecfit-original", fmt="text")
    assert summary.rows == {"fastspecfit_original": 500}
    with db.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND "
                    "table_name = 'fastspecfit_original' ORDER BY ordinal_position", (schema,))
        cols = [r[0] for r in cur.fetchall()]
    db.commit()
    assert cols == ["file_id", "row_num", "healpix", "targetid", "ra", "dec", "z", "logmstar", "sfr", "age",
                    "zzsun", "dn4000", "logmstar_err", "sfr_err"]
    for path in fsf_files:
        name = path.rsplit("/", 1)[1]
        with fits.open(path) as h:
            meta, sp = h["METADATA"].data, h["SPECPHOT"].data
        with db.cursor() as cur:
            cur.execute(f'SELECT o.healpix, o.targetid, float8send(o.ra), float4send(o.logmstar), '
                        f'float4send(o.logmstar_err), float4send(o.sfr_err) FROM "{schema}".fastspecfit_original o '
                        f'JOIN "{schema}".load_files f USING (file_id) WHERE f.filename = %s ORDER BY row_num', (name,))
            rows = cur.fetchall()
        db.commit()
        assert len(rows) == len(meta)
        for r, (hp, tid, ra, lm, lm_err, sfr_err) in enumerate(rows):
            assert hp == (2 if "hp02" in name else None)
            assert tid == meta["TARGETID"][r] and bytes(ra) == meta["RA"][r:r + 1].astype(">f8").tobytes()
            assert bytes(lm) == sp["LOGMSTAR"][r:r + 1].astype(">f4").tobytes()
            for got, ivar in ((lm_err, sp["LOGMSTAR_IVAR"][r]), (sfr_err, sp["SFR_IVAR"][r])):
                if ivar <= 0:
                    assert got is None
                else:
                    want = np.array([np.float32(1) / np.sqrt(np.float32(ivar))], ">f4")
                    assert bytes(got) == want.tobytes()


@pytest.mark.slow
def test_copy_out_files_replay_to_the_same_rows(fsf_files, pg_uri, schema, db, tmp_path):
    # --copy-out writes every task's exact COPY bytes and, next to each, the statement that
    # sent them (columns in copy order); replaying them into empty copies of the tables gives
    # back the loaded rows
    out = tmp_path / "copy-out"
    summary = load(pg_uri, schema, fsf_files, fmt="text", copy_out=str(out))
    data = sorted(p for p in out.iterdir() if p.name.endswith(".copy-text"))
    assert len(data) == len(list(out.glob("*.sql"))) >= 3
    replay, copies = schema + "_replay", {}          # published table -> its replayed copy
    with db.cursor() as cur:
        cur.execute(f'CREATE SCHEMA "{replay}"')
        for p in data:
            stmt = (p.parent / (p.name + ".sql")).read_text()
            staging = stmt.split(".", 1)[1].split(" ", 1)[0].strip('"')
            table = next(t for t in summary.rows if t in staging)
            columns = stmt.split("(", 1)[1].split(")", 1)[0].count(",") + 1
            assert p.read_bytes().split(b"\n", 1)[0].count(b"\t") + 1 == columns
            if table not in copies:
                copies[table] = f'"{replay}"."{table}"'
                cur.execute(f'CREATE TABLE {copies[table]} (LIKE "{schema}"."{table}")')
            with open(p, "rb") as f:
                cur.copy_expert(stmt.replace(f'"{schema}"."{staging}"', copies[table], 1), f)
        assert set(copies) == set(summary.rows)
        for table, copy in copies.items():
            cur.execute(f'SELECT (SELECT count(*) FROM {copy}), (SELECT count(*) FROM (SELECT * FROM '
                        f'"{schema}"."{table}" EXCEPT ALL SELECT * FROM {copy}) d)')
            assert cur.fetchone() == (summary.rows[table], 0), table
        cur.execute(f'DROP SCHEMA "{replay}" CASCADE')
    db.commit()
