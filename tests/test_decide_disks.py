"""The pure decision for managed disks and snapshots, and their cost: every rule of the contract's
disk section, one scenario each, then lifecycle properties."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gc_daemon.disk_cost import (
    FAMILY_TIERS,
    GIB,
    TIER_SIZES_GIB,
    DiskPricesConfig,
    billed_bytes,
    billed_tier,
    disk_monthly_cost,
    snapshot_monthly_cost,
    ultra_billed_gib,
)
from gc_daemon.disks import (
    HOLD_PRECEDENCE,
    IN_USE_DISK_STATES,
    DiskHold,
    DiskPolicy,
    DiskRow,
    DiskSeen,
    DiskVerdict,
    Kind,
    LockSeen,
    RecheckAction,
    SnapshotSeen,
    classify_disk,
    classify_snapshot,
    decide_disk,
    decide_snapshot,
    recheck_disk,
    recheck_snapshot,
    resource_key,
)
from gc_daemon.domain import State

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
SUB = "00000000-0000-0000-0000-000000000001"
RG = f"/subscriptions/{SUB}/resourceGroups/rg-web"
VM = f"{RG}/providers/Microsoft.Compute/virtualMachines/web1"
IMAGE = f"{RG}/providers/Microsoft.Compute/images/golden"
DETACHED = NOW - 30 * DAY


def disk_id(name: str = "web1-data") -> str:
    return f"{RG}/providers/Microsoft.Compute/disks/{name}"


def snap_id(name: str = "web1-data-snap") -> str:
    return f"{RG}/providers/Microsoft.Compute/snapshots/{name}"


def disk(name: str = "web1-data", **kw) -> DiskSeen:
    """By default: an unattached 128 GiB Premium disk created 60 days ago, detached 30 days ago, read by a GET."""
    base = dict(id=disk_id(name), subscription=SUB, resource_group="rg-web", name=name, sku="Premium_LRS",
                size_gb=128, disk_state="Unattached", time_created=NOW - 60 * DAY, last_ownership_update=DETACHED)
    base.update(kw)
    return DiskSeen(**base)


def snapshot(name: str = "web1-data-snap", **kw) -> SnapshotSeen:
    """By default: a 120-day-old incremental snapshot whose source disk is gone."""
    base = dict(id=snap_id(name), subscription=SUB, resource_group="rg-web", name=name, time_created=NOW - 120 * DAY,
                source_resource_id=disk_id("gone"), source_exists=False, incremental=True)
    base.update(kw)
    return SnapshotSeen(**base)


def pol(**kw) -> DiskPolicy:
    base = dict(min_age=24 * HOUR, grace_period=7 * DAY, min_sightings=3, snapshot_min_age=90 * DAY,
                mode="delete", snapshots="delete")
    base.update(kw)
    return DiskPolicy(**base)


def row(d: DiskSeen | None = None, *, state=State.CANDIDATE, first=NOW - 8 * DAY, streak_start=1,
        ownership=DETACHED, grace=7 * DAY, kind=Kind.MANAGED_DISK, rid=None, hold=None) -> DiskRow:
    return DiskRow(id=rid or (d.id if d else disk_id()), kind=kind, state=state, first_orphaned_at=first,
                   delete_after=None if first is None else first + grace, streak_start=streak_start,
                   ownership_time=ownership, ownership_known=True, hold=hold, updated_at=first)


def see(d, prev=None, holds=None, p=None, now=NOW, seq=1):
    return decide_disk(d, prev, holds or {}, p or pol(), now, seq)


# --- in use: the disk-state table, managedBy, managedByExtended ----------------------------------


@pytest.mark.parametrize("state", IN_USE_DISK_STATES + ("SomethingNew", None, ""))
def test_every_disk_state_but_unattached_is_in_use(state):
    out = see(disk(disk_state=state), p=pol(grace_period=timedelta(0), min_sightings=1))
    assert out.classification.verdict is DiskVerdict.IN_USE
    assert out.change is None and out.due is None and out.delete is None


def test_unattached_in_any_case_can_be_an_orphan():
    assert classify_disk(disk(disk_state="unattached"), {}, pol(), NOW).verdict is DiskVerdict.ORPHAN


def test_managed_by_makes_an_unattached_disk_in_use():
    c = classify_disk(disk(managed_by=VM), {}, pol(), NOW)
    assert c.verdict is DiskVerdict.IN_USE and c.reason == f"in use: managed by {VM}"


def test_a_shared_disk_listed_in_managed_by_extended_is_in_use():
    c = classify_disk(disk(managed_by_extended=(VM,)), {}, pol(), NOW)
    assert c.verdict is DiskVerdict.IN_USE and c.reason == f"in use: shared with {VM}"


def test_empty_managed_by_strings_do_not_count_as_owners():
    assert classify_disk(disk(managed_by="", managed_by_extended=("",)), {}, pol(), NOW).deletable


def test_in_use_beats_every_hold():
    d = disk("pvc-1", disk_state="Attached", referenced_by=(IMAGE,), tags={"vhdgc-keep": ""},
             locks=(LockSeen("l1", "CanNotDelete"),), group_managed_by="/x")
    c = classify_disk(d, {resource_key(d.id): "ops"}, pol(), NOW)
    assert c.verdict is DiskVerdict.IN_USE and c.hold is None


def test_a_candidate_attached_again_is_released():
    d = disk()
    out = see(replace(d, disk_state="Attached", managed_by=VM), row(d), seq=5)
    assert out.change.event == "released"
    r = out.change.row
    assert (r.state, r.sightings(5), r.delete_after, r.streak_start) == (State.RELEASED, 0, None, None)
    assert r.reason == "in use: diskState Attached"
    assert out.due is None and out.delete is None


def test_an_in_use_disk_never_tracked_writes_nothing():
    assert see(disk(disk_state="Reserved")).change is None


# --- age -----------------------------------------------------------------------------------------


def test_age_counts_from_the_last_ownership_change():
    d = disk(time_created=NOW - 365 * DAY, last_ownership_update=NOW - 24 * HOUR + timedelta(seconds=1))
    c = classify_disk(d, {}, pol(min_age=24 * HOUR), NOW)
    assert c.verdict is DiskVerdict.TOO_YOUNG
    assert c.reason.startswith("last ownership change ")
    old = replace(d, last_ownership_update=NOW - 24 * HOUR)
    assert classify_disk(old, {}, pol(min_age=24 * HOUR), NOW).verdict is DiskVerdict.ORPHAN


def test_a_disk_never_attached_ages_from_its_creation():
    young = disk(time_created=NOW - HOUR, last_ownership_update=None)
    assert classify_disk(young, {}, pol(), NOW).verdict is DiskVerdict.TOO_YOUNG
    old = disk(time_created=NOW - 2 * DAY, last_ownership_update=None)
    c = classify_disk(old, {}, pol(), NOW)
    assert c.verdict is DiskVerdict.ORPHAN and "(created)" in c.reason


def test_no_time_at_all_or_a_clock_behind_is_too_young():
    assert classify_disk(disk(time_created=None, last_ownership_update=None), {}, pol(), NOW).verdict is DiskVerdict.TOO_YOUNG
    ahead = disk(last_ownership_update=NOW + HOUR)
    assert classify_disk(ahead, {}, pol(min_age=timedelta(0)), NOW).verdict is DiskVerdict.TOO_YOUNG


def test_a_candidate_that_became_too_young_is_released():
    d = disk()
    out = see(replace(d, last_ownership_update=NOW - HOUR), row(d), seq=4)
    assert out.change.row.state is State.RELEASED and out.classification.verdict is DiskVerdict.TOO_YOUNG


def test_without_a_read_ownership_time_a_new_disk_is_unverified_and_not_marked():
    out = see(disk(last_ownership_update=None, ownership_read=False))
    assert out.classification.verdict is DiskVerdict.UNVERIFIED
    assert out.change is None and out.due is None


def test_a_candidate_not_read_again_uses_the_ownership_time_recorded_at_marking():
    d = disk()
    prev = row(d, first=NOW - 8 * DAY, streak_start=1)
    out = see(replace(d, last_ownership_update=None, ownership_read=False), prev, seq=3)
    assert out.classification.deletable
    assert out.due is not None and out.change.event == "due"


# --- holds, each by its own name ------------------------------------------------------------------

HOLD_CASES = {
    "referenced": (dict(referenced_by=(IMAGE,)), {}, DiskHold.REFERENCED, f"referenced: source of {IMAGE}"),
    "operator": ({}, {"op": "legal hold"}, DiskHold.OPERATOR, "kept by operator: legal hold"),
    "lock_cannotdelete": (dict(locks=(LockSeen("lk", "CanNotDelete"),)), {}, DiskHold.LOCKED, "CanNotDelete lock lk"),
    "lock_readonly": (dict(locks=(LockSeen("lk", "ReadOnly"),)), {}, DiskHold.LOCKED, "ReadOnly lock lk"),
    "managed_group": (dict(group_managed_by="/aks/c1"), {}, DiskHold.MANAGED_GROUP, "resource group managed by /aks/c1"),
    "k8s_pvc_tag": (dict(tags={"kubernetes.io-created-for-pvc-name": "data"}), {}, DiskHold.KUBERNETES,
                    "a Kubernetes volume (tag kubernetes.io-created-for-pvc-name)"),
    "k8s_pv_tag": (dict(tags={"Kubernetes.io-Created-For-PV-Name": "pv"}), {}, DiskHold.KUBERNETES,
                   "a Kubernetes volume (tag kubernetes.io-created-for-pv-name)"),
    "k8s_created_by_tag": (dict(tags={"k8s-azure-created-by": "kubernetes-azure-dd"}), {}, DiskHold.KUBERNETES,
                           "a Kubernetes volume (tag k8s-azure-created-by)"),
    "k8s_dynamic_name": (dict(name="kubernetes-dynamic-pvc-0f6c1e2a"), {}, DiskHold.KUBERNETES,
                         "a Kubernetes volume (name kubernetes-dynamic-pvc-...)"),
    "k8s_pvc_name": (dict(name="PVC-0f6c1e2a"), {}, DiskHold.KUBERNETES, "a Kubernetes volume (name pvc-...)"),
    "asr_replica_name": (dict(name="web1-osdisk-ASRReplica"), {}, DiskHold.SITE_RECOVERY,
                         "a Site Recovery replica (name ...-asrreplica)"),
    "asr_ms_name": (dict(name="ms-asr-1234"), {}, DiskHold.SITE_RECOVERY, "a Site Recovery replica or seed (name ms-asr-...)"),
    "asr_seed_name": (dict(name="asrseeddisk-web1"), {}, DiskHold.SITE_RECOVERY,
                      "a Site Recovery replica or seed (name asrseeddisk-...)"),
    "asr_replica_tag": (dict(tags={"ASR-ReplicaDisk": "x"}), {}, DiskHold.SITE_RECOVERY,
                        "a Site Recovery replica or seed (tag asr-replicadisk)"),
    "asr_seed_tag": (dict(tags={"asrseeddisk": "x"}), {}, DiskHold.SITE_RECOVERY,
                     "a Site Recovery replica or seed (tag asrseeddisk)"),
    "backup_tag": (dict(tags={"RSVaultBackup": "x"}), {}, DiskHold.BACKUP, "an Azure Backup restore (tag rsvaultbackup)"),
    "keep_tag": (dict(tags={"VHDGC-KEEP": ""}), {}, DiskHold.TAG, "tag vhdgc-keep"),
    "group_keep_tag": (dict(group_tags={"vhdgc-keep": "yes"}), {}, DiskHold.TAG, "tag vhdgc-keep on resource group"),
}


@pytest.mark.parametrize("case", sorted(HOLD_CASES))
def test_each_hold_keeps_the_disk_under_its_own_name(case):
    kw, holds, hold, reason = HOLD_CASES[case]
    d = disk(**kw)
    holds = {resource_key(d.id): v for v in holds.values()}
    out = see(d, holds=holds, p=pol(grace_period=timedelta(0), min_sightings=1), seq=7)
    assert out.classification.hold is hold and out.classification.reason == reason
    assert out.change.event == "kept"
    r = out.change.row
    assert (r.state, r.hold, r.reason, r.delete_after, r.streak_start) == (State.KEPT, hold, reason, None, 7)
    assert out.due is None and out.delete is None


def test_hold_precedence_is_the_documented_order():
    assert [h.value for h in HOLD_PRECEDENCE] == [
        "referenced", "operator", "locked", "managed_group", "kubernetes", "site_recovery", "backup", "tag"]
    everything = {
        DiskHold.REFERENCED: dict(referenced_by=(IMAGE,)),
        DiskHold.LOCKED: dict(locks=(LockSeen("lk", "CanNotDelete"),)),
        DiskHold.MANAGED_GROUP: dict(group_managed_by="/aks"),
        DiskHold.KUBERNETES: dict(tags={"k8s-azure-created-by": "x"}),
        DiskHold.SITE_RECOVERY: dict(name="ms-asr-1"),
        DiskHold.BACKUP: dict(tags={"RSVaultBackup": "x"}),
        DiskHold.TAG: dict(group_tags={"vhdgc-keep": ""}),
    }
    # Remove the winning hold one at a time: the next in precedence is reported.
    for i, expected in enumerate(HOLD_PRECEDENCE):
        kw: dict = {"tags": {}}
        operator = False
        for h in HOLD_PRECEDENCE[i:]:
            if h is DiskHold.OPERATOR:
                operator = True
                continue
            part = everything[h]
            if "tags" in part:
                kw["tags"] = {**kw["tags"], **part["tags"]}
            else:
                kw.update(part)
        d = disk(**kw)
        holds = {resource_key(d.id): "ops"} if operator else {}
        assert classify_disk(d, holds, pol(), NOW).hold is expected


def test_a_lock_of_an_unknown_level_holds_too():
    assert classify_disk(disk(locks=(LockSeen("lk", "NotSpecified"),)), {}, pol(), NOW).hold is DiskHold.LOCKED


def test_operator_holds_match_the_id_without_case():
    d = disk()
    assert classify_disk(d, {d.id.lower(): "x"}, pol(), NOW).hold is DiskHold.OPERATOR
    assert resource_key(d.id.upper()) == resource_key(d.id)


def test_a_referenced_disk_is_kept_even_when_young_or_unread():
    d = disk(referenced_by=(IMAGE,), last_ownership_update=None, ownership_read=False)
    out = see(d)
    assert out.change.row.state is State.KEPT and out.change.row.hold is DiskHold.REFERENCED
    assert out.change.row.ownership_known is False
    # seen again the same way: no write
    assert see(d, out.change.row, seq=2).change is None


def test_a_held_disk_unchanged_costs_no_write_and_keeps_counting():
    d = disk(tags={"vhdgc-keep": ""})
    first = see(d, seq=1).change.row
    again = see(d, first, seq=4)
    assert again.change is None and first.sightings(4) == 4


def test_a_candidate_that_gets_a_hold_is_kept_and_keeps_its_streak():
    d = disk()
    out = see(replace(d, tags={"vhdgc-keep": ""}), row(d, streak_start=2), seq=5)
    r = out.change.row
    assert r.state is State.KEPT and r.streak_start == 2 and r.sightings(5) == 4 and r.delete_after is None


def test_a_kept_disk_whose_hold_goes_starts_as_a_fresh_candidate():
    d = disk()
    prev = row(d, state=State.KEPT, hold=DiskHold.TAG, first=NOW - 20 * DAY, streak_start=1)
    out = see(d, prev, seq=9)
    r = out.change.row
    assert out.change.event == "marked"
    assert (r.state, r.first_orphaned_at, r.streak_start, r.hold) == (State.CANDIDATE, NOW, 9, None)


# --- the lifecycle -------------------------------------------------------------------------------


def test_an_orphan_is_a_candidate_at_its_first_sighting():
    out = see(disk(), seq=4)
    r = out.change.row
    assert out.change.event == "marked"
    assert (r.state, r.first_orphaned_at, r.delete_after, r.streak_start) == (State.CANDIDATE, NOW, NOW + 7 * DAY, 4)
    assert (r.ownership_time, r.ownership_known, r.kind) == (DETACHED, True, Kind.MANAGED_DISK)
    assert out.due is None and out.delete is None


def test_a_never_attached_orphan_records_that_as_its_ownership_time():
    r = see(disk(last_ownership_update=None)).change.row
    assert r.ownership_time is None and r.ownership_known is True


def test_due_needs_both_grace_and_sightings():
    d = disk()
    p = pol(grace_period=7 * DAY, min_sightings=3)
    # grace over, only 2 sightings
    assert see(d, row(d, first=NOW - 8 * DAY, streak_start=2), p=p, seq=3).due is None
    # 3 sightings, grace not over
    assert see(d, row(d, first=NOW - 6 * DAY, streak_start=1), p=p, seq=3).due is None
    # both
    out = see(d, row(d, first=NOW - 7 * DAY, streak_start=1), p=p, seq=3)
    assert out.change.event == "due" and out.due.state is State.DUE and out.delete is out.due


def test_a_due_disk_unchanged_stays_due_with_no_write():
    d = disk()
    prev = row(d, state=State.DUE, first=NOW - 8 * DAY, streak_start=1)
    out = see(d, prev, seq=6)
    assert out.change is None and out.due is prev and out.delete is prev


def test_grace_zero_and_one_sighting_are_due_at_once():
    out = see(disk(), p=pol(grace_period=timedelta(0), min_sightings=1))
    assert out.change.event == "due" and out.delete is not None


def test_a_changed_ownership_time_starts_the_run_over():
    d = disk()
    prev = row(d, state=State.DUE, first=NOW - 20 * DAY, streak_start=1)
    moved = replace(d, last_ownership_update=NOW - 2 * DAY)  # attached and detached between passes
    out = see(moved, prev, seq=10)
    r = out.change.row
    assert out.change.event == "restarted"
    assert (r.state, r.first_orphaned_at, r.streak_start, r.ownership_time) == (State.CANDIDATE, NOW, 10, NOW - 2 * DAY)
    assert out.due is None and out.delete is None


def test_a_changed_grace_period_reschedules():
    d = disk()
    prev = row(d, first=NOW - 2 * DAY, streak_start=1, grace=7 * DAY)
    out = see(d, prev, p=pol(grace_period=10 * DAY), seq=2)
    assert out.change.event == "rescheduled" and out.change.row.delete_after == NOW + 8 * DAY


def test_report_mode_moves_candidate_to_due_and_never_further():
    d = disk()
    p = pol(mode="report")
    out = see(d, row(d, first=NOW - 8 * DAY, streak_start=1), p=p, seq=3)
    assert out.change.row.state is State.DUE and out.due is not None and out.delete is None
    assert recheck_disk(out.due, d, {}, p, NOW).action is RecheckAction.REFUSE


def test_policy_refuses_unknown_modes():
    with pytest.raises(ValueError, match="managed_disks.mode"):
        pol(mode="dry-run")
    with pytest.raises(ValueError, match="managed_disks.snapshots"):
        pol(snapshots="yes")


# --- the executor's re-check ----------------------------------------------------------------------


def due_row(d: DiskSeen) -> DiskRow:
    return row(d, state=State.DUE, first=NOW - 8 * DAY, streak_start=1)


def test_recheck_deletes_a_due_disk_still_orphaned_with_the_same_ownership_time():
    d = disk()
    r = recheck_disk(due_row(d), d, {}, pol(), NOW)
    assert r.action is RecheckAction.DELETE and r.hold is None


@pytest.mark.parametrize("case, fresh, holds, reason", [
    ("gone", None, {}, "gone: the disk no longer exists"),
    ("attached", dict(disk_state="Attached", managed_by=VM), {}, "in use: diskState Attached"),
    ("shared", dict(managed_by_extended=(VM,)), {}, f"in use: shared with {VM}"),
    ("not_read", dict(ownership_read=False), {}, "LastOwnershipUpdateTime not read by the GET"),
    ("operator", {}, {"x": "ops"}, "held (operator): kept by operator: ops"),
    ("locked", dict(locks=(LockSeen("lk", "CanNotDelete"),)), {}, "held (locked): CanNotDelete lock lk"),
    ("referenced", dict(referenced_by=(IMAGE,)), {}, f"held (referenced): referenced: source of {IMAGE}"),
    ("tagged", dict(tags={"vhdgc-keep": ""}), {}, "held (tag): tag vhdgc-keep"),
])
def test_recheck_refuses(case, fresh, holds, reason):
    d = disk()
    f = None if fresh is None else replace(d, **fresh)
    r = recheck_disk(due_row(d), f, {resource_key(d.id): v for v in holds.values()}, pol(), NOW)
    assert (r.action, r.reason) == (RecheckAction.REFUSE, reason)


def test_recheck_restarts_when_the_ownership_time_changed():
    d = disk()
    for changed in (NOW - 2 * DAY, None):
        r = recheck_disk(due_row(d), replace(d, last_ownership_update=changed), {}, pol(), NOW)
        assert r.action is RecheckAction.RESTART and "LastOwnershipUpdateTime changed" in r.reason


def test_recheck_refuses_rows_that_are_not_due_disks_and_other_ids():
    d = disk()
    assert recheck_disk(row(d), d, {}, pol(), NOW).action is RecheckAction.REFUSE
    assert recheck_disk(due_row(d), disk("other"), {}, pol(), NOW).reason.startswith("the GET answered another disk")
    early = replace(due_row(d), delete_after=NOW + HOUR)
    assert recheck_disk(early, d, {}, pol(), NOW).reason == "not due yet: grace period not over"


# --- snapshots -----------------------------------------------------------------------------------


def snap_see(s, prev=None, holds=None, p=None, now=NOW, seq=1):
    return decide_snapshot(s, prev, holds or {}, p or pol(), now, seq)


def test_a_snapshot_whose_source_is_gone_and_old_enough_is_an_orphan():
    out = snap_see(snapshot(), p=pol(grace_period=timedelta(0), min_sightings=1))
    c = out.classification
    assert c.deletable and c.reason == f"orphan: source disk gone ({disk_id('gone')})"
    assert out.change.row.kind is Kind.SNAPSHOT and out.change.row.ownership_time == NOW - 120 * DAY
    assert out.delete is not None


@pytest.mark.parametrize("kw, verdict, reason", [
    (dict(source_exists=True), DiskVerdict.IN_USE, f"source disk exists: {disk_id('gone')}"),
    (dict(source_exists=None), DiskVerdict.IN_USE, f"source {disk_id('gone')}: existence unknown"),
    (dict(source_resource_id=None), DiskVerdict.IN_USE, "no source disk (an import or upload)"),
    (dict(referenced_by=(IMAGE,)), DiskVerdict.IN_USE, f"referenced: source of {IMAGE}"),
    (dict(tags={"vhdgc-quarantine-of": disk_id()}), DiskVerdict.QUARANTINE, "a quarantine snapshot (vhdgc-quarantine-of)"),
    (dict(time_created=NOW - 90 * DAY + timedelta(seconds=1)), DiskVerdict.TOO_YOUNG, None),
    (dict(time_created=None), DiskVerdict.TOO_YOUNG, "no creation time: age unknown"),
])
def test_snapshots_that_are_not_orphans(kw, verdict, reason):
    out = snap_see(snapshot(**kw), p=pol(grace_period=timedelta(0), min_sightings=1))
    assert out.classification.verdict is verdict
    if reason is not None:
        assert out.classification.reason == reason
    assert out.change is None and out.due is None and out.delete is None


def test_a_referenced_snapshot_row_is_released_naming_the_hold():
    s = snapshot()
    prev = row(rid=s.id, kind=Kind.SNAPSHOT, ownership=s.time_created)
    out = snap_see(replace(s, referenced_by=(IMAGE,)), prev, seq=3)
    assert out.change.row.state is State.RELEASED and out.change.row.hold is DiskHold.REFERENCED


def test_snapshot_min_age_exactly_is_old_enough():
    assert classify_snapshot(snapshot(time_created=NOW - 90 * DAY), {}, pol(), NOW).deletable


def test_holds_apply_to_snapshots():
    s = snapshot(tags={"vhdgc-keep": ""})
    out = snap_see(s)
    assert out.change.row.state is State.KEPT and out.change.row.hold is DiskHold.TAG


@pytest.mark.parametrize("snapshots, mode", [("report", "delete"), ("delete", "report"), ("report", "report")])
def test_an_orphaned_snapshot_is_deletable_only_with_snapshots_delete(snapshots, mode):
    p = pol(snapshots=snapshots, mode=mode, grace_period=timedelta(0), min_sightings=1)
    out = snap_see(snapshot(), p=p)
    assert out.change.row.state is State.DUE and out.due is not None and out.delete is None
    assert recheck_snapshot(out.due, snapshot(), {}, p, NOW).action is RecheckAction.REFUSE


def test_a_snapshot_recreated_under_the_same_id_starts_over():
    s = snapshot()
    prev = row(rid=s.id, kind=Kind.SNAPSHOT, state=State.DUE, ownership=s.time_created)
    newer = replace(s, time_created=NOW - 100 * DAY)
    out = snap_see(newer, prev, seq=9)
    assert out.change.event == "restarted" and out.change.row.first_orphaned_at == NOW
    assert recheck_snapshot(prev, newer, {}, pol(), NOW).action is RecheckAction.RESTART


def test_recheck_snapshot_deletes_and_refuses():
    s = snapshot()
    due = row(rid=s.id, kind=Kind.SNAPSHOT, state=State.DUE, ownership=s.time_created)
    assert recheck_snapshot(due, s, {}, pol(), NOW).action is RecheckAction.DELETE
    assert recheck_snapshot(due, None, {}, pol(), NOW).reason == "gone: the snapshot no longer exists"
    back = recheck_snapshot(due, replace(s, source_exists=True), {}, pol(), NOW)
    assert back.action is RecheckAction.REFUSE and back.reason.startswith("source disk exists")
    assert recheck_snapshot(due, replace(s, locks=(LockSeen("lk", "ReadOnly"),)), {}, pol(), NOW).hold is DiskHold.LOCKED


# --- cost ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("sku, gib, tier", [
    ("Premium_LRS", 1, "P1"), ("Premium_LRS", 4, "P1"), ("Premium_LRS", 5, "P2"), ("Premium_LRS", 127, "P10"),
    ("Premium_LRS", 128, "P10"), ("Premium_LRS", 129, "P15"), ("Premium_ZRS", 1024, "P30"),
    ("StandardSSD_LRS", 4, "E1"), ("StandardSSD_ZRS", 33, "E6"), ("Standard_LRS", 4, "S4"),
    ("Standard_LRS", 32, "S4"), ("Standard_LRS", 8192, "S60"), ("Premium_LRS", 32767, "P80"),
])
def test_a_disk_bills_the_smallest_tier_at_least_its_size(sku, gib, tier):
    assert billed_tier(sku, gib * GIB)[0] == tier


def test_tier_sizes_and_limits():
    assert TIER_SIZES_GIB == {1: 4, 2: 8, 3: 16, 4: 32, 6: 64, 10: 128, 15: 256, 20: 512, 30: 1024, 40: 2048,
                              50: 4096, 60: 8192, 70: 16384, 80: 32767}
    assert billed_tier("Premium_LRS", 32767 * GIB + 1) is None
    assert billed_tier("PremiumV2_LRS", GIB) is None and billed_tier("Unknown_LRS", GIB) is None


def test_monthly_cost_from_the_table():
    p = DiskPricesConfig()
    assert disk_monthly_cost(p, "Premium_LRS", 100 * GIB) == p.premium_lrs["P10"]
    assert disk_monthly_cost(p, "StandardSSD_ZRS", 100 * GIB) == p.standard_ssd_zrs["E10"]
    assert disk_monthly_cost(p, "Standard_LRS", 4 * GIB) == p.standard_hdd_lrs["S4"]
    assert disk_monthly_cost(p, "PremiumV2_LRS", 100 * GIB + 1) == pytest.approx(101 * p.premium_v2_gb_month)
    assert disk_monthly_cost(p, "UltraSSD_LRS", 600 * GIB) == pytest.approx(1024 * p.ultra_gb_month)
    assert disk_monthly_cost(p, "Mystery_LRS", GIB) is None and disk_monthly_cost(p, None, GIB) is None


def test_ultra_rounds_to_its_sizes():
    assert [ultra_billed_gib(g * GIB) for g in (1, 5, 512, 513, 2048, 65536)] == [4, 8, 512, 1024, 2048, 65536]
    assert ultra_billed_gib(65536 * GIB + 1) is None


def test_snapshot_cost_is_by_bytes_held():
    p = DiskPricesConfig()
    assert snapshot_monthly_cost(p, 10 * GIB) == pytest.approx(10 * p.snapshot_gb_month)
    assert snapshot_monthly_cost(p, 10 * GIB, zrs=True) == pytest.approx(10 * p.snapshot_zrs_gb_month)
    assert snapshot_monthly_cost(p, None) is None


def test_a_price_table_must_price_every_tier_and_name_the_key():
    with pytest.raises(ValidationError, match=r"prices.disks.premium_lrs: no price for P2"):
        DiskPricesConfig(premium_lrs={"P1": 1.0})
    table = {f"S{n}": 1.0 for n in FAMILY_TIERS["S"]}
    with pytest.raises(ValidationError, match=r"prices.disks.standard_hdd_lrs: unknown tier S1"):
        DiskPricesConfig(standard_hdd_lrs={**table, "S1": 1.0})
    with pytest.raises(ValidationError, match="extra"):
        DiskPricesConfig(premium_gb_month=1.0)
    assert DiskPricesConfig(standard_hdd_lrs=table).standard_hdd_lrs["S80"] == 1.0


@settings(max_examples=300, deadline=None)
@given(
    sku=st.sampled_from(["Premium_LRS", "Premium_ZRS", "StandardSSD_LRS", "StandardSSD_ZRS", "Standard_LRS"]),
    a=st.integers(0, 32767 * GIB), b=st.integers(0, 32767 * GIB),
)
def test_tier_is_the_smallest_at_least_the_size_and_cost_is_monotone(sku, a, b):
    p = DiskPricesConfig()
    name, gib = billed_tier(sku, a)
    family = name[0]
    sizes = [TIER_SIZES_GIB[n] for n in FAMILY_TIERS[family]]
    assert gib * GIB >= a
    assert all(s * GIB < a for s in sizes if s < gib)  # no smaller tier would hold it
    assert billed_bytes(sku, a) == gib * GIB
    lo, hi = sorted((a, b))
    assert disk_monthly_cost(p, sku, lo) <= disk_monthly_cost(p, sku, hi)


@settings(max_examples=100, deadline=None)
@given(sku=st.sampled_from(["PremiumV2_LRS", "UltraSSD_LRS"]), a=st.integers(0, 65536 * GIB), b=st.integers(0, 65536 * GIB))
def test_per_gib_cost_is_monotone_and_never_below_the_size(sku, a, b):
    p = DiskPricesConfig()
    assert billed_bytes(sku, a) >= a
    lo, hi = sorted((a, b))
    assert disk_monthly_cost(p, sku, lo) <= disk_monthly_cost(p, sku, hi)


# --- lifecycle properties ------------------------------------------------------------------------

DISTURBANCES = ["Attached", "Reserved", "Frozen", "ActiveSAS", "ReadyToUpload", "managed_by", "shared", "referenced",
                "operator", "locked", "managed_group", "kubernetes", "site_recovery", "backup", "tag"]
HOLD_NAMES = {h.value for h in DiskHold}
steps = st.fixed_dictionaries({
    # at most one thing disturbs a pass, and most passes see a plain orphan (else runs never get due)
    "disturb": st.sampled_from([None] * 12 + DISTURBANCES),
    "owned_at": st.sampled_from([0] * 8 + [1, 2]),  # which ownership time (0: the first); changes restart
    "read": st.booleans(),  # whether this pass's GET read LastOwnershipUpdateTime
    "advance": st.sampled_from([timedelta(0), timedelta(minutes=1), HOUR, DAY, 3 * DAY]),
    "touched": st.sampled_from([False] * 9 + [True]),  # its ownership changed just before this pass (too young)
})

HOLD_KW = {
    "referenced": dict(referenced_by=(IMAGE,)), "locked": dict(locks=(LockSeen("lk", "CanNotDelete"),)),
    "managed_group": dict(group_managed_by="/aks"), "kubernetes": dict(tags={"k8s-azure-created-by": "x"}),
    "site_recovery": dict(tags={"ASR-ReplicaDisk": "x"}), "backup": dict(tags={"RSVaultBackup": "x"}),
    "tag": dict(group_tags={"vhdgc-keep": ""}), "operator": {}, None: {},
}


@settings(max_examples=400, deadline=None)
@given(
    st.lists(steps, min_size=1, max_size=25),
    st.sampled_from([timedelta(0), HOUR, 2 * DAY, 7 * DAY]),
    st.integers(1, 4),
    st.sampled_from([timedelta(0), HOUR]),
    st.sampled_from(["report", "delete"]),
)
def test_disk_lifecycle_invariants_over_random_passes(passes, grace, min_sightings, min_age, mode):
    """Over random passes, against a reference model of the run of sightings. (The mutations this was
    checked against: ownership changes not restarting, report mode deleting, sightings ignored,
    managedByExtended ignored, references ignored, min_age ignored; each fails it.)"""
    p = pol(grace_period=grace, min_sightings=min_sightings, min_age=min_age, mode=mode)
    now = NOW
    prev = None
    times = [NOW - 40 * DAY, NOW - 35 * DAY, NOW - 33 * DAY]
    touched_at = None
    streak_len, streak_since, streak_owner = 0, None, object()
    for seq, step in enumerate(passes, start=1):
        now = now + step["advance"]
        if step["touched"]:
            touched_at = now - timedelta(seconds=1)
        owned = touched_at if touched_at is not None and step["owned_at"] == 0 else times[step["owned_at"]]
        if step["touched"]:
            owned = touched_at
        dist = step["disturb"]
        hold_name = dist if dist in HOLD_NAMES else None
        d = disk(disk_state=dist if dist in IN_USE_DISK_STATES else "Unattached",
                 managed_by=VM if dist == "managed_by" else None, managed_by_extended=(VM,) if dist == "shared" else (),
                 last_ownership_update=owned if step["read"] else None, ownership_read=step["read"],
                 **HOLD_KW[hold_name])
        holds = {resource_key(d.id): "ops"} if hold_name == "operator" else {}
        out = decide_disk(d, prev, holds, p, now, seq)
        r = out.change.row if out.change is not None else prev

        in_use = dist in IN_USE_DISK_STATES or dist in ("managed_by", "shared")
        # the ownership time the decision may know: read now, or recorded by the stored row
        known = step["read"] or (prev is not None and prev.ownership_known)
        effective = owned if step["read"] else (prev.ownership_time if known else None)
        too_young = known and (min_age > timedelta(0) and now - effective < min_age)
        held = hold_name is not None
        free = not in_use and known and not too_young and not held

        # Reference model: the run of unheld orphan sightings with one ownership time.
        if free:
            if streak_len and streak_owner == effective:
                streak_len += 1
            else:
                streak_len, streak_since, streak_owner = 1, now, effective
        else:  # in use, held, too young, or unverified (then no row counts a streak either)
            streak_len, streak_since, streak_owner = 0, None, object()

        # Never deletable unless unattached, unowned, unheld, old enough, seen enough, past grace.
        if out.due is not None:
            assert free, "due while in use, held, unverified or too young"
            assert now >= out.due.first_orphaned_at + grace and out.due.sightings(seq) >= min_sightings
            assert streak_len >= min_sightings and now >= streak_since + grace
            assert out.due.ownership_time == effective and out.due.ownership_known
        if out.delete is not None:
            assert mode == "delete" and out.delete is out.due
        if mode == "report":
            assert out.delete is None, "report mode handed a disk over for deletion"
            if out.due is not None:
                assert recheck_disk(out.due, d, holds, p, now).action is RecheckAction.REFUSE
        if free and streak_len >= min_sightings and now >= streak_since + grace:
            assert out.due is not None, "an orphan that met grace and min_sightings is not due"

        if r is not None:
            assert 0 <= r.sightings(seq) <= seq
            if free:
                assert r.state in (State.CANDIDATE, State.DUE)
                assert r.sightings(seq) == streak_len  # monotone: one more each complete pass
                assert r.ownership_time == effective
                if prev is not None and prev.state in (State.CANDIDATE, State.DUE) and prev.ownership_time != effective:
                    assert r.sightings(seq) == 1 and r.first_orphaned_at == now
                    assert out.change.event == ("due" if out.due is not None else "restarted")
            # referenced comes before age and the ownership read; the other holds after them
            if not in_use and (hold_name == "referenced" or (held and known and not too_young)):
                assert r.state is State.KEPT and r.hold.value == hold_name
            if in_use and prev is not None and prev.state in (State.CANDIDATE, State.DUE, State.KEPT):
                assert r.state is State.RELEASED
        prev = r
