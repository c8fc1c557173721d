"""The managed-disk half of a pass: join what the reference read found of disks and snapshots with
their resource groups, locks and the images naming them; read the ownership time of the disks that
need it; decide each one (:mod:`gc_daemon.disks`, pure) against the stored rows.

No second listing: the disks and snapshots are those the reference read already listed for import
references (sources/disks.py, sources/snapshots.py), in the same read and under the same fail-closed
rules. The only extra calls are the GETs of single disks for ``LastOwnershipUpdateTime`` (the list
does not return it), made only for the unattached disks with no recorded ownership time or whose
listing changed since it was read, at most ``managed_disks.max_ownership_reads`` a pass, concurrently
(``azure.max_concurrency``). A GET that fails fails the pass closed, like any read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from .disks import (
    QUARANTINE_TAG,
    DiskChange,
    DiskForget,
    DiskPolicy,
    DiskRow,
    DiskSeen,
    Kind,
    LockSeen,
    SnapshotSeen,
    decide_disk,
    decide_snapshot,
    describe,
    is_in_use,
    listing_fingerprint,
    resource_key,
)
from .domain import PassStats, State

log = structlog.get_logger("vhd-gc.disks")

COUNTED = (State.CANDIDATE, State.DUE)


class OwnershipReadFailed(Exception):
    """A GET of a disk for its ownership time failed: the pass is incomplete."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _group_key(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourcegroups/{rg}".lower()


def _locks_covering(rid: str, locks: Iterable) -> tuple[LockSeen, ...]:
    """The locks on the resource, its resource group or its subscription (ids compare lower-case)."""
    rid = rid.lower()
    parts = rid.split("/")
    scopes = {rid}
    if len(parts) > 2:
        scopes.add("/".join(parts[:3]))  # /subscriptions/{s}
    if len(parts) > 4:
        scopes.add("/".join(parts[:5]))  # /subscriptions/{s}/resourcegroups/{rg}
    return tuple(LockSeen(lock.id, lock.level) for lock in locks if str(lock.scope).lower().rstrip("/") in scopes)


@dataclass
class DiskInventory:
    """The disks and snapshots of one reference read, joined with what the decision needs."""

    disks: dict[str, DiskSeen] = field(default_factory=dict)
    snapshots: dict[str, SnapshotSeen] = field(default_factory=dict)
    quarantine: dict[str, SnapshotSeen] = field(default_factory=dict)  # tagged vhdgc-quarantine-of

    @classmethod
    def join(cls, read) -> "DiskInventory":
        groups: Mapping[str, object] = getattr(read, "groups", None) or {}
        locks = list(getattr(read, "locks", None) or [])
        refs: Mapping[str, tuple[str, ...]] = getattr(read, "resource_refs", None) or {}
        disks_read = {s.lower() for s in (getattr(read, "disks_read", None) or ())}
        inv = cls()

        def around(obs):
            group = groups.get(_group_key(obs.subscription, obs.resource_group))
            return dict(
                group_tags=dict(getattr(group, "tags", None) or {}),
                group_managed_by=getattr(group, "managed_by", None) or None,
                locks=_locks_covering(obs.id, locks),
                referenced_by=tuple(refs.get(resource_key(obs.id), ())),
            )

        for disk in getattr(read, "disks", None) or ():
            joined = replace(disk, **around(disk))
            inv.disks[joined.key] = joined
        for snap in getattr(read, "snapshots", None) or ():
            source = snap.source_resource_id
            exists = None
            if source:
                skey = resource_key(source)
                if skey in inv.disks:
                    exists = True
                else:
                    sub = skey.split("/")[2] if skey.startswith("/subscriptions/") and len(skey.split("/")) > 2 else None
                    # Gone only when the source's subscription was listed completely by this read, and
                    # the source is a managed disk (a snapshot of a snapshot, or of something else, is
                    # never taken to be orphaned by this rule).
                    if sub in disks_read and "/providers/microsoft.compute/disks/" in skey:
                        exists = False
            joined = replace(snap, source_exists=exists, **around(snap))
            if QUARANTINE_TAG in {k.lower() for k in joined.tags}:
                inv.quarantine[joined.key] = joined
            inv.snapshots[joined.key] = joined
        return inv


