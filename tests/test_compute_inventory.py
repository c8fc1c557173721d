"""The compute inventory adapter against the ARM stand-in: the real SDK, over HTTPS, no mocks.

Every fault must end in one of two ways: the full, correct reference set, or an error naming the
source. Never a silently shorter list.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from gc_daemon.sources import REGISTRY
from gc_daemon.sources.base import ReferenceRead
from gc_daemon.sources.inventory import ReferenceInventory

SCALE_SET_VMS = "virtualMachineScaleSetVMs"
SOURCE_KINDS = tuple(label for source in REGISTRY for label in source.labels)
from gc_daemon.azure.credentials import EMULATOR_TOKEN, EmulatorCredential, build_credential
from gc_daemon.domain import RefKind
from sandbox import arm as sb

S1 = "00000000-0000-0000-0000-000000000001"
S2 = "00000000-0000-0000-0000-000000000002"
UNKNOWN = "00000000-0000-0000-0000-00000000dead"
CREATED = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
TOP_SOURCES = tuple(source.reads[0].label for source in REGISTRY)  # each source's first list


def blob(name: str, account: str = "acct1", container: str = "vhds") -> str:
    return f"https://{account}.blob.core.windows.net/{container}/{name}.vhd"


def vm_id(sub: str, rg: str, name: str) -> str:
    return sb.compute_id(sub, rg, "virtualMachines", name)


def full_estate(sub: str = S1) -> tuple[dict, set[tuple[RefKind, str, str]]]:
    """An estate holding every reference kind, and the (kind, holder, uri) set it must yield."""
    resources = [
        sb.vm(
            sub,
            "rg-vms",
            "vm1",
            os_vhd=blob("vm1-os"),
            data_vhds=[blob("vm1-data0"), {"vhd": blob("vm1-data1"), "image": blob("user-data-image")}],
            os_image=blob("user-os-image"),
            boot_diagnostics="https://diag.blob.core.windows.net/",
        ),
        sb.vm(sub, "rg-vms", "managed-vm"),  # managed disks: no reference at all
        sb.vmss(
            sub,
            "rg-ss",
            "ss1",
            vhd_containers=[
                "https://acct1.blob.core.windows.net/ss1-a",
                "https://acct2.blob.core.windows.net/ss1-b",
            ],
        ),
        sb.vmss(sub, "rg-ss", "ss-image", os_image=blob("ss-user-image")),
        sb.vmss(sub, "rg-ss", "ss-managed"),
        sb.vmss_vm(sub, "rg-ss", "ss1", 0, os_vhd=blob("ss1-0-os"), data_vhds=[blob("ss1-0-data0")]),
        sb.vmss_vm(sub, "rg-ss", "ss-image", 3, os_vhd=blob("ssi-3-os"), os_image=blob("ss-user-image")),
        sb.image(sub, "rg-img", "img1", os_blob=blob("img1-os"), data_blobs=[blob("img1-data0")]),
        sb.image(sub, "rg-img", "img-managed"),
        sb.disk(sub, "rg-disk", "imported", source_uri=blob("disk-src"), time_created=CREATED),
        sb.disk(
            sub,
            "rg-disk",
            "cvm",
            source_uri=blob("cvm-src"),
            security_data_uri=blob("cvm-vmgs", container="sec"),
            security_metadata_uri=blob("cvm-meta", container="sec"),
            time_created=CREATED,
        ),
        sb.disk(sub, "rg-disk", "empty"),
        sb.snapshot(
            sub, "rg-disk", "snap1", source_uri=blob("snap-src"), time_created=CREATED, provisioning_state="Creating"
        ),
        sb.gallery(sub, "rg-gal", "gal1"),
        sb.gallery_image(sub, "rg-gal", "gal1", "def1"),
        sb.gallery_image(sub, "rg-gal", "gal1", "def-empty"),
        sb.gallery_image_version(
            sub, "rg-gal", "gal1", "def1", "1.0.0", os_source=blob("gal-os"), data_sources=[blob("gal-data0")]
        ),
        sb.gallery_image_version(sub, "rg-gal", "gal1", "def1", "1.0.1"),  # from a managed image
        sb.gallery_application(sub, "rg-gal", "gal1", "app1"),
        sb.gallery_application_version(sub, "rg-gal", "gal1", "app1", "1.0.0", media_link=blob("app-pkg"),
                                       config_link=blob("app-cfg")),
        sb.recovery_vault(sub, "rg-asr", "vault1"),
        sb.replication_protected_item(sub, "rg-asr", "vault1", "item1", sb.a2a_details(
            {"diskUri": blob("asr-src"), "recoveryDiskUri": blob("asr-replica"),
             "primaryStagingAzureStorageAccountId": sb.storage_account_id(sub, "rg-asr", "cacheacct"),
             "primaryDiskAzureStorageAccountId": sb.storage_account_id(sub, "rg-vms", "acct1")},
            boot_diag_account=sb.storage_account_id(sub, "rg-asr", "diagacct"))),
        sb.replication_migration_item(sub, "rg-asr", "vault1", "mig1", sb.vmware_cbt_details(
            {"seedBlobUri": blob("mig-seed"), "logStorageAccountId": sb.storage_account_id(sub, "rg-asr", "logacct")})),
        sb.image_template(sub, "rg-aib", "tpl1"),
        sb.image_run_output(sub, "rg-aib", "tpl1", "vhd", artifact_uri=blob("aib-out")),
        sb.image_run_output(sub, "rg-aib", "tpl1", "managed"),  # a managed image: no blob
        sb.devtest_lab(sub, "rg-dtl", "lab1", default_account="labacct"),
        sb.devtest_custom_image(sub, "rg-dtl", "lab1", "golden-img", vhd_name="golden.vhd"),
        sb.devtest_custom_image(sub, "rg-dtl", "lab1", "from-vm", vhd_name=None),
    ]
    ss = lambda name: sb.compute_id(sub, "rg-ss", "virtualMachineScaleSets", name)  # noqa: E731
    ssvm = lambda name, i: sb.compute_id(  # noqa: E731
        sub, "rg-ss", "virtualMachineScaleSets", name, "virtualMachines", str(i)
    )
    vm1 = vm_id(sub, "rg-vms", "vm1")
    img1 = sb.compute_id(sub, "rg-img", "images", "img1")
    imported = sb.compute_id(sub, "rg-disk", "disks", "imported")
    cvm = sb.compute_id(sub, "rg-disk", "disks", "cvm")
    snap1 = sb.compute_id(sub, "rg-disk", "snapshots", "snap1")
    ver = sb.compute_id(sub, "rg-gal", "galleries", "gal1", "images", "def1", "versions", "1.0.0")
    by_name = {r["name"]: r["id"] for r in resources}
    app_ver = sb.compute_id(sub, "rg-gal", "galleries", "gal1", "applications", "app1", "versions", "1.0.0")
    asr_item, mig_item = by_name["item1"], by_name["mig1"]
    aib_out, dtl_img = by_name["vhd"], by_name["golden-img"]
    expected = {
        (RefKind.VM_OS_DISK, vm1, blob("vm1-os")),
        (RefKind.VM_DATA_DISK, vm1, blob("vm1-data0")),
        (RefKind.VM_DATA_DISK, vm1, blob("vm1-data1")),
        (RefKind.VM_IMAGE, vm1, blob("user-os-image")),
        (RefKind.VM_IMAGE, vm1, blob("user-data-image")),
        (RefKind.VMSS_CONTAINER, ss("ss1"), "https://acct1.blob.core.windows.net/ss1-a"),
        (RefKind.VMSS_CONTAINER, ss("ss1"), "https://acct2.blob.core.windows.net/ss1-b"),
        (RefKind.VMSS_IMAGE, ss("ss-image"), blob("ss-user-image")),
        (RefKind.VMSS_VM_DISK, ssvm("ss1", 0), blob("ss1-0-os")),
        (RefKind.VMSS_VM_DISK, ssvm("ss1", 0), blob("ss1-0-data0")),
        (RefKind.VMSS_VM_DISK, ssvm("ss-image", 3), blob("ssi-3-os")),
        (RefKind.VMSS_VM_IMAGE, ssvm("ss-image", 3), blob("ss-user-image")),
        (RefKind.IMAGE_BLOB, img1, blob("img1-os")),
        (RefKind.IMAGE_BLOB, img1, blob("img1-data0")),
        (RefKind.DISK_IMPORT, imported, blob("disk-src")),
        (RefKind.DISK_IMPORT, cvm, blob("cvm-src")),
        (RefKind.DISK_SECURITY, cvm, blob("cvm-vmgs", container="sec")),
        (RefKind.DISK_SECURITY, cvm, blob("cvm-meta", container="sec")),
        (RefKind.SNAPSHOT_IMPORT, snap1, blob("snap-src")),
        (RefKind.GALLERY_SOURCE, ver, blob("gal-os")),
        (RefKind.GALLERY_SOURCE, ver, blob("gal-data0")),
        (RefKind.GALLERY_APPLICATION, app_ver, blob("app-pkg")),
        (RefKind.GALLERY_APPLICATION, app_ver, blob("app-cfg")),
        (RefKind.SITE_RECOVERY, asr_item, blob("asr-src")),
        (RefKind.SITE_RECOVERY, asr_item, blob("asr-replica")),
        (RefKind.SITE_RECOVERY_ACCOUNT, asr_item, sb.storage_account_id(sub, "rg-asr", "cacheacct")),
        (RefKind.MIGRATION, mig_item, blob("mig-seed")),
        (RefKind.MIGRATION_ACCOUNT, mig_item, sb.storage_account_id(sub, "rg-asr", "logacct")),
        (RefKind.IMAGE_BUILDER_OUTPUT, aib_out, blob("aib-out")),
        (RefKind.DEVTEST_LAB_IMAGE, dtl_img, "https://labacct.blob.core.windows.net/uploads/golden.vhd"),
    }
    return sb.build_estate(*resources), expected


def triples(read: ReferenceRead) -> set[tuple[RefKind, str, str]]:
    return {(r.kind, r.holder, r.uri) for r in read.references}


def vm_estate(sub: str, count: int) -> tuple[dict, set[tuple[RefKind, str, str]]]:
    resources = [sb.vm(sub, "rg", f"vm{i}", os_vhd=blob(f"{sub[-1]}-vm{i}-os")) for i in range(count)]
    expected = {(RefKind.VM_OS_DISK, vm_id(sub, "rg", f"vm{i}"), blob(f"{sub[-1]}-vm{i}-os")) for i in range(count)}
    return sb.build_estate(*resources), expected


def assert_full_or_error(read: ReferenceRead, expected: set, source: str) -> str:
    """Either everything was read, or the named source (and only it) reports an error."""
    if read.errors:
        assert {e.source for e in read.errors} == {source}, read.errors
        assert triples(read) < expected  # what was read is right, the pass is just incomplete
        return "error"
    assert triples(read) == expected
    return "full"


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------


def test_every_reference_kind_is_extracted_with_its_holder(arm, compute_inventory):
    estate, expected = full_estate()
    arm.set_estate(estate)

    read = compute_inventory([S1]).read()

    assert read.errors == []
    assert triples(read) == expected
    assert len(read.references) == len(expected)  # no duplicates
    assert {k for k, _, _ in triples(read)} == set(RefKind)
    assert set(read.counts) == {f"{S1}/{kind}" for kind in SOURCE_KINDS}
    assert read.counts[f"{S1}/virtualMachines"] == 5
    assert read.counts[f"{S1}/{SCALE_SET_VMS}"] == 4
    assert read.counts[f"{S1}/galleryImageVersions"] == 2
    assert sum(read.counts.values()) == len(expected)


def test_imports_carry_creation_time_and_provisioning_state(arm, compute_inventory):
    estate, _ = full_estate()
    arm.set_estate(estate)

    read = compute_inventory([S1]).read()

    imports = {r.holder.rsplit("/", 1)[1]: r for r in read.references if r.kind.is_import}
    assert set(imports) == {"imported", "cvm", "snap1"}
    assert imports["imported"].time_created == CREATED
    assert imports["imported"].time_created.tzinfo is not None
    assert imports["imported"].provisioning_state == "Succeeded"
    assert imports["snap1"].provisioning_state == "Creating"
    others = [r for r in read.references if not r.kind.is_import]
    assert all(r.time_created is None for r in others)


def test_paging_consumes_every_page(arm, compute_inventory):
    estate, expected = vm_estate(S1, 7)
    arm.set_estate(estate)

    read = compute_inventory([S1]).read()

    assert read.errors == []
    assert triples(read) == expected
    vm_calls = [p for _, p in arm.requests if "/virtualMachines?" in p]
    assert len(vm_calls) == 4  # 2 + 2 + 2 + 1
    assert all("api-version=" in p for p in vm_calls)
    assert sum("skiptoken" in p for p in vm_calls) == 3


def test_paging_of_nested_lists(arm, compute_inventory):
    sub = S1
    resources = [sb.vmss(sub, "rg", "big")]
    resources += [sb.vmss_vm(sub, "rg", "big", i, os_vhd=blob(f"big-{i}")) for i in range(5)]
    resources += [sb.gallery(sub, "rg", "g"), *(sb.gallery_image(sub, "rg", "g", f"d{i}") for i in range(3))]
    resources += [
        sb.gallery_image_version(sub, "rg", "g", "d2", f"1.0.{i}", os_source=blob(f"g-{i}")) for i in range(5)
    ]
    arm.set_estate(sb.build_estate(*resources))

    read = compute_inventory([sub]).read()

    assert read.errors == []
    assert {r.uri for r in read.references} == {blob(f"big-{i}") for i in range(5)} | {
        blob(f"g-{i}") for i in range(5)
    }


def test_several_subscriptions(arm, compute_inventory):
    estate1, expected1 = full_estate(S1)
    estate2, expected2 = vm_estate(S2, 3)
    estate = {"subscriptions": {**estate1["subscriptions"], **estate2["subscriptions"]}}
    arm.set_estate(estate)

    read = compute_inventory([S1, S2]).read()

    assert read.errors == []
    assert triples(read) == expected1 | expected2
    assert read.counts[f"{S2}/virtualMachines"] == 3
    assert read.counts[f"{S2}/disks"] == 0


def test_an_empty_subscription_is_complete_and_empty(arm, compute_inventory):
    arm.set_estate(sb.empty_estate(S1))

    read = compute_inventory([S1]).read()

    assert read.complete and read.references == []


# --------------------------------------------------------------------------------------------------
# Faults: full and correct, or an error naming the source
# --------------------------------------------------------------------------------------------------

VM_PATH = r"/providers/Microsoft\.Compute/virtualMachines$"


def test_transient_500_is_retried(arm, compute_inventory):
    estate, expected = vm_estate(S1, 5)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, status=500, nth=2)

    read = compute_inventory([S1]).read()

    assert read.errors == []
    assert triples(read) == expected
    assert len([p for _, p in arm.requests if "/virtualMachines?" in p]) == 4


def test_persistent_503_is_an_error_for_the_source(arm, compute_inventory):
    estate, expected = full_estate()
    arm.set_estate(estate)
    arm.add_fault(r"/providers/Microsoft\.Compute/disks$", status=503)

    read = compute_inventory([S1], retry_total=2).read()

    assert [e.source for e in read.errors] == [f"{S1}/disks"]
    assert "503" in read.errors[0].message
    assert not read.complete
    assert triples(read) == {t for t in expected if t[0] not in (RefKind.DISK_IMPORT, RefKind.DISK_SECURITY)}
    disk_calls = [p for _, p in arm.requests if "/disks?" in p]
    assert len(disk_calls) == 3  # the first try and two retries


def test_403_is_an_error_and_not_retried(arm, compute_inventory):
    estate, _ = vm_estate(S1, 3)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, status=403, message="The client does not have authorization.")

    read = compute_inventory([S1]).read()

    assert [e.source for e in read.errors] == [f"{S1}/virtualMachines"]
    assert "403" in read.errors[0].message and "AuthorizationFailed" in read.errors[0].message
    assert len([p for _, p in arm.requests if "/virtualMachines?" in p]) == 1


def test_429_with_retry_after_is_honoured(arm, compute_inventory):
    estate, expected = vm_estate(S1, 3)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, status=429, retry_after=1, times=1)

    started = time.monotonic()
    read = compute_inventory([S1], retry_backoff=0.01).read()
    elapsed = time.monotonic() - started

    assert read.errors == []
    assert triples(read) == expected
    assert elapsed >= 0.9  # it waited as told


def test_429_without_retry_after_is_retried(arm, compute_inventory):
    estate, expected = vm_estate(S1, 3)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, status=429, times=2)

    read = compute_inventory([S1], retry_total=3).read()

    assert read.errors == []
    assert triples(read) == expected


def test_persistent_429_is_an_error(arm, compute_inventory):
    estate, _ = vm_estate(S1, 3)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, status=429)

    read = compute_inventory([S1], retry_total=1).read()

    assert [e.source for e in read.errors] == [f"{S1}/virtualMachines"]
    assert "429" in read.errors[0].message


def test_malformed_json_page_is_an_error(arm, compute_inventory):
    estate, _ = vm_estate(S1, 5)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, kind="malformed", on_next_link=True)

    read = compute_inventory([S1]).read()

    assert [e.source for e in read.errors] == [f"{S1}/virtualMachines"]
    assert "JSON" in read.errors[0].message


@pytest.mark.parametrize(
    "body, words",
    [
        ({"nextLink": None}, "no 'value'"),
        ({"value": "vm1"}, "no 'value'"),
        ({"value": [1, 2]}, "not an object"),
        ({"value": [{"name": "no-id", "properties": {}}]}, "no id"),
        ([], "not a JSON object"),
    ],
)
def test_a_page_of_the_wrong_shape_is_an_error(arm, compute_inventory, body, words):
    estate, _ = vm_estate(S1, 5)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, kind="body", body=body, nth=2)

    read = compute_inventory([S1]).read()

    assert [e.source for e in read.errors] == [f"{S1}/virtualMachines"]
    assert words in read.errors[0].message


def test_truncated_page_once_is_retried_or_an_error(arm, compute_inventory):
    estate, expected = vm_estate(S1, 5)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, kind="truncate", nth=2)

    read = compute_inventory([S1]).read()

    assert_full_or_error(read, expected, f"{S1}/virtualMachines")


def test_truncated_page_every_time_is_an_error(arm, compute_inventory):
    estate, expected = vm_estate(S1, 5)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, kind="truncate", on_next_link=True)

    read = compute_inventory([S1]).read()

    assert assert_full_or_error(read, expected, f"{S1}/virtualMachines") == "error"


def test_failing_next_link_is_an_error(arm, compute_inventory):
    estate, expected = full_estate()
    arm.set_estate(estate)
    arm.add_fault(r"/virtualMachineScaleSets/[^/]+/virtualMachines$", status=500, on_next_link=True)
    # ss1 has one instance (one page), so give it more to need a nextLink.
    for i in range(1, 4):
        sb.place(estate, sb.vmss_vm(S1, "rg-ss", "ss1", i, os_vhd=blob(f"ss1-{i}-os")))
    arm.set_estate(estate)

    read = compute_inventory([S1], retry_total=1).read()

    assert [e.source for e in read.errors] == [f"{S1}/{SCALE_SET_VMS}"]
    assert "rg-ss/ss1" in read.errors[0].message and "500" in read.errors[0].message
    # Every other source is whole.
    assert {t for t in expected if t[0] is not RefKind.VMSS_VM_DISK and t[0] is not RefKind.VMSS_VM_IMAGE} <= triples(
        read
    )
    first_pages = [p for _, p in arm.requests if "ss1/virtualMachines?" in p and "skiptoken" not in p]
    assert len(first_pages) == 1


def test_a_delay_beyond_the_read_timeout_is_an_error(arm, compute_inventory):
    estate, _ = vm_estate(S1, 3)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, kind="delay", delay=30)  # the stand-in's longest: far beyond the timeout

    started = time.monotonic()
    read = compute_inventory([S1], timeout=0.5, retry_total=1).read()
    elapsed = time.monotonic() - started

    assert [e.source for e in read.errors] == [f"{S1}/virtualMachines"]
    # It gave up on its own timeout (the error says so), not after the server's delay: two attempts
    # of 0.5 s, which a loaded machine may stretch, but never to the 2 x 30 s the delays would last.
    assert "timed out" in read.errors[0].message.lower() or "timeout" in read.errors[0].message.lower()
    assert elapsed < 30


def test_a_short_delay_within_the_timeout_is_fine(arm, compute_inventory):
    estate, expected = vm_estate(S1, 3)
    arm.set_estate(estate)
    arm.add_fault(VM_PATH, kind="delay", delay=0.2, times=1)

    read = compute_inventory([S1], timeout=5).read()

    assert read.errors == [] and triples(read) == expected


def test_unknown_subscription_is_an_error_for_each_of_its_sources(arm, compute_inventory):
    estate, expected = full_estate(S1)
    arm.set_estate(estate)

    read = compute_inventory([S1, UNKNOWN]).read()

    assert {e.source for e in read.errors} == {f"{UNKNOWN}/{kind}" for kind in TOP_SOURCES}
    assert all("404" in e.message and "SubscriptionNotFound" in e.message for e in read.errors)
    assert triples(read) == expected  # the known subscription is read in full


def test_error_messages_hold_no_token(arm, compute_inventory):
    arm.set_estate(sb.empty_estate(S1))
    arm.add_fault(".*", status=500)

    read = compute_inventory([S1], retry_total=0).read()

    assert len(read.errors) == len(TOP_SOURCES)
    for error in read.errors:
        assert EMULATOR_TOKEN not in error.message
        assert len(error.message) <= 240


# --------------------------------------------------------------------------------------------------
# The stand-in itself
# --------------------------------------------------------------------------------------------------


def _raw_get(arm, path: str, token: str | None = "t"):
    ctx = ssl.create_default_context(cafile=arm.cert_path)
    req = urllib.request.Request(arm.url + path)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_standin_requires_api_version(arm):
    arm.set_estate(sb.empty_estate(S1))
    status, body, _ = _raw_get(arm, f"/subscriptions/{S1}/providers/Microsoft.Compute/virtualMachines")
    assert status == 400
    assert body["error"]["code"] == "MissingApiVersionParameter"


def test_standin_requires_a_bearer_token(arm):
    arm.set_estate(sb.empty_estate(S1))
    path = f"/subscriptions/{S1}/providers/Microsoft.Compute/virtualMachines?api-version=2026-04-01"
    status, body, headers = _raw_get(arm, path, token=None)
    assert status == 401
    assert body["error"]["code"] == "AuthenticationFailed"
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")


def test_standin_errors_for_unknown_subscription_and_path(arm):
    arm.set_estate(sb.empty_estate(S1))
    status, body, _ = _raw_get(arm, f"/subscriptions/{UNKNOWN}/providers/Microsoft.Compute/disks?api-version=1")
    assert (status, body["error"]["code"]) == (404, "SubscriptionNotFound")
    status, body, _ = _raw_get(arm, f"/subscriptions/{S1}/providers/Microsoft.Compute/nonsense?api-version=1")
    assert (status, body["error"]["code"]) == (404, "ResourceNotFound")
    path = f"/subscriptions/{S1}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/x/virtualMachines"
    status, body, _ = _raw_get(arm, path + "?api-version=1")
    assert (status, body["error"]["code"]) == (404, "ResourceNotFound")


def test_standin_next_link_is_absolute_with_api_version(arm):
    estate, _ = vm_estate(S1, 3)
    arm.set_estate(estate)
    status, body, _ = _raw_get(arm, f"/subscriptions/{S1}/providers/Microsoft.Compute/virtualMachines?api-version=X")
    assert status == 200 and len(body["value"]) == 2
    assert body["nextLink"].startswith(arm.url + "/subscriptions/")
    assert "api-version=X" in body["nextLink"] and "skiptoken=2" in body["nextLink"]
    status, body2, _ = _raw_get(arm, body["nextLink"][len(arm.url) :])
    assert status == 200 and len(body2["value"]) == 1 and "nextLink" not in body2


def test_standin_routes_by_resource_group(arm):
    """The SDK's resource-group scoped lists see only that group (images.list_by_resource_group)."""
    from azure.mgmt.compute import ComputeManagementClient

    arm.set_estate(
        sb.build_estate(
            sb.image(S1, "rg-a", "a1", os_blob=blob("a1")),
            sb.image(S1, "rg-b", "b1", os_blob=blob("b1")),
            sb.image(S1, "RG-A", "a2", os_blob=blob("a2")),
        )
    )
    client = ComputeManagementClient(
        EmulatorCredential(), S1, base_url=arm.url, connection_verify=arm.cert_path, retry_total=0
    )
    with client:
        assert sorted(i.name for i in client.images.list_by_resource_group("rg-a")) == ["a1", "a2"]
        assert client.images.get("rg-b", "b1").storage_profile.os_disk.blob_uri == blob("b1")


