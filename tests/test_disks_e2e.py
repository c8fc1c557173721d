"""Every rule of docs/contract.md's "What counts as an orphaned managed disk or snapshot", end to end:
the real CLI and collector, the real azure-mgmt-* clients over HTTPS against the ARM stand-in's
disks, snapshots, groups, locks and long-running operations (sandbox/arm_disks.py). Ground truth is
the stand-in's estate (is the disk still there? its quarantine snapshot?), checked with the report
(``report --kind managed_disk --format json``) and the audit log.

Ages are set in the seeded resources relative to now and the collector's clock is moved
(``scan(gc, advance=...)``): nothing waits on real time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sandbox import arm as a
from sandbox import arm_disks as ad
from tests.support.disks import (
    QUARANTINE_TAG,
    RG,
    VM,
    actions,
    add_resource,
    attach,
    audit,
    configure,
    disk,
    disk_id,
    estate_disk,
    exists,
    quarantine_of,
    report,
    row,
    scan,
    seed,
    set_ownership_time,
    snapshot,
    snapshot_id,
    tag,
    unresolved_intents,
    writes,
)
from tests.support.estate import SUB, SUB2

GIB = 1024**3
DAY = timedelta(days=1)
BOTH_DATABASES = pytest.mark.parametrize(
    "gc", [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


# -- the lifecycle ------------------------------------------------------------------------------------


@BOTH_DATABASES
def test_quarantine_then_delete_then_restore(gc):
    rid = disk_id("old-app-data")
    configure(gc, quarantine="30d")
    seed(gc, disk("old-app-data", size_gb=64, sku="Premium_LRS", zones=["2"], tags={"team": "a"}),
         disk("web-os", disk_state="Attached", managed_by=VM))

    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert "managed disks: 2 disks (1 unattached), 0 snapshots" in run.out
    assert "quarantine snapshots made 1, disks deleted 1" in run.out

    # Ground truth: the disk is gone, its quarantine snapshot is there, made before the delete.
    assert estate_disk(gc, rid) is None
    assert exists(gc, disk_id("web-os"))
    (snap,) = quarantine_of(gc, rid)
    assert tag(snap, QUARANTINE_TAG) == rid
    assert snap["properties"]["incremental"] is True
    assert snap["properties"]["provisioningState"] == "Succeeded"
    assert snap["properties"]["creationData"]["sourceResourceId"].lower() == rid.lower()
    assert snap["id"].lower().startswith(f"/subscriptions/{SUB}/resourcegroups/{RG}/".lower())
    put = [i for i, (m, p) in enumerate(gc.arm.requests) if m == "PUT" and "/snapshots/" in p]
    delete = [i for i, (m, p) in enumerate(gc.arm.requests) if m == "DELETE" and "/disks/old-app-data" in p]
    assert len(put) == 1 and len(delete) == 1 and put[0] < delete[0]

    rec = row(gc, rid)
    assert rec["state"] == "deleted" and rec["kind"] == "managed_disk"
    assert rec["url"].lower() == rid.lower() and rec["account"] is None and rec["container"] is None
    assert rec["blob"] == "old-app-data" and rec["subscription"] == SUB and rec["resource_group"].lower() == RG
    assert rec["sku"] == "Premium_LRS" and rec["size_bytes"] == 64 * GIB
    assert rec["quarantine_snapshot"].lower() == snap["id"].lower()
    assert disk_id("web-os").lower() not in report(gc)  # in use: never tracked
    assert actions(gc, snap["id"]) == ["quarantine-intent", "quarantined"]
    assert actions(gc, rid) == ["delete-intent", "deleted"]
    assert unresolved_intents(gc) == []

    # `vhd-gc restore ID`: the same disk again, from the snapshot, kept by an operator hold.
    run = gc.cli("restore", rid)
    assert run.code == 0, run.err
    back = estate_disk(gc, rid)
    assert back is not None and back["name"] == "old-app-data"
    assert back["sku"]["name"] == "Premium_LRS" and back["properties"]["diskSizeGB"] == 64
    assert back["zones"] == ["2"] and tag(back, "team") == "a"
    assert back["properties"]["creationData"]["sourceResourceId"].lower() == snap["id"].lower()
    assert back["properties"]["provisioningState"] == "Succeeded"
    rec = row(gc, rid)
    assert rec["state"] == "kept" and rec["hold"] == "operator"
    assert actions(gc, rid)[-2:] == ["restore-intent", "restored"]

    # The restored disk is an old leftover again, but held: passes in delete mode leave it alone.
    assert scan(gc, advance=10 * DAY).outcome == "complete"
    assert exists(gc, rid)
    assert row(gc, rid)["hold"] == "operator"


@pytest.mark.parametrize("mode, disks", [("delete", "report"), ("dry-run", "delete"), ("dry-run", "report")],
                         ids=["managed_disks-report", "dry-run", "both"])
def test_report_mode_and_dry_run_never_delete(gc, mode, disks):
    rid = disk_id("leftover")
    snap = snapshot_id("orphan-snap")
    configure(gc, mode=mode, disks=disks, snapshots="delete")
    seed(gc, disk("leftover"), snapshot("orphan-snap", source=disk_id("long-gone")))

    for step in range(3):
        run = gc.cli("scan")
        assert run.code == 0, run.err
    assert exists(gc, rid) and exists(gc, snap)
    assert writes(gc) == []  # not a snapshot, not a delete: nothing but reads
    assert row(gc, rid)["state"] == "due"  # would be deleted
    assert row(gc, snap)["state"] == "due"
    assert quarantine_of(gc, rid) == []
    assert [e for e in audit(gc) if e["action"].endswith("-intent")] == []


def test_grace_period_and_sightings(gc):
    rid = disk_id("leftover")
    configure(gc, grace_period="2d", min_sightings=2)
    seed(gc, disk("leftover"))

    assert scan(gc).outcome == "complete"
    first = row(gc, rid)
    assert first["state"] == "candidate" and first["sightings"] == 1
    orphaned = datetime.fromisoformat(first["first_orphaned_at"])
    assert datetime.fromisoformat(first["delete_after"]) == orphaned + 2 * DAY

    assert scan(gc, advance=DAY).outcome == "complete"  # two sightings, but the grace period runs on
    assert exists(gc, rid)
    second = row(gc, rid)
    assert second["state"] == "candidate" and second["sightings"] == 2

    assert scan(gc, advance=DAY + timedelta(minutes=1)).outcome == "complete"
    assert not exists(gc, rid)
    assert row(gc, rid)["state"] == "deleted"
    assert len(quarantine_of(gc, rid)) == 1


def test_one_sighting_is_not_enough_with_min_sightings_2(gc):
    rid = disk_id("leftover")
    configure(gc, grace_period="0s", min_sightings=2)
    seed(gc, disk("leftover"))
    assert scan(gc).outcome == "complete"
    assert exists(gc, rid) and row(gc, rid)["state"] == "candidate"
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    assert not exists(gc, rid)


def test_quarantine_0s_deletes_without_a_snapshot_and_cannot_restore(gc):
    rid = disk_id("leftover")
    configure(gc, quarantine="0s")
    seed(gc, disk("leftover"))

    assert scan(gc).outcome == "complete"
    assert not exists(gc, rid)
    assert quarantine_of(gc, rid) == []
    assert [p for m, p in gc.arm.requests if m == "PUT"] == []
    rec = row(gc, rid)
    assert rec["state"] == "deleted" and rec["quarantine_snapshot"] is None
    assert actions(gc, rid) == ["delete-intent", "deleted"]

    run = gc.cli("restore", rid)
    assert run.code != 0
    assert "quarantine" in (run.err + run.out)
    assert not exists(gc, rid)


def test_quarantine_expiry_deletes_only_the_snapshots_vhd_gc_made(gc):
    rid = disk_id("leftover")
    past = (datetime.now(UTC) - DAY).isoformat()
    # Someone's snapshot that looks like a quarantine snapshot, its time over: vhd-gc did not make it.
    foreign = snapshot("hand-made", source=disk_id("other-gone"),
                       tags={QUARANTINE_TAG: disk_id("other-gone"), "vhdgc-quarantine-until": past})
    configure(gc, quarantine="1d")
    seed(gc, disk("leftover"), foreign)

    assert scan(gc).outcome == "complete"
    (snap,) = quarantine_of(gc, rid)
    assert not exists(gc, rid) and exists(gc, foreign["id"])

    assert scan(gc, advance=12 * timedelta(hours=1)).outcome == "complete"  # within the quarantine
    assert exists(gc, snap["id"])

    assert scan(gc, advance=DAY).outcome == "complete"  # the quarantine is over
    assert not exists(gc, snap["id"])
    assert exists(gc, foreign["id"])  # never vhd-gc's to delete
    assert actions(gc, snap["id"]) == ["quarantine-intent", "quarantined", "delete-intent", "deleted"]
    assert actions(gc, foreign["id"]) == []
    assert row(gc, rid)["state"] == "deleted"  # the disk's record stays

    run = gc.cli("restore", rid)  # nothing to restore from any more
    assert run.code != 0 and not exists(gc, rid)


# -- in use, too young, referenced ----------------------------------------------------------------------


IN_USE = {
    "attached": dict(disk_state="Attached", managed_by=VM),
    "reserved": dict(disk_state="Reserved", managed_by=VM),
    "frozen": dict(disk_state="Frozen"),
    "active-sas": dict(disk_state="ActiveSAS"),
    "active-sas-frozen": dict(disk_state="ActiveSASFrozen"),
    "ready-to-upload": dict(disk_state="ReadyToUpload"),
    "active-upload": dict(disk_state="ActiveUpload"),
    "managed-by-only": dict(disk_state="Unattached", managed_by=VM),
    "shared": dict(disk_state="Unattached", max_shares=2, managed_by_extended=[VM]),
}


def test_every_in_use_state_is_never_tracked_nor_deleted(gc):
    configure(gc)
    seed(gc, *(disk(name, **kw) for name, kw in IN_USE.items()), disk("leftover"))
    for _ in range(2):
        assert scan(gc, advance=30 * DAY).outcome == "complete"
    for name in IN_USE:
        assert exists(gc, disk_id(name)), name
    assert not exists(gc, disk_id("leftover"))  # the one orphan: the pass was armed
    assert set(report(gc)) == {disk_id("leftover").lower()}
    deleted = {p.split("?")[0].rsplit("/", 1)[-1] for m, p in gc.arm.requests if m == "DELETE" and "/disks/" in p}
    assert deleted == {"leftover"}


def test_too_young_since_the_last_detach_or_since_creation(gc):
    configure(gc, min_age="7d")
    seed(gc,
         disk("detached-2d", detached=2 * DAY, created=100 * DAY),
         disk("new-never-attached", detached=None, created=2 * DAY),
         disk("old-never-attached", detached=None, created=30 * DAY),
         disk("detached-10d", detached=10 * DAY, created=100 * DAY))

    assert scan(gc).outcome == "complete"
    assert exists(gc, disk_id("detached-2d")) and exists(gc, disk_id("new-never-attached"))
    assert not exists(gc, disk_id("old-never-attached")) and not exists(gc, disk_id("detached-10d"))
    rows = report(gc)
    assert disk_id("detached-2d").lower() not in rows and disk_id("new-never-attached").lower() not in rows
    assert rows[disk_id("old-never-attached").lower()]["state"] == "deleted"

    # Five days later (the collector's clock), both are past min_age: leftovers like any other.
    assert scan(gc, advance=5 * DAY + timedelta(hours=1)).outcome == "complete"
    assert not exists(gc, disk_id("detached-2d")) and not exists(gc, disk_id("new-never-attached"))


def test_too_young_with_the_services_clocks_moved_as_the_collectors(gc):
    """The same rule with the clock check at its strict default: the storage services' clocks (Azurite
    behind the date-shift proxy, tests/support/dateshift.py) move with the collector's, as real clocks
    do when time passes; a disk's age is counted on the pass's clock from its ARM times."""
    from tests.support.dateshift import DateShift

    proxy = DateShift(gc.azurite.blob_endpoint("gcacct1").rsplit("/", 1)[0])
    try:
        accounts = [{"name": n, "blob_endpoint": proxy.endpoint(n), "key_env": f"{n.upper()}_KEY"}
                    for n in ("gcacct1", "gcacct2")]
        configure(gc, min_age="7d", azure={"storage_accounts": accounts, "max_clock_skew": "5m"})
        seed(gc, disk("detached-2d", detached=2 * DAY, created=100 * DAY),
             disk("new-never-attached", detached=None, created=2 * DAY))
        assert scan(gc).outcome == "complete"
        assert exists(gc, disk_id("detached-2d")) and exists(gc, disk_id("new-never-attached"))
        assert report(gc) == {}

        later = 5 * DAY + timedelta(hours=1)
        proxy.offset = later  # five days pass, for every clock
        assert scan(gc, advance=later).outcome == "complete"
        assert not exists(gc, disk_id("detached-2d")) and not exists(gc, disk_id("new-never-attached"))
    finally:
        proxy.close()


def _image_naming(name: str, *, os_disk: str | None = None, data_snapshot: str | None = None) -> dict:
    img = a.image(SUB, RG, name)
    profile = img["properties"]["storageProfile"]
    profile["osDisk"].pop("blobUri", None)
    if os_disk:
        profile["osDisk"]["managedDisk"] = {"id": os_disk}
    else:
        profile["osDisk"].pop("managedDisk", None)
    if data_snapshot:
        profile["dataDisks"] = [{"lun": 0, "snapshot": {"id": data_snapshot}, "caching": "None",
                                 "storageAccountType": "Standard_LRS"}]
    return img


def _gallery_version_naming(source: str, os_snapshot: str, data_disk: str) -> list[dict]:
    version = a.gallery_image_version(SUB, RG, "gal", "app", "1.0.0")
    profile = version["properties"]["storageProfile"]
    profile["source"] = {"id": source}
    profile["osDiskImage"] = {"hostCaching": "ReadWrite", "sizeInGB": 30, "source": {"id": os_snapshot}}
    profile["dataDiskImages"] = [{"lun": 0, "hostCaching": "None", "sizeInGB": 32, "source": {"id": data_disk}}]
    return [a.gallery(SUB, RG, "gal"), a.gallery_image(SUB, RG, "gal", "app"), version]


def test_disks_and_snapshots_an_image_or_gallery_version_names_are_in_use(gc):
    gone = disk_id("long-gone")
    configure(gc, snapshots="delete", snapshot_min_age="1d")
    seed(gc,
         disk("image-os"), snapshot("image-data-snap", source=gone),
         disk("gallery-source"), snapshot("gallery-os-snap", source=gone), disk("gallery-data"),
         _image_naming("golden", os_disk=disk_id("image-os"), data_snapshot=snapshot_id("image-data-snap")),
         *_gallery_version_naming(disk_id("gallery-source"), snapshot_id("gallery-os-snap"), disk_id("gallery-data")),
         disk("leftover"), snapshot("orphan-snap", source=gone))

    for _ in range(2):
        assert scan(gc, advance=30 * DAY).outcome == "complete"
    named_disks = ("image-os", "gallery-source", "gallery-data")
    named_snaps = ("image-data-snap", "gallery-os-snap")
    for name in named_disks:
        assert exists(gc, disk_id(name)), name
    for name in named_snaps:
        assert exists(gc, snapshot_id(name)), name
    assert not exists(gc, disk_id("leftover")) and not exists(gc, snapshot_id("orphan-snap"))  # armed
    disks = report(gc)
    for name in named_disks:
        rec = disks[disk_id(name).lower()]
        assert (rec["state"], rec["hold"]) == ("kept", "referenced"), name
    snaps = report(gc, "snapshot")
    for name in named_snaps:
        assert snaps.get(snapshot_id(name).lower(), {}).get("state") in (None, "released"), name


# -- holds ----------------------------------------------------------------------------------------------

AKS = f"/subscriptions/{SUB}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/k1"

# name -> (resources, the hold the report names). Every disk is an old unattached leftover.
HOLDS = {
    "tag-on-disk": ([disk("tag-on-disk", tags={"vhdgc-keep": "INC-7"})], "tag"),
    "tag-on-group": ([ad.resource_group(SUB, "rg-keep", tags={"VHDGC-KEEP": ""}),
                      disk("tag-on-group", rg="rg-keep")], "tag"),
    "k8s-tag": ([disk("k8s-tag", tags={"kubernetes.io-created-for-pvc-name": "data-db-0"})], "kubernetes"),
    "k8s-created-by": ([disk("k8s-created-by", tags={"k8s-azure-created-by": "kubernetes-azure-dd"})], "kubernetes"),
    "pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0": ([disk("pvc-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")], "kubernetes"),
    "kubernetes-dynamic-pvc-0b1c2d3e": ([disk("kubernetes-dynamic-pvc-0b1c2d3e")], "kubernetes"),
    "asr-tag": ([disk("asr-tag", tags={"ASR-ReplicaDisk": "web-01"})], "site_recovery"),
    "seed-tag": ([disk("seed-tag", tags={"asrseeddisk": "1"})], "site_recovery"),
    "ms-asr-web-01-os": ([disk("ms-asr-web-01-os")], "site_recovery"),
    "asrseeddisk-web-01": ([disk("asrseeddisk-web-01")], "site_recovery"),
    "web-01-os-ASRReplica": ([disk("web-01-os-ASRReplica")], "site_recovery"),
    "backup-restore": ([disk("backup-restore", tags={"RSVaultBackup": "vault1"})], "backup"),
    "in-mc-group": ([ad.resource_group(SUB, "MC_rg-aks_k1_westeurope", managed_by=AKS),
                     disk("in-mc-group", rg="MC_rg-aks_k1_westeurope")], "managed_group"),
    "lock-on-disk": ([disk("lock-on-disk", rg="rg-l1"),
                      ad.management_lock(disk_id("lock-on-disk", "rg-l1"), "nodelete", "CanNotDelete")], "locked"),
    "lock-on-group": ([disk("lock-on-group", rg="rg-l2"),
                       ad.management_lock(a.rg_id(SUB, "rg-l2"), "ro", "ReadOnly")], "locked"),
    "lock-on-subscription": ([disk("lock-on-subscription", sub=SUB2),
                              ad.management_lock(f"/subscriptions/{SUB2}", "sub-lock", "CanNotDelete")], "locked"),
}


def _held_id(name: str) -> str:
    for resource in HOLDS[name][0]:
        if resource.get("type", "").lower() == "microsoft.compute/disks":
            return resource["id"]
    raise AssertionError(name)


def test_every_hold_by_name_keeps_the_disk_and_the_report_names_it(gc):
    configure(gc, azure={"subscriptions": [SUB, SUB2]})
    seed(gc, *(r for resources, _ in HOLDS.values() for r in resources), disk("leftover"))

    for _ in range(3):
        assert scan(gc, advance=30 * DAY).outcome == "complete"
    assert not exists(gc, disk_id("leftover"))  # the pass was armed
    rows = report(gc)
    wrong = {}
    for name, (_, hold) in HOLDS.items():
        rid = _held_id(name)
        rec = rows.get(rid.lower())
        if not exists(gc, rid) or rec is None or (rec["state"], rec["hold"]) != ("kept", hold):
            wrong[name] = (exists(gc, rid), rec and (rec["state"], rec["hold"]), hold)
        assert rec is None or rec["delete_after"] is None
    assert wrong == {}
    assert quarantine_of(gc, _held_id("k8s-tag")) == []
    deleted = {p.split("?")[0].rsplit("/", 1)[-1] for m, p in gc.arm.requests if m == "DELETE" and "/disks/" in p}
    assert deleted == {"leftover"}

    run = gc.cli("explain", _held_id("asr-tag"))
    assert run.code == 0, run.err
    assert "site_recovery" in run.out or "Site Recovery" in run.out


def test_operator_keep_holds_a_disk_and_unkeep_lets_it_go(gc):
    rid = disk_id("precious")
    configure(gc)
    seed(gc, disk("precious"))

    run = gc.cli("keep", rid, "--reason", "legal hold 7")
    assert run.code == 0, run.err
    assert scan(gc).outcome == "complete"
    assert exists(gc, rid)
    rec = row(gc, rid)
    assert (rec["state"], rec["hold"]) == ("kept", "operator")

    run = gc.cli("unkeep", rid)
    assert run.code == 0, run.err
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    assert not exists(gc, rid)
    assert row(gc, rid)["state"] == "deleted"


# -- changed since marking -----------------------------------------------------------------------------


def test_ownership_time_changed_since_marking_restarts_the_run(gc):
    rid = disk_id("leftover")
    configure(gc, min_sightings=2)
    seed(gc, disk("leftover"))
    assert scan(gc).outcome == "complete"
    assert row(gc, rid)["state"] == "candidate"

    # Attached and detached again between two passes: unattached, old enough, but not the disk marked.
    set_ownership_time(gc, rid, datetime.now(UTC) - 20 * DAY)
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    assert exists(gc, rid) and quarantine_of(gc, rid) == []
    refused = [e for e in audit(gc, rid) if e["action"] == "delete-refused"]
    assert len(refused) == 1 and "LastOwnershipUpdateTime" in refused[0]["reason"]
    assert "delete-intent" not in actions(gc, rid)
    rec = row(gc, rid)
    assert rec["state"] == "candidate" and rec["sightings"] <= 1

    assert scan(gc, advance=timedelta(minutes=2)).outcome == "complete"  # the new run reaches due
    assert not exists(gc, rid)
    assert len(quarantine_of(gc, rid)) == 1


def test_attached_since_marking_releases_it(gc):
    rid = disk_id("leftover")
    configure(gc, min_sightings=2)
    seed(gc, disk("leftover"))
    assert scan(gc).outcome == "complete"
    assert row(gc, rid)["state"] == "candidate"

    attach(gc, rid)
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    assert exists(gc, rid)
    assert row(gc, rid)["state"] == "released"
    assert writes(gc) == []


# -- refusals and failures of the write ----------------------------------------------------------------


def _on_quarantine_snapshot(gc, action) -> None:
    """``action()`` when the quarantine snapshot's PUT arrives: between the re-check and the delete."""
    gc.arm.on_request(r"/snapshots/", "PUT", lambda method, path: action())


