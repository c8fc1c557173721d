"""Engines and schema migrations of the state database.

The schema is created and changed only by Alembic (``migrations/``, ``alembic.ini`` at the repository
root); :func:`upgrade` runs ``upgrade head`` programmatically on the engine's own connection.
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

REPO_ROOT = Path(__file__).resolve().parents[2]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
MIGRATIONS_DIR = REPO_ROOT / "migrations"

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
    """The Alembic configuration of this checkout, for programmatic use (logging left alone)."""
    if not ALEMBIC_INI.exists():
        raise FileNotFoundError(f"{ALEMBIC_INI} is missing: vhd-gc must run from its source tree")
    config = Config(str(ALEMBIC_INI))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
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
