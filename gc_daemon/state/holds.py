"""Operator holds (``vhd-gc keep``): on blobs (``operator_holds``) and on disks and snapshots
(``disk_holds``), each read on a fresh connection so the executor sees a hold committed a moment ago."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, delete, select

from gc_daemon.disks import resource_key
from gc_daemon.domain import BlobKey
from gc_daemon.state.models import disk_holds, operator_holds
from gc_daemon.state.sql import _KEY_COLUMNS, _dialect_insert, _key_filter


class Holds:
    """:class:`gc_daemon.state.store.Store`'s operator holds, committed call by call."""

    engine: Engine

    def holds(self) -> dict[BlobKey, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(operator_holds))
            return {BlobKey(r.account, r.container, r.blob): r.reason for r in rows}

    def hold(self, key: BlobKey) -> str | None:
        """The reason of the operator hold on ``key`` as committed now, None when it is not held.

        A query of its own on a connection of its own, in a transaction that begins here: never a
        snapshot taken earlier (a pass's). On PostgreSQL (read committed, or any stricter level: the
        snapshot is taken at this transaction's first statement) and on SQLite (WAL: a read
        transaction sees every commit made before it began) it sees a hold that another process
        committed a moment ago. The executor asks it right before each delete."""
        stmt = select(operator_holds.c.reason).where(_key_filter(key, operator_holds))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def add_hold(self, key: BlobKey, reason: str, created_by: str, at: datetime) -> None:
        """Keep ``key``; holding it again replaces the reason, who and when."""
        with self.engine.begin() as conn:
            stmt = _dialect_insert(conn, operator_holds).values(
                account=key.account,
                container=key.container,
                blob=key.blob,
                reason=reason,
                created_by=created_by,
                created_at=at,
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=list(_KEY_COLUMNS),
                set_={c: stmt.excluded[c] for c in ("reason", "created_by", "created_at")},
            )
            conn.execute(stmt)

    def remove_hold(self, key: BlobKey) -> bool:
        """Stop keeping ``key``; False when it was not held."""
        with self.engine.begin() as conn:
            return conn.execute(delete(operator_holds).where(_key_filter(key, operator_holds))).rowcount > 0

    def disk_holds(self) -> dict[str, str]:
        """Operator holds on disks and snapshots: resource key -> reason."""
        with self.engine.connect() as conn:
            return {r.resource_key: r.reason for r in conn.execute(select(disk_holds))}

    def disk_hold(self, resource_id: str) -> str | None:
        """The reason of the operator hold on a disk or snapshot (its ARM id or key) as committed now,
        None when it is not held. Like :meth:`hold`: a fresh connection and transaction, so a `keep`
        that returned before this call is seen (the executor asks right before each deletion)."""
        stmt = select(disk_holds.c.reason).where(disk_holds.c.resource_key == resource_key(resource_id))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def add_disk_hold(self, resource_id: str, reason: str, created_by: str, at: datetime) -> None:
        """Keep a disk or snapshot; holding it again replaces the reason, who and when."""
        with self.engine.begin() as conn:
            stmt = _dialect_insert(conn, disk_holds).values(
                resource_key=resource_key(resource_id),
                resource_id=resource_id,
                reason=reason,
                created_by=created_by,
                created_at=at,
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["resource_key"],
                set_={c: stmt.excluded[c] for c in ("resource_id", "reason", "created_by", "created_at")},
            )
            conn.execute(stmt)

    def remove_disk_hold(self, resource_id: str) -> bool:
        """Stop keeping a disk or snapshot; False when it was not held."""
        with self.engine.begin() as conn:
            stmt = delete(disk_holds).where(disk_holds.c.resource_key == resource_key(resource_id))
            return conn.execute(stmt).rowcount > 0
