"""Opening the catalog database: engine, sessions, schema migrations.

``open_database(url)`` accepts ``sqlite:///path/to/catalog.db`` (``sqlite://`` for an
in-memory database, tests only) and ``postgresql://user@host/dbname`` (rewritten to the
psycopg 3 driver, ``postgresql+psycopg://``). It connects, upgrades the schema to the
newest Alembic revision shipped in ``retrieval/store/migrations`` and returns a
:class:`Database`, the owner of the engine::

    db = open_database("sqlite:///catalog.db")
    with db.session() as session:          # commits on success, rolls back on error
        catalog.upsert_image(session, image=...)
    db.dispose()

SQLite connections get ``journal_mode=WAL``, ``foreign_keys=ON``, ``synchronous=NORMAL``
and a busy timeout. Python's sqlite3 module would not wrap DDL in transactions, so the
engine emits ``BEGIN`` itself: ``BEGIN IMMEDIATE`` (take the write lock up front, waiting
up to the busy timeout) for ordinary sessions and for migrations, a deferred ``BEGIN`` for
``session(readonly=True)``. The migration therefore runs under the database write lock on
SQLite and under an advisory transaction lock on PostgreSQL: two processes opening a new
database at once apply it exactly once.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from retrieval.errors import CatalogError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_BEGIN_OPTION = "imsearch_sqlite_begin"
_PG_LOCK_KEY = 0x696D736561726368 & 0x7FFFFFFFFFFFFFFF  # "imsearch"
_SUPPORTED = "sqlite:///path/to/catalog.db or postgresql://user@host:5432/dbname"


def normalize_url(url: str) -> URL:
    """Parse ``url`` and pin the driver: pysqlite for SQLite, psycopg 3 for PostgreSQL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogError(f"cannot parse catalog URL {url!r}: {exc}; use {_SUPPORTED}") from exc
    backend, driver = parsed.get_backend_name(), parsed.drivername
    if backend == "sqlite":
        if driver not in ("sqlite", "sqlite+pysqlite"):
            raise CatalogError(f"unsupported SQLite driver {driver!r} in catalog URL; use sqlite:///path")
        return parsed.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres"):
        if driver not in ("postgresql", "postgres", "postgresql+psycopg"):
            raise CatalogError(
                f"unsupported PostgreSQL driver {driver!r} in catalog URL; "
                "use postgresql://... (imsearch talks to PostgreSQL through psycopg 3)"
            )
        return parsed.set(drivername="postgresql+psycopg")
    raise CatalogError(f"unsupported catalog database {backend!r} in URL {url!r}; use {_SUPPORTED}")


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or "mode=memory" in str(url)


