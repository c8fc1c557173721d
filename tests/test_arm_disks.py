"""The ARM stand-in's disks, snapshots, resource groups and locks (sandbox/arm_disks.py), read and
written with the real SDKs (azure-mgmt-compute, azure-mgmt-resource, azure-mgmt-resource-locks) over
HTTPS. Ground truth is the stand-in's estate after every operation."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ServiceRequestError, ServiceResponseError
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.resource.locks import ManagementLockClient
from azure.mgmt.resource.resources import ResourceManagementClient

from gc_daemon.azure.credentials import EMULATOR_TOKEN, EmulatorCredential
from sandbox import arm as sb
from sandbox import arm_disks as ad

SUB = "00000000-0000-0000-0000-000000000001"
RG = "rg-disks"
OWNERSHIP = "2026-02-01T10:00:00Z"
VM_ID = sb.compute_id(SUB, RG, "virtualMachines", "vm1")
DISK_ID = sb.compute_id(SUB, RG, "disks", "orphan")
HANG_LIMIT = 120.0  # only catches a hang


def compute(arm: sb.ArmStandIn, **kwargs: Any) -> ComputeManagementClient:
    options: dict[str, Any] = {"retry_backoff_factor": 0, "retry_total": 3}
    options.update(kwargs)
    return ComputeManagementClient(
        EmulatorCredential(), SUB, base_url=arm.url, connection_verify=arm.cert_path, **options
    )


def sub_bucket(arm: sb.ArmStandIn, bucket: str) -> list[dict[str, Any]]:
    return arm.estate["subscriptions"][SUB].get(bucket, [])


def names(arm: sb.ArmStandIn, bucket: str) -> list[str]:
    return sorted(r["name"] for r in sub_bucket(arm, bucket))


def polls_of(arm: sb.ArmStandIn) -> list[str]:
    return [p for m, p in arm.requests if m == "GET" and "/operations/" in p]


def estate(*extra: dict[str, Any]) -> dict[str, Any]:
    return sb.build_estate(
        ad.managed_disk(SUB, RG, "orphan", last_ownership_update_time=OWNERSHIP, size_gb=64,
                        tags={"team": "a"}, time_created="2025-12-01T00:00:00Z"),
        *extra,
        subscriptions=[SUB],
    )


def snapshot_body(source_id: str = DISK_ID, tags: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "location": sb.DEFAULT_LOCATION,
        "tags": tags or {"vhdgc-quarantine-of": source_id},
        "sku": {"name": "Standard_ZRS"},
        "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": source_id}, "incremental": True},
    }


def raw(arm: sb.ArmStandIn, method: str, path: str, payload: Any = None, auth: bool = True) -> tuple[int, dict[str, str], Any]:
    ctx = ssl.create_default_context(cafile=arm.cert_path)
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(arm.url + path, data=data, method=method)
    if auth:
        req.add_header("Authorization", f"Bearer {EMULATOR_TOKEN}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            body = resp.read()
            return resp.status, dict(resp.headers), json.loads(body) if body else None
    except urllib.error.HTTPError as err:
        body = err.read()
        return err.code, dict(err.headers), json.loads(body) if body else None


# -- reads -------------------------------------------------------------------------------------


def test_list_has_no_ownership_time_and_get_of_one_disk_has_it(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate(ad.managed_disk(SUB, RG, "never-attached"), ad.managed_disk(SUB, "rg2", "other",
                                                                                     last_ownership_update_time=OWNERSHIP)))
    client = compute(arm)
    listed = list(client.disks.list())
    assert sorted(d.name for d in listed) == ["never-attached", "orphan", "other"]  # two pages of 2
    assert all(d.last_ownership_update_time is None for d in listed)
    assert all(d.last_ownership_update_time is None for d in client.disks.list_by_resource_group(RG))
    got = client.disks.get(RG, "orphan")
    assert got.last_ownership_update_time.isoformat() == "2026-02-01T10:00:00+00:00"
    assert client.disks.get(RG, "never-attached").last_ownership_update_time is None
    # On the wire too: the list page has no key, the GET has the example's capitalised one.
    status, _, page = raw(arm, "GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/disks?api-version=2026-03-02")
    assert status == 200 and all("LastOwnershipUpdateTime" not in d["properties"] for d in page["value"])
    status, _, one = raw(arm, "GET", f"{DISK_ID}?api-version=2026-03-02")
    assert status == 200 and one["properties"]["LastOwnershipUpdateTime"] == OWNERSHIP
    # The estate keeps it (ground truth), the list only hides it.
    stored = next(d for d in sub_bucket(arm, "disks") if d["name"] == "orphan")
    assert stored["properties"]["LastOwnershipUpdateTime"] == OWNERSHIP


def test_disk_fields_arrive_through_the_sdk(arm: sb.ArmStandIn) -> None:
    shared = ad.managed_disk(SUB, RG, "shared", disk_state="Attached", max_shares=2,
                             managed_by_extended=[VM_ID, sb.compute_id(SUB, RG, "virtualMachines", "vm2")])
    attached = ad.managed_disk(SUB, RG, "attached", disk_state="Attached", managed_by=VM_ID, sku="StandardSSD_LRS",
                               zones=["1"])
    arm.set_estate(estate(shared, attached))
    by_name = {d.name: d for d in compute(arm).disks.list_by_resource_group(RG)}
    orphan = by_name["orphan"]
    assert (orphan.disk_state, orphan.managed_by, orphan.managed_by_extended) == ("Unattached", None, None)
    assert orphan.tags == {"team": "a"} and orphan.sku.name == "Premium_LRS" and orphan.disk_size_gb == 64
    assert orphan.time_created.isoformat() == "2025-12-01T00:00:00+00:00"
    assert orphan.creation_data.create_option == "Empty"
    assert by_name["attached"].managed_by == VM_ID and by_name["attached"].disk_state == "Attached"
    assert by_name["attached"].sku.name == "StandardSSD_LRS" and by_name["attached"].zones == ["1"]
    assert by_name["shared"].max_shares == 2 and len(by_name["shared"].managed_by_extended) == 2


def test_resource_groups_list_with_managed_by(arm: sb.ArmStandIn) -> None:
    aks = "/subscriptions/%s/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/k1" % SUB
    arm.set_estate(estate(ad.resource_group(SUB, "MC_rg-aks_k1_westeurope", managed_by=aks, tags={"aks-managed": "1"}),
                          ad.resource_group(SUB, "rg-empty")))
    client = ResourceManagementClient(EmulatorCredential(), SUB, base_url=arm.url, connection_verify=arm.cert_path)
    groups = {g.name: g for g in client.resource_groups.list()}  # 3 groups: two pages
    assert sorted(groups) == ["MC_rg-aks_k1_westeurope", RG, "rg-empty"]  # RG: named by the disk only
    assert groups["MC_rg-aks_k1_westeurope"].managed_by == aks
    assert groups["MC_rg-aks_k1_westeurope"].tags == {"aks-managed": "1"}
    assert groups[RG].managed_by is None and groups[RG].properties.provisioning_state == "Succeeded"
    assert groups[RG].type == "Microsoft.Resources/resourceGroups"
    assert client.resource_groups.get("rg-empty").id == sb.rg_id(SUB, "rg-empty")
    pages = [p for m, p in arm.requests if p.startswith(f"/subscriptions/{SUB}/resourcegroups?")]
    assert len(pages) == 2


def test_locks_list_at_subscription_scope(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate(
        ad.management_lock(f"/subscriptions/{SUB}", "sub-lock", "ReadOnly", notes="frozen"),
        ad.management_lock(sb.rg_id(SUB, RG), "rg-lock", "CanNotDelete"),
        ad.management_lock(DISK_ID, "disk-lock", "CanNotDelete"),
    ))
    client = ManagementLockClient(EmulatorCredential(), SUB, base_url=arm.url, connection_verify=arm.cert_path)
    locks = {lock.name: lock for lock in client.management_locks.list_at_subscription_level()}
    assert sorted(locks) == ["disk-lock", "rg-lock", "sub-lock"]
    assert locks["sub-lock"].level == "ReadOnly" and locks["sub-lock"].notes == "frozen"
    assert locks["disk-lock"].id == f"{DISK_ID}/providers/Microsoft.Authorization/locks/disk-lock"
    assert locks["rg-lock"].type == "Microsoft.Authorization/locks"


# -- long-running operations -------------------------------------------------------------------


@pytest.mark.parametrize("polls", [0, 1, 3])
def test_snapshot_copy_polls_exactly_lro_polls_times(arm: sb.ArmStandIn, polls: int) -> None:
    arm.set_estate(estate())
    arm.set_lro(polls=polls)
    snap = compute(arm).snapshots.begin_create_or_update(
        RG, "q-orphan", snapshot_body(), polling_interval=0).result(timeout=HANG_LIMIT)
    assert snap.provisioning_state == "Succeeded" and snap.incremental is True
    assert snap.creation_data.create_option == "Copy" and snap.creation_data.source_resource_id == DISK_ID
    assert snap.tags == {"vhdgc-quarantine-of": DISK_ID} and snap.disk_size_gb == 64
    (op,) = arm.operations
    assert (op.kind, op.status, op.in_progress_answers, op.polls) == ("create", "Succeeded", polls, polls + 1)
    assert len(polls_of(arm)) == polls + 1
    (stored,) = sub_bucket(arm, "snapshots")
    assert stored["properties"]["provisioningState"] == "Succeeded"
    assert stored["properties"]["creationData"]["sourceUniqueId"] == sub_bucket(arm, "disks")[0]["properties"]["uniqueId"]


def test_snapshot_is_updating_while_its_operation_runs(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    status, headers, body = raw(arm, "PUT", f"{sb.compute_id(SUB, RG, 'snapshots', 'q')}?api-version=2026-03-02",
                                snapshot_body())
    assert status == 202 and body["properties"]["provisioningState"] == "Updating"
    assert sub_bucket(arm, "snapshots")[0]["properties"]["provisioningState"] == "Updating"
    assert headers["Retry-After"] == "0" and int(headers["Retry-After"]) == 0
    op_url = headers["Azure-AsyncOperation"].removeprefix(arm.url)
    assert headers["Location"].removeprefix(arm.url).split("?")[0] == op_url.split("?")[0]
    assert raw(arm, "GET", op_url)[2]["status"] == "InProgress"  # lro_polls defaults to 1
    assert raw(arm, "GET", op_url)[2]["status"] == "Succeeded"
    assert sub_bucket(arm, "snapshots")[0]["properties"]["provisioningState"] == "Succeeded"


def test_disk_delete_is_a_long_running_operation(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate(ad.managed_disk(SUB, RG, "keep-me")))
    arm.set_lro(polls=2, retry_after=0)
    poller = compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0)
    assert poller.result(timeout=HANG_LIMIT) is None
    assert names(arm, "disks") == ["keep-me"]
    (op,) = arm.operations
    assert (op.kind, op.status, op.in_progress_answers, op.resource_id) == ("delete", "Succeeded", 2, DISK_ID)
    assert len(polls_of(arm)) == 3


def test_retry_after_is_an_integer_on_the_delete_and_its_location_poll(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    arm.set_lro(polls=1, retry_after=7)
    status, headers, body = raw(arm, "DELETE", f"{DISK_ID}?api-version=2026-03-02")
    assert status == 202 and body is None
    assert headers["Retry-After"] == "7"
    assert "/providers/Microsoft.Compute/locations/westeurope/operations/" in headers["Azure-AsyncOperation"]
    status, headers2, _ = raw(arm, "GET", headers["Location"].removeprefix(arm.url))
    assert status == 202 and headers2["Retry-After"] == "7"
    status, _, done = raw(arm, "GET", headers["Location"].removeprefix(arm.url))
    assert status == 200 and done["status"] == "Succeeded"
    assert names(arm, "disks") == []


def test_restore_makes_a_disk_from_a_snapshot(arm: sb.ArmStandIn) -> None:
    snap = ad.incremental_snapshot(SUB, RG, "q-orphan", source_disk_id=DISK_ID, size_gb=64,
                                   tags={"vhdgc-quarantine-of": DISK_ID})
    arm.set_estate(sb.build_estate(snap, subscriptions=[SUB]))  # the disk itself is gone
    arm.set_lro(polls=2)
    body = {
        "location": sb.DEFAULT_LOCATION, "sku": {"name": "Premium_LRS"}, "zones": ["2"],
        "tags": {"team": "a", "vhdgc-keep": "restored"},
        "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": snap["id"]}},
    }
    disk = compute(arm).disks.begin_create_or_update(RG, "orphan", body, polling_interval=0).result(timeout=HANG_LIMIT)
    assert disk.id == DISK_ID and disk.provisioning_state == "Succeeded" and disk.disk_state == "Unattached"
    assert disk.disk_size_gb == 64 and disk.sku.name == "Premium_LRS" and disk.zones == ["2"]
    assert disk.tags == {"team": "a", "vhdgc-keep": "restored"} and disk.last_ownership_update_time is None
    assert disk.creation_data.source_resource_id == snap["id"]
    assert arm.operations[0].in_progress_answers == 2
    (stored,) = sub_bucket(arm, "disks")
    assert stored["properties"]["provisioningState"] == "Succeeded"


def test_restore_from_a_missing_snapshot_is_refused(arm: sb.ArmStandIn) -> None:
    arm.set_estate(sb.build_estate(subscriptions=[SUB]))
    missing = sb.compute_id(SUB, RG, "snapshots", "gone")
    body = {"location": sb.DEFAULT_LOCATION, "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": missing}}}
    with pytest.raises(HttpResponseError) as caught:
        compute(arm).disks.begin_create_or_update(RG, "orphan", body, polling_interval=0)
    assert caught.value.status_code == 404 and caught.value.error.code == "NotFound"
    assert names(arm, "disks") == [] and arm.operations == []


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("disk", [
    ad.managed_disk(SUB, RG, "orphan", disk_state="Attached", managed_by=VM_ID),
    ad.managed_disk(SUB, RG, "orphan", disk_state="Reserved", managed_by=VM_ID),
    ad.managed_disk(SUB, RG, "orphan", disk_state="ActiveSAS"),
    ad.managed_disk(SUB, RG, "orphan", disk_state="Unattached", managed_by=VM_ID),
    ad.managed_disk(SUB, RG, "orphan", disk_state="Attached", max_shares=2, managed_by_extended=[VM_ID]),
], ids=["attached", "reserved", "active-sas", "owner-only", "shared"])
def test_delete_of_a_disk_in_use_is_refused_with_operation_not_allowed(arm: sb.ArmStandIn, disk: dict[str, Any]) -> None:
    arm.set_estate(sb.build_estate(disk, subscriptions=[SUB]))
    with pytest.raises(ResourceExistsError) as caught:  # azure-core maps every 409 to ResourceExistsError
        compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0)
    assert caught.value.status_code == 409 and caught.value.error.code == "OperationNotAllowed"
    assert names(arm, "disks") == ["orphan"] and arm.operations == []
    assert [m for m, _ in arm.requests] == ["DELETE"]  # refused, not retried


@pytest.mark.parametrize("scope", ["subscription", "group", "disk"])
@pytest.mark.parametrize("level", ["CanNotDelete", "ReadOnly"])
def test_a_lock_refuses_the_delete_with_scope_locked(arm: sb.ArmStandIn, scope: str, level: str) -> None:
    scope_id = {"subscription": f"/subscriptions/{SUB}", "group": sb.rg_id(SUB, RG), "disk": DISK_ID}[scope]
    arm.set_estate(estate(ad.management_lock(scope_id, "lock", level)))
    with pytest.raises(ResourceExistsError) as caught:
        compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0)
    assert caught.value.status_code == 409 and caught.value.error.code == "ScopeLocked"
    assert scope_id in caught.value.error.message
    assert names(arm, "disks") == ["orphan"] and arm.operations == []


def test_a_lock_elsewhere_or_not_specified_does_not_refuse(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate(ad.management_lock(sb.rg_id(SUB, "rg-other"), "other", "ReadOnly"),
                          ad.management_lock(DISK_ID, "informational", "NotSpecified")))
    compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0).result(timeout=HANG_LIMIT)
    assert names(arm, "disks") == []


def test_read_only_lock_refuses_the_snapshot_and_can_not_delete_allows_it(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate(ad.management_lock(sb.rg_id(SUB, RG), "ro", "ReadOnly")))
    with pytest.raises(ResourceExistsError) as caught:
        compute(arm).snapshots.begin_create_or_update(RG, "q", snapshot_body(), polling_interval=0)
    assert caught.value.error.code == "ScopeLocked" and names(arm, "snapshots") == []
    arm.set_estate(estate(ad.management_lock(sb.rg_id(SUB, RG), "nd", "CanNotDelete")))
    compute(arm).snapshots.begin_create_or_update(RG, "q", snapshot_body(), polling_interval=0).result(timeout=HANG_LIMIT)
    assert names(arm, "snapshots") == ["q"]


def test_delete_of_a_missing_disk_answers_204(arm: sb.ArmStandIn) -> None:
    arm.set_estate(sb.build_estate(subscriptions=[SUB]))
    assert compute(arm).disks.begin_delete(RG, "gone", polling_interval=0).result(timeout=HANG_LIMIT) is None
    assert raw(arm, "DELETE", f"{DISK_ID}?api-version=2026-03-02")[0] == 204
    assert arm.operations == [] and polls_of(arm) == []


# -- faults ------------------------------------------------------------------------------------


def test_failed_operations_raise_and_leave_ground_truth_as_azure_does(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    arm.set_lro(polls=1)
    arm.lro_failed(r"/snapshots/", "PUT", code="InternalDiskManagementError", message="copy failed")
    with pytest.raises(HttpResponseError) as caught:
        compute(arm).snapshots.begin_create_or_update(RG, "q", snapshot_body(), polling_interval=0).result(timeout=HANG_LIMIT)
    assert "copy failed" in str(caught.value) or "InternalDiskManagementError" in str(caught.value)
    assert sub_bucket(arm, "snapshots")[0]["properties"]["provisioningState"] == "Failed"
    arm.lro_failed(r"/disks/orphan$", "DELETE")
    with pytest.raises(HttpResponseError):
        compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0).result(timeout=HANG_LIMIT)
    assert names(arm, "disks") == ["orphan"]
    assert [(op.kind, op.status, op.in_progress_answers) for op in arm.operations] == [("create", "Failed", 1), ("delete", "Failed", 1)]


def test_a_stuck_operation_is_bounded_by_the_callers_deadline(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    arm.lro_stuck(r"/disks/", "DELETE")
    poller = compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0.05)
    limit = time.monotonic() + HANG_LIMIT
    while arm.operations[0].in_progress_answers < 5:  # wait on the stand-in's answers, not a clock
        assert time.monotonic() < limit, "the SDK stopped polling"
        poller.wait(timeout=0.05)
    poller.wait(timeout=0.2)  # the caller's deadline passes: the poller gives up waiting, the delete has not ended
    assert not poller.done()
    assert names(arm, "disks") == ["orphan"] and arm.operations[0].status == "InProgress"
    assert arm.settle_operations() == 0  # a stuck operation is not settled either
    arm.set_estate(estate())
    arm.disk_rp.reset()  # the poller's next poll gets 404 and its thread ends
    with pytest.raises(HttpResponseError):
        poller.result(timeout=HANG_LIMIT)


def test_lost_reply_on_delete_the_disk_is_gone_and_a_retry_gets_204(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    arm.lose_reply(r"/disks/orphan$", "DELETE", times=1)
    with pytest.raises((ServiceResponseError, ServiceRequestError)):
        compute(arm, retry_total=0).disks.begin_delete(RG, "orphan", polling_interval=0)
    assert names(arm, "disks") == []  # it happened
    assert [(op.kind, op.status) for op in arm.operations] == [("delete", "Succeeded")]
    arm.reset(estate())
    arm.lose_reply(r"/disks/orphan$", "DELETE", times=1)
    assert compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0).result(timeout=HANG_LIMIT) is None
    assert [m for m, p in arm.requests] == ["DELETE", "DELETE"]  # the SDK's retry found nothing left: 204
    assert names(arm, "disks") == []


def test_lost_reply_on_the_snapshot_a_retry_finds_it_made(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    arm.lose_reply(r"/snapshots/q$", "PUT", times=1)
    snap = compute(arm).snapshots.begin_create_or_update(RG, "q", snapshot_body(), polling_interval=0).result(timeout=HANG_LIMIT)
    assert snap.provisioning_state == "Succeeded" and snap.creation_data.source_resource_id == DISK_ID
    assert names(arm, "snapshots") == ["q"] and len(arm.operations) == 1
    # The retry's PUT finds the snapshot made: 200 with its body (provisioningState Succeeded), no new
    # operation, nothing to poll.
    assert [m for m, p in arm.requests if "/snapshots/q" in p] == ["PUT", "PUT"] and polls_of(arm) == []


def test_throttled_and_failing_deletes_through_the_fault_mechanism(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())
    arm.add_fault(r"/disks/orphan$", status=429, retry_after=0, method="DELETE", times=1)
    compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0).result(timeout=HANG_LIMIT)
    assert [m for m, _ in arm.requests if m == "DELETE"] == ["DELETE", "DELETE"] and names(arm, "disks") == []
    arm.reset(estate())
    arm.add_fault(r"/disks/orphan$", status=503, method="DELETE")
    with pytest.raises(HttpResponseError) as caught:
        compute(arm, retry_total=0).disks.begin_delete(RG, "orphan", polling_interval=0)
    assert caught.value.status_code == 503 and names(arm, "disks") == ["orphan"] and arm.operations == []
    arm.reset(estate())
    arm.add_fault(r"/operations/", status=500, method="GET", times=1)  # one failed poll: the SDK polls again
    compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0).result(timeout=HANG_LIMIT)
    assert names(arm, "disks") == []


def test_control_endpoints_drive_the_operations(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate(ad.managed_disk(SUB, RG, "second")))
    assert raw(arm, "PUT", "/_control/lro", {"polls": 2, "retry_after": 0}, auth=False)[2]["polls"] == 2
    assert raw(arm, "PUT", "/_control/lro", {"polls": 1.5}, auth=False)[0] == 400
    assert raw(arm, "POST", "/_control/lro/rules", [{"outcome": "stuck", "path": "/disks/second$"}], auth=False)[0] == 200
    assert raw(arm, "POST", "/_control/lro/rules", {"outcome": "later"}, auth=False)[0] == 400
    assert raw(arm, "GET", "/_control/lro", auth=False)[2]["rules"][0]["outcome"] == "stuck"
    assert raw(arm, "DELETE", f"{DISK_ID}?api-version=2026-03-02")[0] == 202
    assert raw(arm, "DELETE", f"{sb.compute_id(SUB, RG, 'disks', 'second')}?api-version=2026-03-02")[0] == 202
    ops = raw(arm, "GET", "/_control/operations", auth=False)[2]
    assert sorted(op["status"] for op in ops) == ["InProgress", "InProgress"]
    assert raw(arm, "POST", "/_control/operations/settle", None, auth=False)[2]["ended"] == 1  # not the stuck one
    assert names(arm, "disks") == ["second"]
    faults = [{"path": "/disks/second$", "kind": "lost_reply", "method": "DELETE"}]
    assert raw(arm, "POST", "/_control/faults", faults, auth=False)[0] == 200
    assert raw(arm, "DELETE", "/_control/lro/rules", auth=False)[0] == 200
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        raw(arm, "DELETE", f"{sb.compute_id(SUB, RG, 'disks', 'second')}?api-version=2026-03-02")
    assert names(arm, "disks") == []  # its reply was lost, the delete was done


# -- hooks and gates (the e2e and crash tests' way to act at an exact point) --------------------


def test_a_hook_changes_the_estate_before_the_request_is_served(arm: sb.ArmStandIn) -> None:
    arm.set_estate(estate())

    def attach(method: str, path: str) -> None:
        def change(e: dict[str, Any]) -> None:
            disk = e["subscriptions"][SUB]["disks"][0]
            disk["properties"]["diskState"] = "Attached"
            disk["managedBy"] = VM_ID
        arm.update_estate(change)

    hook = arm.on_request(r"/disks/orphan$", "DELETE", attach)
    with pytest.raises(ResourceExistsError) as caught:
        compute(arm).disks.begin_delete(RG, "orphan", polling_interval=0)
    assert caught.value.error.code == "OperationNotAllowed"
    assert hook.fired == 1 and hook.done.is_set()
    compute(arm).disks.get(RG, "orphan")  # times=1: the next request is not hooked
    assert hook.fired == 1


def test_a_gate_holds_a_request_until_released_and_drops_it(arm: sb.ArmStandIn) -> None:
    import threading

    arm.set_estate(estate())
    gate = arm.gate(r"/disks/orphan$", "DELETE")
    errors: list[BaseException] = []

    def delete() -> None:
        try:
            compute(arm, retry_total=0).disks.begin_delete(RG, "orphan", polling_interval=0)
        except BaseException as exc:  # noqa: BLE001 - the dropped request's error, checked below
            errors.append(exc)

    t = threading.Thread(target=delete)
    t.start()
    assert gate.wait(HANG_LIMIT)
    assert names(arm, "disks") == ["orphan"] and arm.operations == []  # held, not served
    gate.release(serve=False)
    t.join(HANG_LIMIT)
    assert len(errors) == 1 and isinstance(errors[0], (ServiceResponseError, ServiceRequestError))
    assert names(arm, "disks") == ["orphan"] and arm.operations == []  # dropped: ARM never did it
