"""The state of managed disks and snapshots on SQLite and PostgreSQL: migration 0004 (tracked_disks,
disk_holds, audit_log.kind), the disk rows of a pass (StateTx.disk_rows/apply_disks), operator holds on
ARM ids, the disk audit entries (an executor's intent/outcome pair, quarantine snapshots, unresolved
intents) and the aggregates the metrics read; and that none of it leaks into the blob-side queries."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from gc_daemon.disk_cost import DiskPricesConfig
from gc_daemon.disks import DiskChange, DiskForget, DiskHold, DiskRow, Kind
from gc_daemon.domain import BlobKey, State
from gc_daemon.execute_disks import NEVER_ATTACHED, ownership_etag, resolve_disk_intents, snapshot_id
from gc_daemon.state import db
from gc_daemon.state.store import DELETE_INTENT, DELETED, DiskCount, Store

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
SUB = "0000AAAA-0000-0000-0000-000000000001"
SUB2 = "0000bbbb-0000-0000-0000-000000000002"
GIB = 1024**3
BLOB = BlobKey("gcacct1", "vhds", "Disk One.vhd")


def disk_id(name: str, sub: str = SUB, rg: str = "RG-One", kind: str = "disks") -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind}/{name}"


def row(name: str = "data-01", *, sub: str = SUB, kind: Kind = Kind.MANAGED_DISK, **kw) -> DiskRow:
    rid = disk_id(name, sub, kind="disks" if kind is Kind.MANAGED_DISK else "snapshots")
    values = dict(
        id=rid, kind=kind, state=State.CANDIDATE, first_orphaned_at=T0, delete_after=T0 + timedelta(days=7),
        streak_start=1, ownership_time=T0 - timedelta(days=40), ownership_known=True, reason="orphan",
        updated_at=T0, subscription=sub, resource_group="RG-One", name=name, sku="Premium_LRS",
        disk_state="Unattached" if kind is Kind.MANAGED_DISK else None, size_bytes=100 * GIB,
        location="westeurope", zones=("1",), tags={"Owner": "team-a"}, fingerprint="unattached||x|100",
    )
    values.update(kw)
    return DiskRow(**values)


def complete_pass(store: Store, changes=(), at: datetime = T0) -> int:
    pass_id = store.begin_pass(at, "delete", "host-a")
    with store.transaction() as tx:
        tx.apply_disks(changes)
        tx.complete_pass(pass_id, at + timedelta(minutes=1), {})
    return pass_id


# -- the migration ---------------------------------------------------------------------------


def test_migration_0004_adds_the_disk_tables_and_old_audit_rows_read_as_vhd(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, "0003")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO audit_log (at, action, account, container, blob, url, actor) "
                                 "VALUES ('2026-01-01 00:00:00', 'keep', 'a', 'c', 'b.vhd', 'u', 'x')"))
        db.upgrade(engine, "0004")
        assert db.current_revision(engine) == "0004"
        names = set(sa.inspect(engine).get_table_names())
        assert {"tracked_disks", "disk_holds"} <= names
        store = Store(engine)
        [old] = store.audit_log()
        assert (old.action, old.kind, old.blob) == ("keep", "vhd", "b.vhd")
        with pytest.raises(sa.exc.IntegrityError):  # one row per resource key
            with engine.begin() as conn:
                for _ in range(2):
                    conn.execute(sa.text("INSERT INTO tracked_disks (resource_key, resource_id, kind, state) "
                                         "VALUES ('/subscriptions/s/x', '/subscriptions/s/X', 'snapshot', 'kept')"))
        with pytest.raises(sa.exc.IntegrityError):  # the kind is checked
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO tracked_disks (resource_key, resource_id, kind, state) "
                                     "VALUES ('/subscriptions/s/y', '/subscriptions/s/y', 'vhd', 'kept')"))
        config = db.alembic_config()
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0003")
            conn.commit()
        assert {"tracked_disks", "disk_holds"}.isdisjoint(sa.inspect(engine).get_table_names())
        assert "kind" not in {c["name"] for c in sa.inspect(engine).get_columns("audit_log")}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT action, blob FROM audit_log")).all() == [("keep", "b.vhd")]
        db.upgrade(engine)
        assert db.model_drift(engine) == []
    finally:
        engine.dispose()


# -- the rows of a pass ----------------------------------------------------------------------


def test_every_field_of_a_disk_row_round_trips_and_the_key_is_the_lower_cased_id(store: Store) -> None:
    disk = row(hold=DiskHold.LOCKED, state=State.KEPT, sightings_frozen=3, deleted_at=T0 + timedelta(hours=1),
               quarantine_snapshot=disk_id("vhdgc-q-data-01", kind="snapshots"), quarantine_until=T0 + timedelta(days=30))
    snap = row("snap-01", kind=Kind.SNAPSHOT, ownership_known=False, ownership_time=None, zones=(), tags={})
    complete_pass(store, [DiskChange(disk, "kept"), DiskChange(snap, "marked")])
    with store.transaction() as tx:
        stored = tx.disk_rows()
    assert stored == {disk.id.lower(): disk, snap.id.lower(): snap}
    assert store.disk_row(disk.id.upper()) == disk  # any case
    assert store.disk_row(disk_id("absent")) is None
    assert isinstance(stored[disk.id.lower()].zones, tuple) and stored[disk.id.lower()].kind is Kind.MANAGED_DISK


def test_apply_disks_upserts_in_order_forgets_and_counts(store: Store) -> None:
    a, b = row("a"), row("b")
    complete_pass(store, [DiskChange(a, "marked"), DiskChange(b, "marked")])
    due = replace(a, state=State.DUE, updated_at=T0 + timedelta(days=8))
    renamed_case = replace(b, id=b.id.upper(), reason="restarted")  # the same disk, spelled otherwise
    with store.transaction() as tx:
        n = tx.apply_disks([DiskChange(replace(a, reason="first"), "rescheduled"), DiskChange(due, "due"),
                            DiskForget(b.id.lower(), "no longer listed"), DiskChange(renamed_case, "marked"),
                            DiskForget(disk_id("never-tracked"), "no longer listed")])
    assert n == 4  # two upserts of a, the forget of b, its upsert (forgetting nothing writes nothing)
    with store.transaction() as tx:
        stored = tx.disk_rows()
    assert stored == {a.id.lower(): due, b.id.lower(): renamed_case}
    with pytest.raises(TypeError):
        with store.transaction() as tx:
            tx.apply_disks(["not a change"])


def test_an_interrupted_pass_writes_no_disk_row(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.apply_disks([DiskChange(row(), "marked")])
            raise RuntimeError("the pass failed")
    assert store.disk_rows() == []


def test_disk_rows_filter_by_state_kind_and_subscription_in_key_order(store: Store) -> None:
    d1 = row("d1", state=State.DUE)
    d2 = row("d2", sub=SUB2, state=State.KEPT, hold=DiskHold.TAG)
    s1 = row("s1", kind=Kind.SNAPSHOT)
    complete_pass(store, [DiskChange(r, "marked") for r in (s1, d2, d1)])
    assert [r.name for r in store.disk_rows()] == ["d1", "s1", "d2"]  # by resource key: SUB < SUB2
    assert [r.name for r in store.disk_rows(states=[State.DUE, State.KEPT])] == ["d1", "d2"]
    assert [r.name for r in store.disk_rows(kinds=["snapshot"])] == ["s1"]
    assert [r.name for r in store.disk_rows(kinds=[Kind.MANAGED_DISK], subscriptions=[SUB.lower()])] == ["d1"]
    assert store.disk_rows(states=[State.RELEASED]) == []


# -- operator holds ----------------------------------------------------------------------------


def test_disk_holds_by_arm_id_in_any_case(store: Store) -> None:
    rid = disk_id("keep-me")
    assert store.disk_hold(rid) is None
    store.add_disk_hold(rid, "legal hold", "alice", T0)
    assert store.disk_hold(rid.upper()) == "legal hold"
    store.add_disk_hold(rid.lower(), "still needed", "bob", T0 + timedelta(hours=1))  # replaces
    assert store.disk_holds() == {rid.lower(): "still needed"}
    assert store.holds() == {}  # not a blob hold
    assert store.remove_disk_hold(rid.upper()) is True
    assert store.remove_disk_hold(rid) is False
    assert store.disk_holds() == {} and store.disk_hold(rid) is None


def test_a_hold_committed_by_another_store_is_seen_by_disk_hold_during_a_pass_transaction(db_url: str) -> None:
    engine_a, engine_b = db.make_engine(db_url), db.make_engine(db_url)
    try:
        db.upgrade(engine_a)
        daemon, operator = Store(engine_a), Store(engine_b)
        rid = disk_id("late")
        with daemon.transaction() as tx:
            tx.disk_rows()  # the pass's snapshot is taken
            operator.add_disk_hold(rid, "keep: found the owner", "carol", T0)
            assert daemon.disk_hold(rid) == "keep: found the owner"
    finally:
        engine_a.dispose()
        engine_b.dispose()


# -- the audit log -------------------------------------------------------------------------------


def test_an_executor_style_quarantine_and_delete_are_recorded_with_the_row_in_one_transaction(store: Store) -> None:
    """What execute_disks writes for one disk: quarantine-intent/quarantined on the snapshot, then
    delete-intent/deleted on the disk, the row turned deleted with the outcome."""
    due = row("old-data", state=State.DUE, sku="StandardSSD_LRS")
    pass_id = complete_pass(store, [DiskChange(due, "due")])
    snap = snapshot_id(due.id, "vhdgc-q-old-data-1")
    common = dict(subscription=SUB.lower(), actor="vhd-gc@host-a", pass_id=pass_id,
                  etag=ownership_etag(due.ownership_time), size_bytes=due.size_bytes)
    q = store.audit_disk(action="quarantine-intent", resource_id=snap, kind="snapshot", at=T0,
                         reason=f"quarantine of {due.id}", **common)
    assert [r.id for r in store.unresolved_disk_intents()] == [q]
    store.audit_disk(action="quarantined", resource_id=snap, kind=Kind.SNAPSHOT, at=T0, intent_id=q,
                     reason=f"quarantine of {due.id} until 2026-03-31", **common)
    intent = store.audit_disk(action=DELETE_INTENT, resource_id=due.id, kind="managed_disk", at=T0, reason="orphan",
                              **common)
    assert [r.id for r in store.unresolved_disk_intents()] == [intent]
    [pending] = store.unresolved_disk_intents()
    assert (pending.kind, pending.url, pending.account, pending.container, pending.blob, pending.etag) == (
        "managed_disk", due.id, SUB.lower(), "", due.id.lower(), due.ownership_time.isoformat())
    gone = replace(due, state=State.DELETED, deleted_at=T0, streak_start=None, sightings_frozen=1,
                   quarantine_snapshot=snap, quarantine_until=T0 + timedelta(days=30))
    store.audit_disk(action=DELETED, resource_id=due.id, kind="managed_disk", at=T0, intent_id=intent,
                     reason="orphan", changes=[DiskChange(gone, "deleted")], **common)
    assert store.unresolved_disk_intents() == []
    assert store.disk_row(due.id) == gone
    assert store.quarantine_snapshots() == {snap.lower(): due.id}
    history = store.audit_log(resource_id=due.id.upper())
    assert [(r.action, r.kind, r.intent_id) for r in history] == [(DELETE_INTENT, "managed_disk", None),
                                                                  (DELETED, "managed_disk", intent)]
    assert [r.action for r in store.audit_log(kinds=["snapshot"])] == ["quarantine-intent", "quarantined"]
    assert store.disk_audit_totals(DELETED) == [(SUB.lower(), "managed_disk", 1, 100 * GIB)]
    # The blob side sees none of it.
    assert store.unresolved_intents() == []
    assert store.audit_totals(DELETED) == []
    assert store.audit_log(key=BlobKey(SUB.lower(), "", due.id.lower())) == []


def test_a_failed_outcome_rolls_back_nothing_and_a_never_attached_disk_is_bound_to_never_attached(store: Store) -> None:
    fresh = row("fresh", ownership_time=None, state=State.DUE)
    complete_pass(store, [DiskChange(fresh, "due")])
    etag = ownership_etag(fresh.ownership_time)
    assert etag == NEVER_ATTACHED
    intent = store.audit_disk(action=DELETE_INTENT, resource_id=fresh.id, kind="managed_disk", subscription=None,
                              at=T0, actor="d", etag=etag)
    [entry] = store.audit_log(resource_id=fresh.id)
    assert (entry.account, entry.etag) == (SUB.lower(), "never-attached")  # subscription from the id
    restarted = replace(fresh, state=State.CANDIDATE, streak_start=3, reason="delete refused: OperationNotAllowed")
    store.audit_disk(action="delete-refused", resource_id=fresh.id, kind="managed_disk", subscription=SUB, at=T0,
                     actor="d", intent_id=intent, error_code="OperationNotAllowed" + "x" * 80,
                     changes=[DiskChange(restarted, "restarted")])
    assert store.disk_row(fresh.id) == restarted
    refused = store.audit_log(resource_id=fresh.id, actions=["delete-refused"])[0]
    assert refused.error_code == ("OperationNotAllowed" + "x" * 80)[:64] and refused.account == SUB.lower()
    # A write that fails writes neither the entry nor the row.
    with pytest.raises(ValueError):
        store.audit_disk(action=DELETED, resource_id=fresh.id, kind="vhd", subscription=SUB, at=T0, actor="d",
                         changes=[DiskChange(replace(fresh, state=State.DELETED), "deleted")])
    assert store.disk_row(fresh.id) == restarted and len(store.audit_log()) == 2


class _Estate:
    """The gateway's two reads, answered from a dict (the resources that still exist)."""

    def __init__(self, existing: dict) -> None:
        self.existing = existing

    def get_disk(self, rid):
        return self.existing.get(rid.lower())

    get_snapshot = get_disk