@pytest.mark.parametrize("code", ["OperationNotAllowed", "ScopeLocked"])
def test_a_409_refusal_is_recorded_and_the_run_restarts(gc, code):
    rid = disk_id("leftover")
    configure(gc, grace_period="1d")
    seed(gc, disk("leftover"))
    assert scan(gc).outcome == "complete"  # marked
    if code == "OperationNotAllowed":
        _on_quarantine_snapshot(gc, lambda: attach(gc, rid))  # a VM took it meanwhile
    else:
        _on_quarantine_snapshot(gc, lambda: add_resource(gc, ad.management_lock(a.rg_id(SUB, RG), "freeze", "CanNotDelete")))

    result = scan(gc, advance=DAY + timedelta(minutes=1))
    assert result.outcome == "complete"
    assert exists(gc, rid)
    refused = [e for e in audit(gc, rid) if e["action"] == "delete-refused"]
    assert [e["error_code"] for e in refused] == [code]
    assert actions(gc, rid) == ["delete-intent", "delete-refused"]
    rec = row(gc, rid)
    assert rec["state"] in ("candidate", "released", "kept")
    assert rec["state"] != "due" and rec["state"] != "deleted"
    # The run started over: a new grace period from the refusal.
    if rec["state"] == "candidate":
        assert datetime.fromisoformat(rec["delete_after"]) > datetime.now(UTC) + DAY
    delete_requests = [p for m, p in gc.arm.requests if m == "DELETE" and "/disks/" in p]
    assert len(delete_requests) == 1  # never retried blindly

    # The next pass sees why: attached (released) or locked (kept).
    assert scan(gc, advance=DAY + 2 * timedelta(minutes=1)).outcome == "complete"
    assert exists(gc, rid)
    rec = row(gc, rid)
    expected = ("released", None) if code == "OperationNotAllowed" else ("kept", "locked")
    assert (rec["state"], rec["hold"]) == expected
    assert unresolved_intents(gc) == []


