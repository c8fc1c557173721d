"""The managed-disk half of a pass, as pure steps (gc_daemon/disk_pass.py): joining a reference read's
disks and snapshots with their groups, locks and image references; which disks need a GET of their
ownership time; the decision over the stored rows (forgetting what is no longer listed, but never a
deleted row); which quarantine snapshots have expired. The end-to-end tests against the ARM stand-in
are in tests/test_disks_e2e.py."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from gc_daemon.disk_pass import DiskInventory, decide_all, expired_quarantine, needs_ownership_read, read_ownership
from gc_daemon.disks import DiskForget, DiskHold, DiskPolicy, DiskRow, DiskSeen, Kind, SnapshotSeen, listing_fingerprint
from gc_daemon.domain import PassStats, State

SUB = "00000000-0000-0000-0000-000000000001"
NOW = datetime(2026, 6, 1, tzinfo=UTC)
OLD = NOW - timedelta(days=60)
POLICY = DiskPolicy(min_age=timedelta(days=1), grace_period=timedelta(0), min_sightings=1, mode="delete")


def disk_id(name: str, rg: str = "rg") -> str:
    return f"/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Compute/disks/{name}"


def disk(name: str, rg: str = "rg", **kw) -> DiskSeen:
    kw.setdefault("disk_state", "Unattached")
    kw.setdefault("time_created", OLD)
    kw.setdefault("last_ownership_update", OLD)
    return DiskSeen(id=disk_id(name, rg), subscription=SUB, resource_group=rg, name=name, sku="Premium_LRS",
                    size_gb=64, **kw)


@dataclass
class Group:
    id: str
    tags: dict = field(default_factory=dict)
    managed_by: str | None = None


@dataclass
class Lock:
    id: str
    scope: str
    level: str = "CanNotDelete"


@dataclass
class Read:
    disks: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)
    groups: dict = field(default_factory=dict)
    locks: list = field(default_factory=list)
    resource_refs: dict = field(default_factory=dict)
    disks_read: set = field(default_factory=lambda: {SUB})


def test_join_brings_the_group_the_locks_and_the_image_references_to_each_disk():
    rg_id = f"/subscriptions/{SUB}/resourcegroups/mc_aks"
    read = Read(
        disks=[disk("a", rg="MC_aks"), disk("b"), disk("c")],
        groups={rg_id: Group(rg_id, {"vhdgc-keep": "1"}, "/subscriptions/x/aks")},
        locks=[Lock("lock-b", disk_id("b").upper()), Lock("lock-sub", f"/subscriptions/{SUB}/resourceGroups/other")],
        resource_refs={disk_id("c").lower(): ("/subscriptions/s/images/img",)},
    )
    inv = DiskInventory.join(read)
    a, b, c = (inv.disks[disk_id(n, rg).lower()] for n, rg in (("a", "MC_aks"), ("b", "rg"), ("c", "rg")))
    assert a.group_managed_by == "/subscriptions/x/aks" and a.group_tags == {"vhdgc-keep": "1"} and a.locks == ()
    assert [lk.id for lk in b.locks] == ["lock-b"]  # the lock on another group does not cover it
    assert c.referenced_by == ("/subscriptions/s/images/img",)


def test_a_snapshot_source_is_gone_only_when_its_subscription_was_listed_and_it_is_a_disk():
    snap = lambda name, src: SnapshotSeen(  # noqa: E731
        id=disk_id(name).replace("/disks/", "/snapshots/"), subscription=SUB, resource_group="rg", name=name,
        time_created=OLD, source_resource_id=src, source_exists=None)
    other = "/subscriptions/00000000-0000-0000-0000-000000000009/resourceGroups/rg/providers/Microsoft.Compute/disks/x"
    read = Read(disks=[disk("alive")], snapshots=[
        snap("s1", disk_id("alive")), snap("s2", disk_id("gone")), snap("s3", other),
        snap("s4", disk_id("x").replace("/disks/", "/snapshots/")),
        replace(snap("q", disk_id("gone")), tags={"VHDGC-QUARANTINE-OF": disk_id("gone")}),
    ])
    inv = DiskInventory.join(read)
    exists = {s.name: s.source_exists for s in inv.snapshots.values()}
    assert exists == {"s1": True, "s2": False, "s3": None, "s4": None, "q": False}
    assert [s.name for s in inv.quarantine.values()] == ["q"]


def _row(d: DiskSeen, **kw) -> DiskRow:
    base = dict(id=d.id, kind=Kind.MANAGED_DISK, state=State.CANDIDATE, first_orphaned_at=OLD, delete_after=OLD,
                streak_start=1, ownership_time=d.last_ownership_update, ownership_known=True,
                fingerprint=listing_fingerprint(d), subscription=SUB)
    base.update(kw)
    return DiskRow(**base)


def test_only_unattached_disks_new_or_changed_since_their_last_get_need_one():
    d = disk("a")
    assert needs_ownership_read(d, None)
    assert not needs_ownership_read(d, _row(d))
    assert needs_ownership_read(replace(d, size_gb=128), _row(d))  # the listing changed
    assert needs_ownership_read(d, _row(d, state=State.RELEASED))
    assert needs_ownership_read(d, _row(d, ownership_known=False))
    assert not needs_ownership_read(replace(d, disk_state="Attached"), None)


def test_read_ownership_is_bounded_and_a_disk_gone_meanwhile_leaves_the_inventory():
    disks = [disk(f"d{i}", last_ownership_update=None) for i in range(5)]
    inv = DiskInventory.join(Read(disks=[replace(x, ownership_read=False) for x in disks]))
    asked: list[str] = []

    def get(rid: str):
        asked.append(rid)
        if rid.endswith("/d0"):
            return None
        return replace(next(x for x in disks if x.id == rid), last_ownership_update=OLD)

    stats = PassStats()
    read_ownership(inv, {}, get, limit=3, concurrency=2, stats=stats)
    assert len(asked) == 3 and stats.ownership_reads == 3 and stats.ownership_deferred == 2
    assert disk_id("d0").lower() not in inv.disks
    read = [x for x in inv.disks.values() if x.ownership_read]
    assert len(read) == 2 and all(x.last_ownership_update == OLD for x in read)


def test_decide_all_marks_holds_and_forgets_what_is_gone_but_never_a_deleted_row():
    free, k8s = disk("free"), disk("pvc-123")
    gone, deleted = disk("gone"), disk("deleted")
    stored = {
        gone.key: _row(gone),
        deleted.key: _row(deleted, state=State.DELETED, quarantine_snapshot="/snap"),
    }
    stats = PassStats()
    out = decide_all(DiskInventory.join(Read(disks=[free, k8s])), stored, {}, POLICY, NOW, 2, stats,
                     listed_subscriptions=[SUB])
    by_key = {getattr(c, "row", None).id.lower() if hasattr(c, "row") else c.key: c for c in out.changes}
    assert by_key[free.key].row.state is State.DUE and by_key[free.key].row.size_bytes == 64 * 1024**3
    assert by_key[k8s.key].row.state is State.KEPT and by_key[k8s.key].row.hold is DiskHold.KUBERNETES
    assert isinstance(by_key[gone.key], DiskForget)
    assert deleted.key not in by_key
    assert [r.id for r in out.due] == [free.id]
    assert stats.new_disk_candidates == 1 and stats.disk_vanished == 1 and stats.disks_unattached == 2


def test_only_quarantine_snapshots_vhdgc_made_and_past_their_time_expire():
    def q(name: str, until: str | None) -> SnapshotSeen:
        tags = {"vhdgc-quarantine-of": disk_id("x")}
        if until is not None:
            tags["vhdgc-quarantine-until"] = until
        return SnapshotSeen(id=disk_id(name).replace("/disks/", "/snapshots/"), subscription=SUB, resource_group="rg",
                            name=name, time_created=OLD, source_resource_id=disk_id("x"), source_exists=False, tags=tags)

    snaps = [q("over", (NOW - timedelta(days=1)).isoformat()), q("not-yet", (NOW + timedelta(days=1)).isoformat()),
             q("not-ours", (NOW - timedelta(days=1)).isoformat()), q("no-time", None), q("bad-time", "soon")]
    inv = DiskInventory.join(Read(snapshots=snaps))
    made = {s.key: disk_id("x") for s in snaps if s.name != "not-ours"}
    assert [s.name for s in expired_quarantine(inv, made, NOW)] == ["over"]
