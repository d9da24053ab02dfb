"""Test fixtures: one real PostgreSQL server for the session, started by the suite itself.

The tests live by layer, and their markers follow the folders: tests/unit (pure: no server,
no subprocess that starts one), tests/integration (one server: the embedded PostgreSQL),
tests/system (clusters, SLURM, DaCHS, kills, the benchmark: also marked slow).  The helpers
shared by all three (helpers, nodes, localpg, pg15, copyformat, docs_examples, loader_node)
sit here, on the import path of every layer."""
import shutil
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from desi_loader.servers import embedded as server  # noqa: E402

LAYERS = ("unit", "integration", "system")


def pytest_collection_modifyitems(config, items):
    """Each test is marked with its folder's layer; the system layer is slow as well."""
    for item in items:
        layer = Path(str(item.fspath)).parent.name
        if layer in LAYERS:
            item.add_marker(getattr(pytest.mark, layer))
            if layer == "system":
                item.add_marker(pytest.mark.slow)


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


@pytest.fixture(scope="session")
def pg15_uri():
    """Debian's PostgreSQL 15 with q3c, started by the suite on a loopback port."""
    import localpg
    from pg15 import require_extension
    require_extension("q3c", "postgresql-15 postgresql-15-q3c")
    data_dir = localpg.base_dir() / f"q3c-{uuid.uuid4().hex[:8]}"
    uri = localpg.start(data_dir, localpg.free_port(), version="15")
    yield uri
    localpg.stop(data_dir, version="15")
    shutil.rmtree(data_dir, ignore_errors=True)
