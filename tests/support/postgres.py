"""Pytest plugin: the state database on both backends.

``postgres_server`` (session) starts one throwaway PostgreSQL (:class:`sandbox.postgres.PostgresServer`)
and removes it at the end. When PostgreSQL is not installed the tests that need it fail with a clear
message, or are skipped when ``VHD_GC_SKIP_POSTGRES=1``.

``db_url`` is parametrized ``sqlite`` / ``postgres`` and gives a fresh, empty database per test;
``store`` migrates that database to head (tests build the schema by migrating, never
``create_all``) and yields a :class:`gc_daemon.state.store.Store` on it.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gc_daemon.state.db import make_engine, upgrade
from gc_daemon.state.store import Store
from sandbox.postgres import PostgresServer, find_bindir

SKIP_ENV = "VHD_GC_SKIP_POSTGRES"

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if find_bindir() is None:
        message = (
            "PostgreSQL is not installed (no pg_config, /usr/lib/postgresql/*/bin or initdb on PATH); "
            f"install it (apt-get install postgresql) or set {SKIP_ENV}=1 to skip these tests"
        )
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(message)
        pytest.fail(message, pytrace=False)
    # Under /tmp, not pytest's tmp_path: as root the server runs as the postgres user, who cannot
    # enter root's private pytest directory; and a Unix socket path must stay short.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="vhdgc-pg-")))
    with server:
        yield server


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        yield Store(engine)
    finally:
        engine.dispose()
