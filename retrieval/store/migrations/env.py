"""Alembic environment of the catalog.

At run time :func:`retrieval.store.db.open_database` hands over an open connection that is
already inside a transaction holding the migration lock (``config.attributes["connection"]``);
every revision then runs in that one transaction and is committed (or rolled back) by the
caller. Developers writing revisions can instead pass ``-x url=...`` on the alembic command
line (see ``alembic.ini`` next to this file). Logging is left as the application set it up.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection

from retrieval.store.tables import metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transactional_ddl=True,
        transaction_per_migration=False,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the catalog database with: alembic -x url=sqlite:///path/to/catalog.db ...")
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported for the imsearch catalog")
_run()