def needs_ownership_read(disk: DiskSeen, row: DiskRow | None) -> bool:
    """An unattached disk whose ownership time was never recorded, or whose listing changed since."""
    if is_in_use(disk):
        return False
    if row is None or not row.ownership_known or row.state in (State.RELEASED, State.DELETED):
        return True
    return row.fingerprint != listing_fingerprint(disk)


def read_ownership(
    inv: DiskInventory,
    stored: Mapping[str, DiskRow],
    get_disk: Callable[[str], DiskSeen | None] | None,
    limit: int,
    concurrency: int,
    stats: PassStats,
    should_stop: Callable[[], bool] = lambda: False,
) -> None:
    """Replace, in ``inv``, each disk that needs it with the GET's answer (its LastOwnershipUpdateTime
    and its state, the joined facts kept). Disks over ``limit`` keep ``ownership_read=False`` (the
    decision then uses a recorded time, or writes nothing). A disk gone meanwhile leaves the inventory.
    Raises :class:`OwnershipReadFailed` when a GET fails."""
    todo = [d for d in inv.disks.values() if needs_ownership_read(d, stored.get(d.key))]
    todo.sort(key=lambda d: (d.key not in stored, d.key))  # a changed tracked disk first: its time is stale
    for d in todo[limit:] if get_disk is not None else todo:
        inv.disks[d.key] = replace(d, ownership_read=False)
    if get_disk is None:
        stats.ownership_deferred += len(todo)
        return
    stats.ownership_deferred += max(0, len(todo) - limit)
    todo = todo[:limit]
    if not todo:
        return
    errors: list[str] = []
    from .passes import PassStopped  # noqa: PLC0415 - passes imports this module

    pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(todo))), thread_name_prefix="disk-get")
    stopped = False
    try:
        pending = {pool.submit(get_disk, d.id): d for d in todo}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            if should_stop():
                stopped = True
                raise PassStopped("while reading disks' ownership times")
            for future in done:
                listed = pending.pop(future)
                try:
                    got = future.result()
                except Exception as exc:  # noqa: BLE001 - any failure fails the pass closed
                    errors.append(f"disks/get {listed.id}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")
                    continue
                stats.ownership_reads += 1
                if got is None:  # deleted since the listing
                    inv.disks.pop(listed.key, None)
                    continue
                inv.disks[listed.key] = replace(
                    listed,
                    disk_state=got.disk_state,
                    managed_by=got.managed_by,
                    managed_by_extended=tuple(got.managed_by_extended),
                    last_ownership_update=got.last_ownership_update,
                    ownership_read=True,
                )
    finally:
        pool.shutdown(wait=not stopped, cancel_futures=True)
    if errors:
        raise OwnershipReadFailed(sorted(errors))


@dataclass
class DiskDecisions:
    changes: list[DiskChange | DiskForget] = field(default_factory=list)
    due: list[DiskRow] = field(default_factory=list)  # due and deletable by the policy (executor's)
    due_any: int = 0  # due rows in any mode (the report's `due`)
    new_by_subscription: dict[str, dict[str, int]] = field(default_factory=dict)