def test_a_failing_quarantine_snapshot_stops_the_delete(gc):
    rid = disk_id("leftover")
    configure(gc)
    seed(gc, disk("leftover"))
    gc.arm.lro_failed(r"/snapshots/", "PUT", code="InternalDiskManagementError", message="copy failed")

    assert scan(gc).outcome == "complete"
    assert exists(gc, rid)
    assert [p for m, p in gc.arm.requests if m == "DELETE"] == []
    (snap,) = quarantine_of(gc, rid)
    assert snap["properties"]["provisioningState"] == "Failed"
    assert actions(gc, snap["id"]) == ["quarantine-intent", "quarantine-failed"]
    assert "delete-intent" not in actions(gc, rid)
    assert row(gc, rid)["state"] == "due"

    gc.arm.disk_rp.clear_rules()  # Azure recovers: the next pass quarantines and deletes
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    assert not exists(gc, rid)
    (again,) = quarantine_of(gc, rid)
    assert again["id"] == snap["id"] and again["properties"]["provisioningState"] == "Succeeded"
    # The failed copy (a PUT over it answers it as it is) was deleted, audited, and made again.
    assert actions(gc, snap["id"]) == ["quarantine-intent", "quarantine-failed",
                                       "quarantine-intent", "delete-intent", "deleted", "quarantined"]
    assert row(gc, rid)["state"] == "deleted"
    assert unresolved_intents(gc) == []


