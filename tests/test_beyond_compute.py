"""Issue 11, section 3: VHDs that services outside Compute hold, with no lease and no Compute
reference. Each service is served by the ARM stand-in from Microsoft's published REST API examples
(sandbox/rest_examples/, provenance in its PROVENANCE.md; the builders in sandbox/arm_services.py, and
arm_images.py for gallery applications, say which example each resource starts from and which schema
fields they add). Every case runs a delete-mode
pass with a grace period of 0s and checks ground truth in Azurite: the held VHDs are there, the
leftover beside them is gone (so the pass really deleted what it should).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from sandbox import arm as a
from tests.support.estate import SUB

RG = "svc-rg"
ACCT2_ID = a.storage_account_id(SUB, "storage-rg", "gcacct2")
FAR_ID = a.storage_account_id(SUB, "dr-rg", "farrecovery")  # an account vhd-gc does not collect


def _delete_pass(gc, *resources, **settings):
    gc.configure(mode="delete", grace_period="0s", min_sightings=1, **settings)
    gc.compute(*resources)
    run = gc.cli("scan")
    assert run.code == 0, run.err[-3000:]
    return run


def _explain(gc, url: str) -> dict:
    run = gc.cli("explain", url, "--format", "json")
    assert run.code == 0, run.err
    return json.loads(run.out)


# -- Site Recovery and Azure Migrate -------------------------------------------------------------


def test_site_recovery_a2a_disks_and_cache_account_are_in_use(gc):
    """A2A: the protected disk (diskUri) is named; the cache (primaryStagingAzureStorageAccountId) is
    an account of ours, so every blob in it is in use; the replica (recoveryDiskUri) lives in an
    account vhd-gc does not collect and is ignored for matching."""
    source = gc.page("vhds", "app-os.vhd")
    cache = gc.page("asrcache", "cache-app-os.vhd", account="gcacct2")
    gc.page("other", "unrelated-in-cache-account.vhd", account="gcacct2")
    gc.page("leftovers", "old.vhd")
    details = a.a2a_details({
        "diskUri": source,
        "recoveryDiskUri": "https://farrecovery.blob.core.windows.net/vhds/app-os-ASRReplica.vhd",
        "primaryDiskAzureStorageAccountId": a.storage_account_id(SUB, "storage-rg", "gcacct1"),
        "primaryStagingAzureStorageAccountId": ACCT2_ID,
        "recoveryAzureStorageAccountId": FAR_ID,
    })
    _delete_pass(gc, a.recovery_vault(SUB, RG, "vault1"),
                 a.replication_protected_item(SUB, RG, "vault1", "app-vm", details))
    assert gc.exists("vhds", "app-os.vhd")
    assert gc.exists("asrcache", "cache-app-os.vhd", "gcacct2")
    assert gc.exists("other", "unrelated-in-cache-account.vhd", "gcacct2")
    assert not gc.exists("leftovers", "old.vhd")
    refs = _explain(gc, cache)["references"]
    assert [r["kind"] for r in refs] == ["site_recovery_account"]
    assert refs[0]["field"].endswith("primaryStagingAzureStorageAccountId") and "app-vm" in refs[0]["holder"]
    source_refs = _explain(gc, source)["references"]
    assert [(r["kind"], r["field"]) for r in source_refs] == [("site_recovery", "providerSpecificDetails.protectedDisks[0].diskUri")]


def test_site_recovery_hyperv_replica_named_by_target_disk_location_is_in_use(gc):
    """HyperVReplicaAzure names its replica by ``targetDiskLocation`` (no "Uri" in the key) and its log
    account by ``recoveryAzureLogStorageAccountId``."""
    replica = gc.page("replicas", "hv-os.vhd")
    gc.page("logs", "hv-log.vhd", account="gcacct2")
    gc.page("leftovers", "old.vhd")
    details = a.hyperv_azure_details(recovery_account=FAR_ID, log_account=ACCT2_ID,
                                     disks=[{"vhdName": "hv-os", "vhdId": "f8491e4f", "targetDiskLocation": replica}])
    _delete_pass(gc, a.recovery_vault(SUB, RG, "vault1"),
                 a.replication_protected_item(SUB, RG, "vault1", "f8491e4f-817a-40dd-a90c-af773978c75b", details))
    assert gc.exists("replicas", "hv-os.vhd")
    assert gc.exists("logs", "hv-log.vhd", "gcacct2")
    assert not gc.exists("leftovers", "old.vhd")


def test_azure_migrate_seed_target_and_log_account_are_in_use(gc):
    seed_blob = gc.page("migrate", "seed-os.vhd")
    target = gc.page("migrate", "target-os.vhd")
    gc.page("mlogs", "log.vhd", account="gcacct2")
    gc.page("leftovers", "old.vhd")
    details = a.vmware_cbt_details({"seedBlobUri": seed_blob, "targetBlobUri": target, "logStorageAccountId": ACCT2_ID})
    _delete_pass(gc, a.recovery_vault(SUB, RG, "migrationvault"),
                 a.replication_migration_item(SUB, RG, "migrationvault", "virtualmachine1", details))
    assert gc.exists("migrate", "seed-os.vhd") and gc.exists("migrate", "target-os.vhd")
    assert gc.exists("mlogs", "log.vhd", "gcacct2")
    assert not gc.exists("leftovers", "old.vhd")
    assert {r["kind"] for r in _explain(gc, seed_blob)["references"]} == {"azure_migrate"}


def test_items_of_every_page_of_every_vault_are_read(gc):
    """Three vaults (two pages), three items in the last vault (two pages): a reader that stopped at
    a page would miss the replica behind it."""
    last = gc.page("vhds", "last-page.vhd")
    vaults = [a.recovery_vault(SUB, RG, f"vault{i}") for i in range(3)]
    items = [a.replication_protected_item(SUB, RG, "vault2", f"item{i}", a.a2a_details(
        {"diskUri": gc.url("vhds", f"page-{i}.vhd") if i < 2 else last})) for i in range(3)]
    _delete_pass(gc, *vaults, *items)
    assert gc.exists("vhds", "last-page.vhd")


# -- Image Builder, DevTest Labs, gallery applications -------------------------------------------


def test_image_builder_vhd_output_is_in_use(gc):
    output = gc.page("aib", "ubuntu-golden.vhd")
    gc.page("aib", "older-run.vhd")
    _delete_pass(
        gc,
        a.image_template(SUB, RG, "golden"),
        a.image_run_output(SUB, RG, "golden", "vhd-out", artifact_uri=output + "?sv=2024-08-04&sr=b&sig=SECRET"),
        a.image_run_output(SUB, RG, "golden", "managed-out"),  # the example's managed image output: no blob
    )
    assert gc.exists("aib", "ubuntu-golden.vhd")
    assert not gc.exists("aib", "older-run.vhd")
    assert [r["kind"] for r in _explain(gc, output)["references"]] == ["image_builder_output"]


def test_devtest_lab_custom_image_vhd_in_the_labs_uploads_is_in_use(gc):
    gc.page("uploads", "golden.vhd", account="gcacct2")
    gc.page("uploads", "never-imported.vhd", account="gcacct2")
    _delete_pass(
        gc,
        a.devtest_lab(SUB, RG, "lab1", default_account="gcacct2"),
        a.devtest_custom_image(SUB, RG, "lab1", "golden-image", vhd_name="golden.vhd"),
        a.devtest_custom_image(SUB, RG, "lab1", "from-a-vm", vhd_name=None),  # the example's VM-based image
    )
    assert gc.exists("uploads", "golden.vhd", "gcacct2")
    assert not gc.exists("uploads", "never-imported.vhd", "gcacct2")


def test_gallery_application_package_and_configuration_are_in_use(gc):
    """Application packages are page blobs of any name: with non-.vhd page blobs collectable by
    policy, the referenced two survive and a third is deleted."""
    package = gc.page("apps", "package.zip")
    config = gc.page("apps", "config.json")
    gc.page("apps", "old-package.zip")
    _delete_pass(
        gc,
        a.gallery(SUB, RG, "gal"),
        a.gallery_application(SUB, RG, "gal", "myapp"),
        a.gallery_application_version(SUB, RG, "gal", "myapp", "1.0.0", media_link=package + "?sv=1&sig=SAS",
                                      config_link=config),
        policy={"delete_non_vhd_page_blobs": True},
    )
    assert gc.exists("apps", "package.zip") and gc.exists("apps", "config.json")
    assert not gc.exists("apps", "old-package.zip")


# -- captured images, Kubernetes volumes, last owner -----------------------------------------------

CAPTURED = "Microsoft.Compute/Images/vhds/web-osDisk.4a9b2c1e-0d4f-4c3a-9b7e-5f1a2b3c4d5e.vhd"
CAPTURE_METADATA = {"MicrosoftAzureCompute_ImageType": "OSDisk", "MicrosoftAzureCompute_OSState": "Generalized",
                    "MicrosoftAzureCompute_OSType": "Linux", "MicrosoftAzureCompute_CapturedVMKey": "/Subscriptions/x/web"}


def test_captured_vm_images_are_held_by_path_and_by_metadata(gc):
    by_path = gc.page("system", CAPTURED)
    by_metadata = gc.page("templates", "captured-elsewhere.vhd", metadata=CAPTURE_METADATA)
    gc.page("leftovers", "old.vhd")
    _delete_pass(gc)
    assert gc.exists("system", CAPTURED) and gc.exists("templates", "captured-elsewhere.vhd")
    assert not gc.exists("leftovers", "old.vhd")
    report = gc.report()
    assert report[by_path]["state"] == "kept" and report[by_path]["hold"] == "captured_image"
    assert report[by_metadata]["hold"] == "captured_image"


def test_captured_vm_images_age_out_only_when_the_policy_says_so(gc):
    """Age is counted on the storage service's clock: moving the collector's clock ages nothing; once
    Azurite's clock has passed the policy's age, the captured image is an ordinary leftover."""
    url = gc.page("system", CAPTURED)
    gc.configure(mode="delete", grace_period="0s", min_sightings=1, policy={"captured_image_max_age": "2s"})
    assert gc.scan(advance=timedelta(days=31)).outcome == "complete"
    assert gc.exists("system", CAPTURED) and gc.report()[url]["hold"] == "captured_image"
    written = gc.svc().get_blob_client("system", CAPTURED).get_blob_properties().last_modified
    gc.wait_for_service_time(written + timedelta(seconds=3))
    assert gc.scan().outcome == "complete"
    assert not gc.exists("system", CAPTURED)


@pytest.mark.parametrize("hold", [True, False], ids=["held", "policy-off"])
def test_kubernetes_in_tree_volumes_are_held_by_their_naming_convention(gc, hold):
    by_name = gc.page("vhds", "kubernetes-dynamic-pvc-0f6c1e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6.vhd")
    by_metadata = gc.page("vhds", "mycluster-dynamic-data.vhd", metadata={"createdby": "k8sAzureDataDisk"})
    _delete_pass(gc, policy={"hold_kubernetes_volumes": hold})
    names = ("kubernetes-dynamic-pvc-0f6c1e2a-1b2c-4d5e-8f90-a1b2c3d4e5f6.vhd", "mycluster-dynamic-data.vhd")
    assert [gc.exists("vhds", n) for n in names] == [hold, hold]
    if hold:
        report = gc.report()
        assert {report[u]["hold"] for u in (by_name, by_metadata)} == {"kubernetes"}


def test_last_owner_evidence_from_compute_metadata_is_shown(gc):
    left = gc.page("vhds", "web-os.vhd", metadata={
        "MicrosoftAzureCompute_VMName": "web", "MicrosoftAzureCompute_ResourceGroupName": "rg-web",
        "MicrosoftAzureCompute_DiskName": "web-osdisk", "MicrosoftAzureCompute_DiskType": "OSDisk"})
    gc.configure(mode="dry-run", grace_period="7d")
    assert gc.scan().outcome == "complete"
    assert gc.report()[left]["last_owner"] == "vm:web (resource group rg-web, disk web-osdisk)"
    doc = _explain(gc, left)
    assert doc["live"]["last_owner_evidence"] == {"vm": "web", "resource_group": "rg-web", "disk": "web-osdisk"}
    text = gc.cli("explain", left).out
    assert "last owner (metadata Compute wrote, evidence only): vm web, resource group rg-web, disk web-osdisk" in text
