"""Alembic environment of the vhd-gc state database.

The database comes from, in order: a connection handed over in ``config.attributes["connection"]``
(what ``gc_daemon.state.db.upgrade`` does), ``-x url=...`` on the command line, or
``sqlalchemy.url`` in ``alembic.ini``.

On PostgreSQL every run holds a transaction-level advisory lock from before it reads the current
revision until it commits, so two replicas deploying at once never migrate at the same time: the
second waits, then finds the schema at head and does nothing. Lock and statement timeouts keep a
migration from queueing behind (and blocking) live traffic for long.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, pool, text

from gc_daemon.state.db import make_engine
from gc_daemon.state.models import Base, UTCDateTime

# An arbitrary constant shared by every vhd-gc deployment ("vhdgcmig" in ASCII, as a bigint).
MIGRATION_LOCK_ID = 0x7668_6467_636D_6967
# How long a deploy waits for another one's migration before giving up.
MIGRATION_LOCK_WAIT = "120s"
# Once migrating: how long one DDL statement may wait for a table lock, and run.
LOCK_TIMEOUT = "10s"
STATEMENT_TIMEOUT = "300s"

config = context.config
target_metadata = Base.metadata

if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "no database: pass -x url=<SQLAlchemy URL> (or set sqlalchemy.url in alembic.ini)"
        )
    return url


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    # Migrations must not import the models: render the stored type, not the decorator.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=_render_item,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )


def _migrate(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # SET LOCAL: only for this transaction, so a connection returned to a pool is unchanged.
        connection.execute(text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_WAIT}'"))
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
        connection.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        connection.execute(text(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'"))
    # The connection is now inside our transaction, so Alembic treats it as external and the
    # whole run (lock, revision check, every migration, version stamp) commits or fails as one.
    # transaction_per_migration still governs a connection handed over outside a transaction
    # by other tooling.
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection: Connection | None = config.attributes.get("connection")
    if connection is not None:
        if connection.in_transaction():
            _migrate(connection)  # the caller owns the transaction and commits it
        else:
            with connection.begin():
                _migrate(connection)
        return
    engine = make_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection, connection.begin():
            _migrate(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