def decide_all(
    inv: DiskInventory,
    stored: Mapping[str, DiskRow],
    holds: Mapping[str, str],
    policy: DiskPolicy,
    now: datetime,
    seq: int,
    stats: PassStats,
    *,
    listed_subscriptions: Iterable[str] | None = None,
) -> DiskDecisions:
    """Decide every disk and snapshot of the inventory; forget the tracked rows no longer listed (not
    the deleted ones: their quarantine snapshot and `restore` need them)."""
    out = DiskDecisions()
    stats.disks += len(inv.disks)
    stats.snapshots += len(inv.snapshots)
    for disk in inv.disks.values():
        if not is_in_use(disk):
            stats.disks_unattached += 1
        prev = stored.get(disk.key)
        d = decide_disk(disk, prev, holds, policy, now, seq)
        row = None
        if d.change is not None:
            row = d.change.row
        elif prev is not None and prev.state is not State.RELEASED and (
                _described_differs(prev, disk)
                or (disk.ownership_read and prev.fingerprint != listing_fingerprint(disk))):
            row = replace(prev)  # only what is described changed (a tag, the size): refreshed
            out.changes.append(DiskChange(row, "described"))
        if row is not None:
            describe(row, disk)
            if disk.ownership_read:
                row.fingerprint = listing_fingerprint(disk)
        if d.change is not None:
            out.changes.append(d.change)
            _count(stats, out, d.change, seq, Kind.MANAGED_DISK)
        if d.due is not None:
            out.due_any += 1
        if d.delete is not None:
            out.due.append(d.delete if row is None else row)
    for snap in inv.snapshots.values():
        prev = stored.get(snap.key)
        d = decide_snapshot(snap, prev, holds, policy, now, seq)
        if d.change is not None:
            describe(d.change.row, snap)
            out.changes.append(d.change)
            _count(stats, out, d.change, seq, Kind.SNAPSHOT)
        if d.due is not None:
            out.due_any += 1
        if d.delete is not None:
            out.due.append(d.delete if d.change is None else d.change.row)
    seen = inv.disks.keys() | inv.snapshots.keys()
    listed = None if listed_subscriptions is None else {s.lower() for s in listed_subscriptions}
    for key, row in stored.items():
        if key in seen or row.state is State.DELETED:
            continue
        if listed is not None and (row.subscription or "").lower() not in listed:
            continue  # its subscription is no longer configured: left as it is
        out.changes.append(DiskForget(key, "no longer listed"))
        stats.disk_vanished += 1
    stats.disk_due += out.due_any
    return out


def _described_differs(prev: DiskRow, obs: DiskSeen) -> bool:
    return (prev.disk_state, prev.size_bytes, dict(prev.tags or {}), prev.sku) != (
        obs.disk_state, obs.provisioned_bytes, dict(obs.tags), obs.sku)


def _count(stats: PassStats, out: DiskDecisions, change: DiskChange, seq: int, kind: Kind) -> None:
    event = change.event
    row = change.row
    if event in ("marked", "restarted"):
        stats.disk_marked += 1
    elif event == "kept":
        stats.disk_kept += 1
    elif event == "released":
        stats.disk_released += 1
    if row.streak_start == seq and row.state in COUNTED:
        stats.new_disk_candidates += 1
        stats.new_disk_bytes += row.size_bytes or 0
        label = f"{row.subscription} {'disks' if kind is Kind.MANAGED_DISK else 'snapshots'}"
        entry = out.new_by_subscription.setdefault(label, {"blobs": 0, "bytes": 0})
        entry["blobs"] += 1
        entry["bytes"] += row.size_bytes or 0
    log.info("disk_" + event, id=row.id, kind=kind.value, state=row.state.value,
             hold=row.hold.value if row.hold else None, reason=row.reason)


def expired_quarantine(inv: DiskInventory, made: Mapping[str, str], now: datetime) -> list[SnapshotSeen]:
    """The quarantine snapshots to delete now: tagged ``vhdgc-quarantine-of``, made by vhd-gc (their id
    is in the audit log: ``made``), and past their ``vhdgc-quarantine-until`` tag. A snapshot whose tag
    cannot be read as a time is kept (uncertainty keeps)."""
    out = []
    for key, snap in inv.quarantine.items():
        if key not in made:
            continue
        until = next((v for k, v in snap.tags.items() if k.lower() == "vhdgc-quarantine-until"), None)
        try:
            when = datetime.fromisoformat(str(until)) if until else None
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            continue
        if now >= when:
            out.append(snap)
    return out
