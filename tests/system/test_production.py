"""A shared production database: what users attached to the tables survives reloads."""
import psycopg2
import pytest

from desi_loader.errors import UsageError
from desi_loader.samples.fastspecfit import write_fastspecfit_file
from helpers import load, polling
from nodes import q

pytestmark = pytest.mark.slow      # starts extra servers, clusters or many processes, or runs long

MAIN = "fastspec-iron-main-bright-nside1-hp04.fits"
SV3 = "fastspec-iron-sv3-dark.fits"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("prod")
    return [write_fastspecfit_file(str(d / MAIN), 150, seed=3), write_fastspecfit_file(str(d / SV3), 100, seed=4)]


def test_grants_views_comments_policies_indexes_survive_two_reloads(files, pg_uri, schema):
    load(pg_uri, schema, files)
    s = f'"{schema}"'
    q(pg_uri, f"""
        DROP ROLE IF EXISTS reader_p; CREATE ROLE reader_p LOGIN;
        GRANT USAGE ON SCHEMA {s} TO reader_p;
        GRANT SELECT ON {s}.fastspecfit_metadata TO reader_p;
        GRANT SELECT ON {s}.fastspecfit_fastspec TO PUBLIC;
        GRANT SELECT (targetid, logmstar) ON {s}.fastspecfit_specphot TO reader_p;
        CREATE VIEW {s}.nearby AS SELECT targetid, z FROM {s}.fastspecfit_metadata WHERE z < 0.3;
        CREATE VIEW {s}.nearby_count AS SELECT count(*) AS n FROM {s}.nearby;
        GRANT SELECT ON {s}.nearby, {s}.nearby_count TO reader_p;
        COMMENT ON VIEW {s}.nearby IS 'galaxies below z = 0.3';
        CREATE MATERIALIZED VIEW {s}.mass AS SELECT targetid, logmstar FROM {s}.fastspecfit_specphot;
        CREATE INDEX mass_targetid ON {s}.mass (targetid);
        GRANT SELECT ON {s}.mass TO reader_p;
        COMMENT ON TABLE {s}.fastspecfit_metadata IS 'curated by the group';
        COMMENT ON COLUMN {s}.fastspecfit_metadata.z IS 'our redshift note';
        ALTER TABLE {s}.fastspecfit_fastspec ENABLE ROW LEVEL SECURITY;
        CREATE POLICY only_galaxies ON {s}.fastspecfit_fastspec FOR SELECT TO reader_p USING (true);
        CREATE INDEX users_z_idx ON {s}.fastspecfit_metadata (z);
    """)
    want_rows = q(pg_uri, f"SELECT count(*) FROM {s}.nearby")[0][0]
    for _ in range(2):
        summary = load(pg_uri, schema, files, replace_all=True)     # a full reload: the swap
        assert summary.rows["fastspecfit_metadata"] == 250
        # the reader keeps its table and column privileges and its views
        assert q(pg_uri, f"SELECT count(*) FROM {s}.fastspecfit_metadata", user="reader_p") == [(250,)]
        assert q(pg_uri, f"SELECT count(*) FROM {s}.nearby", user="reader_p") == [(want_rows,)]
        assert q(pg_uri, f"SELECT n FROM {s}.nearby_count", user="reader_p") == [(want_rows,)]
        assert q(pg_uri, f"SELECT count(logmstar) FROM {s}.fastspecfit_specphot", user="reader_p") == [(250,)]
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            q(pg_uri, f"SELECT sfr FROM {s}.fastspecfit_specphot", user="reader_p")
        assert q(pg_uri, f"SELECT count(*) FROM {s}.fastspecfit_fastspec", user="reader_p") == [(250,)]
        assert q(pg_uri, f"SELECT count(*) FROM {s}.mass", user="reader_p") == [(250,)]
        assert q(pg_uri, "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND tablename = 'mass'",
                   (schema,)) == [("mass_targetid",)]
        assert q(pg_uri, f"SELECT obj_description('{s}.nearby'::regclass, 'pg_class'), "
                           f"obj_description('{s}.fastspecfit_metadata'::regclass, 'pg_class'), "
                           f"col_description('{s}.fastspecfit_metadata'::regclass, "
                           f"(SELECT attnum FROM pg_attribute WHERE attrelid = '{s}.fastspecfit_metadata'::regclass "
                           "AND attname = 'z'))") == [("galaxies below z = 0.3", "curated by the group",
                                                       "our redshift note")]
        assert q(pg_uri, f"SELECT relrowsecurity FROM pg_class WHERE oid = '{s}.fastspecfit_fastspec'::regclass") \
            == [(True,)]
        assert q(pg_uri, "SELECT policyname FROM pg_policies WHERE schemaname = %s", (schema,)) == [("only_galaxies",)]
        assert q(pg_uri, "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = 'users_z_idx' "
                           "AND tablename = 'fastspecfit_metadata'", (schema,)) == [(1,)]
        assert q(pg_uri, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                           "WHERE n.nspname = %s AND c.relname ~ '__(load|old|ul)[0-9]+'", (schema,)) == [(0,)]


def test_foreign_key_from_another_table_is_reported_before_loading(files, pg_uri, schema):
    load(pg_uri, schema, files)
    s = f'"{schema}"'
    q(pg_uri, f"""CREATE TABLE {s}.notes (targetid bigint, survey text, program text, note text,
                    FOREIGN KEY (targetid, survey, program) REFERENCES {s}.fastspecfit_metadata)""")
    (loads,), = q(pg_uri, f"SELECT count(*) FROM {s}.loader_loads")
    with pytest.raises(UsageError) as err:
        load(pg_uri, schema, files, replace_all=True)
    assert f"{schema}.notes has a foreign key" in str(err.value) and "fastspecfit_metadata" in str(err.value)
    assert "nothing was loaded" in err.value.hint
    assert q(pg_uri, f"SELECT count(*) FROM {s}.loader_loads") == [(loads,)]      # no data moved


