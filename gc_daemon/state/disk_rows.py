"""The tracked disk and snapshot rows (``tracked_disks``): a row to and from the domain's
:class:`DiskRow`, their batched write (:func:`_apply_disks`, a pass's and an audit entry's), and the
queries of the report, explain and metrics (:class:`DiskRowQueries`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from sqlalchemy import Connection, Engine, Row, delete, func, select

from gc_daemon.disks import DiskChange, DiskForget, DiskHold, DiskRow, Kind, resource_key
from gc_daemon.domain import State
from gc_daemon.state.models import tracked_disks
from gc_daemon.state.sql import BATCH_SIZE, _dialect_insert


class DiskCount(NamedTuple):
    """One line of :meth:`Store.disk_counts`: the rows of one subscription, kind and state."""

    subscription: str
    kind: str
    state: str
    rows: int
    size_bytes: int  # provisioned
    billed_bytes: int  # what Azure bills of them (a disk: its tier's size; a snapshot: at most its size)
    monthly_cost: float | None  # with prices: the known costs summed; None without prices


_DISK_STATES = {s.value: s for s in State}
_DISK_HOLDS = {h.value: h for h in DiskHold}
_KINDS = {k.value: k for k in Kind}


def disk_values(row: DiskRow) -> dict[str, Any]:
    """The columns of ``tracked_disks`` for ``row`` (every field of DiskRow)."""
    return {
        "resource_key": resource_key(row.id),
        "resource_id": row.id,
        "kind": Kind(row.kind).value,
        "state": State(row.state).value,
        "first_orphaned_at": row.first_orphaned_at,
        "delete_after": row.delete_after,
        "streak_start": row.streak_start,
        "sightings_frozen": row.sightings_frozen,
        "ownership_time": row.ownership_time,
        "ownership_known": bool(row.ownership_known),
        "hold": row.hold.value if row.hold is not None else None,
        "reason": row.reason,
        "updated_at": row.updated_at,
        "deleted_at": row.deleted_at,
        "subscription": row.subscription,
        "resource_group": row.resource_group,
        "name": row.name,
        "sku": row.sku,
        "disk_state": row.disk_state,
        "size_bytes": row.size_bytes,
        "location": row.location,
        "zones": list(row.zones or ()),
        "tags": dict(row.tags or {}),
        "fingerprint": row.fingerprint,
        "quarantine_snapshot": row.quarantine_snapshot,
        "quarantine_until": row.quarantine_until,
    }


_DISK_COLUMNS = tuple(c.name for c in tracked_disks.columns if c.name != "id")
assert set(_DISK_COLUMNS) == set(disk_values(DiskRow("x", Kind.SNAPSHOT, State.CANDIDATE, None, None, None))), \
    "store.disk_values is out of step with the tracked_disks model"


def row_to_disk(r: Row[Any]) -> DiskRow:
    return DiskRow(
        id=r.resource_id,
        kind=_KINDS[r.kind],
        state=_DISK_STATES[r.state],
        first_orphaned_at=r.first_orphaned_at,
        delete_after=r.delete_after,
        streak_start=r.streak_start,
        sightings_frozen=r.sightings_frozen,
        ownership_time=r.ownership_time,
        ownership_known=bool(r.ownership_known),
        hold=_DISK_HOLDS[r.hold] if r.hold is not None else None,
        reason=r.reason,
        updated_at=r.updated_at,
        deleted_at=r.deleted_at,
        subscription=r.subscription,
        resource_group=r.resource_group,
        name=r.name,
        sku=r.sku,
        disk_state=r.disk_state,
        size_bytes=r.size_bytes,
        location=r.location,
        zones=tuple(r.zones or ()),
        tags=dict(r.tags or {}),
        fingerprint=r.fingerprint,
        quarantine_snapshot=r.quarantine_snapshot,
        quarantine_until=r.quarantine_until,
    )


def _apply_disks(conn: Connection, changes: Iterable[DiskChange | DiskForget]) -> int:
    """Write disk changes in order: upserts by resource key, forgets deleted; the rows written."""
    written = 0
    upserts: list[dict[str, Any]] = []
    keys: set[str] = set()

    def flush() -> int:
        if not upserts:
            return 0
        stmt = _dialect_insert(conn, tracked_disks)
        stmt = stmt.on_conflict_do_update(
            index_elements=["resource_key"],
            set_={c: stmt.excluded[c] for c in _DISK_COLUMNS if c != "resource_key"},
        )
        conn.execute(stmt, list(upserts))
        n = len(upserts)
        upserts.clear()
        keys.clear()
        return n

    for item in changes:
        if isinstance(item, DiskForget):
            written += flush()
            written += conn.execute(
                delete(tracked_disks).where(tracked_disks.c.resource_key == resource_key(item.key))
            ).rowcount
        elif isinstance(item, DiskChange):
            values = disk_values(item.row)
            if values["resource_key"] in keys:
                written += flush()  # one statement never carries a key twice (PostgreSQL refuses it)
            upserts.append(values)
            keys.add(values["resource_key"])
            if len(upserts) >= BATCH_SIZE:
                written += flush()
        else:
            raise TypeError(f"apply_disks() takes DiskChange and DiskForget, not {type(item).__name__}")
    written += flush()
    return written


class DiskRowQueries:
    """:class:`gc_daemon.state.store.Store`'s reads of tracked disks and snapshots."""

    engine: Engine

    def disk_rows(
        self,
        states: Iterable[State] | None = None,
        kinds: Iterable[Kind | str] | None = None,
        subscriptions: Iterable[str] | None = None,
    ) -> list[DiskRow]:
        """Tracked disks and snapshots ordered by resource key; with ``states``, ``kinds`` or
        ``subscriptions`` (any case), only those."""
        t = tracked_disks
        stmt = select(t).order_by(t.c.resource_key)
        if states is not None:
            stmt = stmt.where(t.c.state.in_([State(s).value for s in states]))
        if kinds is not None:
            stmt = stmt.where(t.c.kind.in_([Kind(k).value for k in kinds]))
        if subscriptions is not None:
            stmt = stmt.where(func.lower(t.c.subscription).in_([s.lower() for s in subscriptions]))
        with self.engine.connect() as conn:
            return [row_to_disk(r) for r in conn.execute(stmt)]

    def disk_row(self, resource_id: str) -> DiskRow | None:
        """The tracked row of one disk or snapshot (its ARM id in any case), None when untracked."""
        stmt = select(tracked_disks).where(tracked_disks.c.resource_key == resource_key(resource_id))
        with self.engine.connect() as conn:
            r = conn.execute(stmt).first()
            return row_to_disk(r) if r is not None else None

    def disk_counts(self, prices: Any = None) -> list[DiskCount]:
        """Per subscription, kind and state: rows, provisioned bytes, billed bytes and (with
        ``prices``, a :class:`gc_daemon.disk_cost.DiskPricesConfig`) the monthly cost of those whose
        cost is known. Ordered by subscription, kind, state."""
        from gc_daemon.disk_cost import billed_bytes, disk_monthly_cost, snapshot_monthly_cost

        t = tracked_disks
        stmt = select(t.c.subscription, t.c.kind, t.c.state, t.c.sku, t.c.size_bytes)
        totals: dict[tuple[str, str, str], list] = {}
        with self.engine.connect() as conn:
            for sub, kind, state, sku, size in conn.execute(stmt):
                entry = totals.setdefault(((sub or "").lower(), kind, state), [0, 0, 0, 0.0])
                entry[0] += 1
                entry[1] += size or 0
                if size is None:
                    continue
                if kind == Kind.SNAPSHOT.value:  # bills the bytes it holds: at most its source's size
                    entry[2] += size
                    if prices is not None:
                        zrs = bool(sku) and sku.upper().endswith("_ZRS")
                        entry[3] += snapshot_monthly_cost(prices, size, zrs=zrs) or 0.0
                elif sku:
                    entry[2] += billed_bytes(sku, size) or 0
                    if prices is not None:
                        entry[3] += disk_monthly_cost(prices, sku, size) or 0.0
        return [
            DiskCount(sub, kind, state, n, size, billed, round(cost, 6) if prices is not None else None)
            for (sub, kind, state), (n, size, billed, cost) in sorted(totals.items())
        ]