def test_a_failing_delete_operation_is_recorded_and_the_disk_stays(gc):
    rid = disk_id("leftover")
    configure(gc)
    seed(gc, disk("leftover"))
    gc.arm.lro_failed(r"/disks/leftover$", "DELETE", code="InternalOperationError", message="delete failed")

    assert scan(gc).outcome == "complete"
    assert exists(gc, rid)
    failed = [e for e in audit(gc, rid) if e["action"] == "delete-failed"]
    assert len(failed) == 1 and failed[0]["error_code"]
    assert actions(gc, rid) == ["delete-intent", "delete-failed"]
    assert len(quarantine_of(gc, rid)) == 1
    assert row(gc, rid)["state"] == "due"

    gc.arm.disk_rp.clear_rules()
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    assert not exists(gc, rid)
    assert len(quarantine_of(gc, rid)) == 1  # the retry PUT the same snapshot, not a second one
    assert row(gc, rid)["state"] == "deleted"
    assert unresolved_intents(gc) == []


# -- snapshots -----------------------------------------------------------------------------------------


def test_orphaned_snapshots_are_deleted_only_with_snapshots_delete(gc):
    gone = disk_id("long-gone")
    configure(gc, snapshots="report", snapshot_min_age="90d")
    seed(gc,
         disk("source-exists", disk_state="Attached", managed_by=VM),
         snapshot("orphan", source=gone, age=120 * DAY),
         snapshot("young-orphan", source=gone, age=10 * DAY),
         snapshot("of-existing", source=disk_id("source-exists"), age=120 * DAY),
         a.snapshot(SUB, RG, "imported", time_created=datetime.now(UTC) - 200 * DAY))

    assert scan(gc).outcome == "complete"
    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"
    for name in ("orphan", "young-orphan", "of-existing", "imported"):
        assert exists(gc, snapshot_id(name)), name
    snaps = report(gc, "snapshot")
    assert snaps[snapshot_id("orphan").lower()]["state"] == "due"
    assert set(snaps) == {snapshot_id("orphan").lower()}

    configure(gc, snapshots="delete", snapshot_min_age="90d")
    assert scan(gc, advance=2 * timedelta(minutes=1)).outcome == "complete"
    assert not exists(gc, snapshot_id("orphan"))
    for name in ("young-orphan", "of-existing", "imported"):
        assert exists(gc, snapshot_id(name)), name
    assert report(gc, "snapshot")[snapshot_id("orphan").lower()]["state"] == "deleted"
    assert actions(gc, snapshot_id("orphan")) == ["delete-intent", "deleted"]