class _Resource:
    def __init__(self, state: str) -> None:
        self.provisioning_state = state


def test_resolve_disk_intents_settles_a_crash_between_snapshot_and_delete_from_the_store(store: Store) -> None:
    due = row("crashed", state=State.DUE)
    pass_id = complete_pass(store, [DiskChange(due, "due")])
    snap = snapshot_id(due.id, "vhdgc-q-crashed")
    common = dict(subscription=SUB, actor="d", pass_id=pass_id, at=T0)
    store.audit_disk(action="quarantine-intent", resource_id=snap, kind="snapshot", reason=f"quarantine of {due.id}",
                     **common)
    store.audit_disk(action=DELETE_INTENT, resource_id=due.id, kind="managed_disk", reason="orphan", **common)
    # SIGKILL here. The next pass looks: the snapshot exists and succeeded, the disk is gone.
    settled = resolve_disk_intents(store, _Estate({snap.lower(): _Resource("Succeeded")}), T0, "d", lambda: T0)
    assert settled == 2
    assert store.unresolved_disk_intents() == []
    actions = [(r.action, r.kind) for r in store.audit_log()]
    assert actions == [("quarantine-intent", "snapshot"), (DELETE_INTENT, "managed_disk"),
                       ("quarantined", "snapshot"), (DELETED, "managed_disk")]
    after = store.disk_row(due.id)
    assert (after.state, after.quarantine_snapshot, after.deleted_at) == (State.DELETED, snap.lower(), T0)


