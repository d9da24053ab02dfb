"""Test fixtures: one real PostgreSQL server for the session, started by the suite itself."""
import uuid

import psycopg2
import pytest

from desi_loader import server


@pytest.fixture(scope="session")
def pg_uri(tmp_path_factory):
    """URI of an embedded PostgreSQL server private to this test session."""
    data_dir = tmp_path_factory.mktemp("pgdata")
    uri = server.start(data_dir)
    yield uri
    server.stop(data_dir)


@pytest.fixture
def schema(pg_uri):
    """A fresh schema name per test (dropped afterwards)."""
    name = "t_" + uuid.uuid4().hex[:10]
    yield name
    conn = psycopg2.connect(pg_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    conn.close()


@pytest.fixture
def db(pg_uri):
    conn = psycopg2.connect(pg_uri)
    yield conn
    conn.close()