# -- the blast-radius guard ---------------------------------------------------------------------------


def test_the_blast_radius_guard_counts_disks(gc):
    configure(gc, blast_radius={"max_new_share": 0.2, "min_new": 3})
    seed(gc, *(disk(f"leftover-{i}") for i in range(5)))

    run = gc.cli("scan")
    assert run.code == 3, (run.code, run.err)
    assert "blast radius" in run.err + run.out
    assert all(exists(gc, disk_id(f"leftover-{i}")) for i in range(5))
    assert report(gc) == {}  # nothing marked
    assert writes(gc) == []

    assert gc.cli("confirm-pass").code == 0
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert not any(exists(gc, disk_id(f"leftover-{i}")) for i in range(5))


def test_confirm_pass_lets_through_what_the_guard_held_back_of_disks(gc):
    """The store's side of the guard, without Azure: a pass held back by 5 new disk candidates is
    confirmed for about 5, not for its 0 new blobs (which would block it again for ever)."""
    from gc_daemon.config import load_config
    from gc_daemon.wiring import open_store

    store = open_store(load_config(gc.config_path))
    now = datetime.now(UTC)
    pass_id = store.begin_pass(now, "delete", "test")
    store.finish_pass(pass_id, "incomplete", now, error="blast radius", stats={
        "blocked": "this pass would newly mark 5 of 5 VHDs, unattached disks and snapshots",
        "new_candidates": 0, "new_bytes": 0, "new_disk_candidates": 5, "new_disk_bytes": 5 * 32 * GIB})
    run = gc.cli("confirm-pass")
    assert run.code == 0, run.err
    assert "5 disks and snapshots" in run.out
    confirmed = store.pass_confirmation()
    assert (confirmed["new"], confirmed["bytes"]) == (5, 5 * 32 * GIB)