# -- aggregates for the metrics -------------------------------------------------------------------


def test_disk_counts_per_subscription_kind_and_state_with_billed_bytes_and_cost(store: Store) -> None:
    rows = [
        row("p1", sku="Premium_LRS", size_bytes=100 * GIB),  # P10 bills 128 GiB
        row("p2", sku="Premium_LRS", size_bytes=1 * GIB),  # P1 bills 4 GiB
        row("odd", sku="Mystery_LRS", size_bytes=10 * GIB),  # unknown SKU: no billed bytes, no cost
        row("k", sub=SUB2, sku="Standard_LRS", size_bytes=4 * GIB, state=State.KEPT, hold=DiskHold.OPERATOR),
        row("s", kind=Kind.SNAPSHOT, size_bytes=64 * GIB),
    ]
    complete_pass(store, [DiskChange(r, "marked") for r in rows])
    prices = DiskPricesConfig()
    assert store.disk_counts(prices) == [
        DiskCount(SUB.lower(), "managed_disk", "candidate", 3, 111 * GIB, 132 * GIB,
                  round(prices.premium_lrs["P10"] + prices.premium_lrs["P1"], 6)),
        DiskCount(SUB.lower(), "snapshot", "candidate", 1, 64 * GIB, 64 * GIB,
                  round(64 * prices.snapshot_gb_month, 6)),  # at most the bytes of its source
        DiskCount(SUB2, "managed_disk", "kept", 1, 4 * GIB, 32 * GIB, prices.standard_hdd_lrs["S4"]),
    ]
    assert [c.monthly_cost for c in store.disk_counts()] == [None, None, None]
    assert store.counts() == []  # the blob gauges see no disk


def test_a_pass_writes_thousands_of_disk_rows_in_batches(store: Store) -> None:
    rows = [row(f"d{i:05d}", streak_start=1 + i % 3) for i in range(2500)]
    with store.transaction() as tx:
        assert tx.apply_disks([DiskChange(r, "marked") for r in rows]) == 2500
        assert tx.apply_disks([DiskChange(replace(r, state=State.DUE), "due") for r in rows[::2]]
                              + [DiskForget(r.id.lower(), "no longer listed") for r in rows[1::2]]) == 2500
    stored = store.disk_rows()
    assert [r.name for r in stored] == [r.name for r in rows[::2]]
    assert {r.state for r in stored} == {State.DUE}
    assert [r.streak_start for r in stored[:3]] == [1, 3, 2]
