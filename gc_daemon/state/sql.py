"""What every query module of the state shares: the batch size of a bulk write, a blob's key columns
and its filter, the dialect's upsert (PostgreSQL and SQLite), aware UTC timestamps."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Connection, Insert, and_
from sqlalchemy.dialects import postgresql, sqlite

from gc_daemon.domain import BlobKey
from gc_daemon.state.models import tracked_blobs

BATCH_SIZE = 1000
_KEY_COLUMNS = ("account", "container", "blob")


def _dialect_insert(conn: Connection, table: Any) -> Insert:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for the {name} dialect (PostgreSQL and SQLite only)")


def _key_filter(key: BlobKey, table: Any = tracked_blobs) -> Any:
    return and_(
        table.c.account == key.account, table.c.container == key.container, table.c.blob == key.blob
    )


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime refused (timezone-aware UTC required): {value!r}")
    return value.astimezone(timezone.utc)