def test_an_operator_keep_during_the_quarantine_snapshot_stops_the_delete(gc):
    """`vhd-gc keep` takes effect for every deletion that starts after it returns: one taken while
    the quarantine snapshot is being made stops the delete that would follow it."""
    from gc_daemon.config import load_config
    from gc_daemon.wiring import open_store

    rid = disk_id("leftover")
    configure(gc)
    seed(gc, disk("leftover"))
    store = open_store(load_config(gc.config_path))
    gc.arm.on_request(r"/snapshots/", "PUT",
                      lambda m, p: store.add_disk_hold(rid, "wait, still needed", "dana", datetime.now(UTC)))

    assert scan(gc).outcome == "complete"
    assert exists(gc, rid)
    assert [p for m, p in gc.arm.requests if m == "DELETE"] == []
    assert len(quarantine_of(gc, rid)) == 1  # made, and harmless: it expires with its quarantine
    refused = [e for e in audit(gc, rid) if e["action"] == "delete-refused"]
    assert len(refused) == 1 and "operator" in (refused[0]["reason"] or "") + (refused[0]["error_code"] or "")
    assert "delete-intent" not in actions(gc, rid)
    rec = row(gc, rid)
    assert (rec["state"], rec["hold"]) == ("kept", "operator")


def test_disks_and_blobs_share_max_deletes_per_pass(gc):
    blobs = [gc.page("left", f"left-{i}.vhd") for i in range(2)]
    disks = [disk_id(f"left-{i}") for i in range(3)]
    configure(gc, max_deletes_per_pass=3, min_age="0s")  # the blobs were just written
    seed(gc, *(disk(f"left-{i}") for i in range(3)))

    assert scan(gc).outcome == "complete"
    gone_blobs = [u for u in blobs if not gc.exists("left", u.rsplit("/", 1)[-1])]
    gone_disks = [d for d in disks if not exists(gc, d)]
    assert len(gone_blobs) + len(gone_disks) == 3
    due = [d for d in disks if row(gc, d)["state"] == "due"]
    assert len(due) == 3 - len(gone_disks)

    assert scan(gc, advance=timedelta(minutes=1)).outcome == "complete"  # the rest, next pass
    assert not any(exists(gc, d) for d in disks)
    assert not any(gc.exists("left", u.rsplit("/", 1)[-1]) for u in blobs)