def _sqlite_engine(url: URL, busy_timeout_s: float) -> Engine:
    memory = _is_memory(url)
    if not memory and url.database and not url.query.get("uri"):
        parent = Path(url.database).expanduser().resolve().parent
        if not parent.is_dir():
            raise CatalogError(
                f"cannot create the SQLite catalog {url.database!r}: directory {str(parent)!r} does not "
                "exist; create it first or choose another path"
            )
    kwargs: dict[str, Any] = {"connect_args": {"timeout": busy_timeout_s, "check_same_thread": False}}
    if memory:
        kwargs["poolclass"] = StaticPool
    engine = create_engine(url, **kwargs)
    busy_ms = max(int(busy_timeout_s * 1000), 0)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # autocommit at driver level; BEGIN is ours
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                mode = _set_wal(cursor, busy_timeout_s)
                if str(mode).lower() != "wal":
                    logger.warning("SQLite catalog %s refused WAL journal mode (got %s)", url.database, mode)
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _set_wal(cursor: Any, busy_timeout_s: float) -> str:
    """``PRAGMA journal_mode = WAL``, retried while another connection holds the lock.

    Switching a new database to WAL needs an exclusive lock, and SQLite may answer "database is
    locked" at once (without its busy handler) while another process does the same.
    """
    deadline = time.monotonic() + max(busy_timeout_s, 0.0)
    delay = 0.01
    while True:
        try:
            return str(cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _check_connection(engine: Engine, display: str) -> None:
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        hint = (
            "is the PostgreSQL server running, and the database created (createdb)?"
            if engine.dialect.name == "postgresql"
            else "is the file a SQLite database, and writable?"
        )
        raise CatalogError(f"cannot open the catalog database {display}: {exc.orig}; {hint}") from exc


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    return config


def head_revision() -> str:
    """The newest schema revision this version of imsearch knows."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships revisions
        raise CatalogError(f"no Alembic revisions found in {MIGRATIONS_DIR}; the installation is broken")
    return head


def _upgrade(engine: Engine, display: str) -> None:
    config = _alembic_config()
    with engine.connect() as conn:
        conn.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            config.attributes["connection"] = conn
            try:
                command.upgrade(config, "head")
            except CommandError as exc:
                raise CatalogError(
                    f"cannot upgrade the catalog schema of {display}: {exc}. If the database was written by "
                    "a newer imsearch, upgrade imsearch; otherwise point to another database"
                ) from exc
    logger.debug("catalog %s at schema revision %s", display, head_revision())


class Database:
    """The catalog database: owns the SQLAlchemy engine and hands out sessions."""

    def __init__(self, engine: Engine, *, display_url: str) -> None:
        self._engine = engine
        self.url = display_url
        write_engine = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self._write = sessionmaker(bind=write_engine, autoflush=False, expire_on_commit=False)
        self._read = sessionmaker(bind=engine, autoflush=False, expire_on_commit=False)

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed when the block ends, rolled back on error.

        On SQLite a write session takes the database write lock when it begins (waiting
        up to the busy timeout), so concurrent writers queue instead of failing; use
        ``readonly=True`` for sessions that only read, which never wait on writers.
        Database errors raised inside the block surface as :class:`CatalogError`.
        """
        maker = self._read if readonly else self._write
        with maker() as session:
            try:
                yield session
                session.commit()
            except DBAPIError as exc:
                session.rollback()
                raise CatalogError(f"catalog operation on {self.url} failed: {exc.orig}") from exc
            except BaseException:
                session.rollback()
                raise

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (``None`` for an empty database)."""
        with self._engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def optimize(self) -> None:
        """Refresh the planner statistics (and PostgreSQL's visibility map); call after bulk writes.

        Without fresh statistics PostgreSQL plans ``resolve_filter`` as nested loops
        (several times slower at 100k images) until autovacuum catches up.
        """
        try:
            if self.dialect == "postgresql":
                with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM (ANALYZE)")
            else:
                with self.session() as session:
                    session.execute(text("ANALYZE"))
                    session.execute(text("PRAGMA optimize"))
        except DBAPIError as exc:
            raise CatalogError(f"cannot optimize the catalog {self.url}: {exc.orig}") from exc

    def dispose(self) -> None:
        """Close every pooled connection; the object must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.dispose()

    def __repr__(self) -> str:
        return f"Database({self.url!r})"


def open_database(url: str, *, busy_timeout_s: float = 30.0) -> Database:
    """Connect to the catalog at ``url``, create or upgrade its schema, return the :class:`Database`.

    Raises :class:`CatalogError` for an unsupported or malformed URL, an unreachable
    server, a missing directory, or a schema newer than this imsearch.
    """
    parsed = normalize_url(url)
    display = parsed.render_as_string(hide_password=True)
    if parsed.get_backend_name() == "sqlite":
        engine = _sqlite_engine(parsed, busy_timeout_s)
    else:
        engine = create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    try:
        _check_connection(engine, display)
        _upgrade(engine, display)
    except DBAPIError as exc:
        engine.dispose()
        raise CatalogError(f"cannot create or upgrade the catalog schema of {display}: {exc.orig}") from exc
    except BaseException:
        engine.dispose()
        raise
    return Database(engine, display_url=display)