def test_standin_serves_storage_accounts(arm):
    arm.set_estate(
        sb.build_estate(
            sb.storage_account(S1, "rg", "acct1"),
            sb.storage_account(S1, "rg", "acct2", blob_endpoint="http://127.0.0.1:10000/acct2"),
            sb.storage_account(S1, "other", "acct3"),
        )
    )
    status, body, _ = _raw_get(arm, f"/subscriptions/{S1}/providers/Microsoft.Storage/storageAccounts?api-version=1")
    assert status == 200 and [a["name"] for a in body["value"]] == ["acct1", "acct2"]
    _, page2, _ = _raw_get(arm, body["nextLink"][len(arm.url) :])
    assert [a["name"] for a in page2["value"]] == ["acct3"]
    status, body, _ = _raw_get(
        arm, f"/subscriptions/{S1}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts?api-version=1"
    )
    assert [a["properties"]["primaryEndpoints"]["blob"] for a in body["value"]] == [
        "https://acct1.blob.core.windows.net/",
        "http://127.0.0.1:10000/acct2",
    ]


def test_standin_fault_counting(arm):
    arm.set_estate(sb.empty_estate(S1))
    path = f"/subscriptions/{S1}/providers/Microsoft.Compute/disks?api-version=1"
    arm.add_fault("/disks$", status=502, nth=2)
    assert [_raw_get(arm, path)[0] for _ in range(4)] == [200, 502, 200, 200]
    arm.clear_faults()
    arm.add_fault("/disks$", status=500, times=2)
    assert [_raw_get(arm, path)[0] for _ in range(3)] == [500, 500, 200]
    assert len(arm.requests) == 7