def test_view_on_a_column_the_new_table_lacks_is_reported(files, pg_uri, schema):
    load(pg_uri, schema, files)                       # main + sv3: the 67-column METADATA union
    s = f'"{schema}"'
    q(pg_uri, f"CREATE VIEW {s}.sv3_targets AS SELECT targetid FROM {s}.fastspecfit_metadata "
                "WHERE sv3_desi_target <> 0")
    with pytest.raises(UsageError, match="sv3_targets uses .*sv3_desi_target"):
        load(pg_uri, schema, files[:1], replace_all=True)  # main only: no sv3 columns


def _digest(dsn, schema, filename):
    """A digest of every value of a file's rows in the three tables (file_id and row_num included)."""
    out = []
    for t in ("fastspecfit_metadata", "fastspecfit_specphot", "fastspecfit_fastspec"):
        out += q(dsn, f'SELECT count(*), md5(string_agg(x::text, \'|\' ORDER BY x.row_num)) FROM "{schema}".{t} x '
                        f'JOIN "{schema}".load_files f USING (file_id) WHERE f.filename = %s AND f.published',
                   (filename,))
    return out


def test_incremental_new_and_changed_files_leave_every_other_row_untouched(files, tmp_path, pg_uri, schema):
    import shutil
    d = tmp_path / "inc"
    d.mkdir()
    a, b = (shutil.copy(f, d) for f in files)
    load(pg_uri, schema, [a, b])
    before = {n: _digest(pg_uri, schema, n) for n in (MAIN, SV3)}
    specphot = f'SELECT count(*), count(DISTINCT file_id) FROM "{schema}".fastspecfit_specphot'
    with polling(pg_uri, specphot) as (seen, errors):
        # a new file: added; the published ones stay as they are
        c = write_fastspecfit_file(str(d / "fastspec-iron-main-bright-nside1-hp05.fits"), 120, seed=5)
        summary = load(pg_uri, schema, [a, b, c])
        assert summary.incremental and summary.unchanged_files == 2 and summary.files == 1
        assert summary.rows == {"fastspecfit_fastspec": 120, "fastspecfit_metadata": 120, "fastspecfit_specphot": 120}
        assert {n: _digest(pg_uri, schema, n) for n in (MAIN, SV3)} == before
        c_digest = _digest(pg_uri, schema, "fastspec-iron-main-bright-nside1-hp05.fits")
        # a changed file (re-processed: same name, other content): its rows replaced, nothing else
        write_fastspecfit_file(str(d / SV3), 100, seed=44)
        summary = load(pg_uri, schema, [a, b, c])
        assert summary.files == 1 and summary.unchanged_files == 2
        assert summary.replaced_rows == {t: 100 for t in ("fastspecfit_metadata", "fastspecfit_specphot",
                                                            "fastspecfit_fastspec")}
        assert _digest(pg_uri, schema, MAIN) == before[MAIN]
        assert _digest(pg_uri, schema, "fastspec-iron-main-bright-nside1-hp05.fits") == c_digest
        assert _digest(pg_uri, schema, SV3) != before[SV3] and _digest(pg_uri, schema, SV3)[0][0] == 100
        # loading a subset changes nothing; loading everything unchanged loads nothing
        summary = load(pg_uri, schema, [c])
        assert summary.role == "nothing" and summary.unchanged_files == 1
        assert q(pg_uri, f'SELECT count(*) FROM "{schema}".fastspecfit_metadata') == [(370,)]
    assert not errors
    assert seen <= {(250, 2), (370, 3)}, seen              # before or after, never in between
    assert q(pg_uri, f'SELECT count(*), count(DISTINCT filename) FROM "{schema}".load_files WHERE published') \
        == [(3, 3)]
    assert q(pg_uri, f"""SELECT count(*) FROM "{schema}".fastspecfit_metadata m
                           JOIN "{schema}".fastspecfit_fastspec f USING (file_id, row_num)
                           WHERE m.targetid = f.targetid""") == [(370,)]


def test_a_published_table_dropped_by_hand_is_named_and_replace_all_rebuilds_it(files, pg_uri, schema):
    load(pg_uri, schema, files)
    s = f'"{schema}"'
    q(pg_uri, f"DROP TABLE {s}.fastspecfit_specphot")
    (loads,), = q(pg_uri, f"SELECT count(*) FROM {s}.loader_loads")
    for again in (files, files[:1]):            # every file unchanged (a no-op before), or a subset
        with pytest.raises(UsageError) as err:
            load(pg_uri, schema, again)
        assert f"{schema}.fastspecfit_specphot" in str(err.value) and "gone" in str(err.value)
        assert "--replace-all" in err.value.hint
    assert q(pg_uri, f"SELECT count(*) FROM {s}.loader_loads") == [(loads,)]      # nothing started
    summary = load(pg_uri, schema, files, replace_all=True)
    assert summary.rows["fastspecfit_specphot"] == 250
    assert q(pg_uri, f"SELECT count(*) FROM {s}.fastspecfit_specphot") == [(250,)]
    assert q(pg_uri, f"SELECT count(*) FROM {s}.fastspecfit_metadata") == [(250,)]
    assert load(pg_uri, schema, files).role == "nothing"          # and incremental loads work again
