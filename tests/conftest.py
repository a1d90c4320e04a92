"""Shared pytest fixtures: catalog databases on SQLite and on the real PostgreSQL server.

Fixtures
--------
``sqlite_url``
    ``sqlite:///<tmp_path>/catalog.db``: a fresh file per test (not created yet).
``pg_url``
    ``postgresql://<user>@127.0.0.1:5432/<db>`` of an *empty* database: one database is
    created per test session (``imsearch_test_<pid>_<random>``, dropped at the end) and its
    ``public`` schema is dropped and recreated before each test, closing whatever
    connections an earlier test left open. Tests using it are marked ``postgres``
    automatically.
``catalog_url``
    Parametrized over both: ``[sqlite]`` gives ``sqlite_url``, ``[postgresql]`` gives
    ``pg_url`` (marked ``postgres``). Use it for anything that must behave identically on
    the two back ends.
``catalog_db``
    ``open_database(catalog_url)``, schema at head, disposed after the test.

The server is 127.0.0.1:5432 with trust authentication, user ``postgres`` or ``root``;
set ``IMSEARCH_TEST_PG_URL`` (an admin URL such as ``postgresql://me@dbhost:5432/postgres``)
to use another one. When no server answers, the PostgreSQL tests FAIL (never skip) with
the command that starts the local cluster; deselect them with ``-m "not postgres"``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from retrieval.store.db import Database, open_database

PG_START_HINT = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
_DEFAULT_ADMIN_URLS = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/postgres",
)


@dataclass(frozen=True)
class _PgServer:
    admin_url: str  # a libpq URL to a maintenance database
    database: str  # the session's test database

    @property
    def url(self) -> str:
        """The test database's URL (same server and user as the admin URL)."""
        info = psycopg.conninfo.conninfo_to_dict(self.admin_url)
        user = info.get("user", "postgres")
        host = info.get("host", "127.0.0.1")
        port = info.get("port", 5432)
        return f"postgresql://{user}@{host}:{port}/{self.database}"


def _connect_admin() -> tuple[str, psycopg.Connection]:
    override = os.environ.get("IMSEARCH_TEST_PG_URL")
    candidates = [override] if override else list(_DEFAULT_ADMIN_URLS)
    errors = []
    for url in candidates:
        try:
            return url, psycopg.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            errors.append(f"{url}: {str(exc).strip()}")
    pytest.fail(
        "PostgreSQL is not reachable, tried:\n  "
        + "\n  ".join(errors)
        + f"\nStart the local server with:\n  {PG_START_HINT}\n"
        "or set IMSEARCH_TEST_PG_URL to an admin URL of another server "
        '(deselect these tests with -m "not postgres").',
        pytrace=False,
    )


def _terminate_others(conn: psycopg.Connection, database: str) -> None:
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (database,),
    )


@pytest.fixture(scope="session")
def _pg_server() -> Iterator[_PgServer]:
    admin_url, conn = _connect_admin()
    database = f"imsearch_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield _PgServer(admin_url=admin_url, database=database)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


@pytest.fixture
def pg_url(_pg_server: _PgServer) -> str:
    """URL of the session's PostgreSQL test database, emptied (fresh ``public`` schema) for this test."""
    url = _pg_server.url
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        _terminate_others(conn, _pg_server.database)
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """URL of a fresh SQLite catalog file in the test's temporary directory."""
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest) -> str:
    """An empty catalog database URL, once on SQLite and once on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def catalog_db(catalog_url: str) -> Iterator[Database]:
    """The catalog of ``catalog_url``, opened (schema at head) and disposed after the test."""
    db = open_database(catalog_url)
    try:
        yield db
    finally:
        db.dispose()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the PostgreSQL server (directly through ``pg_url``) as ``postgres``."""
    for item in items:
        if "pg_url" in getattr(item, "fixturenames", ()) and item.get_closest_marker("postgres") is None:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def ray_local() -> Iterator[Any]:
    """One local Ray instance for the session's Ray tests (2 CPUs, no dashboard, no network)."""
    import ray  # the [ray] extra: make setup installs it

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield ray
    finally:
        ray.shutdown()
