"""The ARM stand-in's resources of other services: Site Recovery (vaults, protected and migration
items), Image Builder (templates, run outputs), DevTest Labs (labs, custom images): their builders,
made from Microsoft's published REST examples (:func:`example`), and the one generic route that serves
them (and Compute's gallery applications) by id or by collection.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Iterable

from sandbox.arm_estate import DEFAULT_LOCATION, _not_found, _type_of, storage_account_id

# --------------------------------------------------------------------------------------------------
# Builders of the other services' resources. Each starts from a response body of Microsoft's
# published REST API examples (sandbox/rest_examples/, provenance in its PROVENANCE.md: odd casing,
# nulls and extra fields kept) and sets what a test needs. Where the examples hold no such field
# (Site Recovery's provider-specific disk details, Image Builder's artifactUri, DevTest Labs'
# vhd.imageName), the field is added under the name the service's schema gives it.
# --------------------------------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent / "rest_examples"


def example(name: str, index: int | None = 0) -> Any:
    """A deep copy of an example body (``value[index]`` of a list body; the body with ``index=None``)."""
    body = json.loads((EXAMPLES / f"{name}.json").read_text())
    return copy.deepcopy(body if index is None else body["value"][index])


def _recovery_id(sub: str, rg: str, vault: str) -> str:
    # Site Recovery's own ids say "/Subscriptions/" (ReplicationProtectedItems_List.json): kept.
    return f"/Subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{vault}"


def recovery_vault(sub: str, rg: str, name: str) -> dict[str, Any]:
    """A Recovery Services vault (recoveryservices__ListBySubscriptionIds.json, value[0])."""
    item = example("recoveryservices__ListBySubscriptionIds")
    item["id"] = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{name}"
    item["name"] = name
    return item


def a2a_details(*disks: dict[str, Any], boot_diag_account: str | None = None) -> dict[str, Any]:
    """A2A (Azure to Azure) replication details with unmanaged ``protectedDisks`` (A2AProtectedDiskDetails:
    ``diskUri``, ``recoveryDiskUri``, ``primaryStagingAzureStorageAccountId``, ``recoveryAzureStorageAccountId``,
    ``primaryDiskAzureStorageAccountId``), as the 2025-08-01 schema names them."""
    details: dict[str, Any] = {
        "instanceType": "A2A",
        "fabricObjectId": None,
        "multiVmGroupName": "vmGroup1",
        "protectedDisks": [dict({"diskName": f"disk{i}", "diskType": "Standard_LRS", "monitoringPercentageCompletion": None,
                                 "dataPendingInStagingStorageAccountInMB": 0.0}, **d) for i, d in enumerate(disks)],
        "protectedManagedDisks": [],
        "recoveryBootDiagStorageAccountId": boot_diag_account,
    }
    return details


def hyperv_azure_details(*, recovery_account: str, log_account: str | None = None,
                         disks: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """HyperVReplicaAzure details: ``recoveryAzureStorageAccount``, ``recoveryAzureLogStorageAccountId``,
    ``azureVmDiskDetails[]`` (``vhdName``, ``vhdId``, ``targetDiskLocation``: the blob URI of the replica)."""
    return {
        "instanceType": "HyperVReplicaAzure",
        "recoveryAzureStorageAccount": recovery_account,
        "recoveryAzureLogStorageAccountId": log_account,
        "azureVmDiskDetails": [dict({"vhdType": "OperatingSystem", "maxSizeMB": "130048"}, **d) for d in disks],
    }


def vmware_cbt_details(*disks: dict[str, Any]) -> dict[str, Any]:
    """VMwareCbt migration details: ``protectedDisks[]`` (``seedBlobUri``, ``targetBlobUri``, ``logStorageAccountId``)."""
    return {
        "instanceType": "VMwareCbt",
        "protectedDisks": [dict({"diskId": f"6000C29{i}", "diskType": "Standard_LRS", "isOSDisk": str(i == 0),
                                 "capacityInBytes": 34359738368}, **d) for i, d in enumerate(disks)],
    }


def replication_protected_item(sub: str, rg: str, vault: str, name: str, details: dict[str, Any]) -> dict[str, Any]:
    """A Site Recovery protected item (ReplicationProtectedItems_List.json, value[0]) with these details."""
    item = example("recoveryservicessiterecovery__ReplicationProtectedItems_List")
    item["id"] = (f"{_recovery_id(sub, rg, vault)}/replicationFabrics/cloud1/replicationProtectionContainers/"
                  f"cloud_6d224fc6-f326-5d35-96de-fbf51efb3179/replicationProtectedItems/{name}")
    item["name"] = name
    item["properties"]["providerSpecificDetails"] = details
    return item


def replication_migration_item(sub: str, rg: str, vault: str, name: str, details: dict[str, Any]) -> dict[str, Any]:
    """An Azure Migrate migration item (ReplicationMigrationItems_List.json, value[0]) with these details."""
    item = example("recoveryservicessiterecovery__ReplicationMigrationItems_List")
    item["id"] = (f"{_recovery_id(sub, rg, vault)}/replicationFabrics/vmwarefabric1/replicationProtectionContainers/"
                  f"vmwareContainer1/replicationMigrationItems/{name}")
    item["name"] = name
    item["properties"]["providerSpecificDetails"] = details
    return item


def image_template(sub: str, rg: str, name: str) -> dict[str, Any]:
    """An Image Builder template (imagebuilder__ListImageTemplates.json, value[0])."""
    item = example("imagebuilder__ListImageTemplates")
    item["id"] = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates/{name}"
    item["name"] = name
    return item


def image_run_output(sub: str, rg: str, template: str, name: str, *, artifact_uri: str | None = None) -> dict[str, Any]:
    """A run output (imagebuilder__ListRunOutputs.json, value[0]); a VHD distribution adds ``artifactUri``."""
    item = example("imagebuilder__ListRunOutputs")
    # The example's own lower-case "resourcegroups" is kept.
    item["id"] = (f"/subscriptions/{sub}/resourcegroups/{rg}/providers/Microsoft.VirtualMachineImages/imageTemplates/"
                  f"{template}/runOutputs/{name}")
    item["name"] = name
    if artifact_uri is not None:
        item["properties"].pop("artifactId", None)
        item["properties"]["artifactUri"] = artifact_uri
    return item


def devtest_lab(sub: str, rg: str, name: str, *, default_account: str, premium_account: str | None = None) -> dict[str, Any]:
    """A DevTest lab (devtestlabs__Labs_ListBySubscription.json, value[0]) whose storage accounts are ours."""
    item = example("devtestlabs__Labs_ListBySubscription")
    item["id"] = f"/subscriptions/{sub}/resourcegroups/{rg}/providers/microsoft.devtestlab/labs/{name}"
    item["name"] = name
    props = item["properties"]
    default = storage_account_id(sub, rg, default_account)
    props["defaultStorageAccount"] = default
    props["artifactsStorageAccount"] = default
    premium = storage_account_id(sub, rg, premium_account) if premium_account else default
    props["defaultPremiumStorageAccount"] = premium
    props["premiumDataDiskStorageAccount"] = premium
    props["vaultName"] = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/{name}kv"
    return item


def devtest_custom_image(sub: str, rg: str, lab: str, name: str, *, vhd_name: str | None) -> dict[str, Any]:
    """A custom image (devtestlabs__CustomImages_List.json, value[0]: made from a VM); with ``vhd_name``
    it is made from an uploaded VHD instead (``vhd``: ``imageName``, ``sysPrep``, ``osType``)."""
    item = example("devtestlabs__CustomImages_List")
    item["id"] = f"/subscriptions/{sub}/resourcegroups/{rg}/providers/microsoft.devtestlab/labs/{lab}/customimages/{name}"
    item["name"] = name
    item["location"] = DEFAULT_LOCATION
    if vhd_name is not None:
        item["properties"].pop("vm", None)
        item["properties"]["vhd"] = {"imageName": vhd_name, "sysPrep": False, "osType": "Linux"}
    return item


def generic(sub: dict[str, Any], segs: list[str], rg: str | None, namespace: str) -> list[Any] | dict[str, Any]:
    """A resource of the ``resources`` bucket by its id, or a collection of them."""
    resources = [r for r in sub.get("resources", []) if isinstance(r, dict)]
    path = "/" + "/".join(segs)
    low = path.lower()
    for r in resources:
        if str(r.get("id", "")).lower() == low:
            return r
    parent, _, type_seg = low.rpartition("/")
    if rg is None:  # /subscriptions/S/providers/NS/type: every top-level resource of that type
        if len(segs) != 5:
            raise _not_found(path, rg)
        want = f"{namespace}/{segs[4]}".lower()
        return [r for r in resources if _type_of(r).lower() == want]
    if not parent.endswith(f"/providers/{namespace.lower()}"):
        known = {str(r.get("id", "")).lower() for r in resources}
        known |= {str(g.get("id", "")).lower() for g in sub.get("galleries", []) if isinstance(g, dict)}
        if parent not in known:
            raise _not_found(parent, rg)
    return [
        r for r in resources
        if str(r.get("id", "")).lower().startswith(parent + "/") and str(r["id"]).lower().split("/")[-2] == type_seg
    ]
