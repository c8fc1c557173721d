"""Engines and schema migrations of the state database.

The schema is created and changed only by Alembic. The migrations live in ``migrations/`` of the
source tree; a wheel carries the same files as ``gc_daemon/_migrations`` (pyproject.toml maps them
there at build time). :func:`alembic_config` builds the Alembic configuration in code, so an installed
vhd-gc needs no ``alembic.ini`` and runs from any directory; ``alembic.ini`` at the repository root is
for running the ``alembic`` command by hand in the tree (``make check-migrations``).
:func:`upgrade` runs ``upgrade head`` programmatically on the engine's own connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from gc_daemon.state.models import Base

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # gc_daemon/
PACKAGED_MIGRATIONS = PACKAGE_DIR / "_migrations"  # in a wheel (or any non-editable install)
TREE_MIGRATIONS = PACKAGE_DIR.parent / "migrations"  # in the source tree (editable install, PYTHONPATH)


def migrations_dir() -> Path:
    """Where the migrations are: the installed package's copy, else the source tree's.

    Raises FileNotFoundError naming both places when neither holds an ``env.py`` (a broken install).
    """
    for candidate in (PACKAGED_MIGRATIONS, TREE_MIGRATIONS):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise FileNotFoundError(
        f"the schema migrations are missing: neither {PACKAGED_MIGRATIONS} (an installed wheel) nor "
        f"{TREE_MIGRATIONS} (the source tree) holds env.py and versions/; reinstall vhd-gc"
    )


SQLITE_BUSY_TIMEOUT_MS = 30_000


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings vhd-gc relies on.

    SQLite: WAL (readers never block the writer), a 30 s busy timeout (a second process waits rather
    than failing at once), foreign keys enforced, and real transactions: pysqlite's own transaction
    handling is switched off and SQLAlchemy emits ``BEGIN``, so a transaction's reads and writes see
    one snapshot and roll back together. PostgreSQL: connections are checked before use, so a
    daemon survives a database restart between passes.
    """
    sa_url = make_url(url)
    if sa_url.get_backend_name() == "sqlite":
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("check_same_thread", False)  # the metrics thread reads too
        if sa_url.database in (None, "", ":memory:") and "poolclass" not in kwargs:
            kwargs["poolclass"] = StaticPool  # one shared in-memory database, not one per connection
        engine = create_engine(sa_url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
            dbapi_connection.isolation_level = None  # autocommit at the driver; we emit BEGIN below
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine

    if sa_url.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
    return create_engine(sa_url, **kwargs)


def alembic_config() -> Config:
    """The Alembic configuration, built in code (no ``alembic.ini``), for programmatic use.

    It holds what ``alembic.ini``'s ``[alembic]`` section says that matters at run time: where the
    scripts are. Logging is left alone (vhd-gc configures its own); the database is handed over by
    :func:`upgrade` as a connection.
    """
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("path_separator", "os")
    config.attributes["configure_logging"] = False
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (head by default); a no-op when it is there already.

    On PostgreSQL concurrent callers serialise on an advisory lock (see ``migrations/env.py``).
    """
    config = alembic_config()
    with engine.connect() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at; None for an empty database."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def needs_upgrade(engine: Engine) -> bool:
    return current_revision(engine) != head_revision()


def model_drift(engine: Engine) -> list[Any]:
    """Differences between the migrated schema and the models (empty when they agree).

    The same comparison as ``alembic check``: tables, columns, types, nullability, comments,
    indexes, unique constraints and foreign keys.
    """
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "target_metadata": Base.metadata}
        )
        return list(compare_metadata(context, Base.metadata))