def test_standin_constructor_opens_nothing(tmp_path):
    standin = sb.ArmStandIn(page_size=3, cert_dir=str(tmp_path))
    assert not list(tmp_path.iterdir())
    with pytest.raises(RuntimeError):
        standin.url  # noqa: B018


def test_standin_as_a_process_with_http_control(tmp_path):
    estate, expected = vm_estate(S1, 3)
    estate_file = tmp_path / "estate.json"
    estate_file.write_text(json.dumps(sb.empty_estate(S1)))
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.arm", "--port", "0", "--cert-dir", str(tmp_path / "cert"),
         "--estate", str(estate_file), "--page-size", "2"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "READY", line
        url, cert = line[1], line[2]
        ctx = ssl.create_default_context(cafile=cert)

        def control(method: str, path: str, payload=None):
            data = json.dumps(payload).encode() if payload is not None else None
            req = urllib.request.Request(url + path, data=data, method=method)
            with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                return json.loads(resp.read())

        control("PUT", "/_control/estate", estate)
        control("POST", "/_control/faults", [{"path": "/disks$", "status": 500, "times": 1}])
        inventory = ReferenceInventory(
            EmulatorCredential(), url, [S1], connection_verify=cert, retry_total=2, retry_backoff=0.01, timeout=5
        )
        with inventory:
            read = inventory.read()
        assert read.errors == [] and triples(read) == expected
        logged = control("GET", "/_control/requests")
        assert sum("/disks?" in p for _, p in logged) == 2  # the fault, then the retry
        control("DELETE", "/_control/faults")
        assert control("GET", "/_control/faults") == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0


# --------------------------------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------------------------------


def test_emulator_credential_gives_a_fixed_long_lived_token():
    token = EmulatorCredential().get_token("https://127.0.0.1/.default")
    assert token.token == EMULATOR_TOKEN
    assert token.expires_on > time.time() + timedelta(days=300).total_seconds()
    assert build_credential("emulator").get_token_info("x").token == EMULATOR_TOKEN


@pytest.mark.parametrize("kind", ["default", "managed_identity", "azure_cli"])
def test_build_credential_names(kind):
    assert build_credential(kind) is not None  # builds without any I/O


def test_build_credential_refuses_unknown_kind():
    with pytest.raises(ValueError, match="client_secret"):
        build_credential("client_secret")
