"""The managed-disk gateway (gc_daemon/azure/disks.py) against the ARM stand-in over HTTPS, with the real
ComputeManagementClient built the way the reference inventory builds it. Ground truth is the stand-in's
estate and its operations after every call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import re
import threading

import pytest

from gc_daemon.azure.disks import (
    MAX_NAME,
    DiskGateway,
    DiskOperationFailed,
    DiskOutcomeUnknown,
    DiskReadFailed,
    DiskRefused,
    is_disk_id,
)
from gc_daemon.disks import DiskRow, Kind
from gc_daemon.domain import State
from gc_daemon.execute_disks import snapshot_id
from gc_daemon.state.store import Store
from sandbox import arm as sb
from sandbox import arm_disks as ad

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-disks"
OWNERSHIP = "2026-02-01T10:00:00Z"
OWNED_AT = datetime(2026, 2, 1, 10, tzinfo=UTC)
VM_ID = sb.compute_id(SUB, RG, "virtualMachines", "vm1")
DISK_ID = sb.compute_id(SUB, RG, "disks", "orphan")
UNTIL = datetime(2026, 7, 1, tzinfo=UTC)
HANG_LIMIT = 120.0  # only catches a hang


def orphan(**kw: Any) -> dict[str, Any]:
    kw.setdefault("last_ownership_update_time", OWNERSHIP)
    return ad.managed_disk(SUB, RG, "orphan", size_gb=64, tags={"team": "a"}, zones=["2"],
                           time_created="2025-12-01T00:00:00Z", **kw)


def estate(*items: dict[str, Any]) -> dict[str, Any]:
    return sb.build_estate(*(items or (orphan(),)), subscriptions=[SUB])


def bucket(arm: sb.ArmStandIn, name: str) -> list[dict[str, Any]]:
    return arm.estate["subscriptions"][SUB].get(name, [])


def names(arm: sb.ArmStandIn, name: str) -> list[str]:
    return sorted(r["name"] for r in bucket(arm, name))


@pytest.fixture
def gateway(compute_inventory):
    """A gateway on the inventory's own clients (as wiring.build_collector makes it), no SDK retries
    (each fault is seen once), polling without waiting."""

    def make(lro_timeout: float = 60.0, poll_interval: float = 0.0, retry_total: int = 0) -> DiskGateway:
        inventory = compute_inventory([SUB], retry_total=retry_total, retry_backoff=0)
        return DiskGateway(lambda sub: inventory._client("compute", sub), timedelta(seconds=lro_timeout),
                           timedelta(seconds=poll_interval))

    return make


# -- reads -------------------------------------------------------------------------------------


def test_get_disk_has_the_ownership_time_and_the_disks_facts(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate(orphan(), ad.managed_disk(SUB, RG, "never", sku="StandardSSD_LRS"),
                          ad.managed_disk(SUB, RG, "shared", disk_state="Attached", max_shares=2,
                                          managed_by_extended=[VM_ID])))
    gw = gateway()
    got = gw.get_disk(DISK_ID)
    assert got.ownership_read is True and got.last_ownership_update == OWNED_AT
    assert (got.id, got.subscription, got.resource_group, got.name) == (DISK_ID, SUB, RG, "orphan")
    assert (got.sku, got.size_gb, got.size_bytes, got.disk_state) == ("Premium_LRS", 64, 64 * 1024**3, "Unattached")
    assert got.time_created == datetime(2025, 12, 1, tzinfo=UTC) and got.time_created.tzinfo is not None
    assert (got.tags, got.zones, got.location, got.provisioning_state) == ({"team": "a"}, ("2",), sb.DEFAULT_LOCATION,
                                                                         "Succeeded")
    assert got.managed_by is None and got.managed_by_extended == ()
    never = gw.get_disk(sb.compute_id(SUB, RG, "disks", "never"))
    assert never.last_ownership_update is None and never.ownership_read is True and never.sku == "StandardSSD_LRS"
    shared = gw.get_disk(sb.compute_id(SUB, RG, "disks", "shared"))
    assert shared.disk_state == "Attached" and shared.managed_by_extended == (VM_ID,)
    assert [m for m, p in arm.requests] == ["GET", "GET", "GET"]  # one GET each, no listing


def test_a_disk_or_snapshot_gone_is_none(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    gw = gateway()
    assert gw.get_disk(sb.compute_id(SUB, RG, "disks", "gone")) is None
    assert gw.get_disk(sb.compute_id(SUB, "rg-gone", "disks", "orphan")) is None
    assert gw.get_snapshot(sb.compute_id(SUB, RG, "snapshots", "gone")) is None


def test_a_failing_get_raises_and_is_never_none(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.add_fault(r"/disks/orphan$", status=503, method="GET")
    with pytest.raises(DiskReadFailed) as caught:
        gateway().get_disk(DISK_ID)
    assert caught.value.code == "ServiceUnavailable"
    assert names(arm, "disks") == ["orphan"]


def test_a_snapshot_read_back(arm: sb.ArmStandIn, gateway) -> None:
    snap = ad.incremental_snapshot(SUB, RG, "s1", source_disk_id=DISK_ID, size_gb=64, time_created="2026-01-01T00:00:00Z",
                                   tags={"vhdgc-quarantine-of": DISK_ID})
    arm.set_estate(estate(snap))
    got = gateway().get_snapshot(snap["id"])
    assert (got.id, got.name, got.resource_group, got.source_resource_id) == (snap["id"], "s1", RG, DISK_ID)
    assert got.source_exists is None and got.incremental is True and got.size_gb == 64
    assert got.time_created == datetime(2026, 1, 1, tzinfo=UTC) and got.tags == {"vhdgc-quarantine-of": DISK_ID}


def test_ids_are_checked() -> None:
    gw = DiskGateway(lambda sub: None, 60)
    with pytest.raises(ValueError):
        gw.get_disk(sb.compute_id(SUB, RG, "snapshots", "s"))
    with pytest.raises(ValueError):
        gw.delete_disk("https://acct.blob.core.windows.net/vhds/a.vhd")
    assert is_disk_id(DISK_ID) and is_disk_id(DISK_ID.lower())
    assert not is_disk_id(sb.compute_id(SUB, RG, "snapshots", "s")) and not is_disk_id("https://a/b/c.vhd")


# -- the quarantine snapshot -------------------------------------------------------------------


def test_quarantine_names_are_deterministic_valid_and_bound_to_the_ownership_time(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate(orphan(), ad.managed_disk(SUB, RG, "d" * 80)))
    gw = gateway()
    disk = gw.get_disk(DISK_ID)
    name = gw.quarantine_name(disk, OWNED_AT)
    assert name == gw.quarantine_name(disk, OWNED_AT) == DiskGateway(lambda s: None, 1).quarantine_name(disk, OWNED_AT)
    assert name.startswith("vhdgc-q-orphan-") and len(name) <= MAX_NAME
    assert gw.quarantine_name(disk, OWNED_AT + timedelta(seconds=1)) != name
    assert gw.quarantine_name(disk, None) not in (name, gw.quarantine_name(disk, OWNED_AT + timedelta(seconds=1)))
    long = gw.get_disk(sb.compute_id(SUB, RG, "disks", "d" * 80))
    long_name = gw.quarantine_name(long, None)
    assert len(long_name) == MAX_NAME and long_name[-1].isalnum()
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,78}[A-Za-z0-9_]", long_name)


@pytest.mark.parametrize("polls", [0, 3])
def test_quarantine_snapshot_is_made_tagged_and_waited_for(arm: sb.ArmStandIn, gateway, polls: int) -> None:
    arm.set_estate(estate())
    arm.set_lro(polls=polls)
    gw = gateway()
    disk = gw.get_disk(DISK_ID)
    name = gw.quarantine_name(disk, OWNED_AT)
    made = gw.create_quarantine_snapshot(disk, name, UNTIL)
    assert made == snapshot_id(DISK_ID, name)
    (stored,) = bucket(arm, "snapshots")
    assert stored["id"] == made and stored["location"] == sb.DEFAULT_LOCATION
    assert stored["tags"] == {"vhdgc-quarantine-of": DISK_ID, "vhdgc-quarantine-until": "2026-07-01T00:00:00+00:00"}
    props = stored["properties"]
    assert props["provisioningState"] == "Succeeded" and props["incremental"] is True
    assert props["creationData"]["createOption"] == "Copy" and props["creationData"]["sourceResourceId"] == DISK_ID
    (op,) = arm.operations
    assert (op.kind, op.status, op.in_progress_answers) == ("create", "Succeeded", polls)
    assert names(arm, "disks") == ["orphan"]  # the disk is untouched


def test_the_same_quarantine_snapshot_again_is_fine(arm: sb.ArmStandIn, gateway) -> None:
    """A retry after a crash: the PUT finds the snapshot made (200, no new operation)."""
    arm.set_estate(estate())
    gw = gateway()
    disk = gw.get_disk(DISK_ID)
    name = gw.quarantine_name(disk, OWNED_AT)
    first = gw.create_quarantine_snapshot(disk, name, UNTIL)
    assert gw.create_quarantine_snapshot(disk, name, UNTIL) == first
    assert names(arm, "snapshots") == [name] and len(arm.operations) == 1
    assert [m for m, p in arm.requests if p.split("?")[0].endswith(f"/snapshots/{name}")].count("PUT") == 2


def test_a_snapshot_of_that_name_made_from_another_disk_is_not_a_quarantine(arm: sb.ArmStandIn, gateway) -> None:
    other = sb.compute_id(SUB, RG, "disks", "other")
    arm.set_estate(estate(orphan(), ad.incremental_snapshot(SUB, RG, "taken", source_disk_id=other)))
    gw = gateway()
    with pytest.raises(DiskOperationFailed) as caught:
        gw.create_quarantine_snapshot(gw.get_disk(DISK_ID), "taken", UNTIL)
    assert caught.value.code == "QuarantineNameTaken"


def test_quarantine_snapshot_failing_raises_operation_failed(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.lro_failed(r"/snapshots/", "PUT", code="InternalDiskManagementError", message="copy failed")
    gw = gateway()
    disk = gw.get_disk(DISK_ID)
    with pytest.raises(DiskOperationFailed) as caught:
        gw.create_quarantine_snapshot(disk, gw.quarantine_name(disk, OWNED_AT), UNTIL)
    assert caught.value.code == "InternalDiskManagementError"
    assert bucket(arm, "snapshots")[0]["properties"]["provisioningState"] == "Failed"
    # Again (the next pass): the PUT finds the failed copy as it is (the executor deletes it and makes it again).
    with pytest.raises(DiskOperationFailed) as caught:
        gw.create_quarantine_snapshot(disk, gw.quarantine_name(disk, OWNED_AT), UNTIL)
    assert caught.value.code == "ProvisioningStateFailed"
    assert [op.kind for op in arm.operations] == ["create"]


def test_a_failed_snapshot_of_that_name_from_another_disk_is_not_ours(arm: sb.ArmStandIn, gateway) -> None:
    """Whatever its state: the executor redoes only a failed copy of the disk itself."""
    other = sb.compute_id(SUB, RG, "disks", "other")
    arm.set_estate(estate(orphan(), ad.incremental_snapshot(SUB, RG, "taken", source_disk_id=other,
                                                            provisioning_state="Failed")))
    gw = gateway()
    with pytest.raises(DiskOperationFailed) as caught:
        gw.create_quarantine_snapshot(gw.get_disk(DISK_ID), "taken", UNTIL)
    assert caught.value.code == "QuarantineNameTaken"
    assert names(arm, "snapshots") == ["taken"]


def test_quarantine_refused_by_a_read_only_lock(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate(orphan(), ad.management_lock(sb.rg_id(SUB, RG), "ro", "ReadOnly")))
    gw = gateway()
    disk = gw.get_disk(DISK_ID)
    with pytest.raises(DiskRefused) as caught:
        gw.create_quarantine_snapshot(disk, gw.quarantine_name(disk, OWNED_AT), UNTIL)
    assert caught.value.code == "ScopeLocked" and names(arm, "snapshots") == [] and arm.operations == []


# -- delete ------------------------------------------------------------------------------------


def test_delete_disk_waits_for_the_operation(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate(orphan(), ad.managed_disk(SUB, RG, "keep-me")))
    arm.set_lro(polls=2)
    assert gateway().delete_disk(DISK_ID) is None
    assert names(arm, "disks") == ["keep-me"]
    (op,) = arm.operations
    assert (op.kind, op.status, op.in_progress_answers, op.resource_id) == ("delete", "Succeeded", 2, DISK_ID)


def test_delete_of_a_disk_already_gone_is_done(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    gateway().delete_disk(sb.compute_id(SUB, RG, "disks", "gone"))
    assert names(arm, "disks") == ["orphan"] and arm.operations == []


def test_delete_where_arm_answers_404_is_refused(arm: sb.ArmStandIn, gateway) -> None:
    """A 404 to a DELETE (a subscription or group gone; a disk gone is 204): refused, nothing recorded as deleted."""
    arm.set_estate(estate())
    elsewhere = sb.compute_id("00000000-0000-0000-0000-0000000000ff", RG, "disks", "orphan")
    with pytest.raises(DiskRefused) as caught:
        gateway().delete_disk(elsewhere)
    assert caught.value.code == "SubscriptionNotFound" and names(arm, "disks") == ["orphan"]


@pytest.mark.parametrize("disk", [
    orphan(disk_state="Attached", managed_by=VM_ID),
    orphan(disk_state="Reserved", managed_by=VM_ID),
    orphan(disk_state="Attached", max_shares=2, managed_by_extended=[VM_ID]),
], ids=["attached", "reserved", "shared"])
def test_delete_of_a_disk_in_use_is_refused(arm: sb.ArmStandIn, gateway, disk: dict[str, Any]) -> None:
    arm.set_estate(estate(disk))
    with pytest.raises(DiskRefused) as caught:
        gateway(retry_total=3).delete_disk(DISK_ID)
    assert caught.value.code == "OperationNotAllowed"
    assert names(arm, "disks") == ["orphan"] and arm.operations == []
    assert [m for m, _ in arm.requests] == ["DELETE"]  # refused once, not retried


@pytest.mark.parametrize("scope", ["subscription", "group", "disk"])
def test_delete_under_a_lock_is_refused_with_scope_locked(arm: sb.ArmStandIn, gateway, scope: str) -> None:
    scope_id = {"subscription": f"/subscriptions/{SUB}", "group": sb.rg_id(SUB, RG), "disk": DISK_ID}[scope]
    arm.set_estate(estate(orphan(), ad.management_lock(scope_id, "lock", "CanNotDelete")))
    with pytest.raises(DiskRefused) as caught:
        gateway().delete_disk(DISK_ID)
    assert caught.value.code == "ScopeLocked" and scope_id in str(caught.value)
    assert names(arm, "disks") == ["orphan"] and arm.operations == []


def test_a_lock_refuses_a_snapshot_delete_too(arm: sb.ArmStandIn, gateway) -> None:
    snap = ad.incremental_snapshot(SUB, RG, "s1", source_disk_id=DISK_ID)
    arm.set_estate(estate(snap, ad.management_lock(snap["id"], "lock", "CanNotDelete")))
    with pytest.raises(DiskRefused) as caught:
        gateway().delete_snapshot(snap["id"])
    assert caught.value.code == "ScopeLocked" and names(arm, "snapshots") == ["s1"]


def test_delete_snapshot(arm: sb.ArmStandIn, gateway) -> None:
    snap = ad.incremental_snapshot(SUB, RG, "s1", source_disk_id=DISK_ID)
    arm.set_estate(estate(orphan(), snap))
    gateway().delete_snapshot(snap["id"])
    assert names(arm, "snapshots") == [] and names(arm, "disks") == ["orphan"]
    assert [(op.kind, op.status) for op in arm.operations] == [("delete", "Succeeded")]


def test_delete_operation_failing_raises_operation_failed_and_the_disk_stays(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.lro_failed(r"/disks/orphan$", "DELETE", code="InternalOperationError", message="the disk RP gave up")
    with pytest.raises(DiskOperationFailed) as caught:
        gateway().delete_disk(DISK_ID)
    assert caught.value.code == "InternalOperationError"
    assert names(arm, "disks") == ["orphan"]
    assert [(op.kind, op.status) for op in arm.operations] == [("delete", "Failed")]


def test_a_stuck_delete_has_an_unknown_outcome(arm: sb.ArmStandIn, gateway) -> None:
    """The operation never ends: past lro_timeout the gateway says it does not know, and its poller
    stops polling (the operation stays InProgress, the disk is still there)."""
    arm.set_estate(estate())
    arm.lro_stuck(r"/disks/orphan$", "DELETE")
    with pytest.raises(DiskOutcomeUnknown) as caught:
        gateway(lro_timeout=0.3, poll_interval=0.02).delete_disk(DISK_ID)
    assert caught.value.code == "OperationTimedOut"
    (op,) = arm.operations
    assert op.status == "InProgress" and op.in_progress_answers >= 1
    assert names(arm, "disks") == ["orphan"]
    for poller in [t for t in threading.enumerate() if t.name.startswith("LROPoller(")]:
        poller.join(HANG_LIMIT)  # it ends by itself (the deadline), no one resets the stand-in for it
        assert not poller.is_alive()


def test_a_stuck_quarantine_snapshot_has_an_unknown_outcome(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.lro_stuck(r"/snapshots/", "PUT")
    gw = gateway(lro_timeout=0.3, poll_interval=0.02)
    disk = gw.get_disk(DISK_ID)
    with pytest.raises(DiskOutcomeUnknown):
        gw.create_quarantine_snapshot(disk, gw.quarantine_name(disk, OWNED_AT), UNTIL)
    assert bucket(arm, "snapshots")[0]["properties"]["provisioningState"] == "Updating"


def test_a_lost_reply_has_an_unknown_outcome(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.lose_reply(r"/disks/orphan$", "DELETE", times=1)
    gw = gateway()
    with pytest.raises(DiskOutcomeUnknown) as caught:
        gw.delete_disk(DISK_ID)
    assert caught.value.code == "ServiceResponseError"
    assert names(arm, "disks") == [] and gw.get_disk(DISK_ID) is None  # it happened: a GET settles it


def test_polls_failing_past_the_retries_have_an_unknown_outcome(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.set_lro(polls=5)
    arm.add_fault(r"/operations/", status=500, method="GET")
    with pytest.raises(DiskOutcomeUnknown) as caught:
        gateway().delete_disk(DISK_ID)
    assert caught.value.code == "InternalServerError" and names(arm, "disks") == ["orphan"]


def test_one_failed_poll_is_retried_by_the_sdk(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.add_fault(r"/operations/", status=500, method="GET", times=1)
    gateway(retry_total=2).delete_disk(DISK_ID)
    assert names(arm, "disks") == []


@pytest.mark.parametrize("status", [500, 503])
def test_a_5xx_on_the_request_past_the_retries_has_an_unknown_outcome(arm: sb.ArmStandIn, gateway, status: int) -> None:
    arm.set_estate(estate())
    arm.add_fault(r"/disks/orphan$", status=status, method="DELETE")
    with pytest.raises(DiskOutcomeUnknown) as caught:
        gateway().delete_disk(DISK_ID)
    assert caught.value.code == {500: "InternalServerError", 503: "ServiceUnavailable"}[status]
    assert names(arm, "disks") == ["orphan"] and arm.operations == []


def test_throttling_is_retried_and_past_the_retries_a_failure(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    arm.add_fault(r"/disks/orphan$", status=429, retry_after=0, method="DELETE", times=1)
    gateway(retry_total=2).delete_disk(DISK_ID)
    assert [m for m, _ in arm.requests if m == "DELETE"] == ["DELETE", "DELETE"] and names(arm, "disks") == []
    arm.reset(estate())
    arm.add_fault(r"/disks/orphan$", status=429, retry_after=0, method="DELETE")
    with pytest.raises(DiskOperationFailed) as caught:
        gateway().delete_disk(DISK_ID)
    assert caught.value.code == "TooManyRequests" and names(arm, "disks") == ["orphan"] and arm.operations == []


# -- restore -----------------------------------------------------------------------------------


def deleted_row(**kw: Any) -> DiskRow:
    base = dict(id=DISK_ID, kind=Kind.MANAGED_DISK, state=State.DELETED, first_orphaned_at=None, delete_after=None,
                streak_start=None, subscription=SUB, resource_group=RG, name="orphan", sku="Premium_LRS",
                size_bytes=64 * 1024**3, location=sb.DEFAULT_LOCATION, zones=("2",), tags={"team": "a"})
    base.update(kw)
    return DiskRow(**base)


def test_restore_recreates_the_disk_from_its_quarantine_snapshot(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(estate())
    gw = gateway()
    disk = gw.get_disk(DISK_ID)
    snap = gw.create_quarantine_snapshot(disk, gw.quarantine_name(disk, OWNED_AT), UNTIL)
    gw.delete_disk(DISK_ID)
    assert names(arm, "disks") == []
    arm.set_lro(polls=2)
    assert gw.restore_disk(deleted_row(), snap) == DISK_ID
    (stored,) = bucket(arm, "disks")
    assert stored["id"] == DISK_ID and stored["location"] == sb.DEFAULT_LOCATION and stored["zones"] == ["2"]
    assert stored["sku"]["name"] == "Premium_LRS" and stored["properties"]["diskSizeGB"] == 64
    assert stored["tags"] == {"team": "a", "vhdgc-restored-from": snap}
    assert stored["properties"]["creationData"] == {"createOption": "Copy", "sourceResourceId": snap}
    assert stored["properties"]["provisioningState"] == "Succeeded" and stored["properties"]["diskState"] == "Unattached"
    assert arm.operations[-1].kind == "create" and arm.operations[-1].in_progress_answers == 2
    assert names(arm, "snapshots") == [snap.rsplit("/", 1)[1]]  # the snapshot stays until its quarantine ends


def test_restore_without_a_recorded_location_takes_the_snapshots(arm: sb.ArmStandIn, gateway) -> None:
    snap = ad.incremental_snapshot(SUB, RG, "q", source_disk_id=DISK_ID, size_gb=64, location="northeurope")
    arm.set_estate(sb.build_estate(snap, subscriptions=[SUB]))
    gateway().restore_disk(deleted_row(location=None, zones=(), size_bytes=None), snap["id"])
    (stored,) = bucket(arm, "disks")
    assert stored["location"] == "northeurope" and stored["properties"]["diskSizeGB"] == 64


def test_restore_from_a_snapshot_gone_is_refused(arm: sb.ArmStandIn, gateway) -> None:
    arm.set_estate(sb.build_estate(subscriptions=[SUB]))
    with pytest.raises(DiskRefused) as caught:
        gateway().restore_disk(deleted_row(), sb.compute_id(SUB, RG, "snapshots", "gone"))
    assert caught.value.code == "NotFound" and names(arm, "disks") == []


def test_restore_failing_raises_operation_failed(arm: sb.ArmStandIn, gateway) -> None:
    snap = ad.incremental_snapshot(SUB, RG, "q", source_disk_id=DISK_ID, size_gb=64)
    arm.set_estate(sb.build_estate(snap, subscriptions=[SUB]))
    arm.lro_failed(r"/disks/orphan$", "PUT", code="InternalDiskManagementError")
    with pytest.raises(DiskOperationFailed) as caught:
        gateway().restore_disk(deleted_row(), snap["id"])
    assert caught.value.code == "InternalDiskManagementError"


# -- wiring ------------------------------------------------------------------------------------


def test_build_collector_gives_the_collector_a_gateway_on_the_inventorys_clients(arm: sb.ArmStandIn, tmp_path,
                                                                                  monkeypatch) -> None:
    from gc_daemon.config import parse_config
    from gc_daemon.wiring import build_collector

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.cert_path))
    config = parse_config({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"credential": "emulator", "arm_endpoint": arm.url, "subscriptions": [SUB], "lro_timeout": "2m",
                  "lro_poll_interval": "1s", "retry_total": 0,
                  "storage_accounts": [{"name": "gcacct1", "blob_endpoint": "http://127.0.0.1:10000/gcacct1"}]},
    })
    arm.set_estate(estate())
    collector = build_collector(config)
    gw = collector.disks
    assert isinstance(gw, DiskGateway) and (gw.lro_timeout, gw.poll_interval) == (120.0, 1.0)
    assert gw._client_for(SUB) is collector.references._client("compute", SUB)  # one client per subscription
    assert gw.get_disk(DISK_ID).last_ownership_update == OWNED_AT
    assert any(p.startswith(f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/orphan")
               for m, p in arm.requests if m == "GET")
    collector.references.close()


def test_restore_of_a_disk_in_a_subscription_not_collected_is_a_usage_error(arm: sb.ArmStandIn, tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    cfg = tmp_path / "vhd-gc.yaml"
    cfg.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"credential": "emulator", "arm_endpoint": arm.url, "subscriptions": [SUB],
                  "storage_accounts": [{"name": "gcacct1", "blob_endpoint": "http://127.0.0.1:10000/gcacct1"}]},
    }))
    elsewhere = sb.compute_id("00000000-0000-0000-0000-0000000000ff", RG, "disks", "orphan")
    run = subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(cfg), "restore", elsewhere], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip() == ("vhd-gc: ID: subscription 00000000-0000-0000-0000-0000000000ff is not collected "
                                  "by this configuration")
    assert arm.requests == []  # nothing asked of ARM


def test_a_write_that_never_reaches_arm_is_a_failure_not_a_refusal(arm: sb.ArmStandIn) -> None:
    """No token (the credential fails): nothing was sent, nothing about the disk was refused."""
    from azure.core.exceptions import ClientAuthenticationError
    from azure.mgmt.compute import ComputeManagementClient

    class NoToken:
        def get_token(self, *scopes: str, **kwargs: Any):
            raise ClientAuthenticationError("no token for you")

        def get_token_info(self, *scopes: str, options: Any = None):
            raise ClientAuthenticationError("no token for you")

    arm.set_estate(estate())
    client = ComputeManagementClient(NoToken(), SUB, base_url=arm.url, connection_verify=arm.cert_path, retry_total=0)
    with pytest.raises(DiskOperationFailed) as caught:
        DiskGateway(lambda sub: client, 60, 0).delete_disk(DISK_ID)
    assert caught.value.code == "ClientAuthenticationError"
    assert arm.requests == [] and names(arm, "disks") == ["orphan"]


# -- vhd-gc restore ID (needs the store's disk tables) ----------------------------------------

needs_disk_store = pytest.mark.skipif(not hasattr(Store, "disk_row"),
                                      reason="the store's disk tables (issue 13, piece A) have not landed")


def cli(tmp_path, *args: str):
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(tmp_path / "vhd-gc.yaml"), *args],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)


def cli_config(arm: sb.ArmStandIn, tmp_path, monkeypatch):
    import yaml

    from gc_daemon.config import load_config

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.cert_path))
    path = tmp_path / "vhd-gc.yaml"
    path.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"credential": "emulator", "arm_endpoint": arm.url, "subscriptions": [SUB], "retry_total": 0,
                  "lro_poll_interval": "1s",
                  "storage_accounts": [{"name": "gcacct1", "blob_endpoint": "http://127.0.0.1:10000/gcacct1"}]},
    }))
    return load_config(str(path))


@needs_disk_store
def test_vhd_gc_restore_with_a_disk_id_recreates_it_from_its_quarantine_snapshot(arm: sb.ArmStandIn, tmp_path,
                                                                                  monkeypatch) -> None:
    from gc_daemon.disks import DiskChange
    from gc_daemon.wiring import open_store

    config = cli_config(arm, tmp_path, monkeypatch)
    snap = ad.incremental_snapshot(SUB, RG, "vhdgc-q-orphan-0123456789ab", source_disk_id=DISK_ID, size_gb=64,
                                   tags={"vhdgc-quarantine-of": DISK_ID})
    arm.set_estate(sb.build_estate(snap, subscriptions=[SUB]))  # the disk is gone, its snapshot is there
    store = open_store(config)
    gone = deleted_row(quarantine_snapshot=snap["id"], quarantine_until=UNTIL, deleted_at=datetime(2026, 6, 1, tzinfo=UTC))
    store.audit_disk(action="deleted", resource_id=DISK_ID, kind="managed_disk", subscription=SUB,
                     at=datetime(2026, 6, 1, tzinfo=UTC), actor="vhd-gc@test", changes=[DiskChange(gone, "deleted")])

    run = cli(tmp_path, "restore", DISK_ID.lower(), "--actor", "alice")  # the id in any case
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"restored {DISK_ID} from its quarantine snapshot; kept by an operator hold")
    (back,) = bucket(arm, "disks")
    assert back["id"] == DISK_ID and back["zones"] == ["2"] and back["sku"]["name"] == "Premium_LRS"
    assert back["tags"] == {"team": "a", "vhdgc-restored-from": snap["id"]}
    assert back["properties"]["creationData"]["sourceResourceId"] == snap["id"]
    assert back["properties"]["provisioningState"] == "Succeeded"
    row = store.disk_row(DISK_ID)
    assert row.state is State.KEPT and row.hold is not None and row.hold.value == "operator"
    assert store.disk_hold(DISK_ID) == "restored by an operator"

    again = cli(tmp_path, "restore", DISK_ID)
    assert again.returncode == 1
    assert again.stderr.strip() == f"vhd-gc: restore refused: {DISK_ID}: not deleted by vhd-gc (state kept)"
    assert len(bucket(arm, "disks")) == 1


@needs_disk_store
def test_vhd_gc_restore_of_a_disk_whose_snapshot_is_gone_is_refused(arm: sb.ArmStandIn, tmp_path, monkeypatch) -> None:
    from gc_daemon.disks import DiskChange
    from gc_daemon.wiring import open_store

    config = cli_config(arm, tmp_path, monkeypatch)
    arm.set_estate(sb.build_estate(subscriptions=[SUB]))
    store = open_store(config)
    gone = deleted_row(quarantine_snapshot=sb.compute_id(SUB, RG, "snapshots", "expired"))
    store.audit_disk(action="deleted", resource_id=DISK_ID, kind="managed_disk", subscription=SUB,
                     at=datetime(2026, 6, 1, tzinfo=UTC), actor="vhd-gc@test", changes=[DiskChange(gone, "deleted")])
    run = cli(tmp_path, "restore", DISK_ID)
    assert run.returncode == 1 and "no longer exists (the quarantine is over)" in run.stderr
    assert bucket(arm, "disks") == [] and [m for m, _ in arm.requests] == ["GET"]  # the snapshot's GET only
    assert store.disk_row(DISK_ID).state is State.DELETED
