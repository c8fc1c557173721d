"""A wire-level stand-in for Azure Resource Manager: Microsoft.Compute lists and storage accounts.

It serves the REST paths azure-mgmt-compute 39 calls, over HTTPS (azure-core refuses bearer tokens
over plain HTTP), with ARM's paging (``nextLink`` is absolute and carries ``api-version`` and a
``$skiptoken``), ARM's error bodies, and faults that can be injected per path.

In-process::

    with ArmStandIn(build_estate(vm(SUB, "rg", "vm1", os_vhd=URL)), page_size=2) as arm:
        client = ComputeManagementClient(cred, SUB, base_url=arm.url, connection_verify=arm.cert_path)

As its own process::

    python -m sandbox.arm --port 0 --cert-dir DIR --estate estate.json [--page-size N]
        [--read-budget N --read-refill R]

prints ``READY https://127.0.0.1:PORT CERT_PATH`` once listening and serves until SIGTERM. Another
process steers it through ``/_control/...`` (see :class:`_Handler`).

The estate is plain JSON-able data::

    {"subscriptions": {SUB: {"virtualMachines": [...], "virtualMachineScaleSets": [...],
        "virtualMachineScaleSetVMs": {"<rg>/<vmss>": [...]}, "images": [...], "disks": [...],
        "snapshots": [...], "galleries": [...], "galleryImages": {"<rg>/<gallery>": [...]},
        "galleryImageVersions": {"<rg>/<gallery>/<image>": [...]}, "storageAccounts": [...]}}}

Resources are ARM's REST JSON (``id``, ``name``, ``type``, ``location``, ``properties``); the builder
helpers below (:func:`vm`, :func:`disk`, ...) make them, and :func:`build_estate` files them.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qs, quote, urlsplit

from sandbox.tls import make_self_signed

# A delay fault never holds a request longer than this, so a forgotten rule cannot hang a test run.
MAX_DELAY_SECONDS = 30.0
MAX_GATE_SECONDS = 300.0  # a gate never held longer: only catches a test that forgot to release it

COMPUTE = "Microsoft.Compute"
STORAGE = "Microsoft.Storage"

# Estate buckets that are flat lists of top-level resources, by the REST type segment.
TOP_LEVEL_KINDS = {
    "virtualmachines": "virtualMachines",
    "virtualmachinescalesets": "virtualMachineScaleSets",
    "images": "images",
    "disks": "disks",
    "snapshots": "snapshots",
    "galleries": "galleries",
}
# Resources of other services (and Compute's gallery applications) are served by one generic route:
# a resource by its id, a collection by its parent's id and its type segment (at any depth below the
# parent: Site Recovery's vault-wide lists return items nested under fabrics and containers).
GENERIC_NAMESPACES = ("microsoft.recoveryservices", "microsoft.virtualmachineimages", "microsoft.devtestlab")
GENERIC_COMPUTE_TYPES = ("galleries/applications", "galleries/applications/versions")
SUBSCRIPTION_BUCKETS = (
    "resources",
    "virtualMachines",
    "virtualMachineScaleSets",
    "virtualMachineScaleSetVMs",
    "images",
    "disks",
    "snapshots",
    "galleries",
    "galleryImages",
    "galleryImageVersions",
    "storageAccounts",
)
_KEYED_BUCKETS = {"virtualMachineScaleSetVMs", "galleryImages", "galleryImageVersions"}

DEFAULT_LOCATION = "westeurope"

# What the identity holds when a test sets nothing (Permissions - List For Resource answers it at every
# scope): reads everywhere and every blob data action, so a delete-mode preflight passes. Shape: the
# Permission of Microsoft.Authorization 2022-04-01 (sandbox/rest_examples/PROVENANCE.md).
DEFAULT_PERMISSIONS: list[dict[str, Any]] = [
    {
        "actions": ["*/read"],
        "notActions": [],
        "dataActions": ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"],
        "notDataActions": [],
    }
]


# --------------------------------------------------------------------------------------------------
# Builders: real-shaped ARM resources
# --------------------------------------------------------------------------------------------------


def rg_id(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def compute_id(sub: str, rg: str, *type_and_names: str) -> str:
    """``compute_id(S, RG, "virtualMachines", "vm1")`` -> ``/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm1``."""
    return f"{rg_id(sub, rg)}/providers/{COMPUTE}/" + "/".join(type_and_names)


def storage_account_id(sub: str, rg: str, name: str) -> str:
    return f"{rg_id(sub, rg)}/providers/{STORAGE}/storageAccounts/{name}"


def _iso(value: datetime | str | None) -> str:
    if value is None:
        value = datetime.now(timezone.utc)
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _disk_entry(spec: str | dict[str, Any], lun: int, owner: str) -> dict[str, Any]:
    """A dataDisks[] element: ``spec`` is a VHD URL, or ``{"vhd": URL, "image": URL}``."""
    if isinstance(spec, str):
        spec = {"vhd": spec}
    entry: dict[str, Any] = {
        "lun": lun,
        "name": f"{owner}-data{lun}",
        "createOption": "FromImage" if spec.get("image") else "Empty",
        "caching": "None",
        "diskSizeGB": spec.get("size_gb", 32),
        "toBeDetached": False,
    }
    if spec.get("vhd"):
        entry["vhd"] = {"uri": spec["vhd"]}
    else:
        entry["managedDisk"] = {"storageAccountType": "Premium_LRS"}
    if spec.get("image"):
        entry["image"] = {"uri": spec["image"]}
    return entry


def _storage_profile(
    owner: str,
    sub: str,
    rg: str,
    os_vhd: str | None,
    data_vhds: Iterable[str | dict[str, Any]],
    os_image: str | None,
) -> dict[str, Any]:
    os_disk: dict[str, Any] = {
        "osType": "Linux",
        "name": f"{owner}-osdisk",
        "createOption": "FromImage",
        "caching": "ReadWrite",
        "diskSizeGB": 30,
    }
    if os_vhd:
        os_disk["vhd"] = {"uri": os_vhd}
    else:
        os_disk["managedDisk"] = {
            "id": compute_id(sub, rg, "disks", f"{owner}-osdisk"),
            "storageAccountType": "Premium_LRS",
        }
    if os_image:
        os_disk["image"] = {"uri": os_image}
    profile: dict[str, Any] = {
        "osDisk": os_disk,
        "dataDisks": [_disk_entry(spec, lun, owner) for lun, spec in enumerate(data_vhds)],
    }
    if not os_image and not os_vhd:
        profile["imageReference"] = {
            "publisher": "Canonical",
            "offer": "ubuntu-24_04-lts",
            "sku": "server",
            "version": "latest",
        }
    return profile


def vm(
    sub: str,
    rg: str,
    name: str,
    *,
    os_vhd: str | None = None,
    data_vhds: Iterable[str | dict[str, Any]] = (),
    os_image: str | None = None,
    boot_diagnostics: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A virtual machine. Without ``os_vhd`` its OS disk is managed (no blob reference).

    ``data_vhds`` elements are VHD URLs or ``{"vhd": URL, "image": URL}``.
    ``boot_diagnostics`` is a storage URI that is NOT a VHD reference.
    """
    props: dict[str, Any] = {
        "vmId": str(uuid.uuid5(uuid.NAMESPACE_URL, compute_id(sub, rg, "virtualMachines", name))),
        "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
        "storageProfile": _storage_profile(name, sub, rg, os_vhd, data_vhds, os_image),
        "osProfile": {"computerName": name, "adminUsername": "azureuser"},
        "networkProfile": {
            "networkInterfaces": [
                {"id": f"{rg_id(sub, rg)}/providers/Microsoft.Network/networkInterfaces/{name}-nic"}
            ]
        },
        "provisioningState": "Succeeded",
    }
    if boot_diagnostics:
        props["diagnosticsProfile"] = {"bootDiagnostics": {"enabled": True, "storageUri": boot_diagnostics}}
    return {
        "id": compute_id(sub, rg, "virtualMachines", name),
        "name": name,
        "type": f"{COMPUTE}/virtualMachines",
        "location": location,
        "properties": props,
    }


def vmss(
    sub: str,
    rg: str,
    name: str,
    *,
    vhd_containers: Iterable[str] = (),
    os_image: str | None = None,
    capacity: int = 2,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A scale set. ``vhd_containers`` are container URLs (every blob in them is in use)."""
    os_disk: dict[str, Any] = {"createOption": "FromImage", "caching": "ReadWrite", "osType": "Linux"}
    containers = list(vhd_containers)
    if containers or os_image:
        os_disk["name"] = f"{name}-osdisk"
    if containers:
        os_disk["vhdContainers"] = containers
    if os_image:
        os_disk["image"] = {"uri": os_image}
    if not containers and not os_image:
        os_disk["managedDisk"] = {"storageAccountType": "Premium_LRS"}
    return {
        "id": compute_id(sub, rg, "virtualMachineScaleSets", name),
        "name": name,
        "type": f"{COMPUTE}/virtualMachineScaleSets",
        "location": location,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard", "capacity": capacity},
        "properties": {
            "upgradePolicy": {"mode": "Manual"},
            "virtualMachineProfile": {
                "osProfile": {"computerNamePrefix": name[:9], "adminUsername": "azureuser"},
                "storageProfile": {"osDisk": os_disk},
            },
            "provisioningState": "Succeeded",
            "overprovision": False,
            "uniqueId": str(uuid.uuid5(uuid.NAMESPACE_URL, compute_id(sub, rg, "virtualMachineScaleSets", name))),
        },
    }


def vmss_vm(
    sub: str,
    rg: str,
    vmss_name: str,
    instance_id: str | int,
    *,
    os_vhd: str | None = None,
    data_vhds: Iterable[str | dict[str, Any]] = (),
    os_image: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A scale-set instance (``virtual_machine_scale_set_vms.list(rg, vmss_name)``)."""
    iid = str(instance_id)
    name = f"{vmss_name}_{iid}"
    rid = compute_id(sub, rg, "virtualMachineScaleSets", vmss_name, "virtualMachines", iid)
    return {
        "id": rid,
        "name": name,
        "type": f"{COMPUTE}/virtualMachineScaleSets/virtualMachines",
        "location": location,
        "instanceId": iid,
        "sku": {"name": "Standard_D2s_v3", "tier": "Standard"},
        "properties": {
            "latestModelApplied": True,
            "vmId": str(uuid.uuid5(uuid.NAMESPACE_URL, rid)),
            "hardwareProfile": {"vmSize": "Standard_D2s_v3"},
            "storageProfile": _storage_profile(name, sub, rg, os_vhd, data_vhds, os_image),
            "provisioningState": "Succeeded",
        },
    }


def image(
    sub: str,
    rg: str,
    name: str,
    *,
    os_blob: str | None = None,
    data_blobs: Iterable[str] = (),
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A managed image made from VHDs (``storageProfile.osDisk.blobUri``, ``dataDisks[].blobUri``)."""
    os_disk: dict[str, Any] = {
        "osType": "Linux",
        "osState": "Generalized",
        "caching": "ReadWrite",
        "storageAccountType": "Standard_LRS",
    }
    if os_blob:
        os_disk["blobUri"] = os_blob
    else:
        os_disk["managedDisk"] = {"id": compute_id(sub, rg, "disks", f"{name}-src")}
    return {
        "id": compute_id(sub, rg, "images", name),
        "name": name,
        "type": f"{COMPUTE}/images",
        "location": location,
        "properties": {
            "storageProfile": {
                "osDisk": os_disk,
                "dataDisks": [
                    {"lun": lun, "blobUri": uri, "caching": "None", "storageAccountType": "Standard_LRS"}
                    for lun, uri in enumerate(data_blobs)
                ],
                "zoneResilient": False,
            },
            "provisioningState": "Succeeded",
            "hyperVGeneration": "V1",
        },
    }


def _managed_disk_like(
    type_name: str,
    sub: str,
    rg: str,
    name: str,
    *,
    source_uri: str | None,
    storage_account: str | None,
    time_created: datetime | str | None,
    provisioning_state: str,
    security_data_uri: str | None,
    security_metadata_uri: str | None,
    size_gb: int,
    location: str,
    sku: str,
) -> dict[str, Any]:
    creation: dict[str, Any]
    if security_data_uri or security_metadata_uri:
        creation = {"createOption": "ImportSecure"}
        if source_uri:
            creation["sourceUri"] = source_uri
        if security_data_uri:
            creation["securityDataUri"] = security_data_uri
        if security_metadata_uri:
            creation["securityMetadataUri"] = security_metadata_uri
    elif source_uri:
        creation = {"createOption": "Import", "sourceUri": source_uri}
    else:
        creation = {"createOption": "Empty"}
    if storage_account:
        creation["storageAccountId"] = storage_account
    resource: dict[str, Any] = {
        "id": compute_id(sub, rg, type_name, name),
        "name": name,
        "type": f"{COMPUTE}/{type_name}",
        "location": location,
        "sku": {"name": sku, "tier": sku.split("_")[0]},
        "properties": {
            "osType": "Linux",
            "hyperVGeneration": "V1",
            "creationData": creation,
            "diskSizeGB": size_gb,
            "diskSizeBytes": size_gb * 1024**3,
            "uniqueId": str(uuid.uuid5(uuid.NAMESPACE_URL, compute_id(sub, rg, type_name, name))),
            "timeCreated": _iso(time_created),
            "provisioningState": provisioning_state,
            "diskState": "Unattached",
            "encryption": {"type": "EncryptionAtRestWithPlatformKey"},
            "networkAccessPolicy": "AllowAll",
            "publicNetworkAccess": "Enabled",
        },
    }
    if type_name == "snapshots":
        resource["properties"]["incremental"] = False
    return resource


def disk(
    sub: str,
    rg: str,
    name: str,
    *,
    source_uri: str | None = None,
    storage_account: str | None = None,
    time_created: datetime | str | None = None,
    provisioning_state: str = "Succeeded",
    security_data_uri: str | None = None,
    security_metadata_uri: str | None = None,
    size_gb: int = 32,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A managed disk; with ``source_uri`` it was imported from that VHD (``createOption: Import``)."""
    return _managed_disk_like(
        "disks",
        sub,
        rg,
        name,
        source_uri=source_uri,
        storage_account=storage_account,
        time_created=time_created,
        provisioning_state=provisioning_state,
        security_data_uri=security_data_uri,
        security_metadata_uri=security_metadata_uri,
        size_gb=size_gb,
        location=location,
        sku="Premium_LRS",
    )


def snapshot(
    sub: str,
    rg: str,
    name: str,
    *,
    source_uri: str | None = None,
    storage_account: str | None = None,
    time_created: datetime | str | None = None,
    provisioning_state: str = "Succeeded",
    size_gb: int = 32,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A snapshot; with ``source_uri`` it was imported from that VHD."""
    return _managed_disk_like(
        "snapshots",
        sub,
        rg,
        name,
        source_uri=source_uri,
        storage_account=storage_account,
        time_created=time_created,
        provisioning_state=provisioning_state,
        security_data_uri=None,
        security_metadata_uri=None,
        size_gb=size_gb,
        location=location,
        sku="Standard_LRS",
    )


def gallery(sub: str, rg: str, name: str, *, location: str = DEFAULT_LOCATION) -> dict[str, Any]:
    return {
        "id": compute_id(sub, rg, "galleries", name),
        "name": name,
        "type": f"{COMPUTE}/galleries",
        "location": location,
        "properties": {
            "description": "",
            "identifier": {"uniqueName": f"{sub}-{name.upper()}"},
            "provisioningState": "Succeeded",
        },
    }


def gallery_image(
    sub: str, rg: str, gallery_name: str, name: str, *, location: str = DEFAULT_LOCATION
) -> dict[str, Any]:
    return {
        "id": compute_id(sub, rg, "galleries", gallery_name, "images", name),
        "name": name,
        "type": f"{COMPUTE}/galleries/images",
        "location": location,
        "properties": {
            "osType": "Linux",
            "osState": "Generalized",
            "hyperVGeneration": "V1",
            "identifier": {"publisher": "vhdgc", "offer": gallery_name, "sku": name},
            "provisioningState": "Succeeded",
        },
    }


def gallery_image_version(
    sub: str,
    rg: str,
    gallery_name: str,
    image_name: str,
    name: str,
    *,
    os_source: str | None = None,
    data_sources: Iterable[str] = (),
    storage_account: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A gallery image version made from VHDs (``osDiskImage.source.uri``, ``dataDiskImages[].source.uri``)."""

    def source(uri: str) -> dict[str, Any]:
        src: dict[str, Any] = {"uri": uri}
        if storage_account:
            src["storageAccountId"] = storage_account
        return src

    storage_profile: dict[str, Any] = {
        "dataDiskImages": [
            {"lun": lun, "hostCaching": "None", "sizeInGB": 32, "source": source(uri)}
            for lun, uri in enumerate(data_sources)
        ]
    }
    if os_source:
        storage_profile["osDiskImage"] = {"hostCaching": "ReadWrite", "sizeInGB": 30, "source": source(os_source)}
    else:
        storage_profile["source"] = {"id": compute_id(sub, rg, "images", f"{image_name}-src")}
        storage_profile["osDiskImage"] = {"hostCaching": "ReadWrite", "sizeInGB": 30}
    return {
        "id": compute_id(sub, rg, "galleries", gallery_name, "images", image_name, "versions", name),
        "name": name,
        "type": f"{COMPUTE}/galleries/images/versions",
        "location": location,
        "properties": {
            "publishingProfile": {
                "targetRegions": [{"name": location, "regionalReplicaCount": 1}],
                "replicaCount": 1,
                "excludeFromLatest": False,
                "publishedDate": _iso(None),
                "storageAccountType": "Standard_LRS",
            },
            "storageProfile": storage_profile,
            "provisioningState": "Succeeded",
        },
    }


def storage_account(
    sub: str,
    rg: str,
    name: str,
    *,
    blob_endpoint: str | None = None,
    kind: str = "StorageV2",
    sku: str = "Standard_LRS",
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    return {
        "id": storage_account_id(sub, rg, name),
        "name": name,
        "type": f"{STORAGE}/storageAccounts",
        "location": location,
        "kind": kind,
        "sku": {"name": sku, "tier": sku.split("_")[0]},
        "properties": {
            "primaryEndpoints": {"blob": blob_endpoint or f"https://{name}.blob.core.windows.net/"},
            "primaryLocation": location,
            "statusOfPrimary": "available",
            "provisioningState": "Succeeded",
            "creationTime": _iso(None),
        },
    }


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


def gallery_application(sub: str, rg: str, gallery_name: str, name: str) -> dict[str, Any]:
    """A gallery application (GalleryApplication_ListByGallery.json, value[0]: it carries no ``type``)."""
    item = example("compute-gallery__GalleryApplication_ListByGallery")
    item["id"] = compute_id(sub, rg, "galleries", gallery_name, "applications", name)
    item["name"] = name
    return item


def gallery_application_version(
    sub: str, rg: str, gallery_name: str, app: str, name: str, *, media_link: str, config_link: str | None = None
) -> dict[str, Any]:
    """An application version (GalleryApplicationVersion_ListByGalleryApplication.json, value[0])."""
    item = example("compute-gallery__GalleryApplicationVersion_ListByGalleryApplication")
    item["id"] = compute_id(sub, rg, "galleries", gallery_name, "applications", app, "versions", name)
    item["name"] = name
    source = item["properties"]["publishingProfile"]["source"]
    source["mediaLink"] = media_link
    if config_link is not None:
        source["defaultConfigurationLink"] = config_link
    return item


def _type_of(resource: dict[str, Any]) -> str:
    """A resource's type, from its ``type``, else from its id (some examples carry none)."""
    if resource.get("type"):
        return str(resource["type"])
    parts = str(resource["id"]).split("/providers/", 1)[1].split("/")
    return "/".join([parts[0]] + parts[1::2])


def _type_of_or_none(resource: dict[str, Any]) -> str | None:
    if resource.get("type"):
        return str(resource["type"]).lower()
    return None


def empty_subscription() -> dict[str, Any]:
    return {bucket: ({} if bucket in _KEYED_BUCKETS else []) for bucket in SUBSCRIPTION_BUCKETS}


def empty_estate(*subscriptions: str) -> dict[str, Any]:
    return {"subscriptions": {sub: empty_subscription() for sub in subscriptions}}


_ID_RE = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<rest>.+)$", re.I)


def place(estate: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """File ``resource`` in the right bucket of ``estate`` (by its ``id`` and ``type``); returns it.

    Resource groups go to ``resourceGroups`` and management locks (at any scope) to ``locks`` of
    their subscription (sandbox/arm_disks.py makes and serves them)."""
    if _type_of_or_none(resource) in ("microsoft.resources/resourcegroups", "microsoft.authorization/locks"):
        sub = str(resource["id"]).split("/")[2]
        bucket = "resourceGroups" if _type_of_or_none(resource).startswith("microsoft.resources") else "locks"
        subs = estate.setdefault("subscriptions", {})
        subs.setdefault(sub, empty_subscription()).setdefault(bucket, []).append(resource)
        return resource
    m = _ID_RE.match(resource["id"])
    if not m:
        raise ValueError(f"not a resource-group scoped ARM id: {resource['id']!r}")
    sub, rg = m["sub"], m["rg"]
    parts = m["rest"].split("/")  # Namespace/type/name[/type/name...]
    subs = estate.setdefault("subscriptions", {})
    bucket_set = subs.setdefault(sub, empty_subscription())
    rtype = _type_of(resource).lower()
    if rtype == f"{STORAGE}/storageAccounts".lower():
        bucket_set.setdefault("storageAccounts", []).append(resource)
    elif rtype == f"{COMPUTE}/virtualMachineScaleSets/virtualMachines".lower():
        bucket_set.setdefault("virtualMachineScaleSetVMs", {}).setdefault(f"{rg}/{parts[2]}", []).append(resource)
    elif rtype == f"{COMPUTE}/galleries/images".lower():
        bucket_set.setdefault("galleryImages", {}).setdefault(f"{rg}/{parts[2]}", []).append(resource)
    elif rtype == f"{COMPUTE}/galleries/images/versions".lower():
        key = f"{rg}/{parts[2]}/{parts[4]}"
        bucket_set.setdefault("galleryImageVersions", {}).setdefault(key, []).append(resource)
    elif rtype.split("/", 1)[0] in GENERIC_NAMESPACES or rtype.split("/", 1)[-1] in GENERIC_COMPUTE_TYPES:
        bucket_set.setdefault("resources", []).append(resource)
    else:
        kind = rtype.split("/", 1)[1] if "/" in rtype else rtype
        if kind not in TOP_LEVEL_KINDS:
            raise ValueError(f"unsupported resource type {resource['type']!r}")
        bucket_set.setdefault(TOP_LEVEL_KINDS[kind], []).append(resource)
    return resource


def build_estate(*resources: dict[str, Any], subscriptions: Iterable[str] = ()) -> dict[str, Any]:
    """An estate holding ``resources``; ``subscriptions`` adds (possibly empty) subscriptions."""
    estate = empty_estate(*subscriptions)
    for resource in resources:
        place(estate, resource)
    return estate


# --------------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------------

FAULT_KINDS = ("error", "malformed", "truncate", "delay", "body", "lost_reply")

_DEFAULT_CODES = {
    400: "BadRequest",
    401: "AuthenticationFailed",
    403: "AuthorizationFailed",
    404: "ResourceNotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class Fault:
    """A rule that makes matching requests misbehave.

    ``path`` is a regex searched in the request path (no query). ``kind``:

    - ``error``: answer ``status`` with an ARM error body (``code``/``message``); ``retry_after``
      (seconds) adds a ``Retry-After`` header.
    - ``malformed``: 200 with a body that is not JSON.
    - ``truncate``: 200 whose body stops halfway (Content-Length promises more; the connection closes).
    - ``delay``: wait ``delay`` seconds (at most :data:`MAX_DELAY_SECONDS`), then answer normally.
    - ``body``: 200 with ``body`` (any JSON value) verbatim, e.g. ``{}`` or ``{"value": "x"}``.
    - ``lost_reply``: the request is served (a write happens; a long-running operation it starts is
      finished at once, see sandbox/arm_disks.py), then the connection closes with no reply.

    Which matching requests it hits: ``nth`` (1-based) only that one (and the ``times - 1`` after it
    when ``times`` is also given); ``times`` alone, the next ``times``; neither, every one.
    ``on_next_link`` restricts it to requests carrying ``$skiptoken`` (a nextLink follow-up).
    """

    path: str = ".*"
    kind: str = "error"
    status: int = 500
    code: str | None = None
    message: str | None = None
    retry_after: float | int | None = None
    delay: float = 0.0
    body: Any = None
    nth: int | None = None
    times: int | None = None
    on_next_link: bool = False
    method: str = "GET"
    seen: int = field(default=0, compare=False)
    fired: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        re.compile(self.path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fault":
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        data = {k: v for k, v in data.items() if k not in ("seen", "fired")}  # counters restart
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hit(self, method: str, path: str, has_skiptoken: bool) -> bool:
        """Count this request if it matches; return whether the fault fires on it. Caller holds the lock."""
        if method.upper() != self.method.upper() or not re.search(self.path, path):
            return False
        if self.on_next_link and not has_skiptoken:
            return False
        self.seen += 1
        if self.nth is not None:
            last = self.nth + (self.times or 1) - 1
            fire = self.nth <= self.seen <= last
        elif self.times is not None:
            fire = self.fired < self.times
        else:
            fire = True
        if fire:
            self.fired += 1
        return fire



@dataclass
class Hook:
    """Runs ``action(method, path_and_query)`` in the stand-in's thread when a matching request
    arrives, after it is logged and before it is served (a test's way to change the estate at an
    exact point of vhd-gc's sequence, or to wait on vhd-gc reaching that point). ``path`` is a regex
    searched in the request path (no query); ``method`` the HTTP method; ``times`` how many matching
    requests it takes (None: all). An action that returns True drops the request: it is not served
    and the connection closes with no reply (as if it never reached ARM). :attr:`entered` is set when
    the action starts, :attr:`done` when it has returned."""

    path: str
    method: str = "GET"
    action: Any = None
    times: int | None = 1
    fired: int = field(default=0, compare=False)
    entered: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    done: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def take(self, method: str, path: str) -> bool:
        """Caller holds the stand-in's lock."""
        if method.upper() != self.method.upper() or not re.search(self.path, path):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True

    def run(self, method: str, path_and_query: str) -> bool:
        self.entered.set()
        try:
            return bool(self.action(method, path_and_query)) if self.action is not None else False
        finally:
            self.done.set()


class Gate:
    """Holds the first request matching ``path``/``method`` unserved until :meth:`release`: the
    test waits for vhd-gc to reach that request (:meth:`wait`), acts (a SIGKILL), then lets the
    request be dropped (``serve=False``: ARM never saw it) or served."""

    def __init__(self, standin: "ArmStandIn", path: str, method: str) -> None:
        self._release = threading.Event()
        self._serve = False
        self.hook = standin.on_request(path, method, self._hold, times=1)

    def _hold(self, method: str, path: str) -> bool:
        self._release.wait(MAX_GATE_SECONDS)
        return not self._serve

    def wait(self, timeout: float) -> bool:
        """Whether the request arrived within ``timeout`` seconds (a bound that only catches a hang)."""
        return self.hook.entered.wait(timeout)

    def release(self, serve: bool = False) -> None:
        self._serve = serve
        self._release.set()
        if self.hook.entered.is_set():  # held: wait until the stand-in has dropped (or served) it
            self.hook.done.wait(MAX_GATE_SECONDS)

# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _not_found(what: str, rg: str | None) -> ArmError:
    where = f" under resource group '{rg}'" if rg else ""
    return ArmError(404, "ResourceNotFound", f"The Resource '{what}'{where} was not found.")


def _lookup(mapping: dict[str, Any], key: str) -> Any:
    """Case-insensitive dict lookup (ARM names compare without case)."""
    if key in mapping:
        return mapping[key]
    low = key.lower()
    for k, v in mapping.items():
        if k.lower() == low:
            return v
    return None


def _in_rg(resource: Any, rg: str | None) -> bool:
    if rg is None:
        return True
    rid = resource.get("id", "") if isinstance(resource, dict) else ""
    m = _ID_RE.match(rid)
    return bool(m) and m["rg"].lower() == rg.lower()


def _by_name(items: list[Any], name: str) -> Any:
    for item in items:
        if isinstance(item, dict) and str(item.get("name", "")).lower() == name.lower():
            return item
    return None


class _Handler(BaseHTTPRequestHandler):
    """Routes ARM GETs and the control surface.

    Control (no auth, no api-version):
      ``PUT /_control/estate`` (JSON body replaces the estate), ``GET /_control/estate``,
      ``POST /_control/faults`` (JSON list of :class:`Fault` dicts, replaces), ``DELETE /_control/faults``,
      ``GET /_control/requests`` (``[[method, path+query], ...]``), ``DELETE /_control/requests``,
      ``PUT /_control/permissions`` (what the identity holds: see :meth:`ArmStandIn.set_permissions`),
      ``DELETE /_control/permissions`` (back to :data:`DEFAULT_PERMISSIONS`),
      ``PUT /_control/read_budget`` (``{"size": N, "refill": R}``: ARM's read limit, sandbox.arm_throttle).
    """

    # Headers and body go out in separate writes: with Nagle on, each response waits ~40 ms for the
    # peer's delayed ACK. Real ARM answers in one go.
    disable_nagle_algorithm = True

    protocol_version = "HTTP/1.1"
    server_version = "vhdgc-arm-standin/1"
    timeout = 30  # idle keep-alive connections give up after this

    @property
    def standin(self) -> "ArmStandIn":
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from the base
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for k, v in {**getattr(self, "_ratelimit", {}), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, err: ArmError) -> None:
        self._send_json(err.status, {"error": {"code": err.code, "message": err.message}}, err.headers)

    def _safe(self, fn: Any) -> None:
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._safe(self._dispatch)

    def do_PUT(self) -> None:  # noqa: N802
        self._safe(self._dispatch)

    def do_POST(self) -> None:  # noqa: N802
        self._safe(self._dispatch)

    def do_DELETE(self) -> None:  # noqa: N802
        self._safe(self._dispatch)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        self._ratelimit: dict[str, str] = {}  # ARM's remaining-reads header, on every answer to a read
        if path.startswith("/_control/"):
            self._control(path)
            return
        query = parse_qs(split.query, keep_blank_values=True)
        standin = self.standin
        self._body = self._read_body()  # drain; PUTs of disks and snapshots carry one
        standin._log(self.command, self.path, self.headers.get("User-Agent"))
        hook = standin._match_hook(self.command, path)
        if hook is not None and hook.run(self.command, self.path):
            self.close_connection = True  # dropped: not served, no reply
            return
        if self._take_read(path):
            return
        fault = standin._match_fault(self.command, path, "$skiptoken" in query)
        if fault is not None and fault.kind == "delay":
            time.sleep(min(max(fault.delay, 0.0), MAX_DELAY_SECONDS))
            fault = None
        if fault is not None and fault.kind == "error":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            code = fault.code or _DEFAULT_CODES.get(fault.status, "InternalServerError")
            message = fault.message or f"Injected fault: {code}."
            self._send_error(ArmError(fault.status, code, message, headers))
            return
        if fault is not None and fault.kind == "malformed":
            self._send(200, b'{"value": [{"id": "/subscriptions/oops", "name": nope')
            return
        if fault is not None and fault.kind == "body":
            self._send_json(200, fault.body)
            return
        if fault is not None and fault.kind == "lost_reply":
            self._operation_started = None
            try:
                self._serve_arm(path, query)
            except ArmError:
                pass
            if self._operation_started is not None:
                standin.disk_rp.settle(self._operation_started)
            self.close_connection = True
            return
        extra_headers: dict[str, str] = {}
        try:
            served = self._serve_arm(path, query)
        except ArmError as err:
            self._send_error(err)
            return
        status, payload = served[0], served[1]
        if len(served) > 2:
            extra_headers = served[2]
        if payload is None:  # 202/204 without a body
            self._send(status, b"", extra_headers)
            return
        raw = json.dumps(payload).encode()
        if fault is not None and fault.kind == "truncate":
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw[: max(1, len(raw) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, raw, extra_headers)

    def _take_read(self, path: str) -> bool:
        """A read scoped to a subscription takes a token of its read budget (sandbox.arm_throttle);
        True when it was answered 429 for want of one."""
        subscription = arm_throttle.subscription_of(path) if self.command in ("GET", "HEAD") else None
        if subscription is None:
            return False
        remaining, retry_after = self.standin.read_budget.take(subscription)
        self._ratelimit = {arm_throttle.READS_HEADER: str(remaining)}
        if retry_after is None:
            return False
        self._send_error(ArmError(
            429, "SubscriptionRequestsThrottled",
            f"Number of 'read' requests for subscription '{subscription}' actor 'vhd-gc' exceeded. Please try "
            f"again after '{retry_after}' seconds after additional tokens are available. "
            "Refer to https://aka.ms/arm-throttling",
            {"Retry-After": str(retry_after)},
        ))
        return True

    def _serve_arm(self, path: str, query: dict[str, list[str]]) -> tuple[Any, ...]:
        """``(status, payload)`` or ``(status, payload, headers)``; a ``None`` payload sends no body."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                    'error="invalid_token", error_description="The authentication failed because of '
                    "missing 'Authorization' header.\""
                },
            )
        api_version = (query.get("api-version") or [""])[0]
        if not api_version:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        segs = [s for s in path.split("/") if s]
        served = arm_disks.serve(self, segs, path, api_version, query, getattr(self, "_body", b""))
        if served is not None:  # disks, snapshots, their operations, resource groups, locks
            return served
        if self.command != "GET":
            raise ArmError(405, "MethodNotAllowed", f"The stand-in serves GET only, not {self.command}.")
        if [s.lower() for s in segs[-3:]] == ["providers", "microsoft.authorization", "permissions"]:
            return 200, self._page(path, api_version, query, self._permissions(segs[:-3]))
        items = self._route(segs)
        if isinstance(items, dict):  # a single resource
            return 200, items
        return 200, self._page(path, api_version, query, items)

    def _page(self, path: str, api_version: str, query: dict[str, list[str]], items: list[Any]) -> dict[str, Any]:
        token = (query.get("$skiptoken") or ["0"])[0]
        try:
            start = int(token)
        except ValueError:
            raise ArmError(400, "InvalidSkipToken", f"The skip token '{token}' is not valid.") from None
        size = max(1, self.standin.page_size)
        page: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            page["nextLink"] = (
                f"{self.standin.url}{quote(path)}?api-version={quote(api_version)}&%24skiptoken={start + size}"
            )
        return page

    def _route(self, segs: list[str]) -> list[Any] | dict[str, Any]:
        low = [s.lower() for s in segs]
        estate = self.standin._estate_snapshot()
        subs: dict[str, Any] = estate.get("subscriptions", {})
        if low == ["subscriptions"]:
            return [
                {
                    "id": f"/subscriptions/{s}",
                    "subscriptionId": s,
                    "displayName": f"stand-in {s}",
                    "state": "Enabled",
                    "tenantId": "00000000-0000-0000-0000-00000000aaaa",
                }
                for s in subs
            ]
        if len(low) < 2 or low[0] != "subscriptions":
            raise _not_found("/" + "/".join(segs), None)
        sub_id = segs[1]
        sub = _lookup(subs, sub_id)
        if sub is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub_id}' could not be found.")
        if len(low) == 2:
            return {"id": f"/subscriptions/{sub_id}", "subscriptionId": sub_id, "state": "Enabled"}
        rest, rest_low, rg = segs[2:], low[2:], None
        if rest_low[0] == "resourcegroups" and len(rest) >= 2:
            rg = rest[1]
            rest, rest_low = rest[2:], rest_low[2:]
        if len(rest_low) < 3 or rest_low[0] != "providers":
            raise _not_found("/" + "/".join(segs), rg)
        namespace, tail, tail_low = rest_low[1], rest[2:], rest_low[2:]
        if namespace == STORAGE.lower() and tail_low[0] == "storageaccounts":
            return self._list_or_get(sub.get("storageAccounts", []), tail, rg, f"{STORAGE}/storageAccounts")
        if namespace in GENERIC_NAMESPACES or (
            namespace == COMPUTE.lower() and len(tail_low) >= 3 and tail_low[0] == "galleries"
            and tail_low[2] == "applications"
        ):
            return self._generic(sub, segs, rg, rest[1])
        if namespace != COMPUTE.lower():
            raise _not_found("/" + "/".join(segs), rg)
        kind = tail_low[0]
        if kind not in TOP_LEVEL_KINDS:
            raise _not_found(f"{COMPUTE}/{tail[0]}", rg)
        top = sub.get(TOP_LEVEL_KINDS[kind], [])
        type_name = f"{COMPUTE}/{TOP_LEVEL_KINDS[kind]}"
        if len(tail) <= 2:
            return self._list_or_get(top, tail, rg, type_name)
        if rg is None:
            raise _not_found("/" + "/".join(segs), rg)
        parent = _by_name([r for r in top if _in_rg(r, rg)], tail[1])
        if parent is None:
            raise _not_found(f"{type_name}/{tail[1]}", rg)
        if kind == "virtualmachinescalesets" and tail_low[2] == "virtualmachines" and len(tail) <= 4:
            members = _lookup(sub.get("virtualMachineScaleSetVMs", {}), f"{rg}/{tail[1]}") or []
            if len(tail) == 3:
                return list(members)
            found = _by_name(members, f"{tail[1]}_{tail[3]}") or next(
                (m for m in members if isinstance(m, dict) and str(m.get("instanceId")) == tail[3]), None
            )
            if found is None:
                raise _not_found(f"{type_name}/{tail[1]}/virtualMachines/{tail[3]}", rg)
            return found
        if kind == "galleries" and tail_low[2] == "images" and len(tail) <= 6:
            images = _lookup(sub.get("galleryImages", {}), f"{rg}/{tail[1]}") or []
            if len(tail) == 3:
                return list(images)
            img = _by_name(images, tail[3])
            if img is None:
                raise _not_found(f"{type_name}/{tail[1]}/images/{tail[3]}", rg)
            if len(tail) == 4:
                return img
            if tail_low[4] != "versions":
                raise _not_found("/" + "/".join(segs), rg)
            versions = _lookup(sub.get("galleryImageVersions", {}), f"{rg}/{tail[1]}/{tail[3]}") or []
            if len(tail) == 5:
                return list(versions)
            ver = _by_name(versions, tail[5])
            if ver is None:
                raise _not_found(f"{type_name}/{tail[1]}/images/{tail[3]}/versions/{tail[5]}", rg)
            return ver
        raise _not_found("/" + "/".join(segs), rg)

    def _permissions(self, scope: list[str]) -> list[Any]:
        """Permissions - List For Resource (or For Resource Group): what the identity holds at
        ``scope``, which must exist (a resource, a resource group of a known subscription)."""
        low = [s.lower() for s in scope]
        if len(low) < 2 or low[0] != "subscriptions":
            raise _not_found("/" + "/".join(scope), None)
        if len(low) > 4 or (len(low) == 3) or (len(low) == 4 and low[2] != "resourcegroups"):
            self._route(scope)  # the resource must exist: ResourceNotFound otherwise
        elif _lookup(self.standin._estate_snapshot().get("subscriptions", {}), scope[1]) is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{scope[1]}' could not be found.")
        return self.standin.permissions_at("/" + "/".join(scope))

    @staticmethod
    def _generic(sub: dict[str, Any], segs: list[str], rg: str | None, namespace: str) -> list[Any] | dict[str, Any]:
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

    @staticmethod
    def _list_or_get(
        items: list[Any], tail: list[str], rg: str | None, type_name: str
    ) -> list[Any] | dict[str, Any]:
        scoped = [r for r in items if _in_rg(r, rg)]
        if len(tail) == 1:
            return scoped
        if rg is None:
            raise _not_found(f"{type_name}/{tail[1]}", rg)
        found = _by_name(scoped, tail[1])
        if found is None:
            raise _not_found(f"{type_name}/{tail[1]}", rg)
        return found

    # -- control -------------------------------------------------------------------------------

    def _control(self, path: str) -> None:
        standin = self.standin
        body = self._read_body()
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            self._send_error(ArmError(400, "InvalidJson", "The control request body is not JSON."))
            return
        route = (self.command, path.rstrip("/"))
        try:
            if route == ("PUT", "/_control/estate"):
                standin.set_estate(payload)
                self._send_json(200, {"ok": True})
            elif route == ("GET", "/_control/estate"):
                self._send_json(200, standin._estate_snapshot())
            elif route == ("POST", "/_control/faults"):
                if not isinstance(payload, list):
                    raise ValueError("the faults body must be a JSON list")
                standin.set_faults([Fault.from_dict(f) for f in payload])
                self._send_json(200, {"ok": True, "faults": len(payload)})
            elif route == ("GET", "/_control/faults"):
                self._send_json(200, [f.to_dict() for f in standin.faults])
            elif route == ("DELETE", "/_control/faults"):
                standin.clear_faults()
                self._send_json(200, {"ok": True})
            elif route == ("PUT", "/_control/permissions"):
                # A list: what the identity holds at every scope. {"scope": ID, "permissions": [...]}:
                # at that scope only (a resource id). Null or []: holds nothing.
                if isinstance(payload, dict):
                    standin.set_permissions(payload.get("permissions") or [], scope=payload.get("scope"))
                else:
                    standin.set_permissions(payload or [])
                self._send_json(200, {"ok": True})
            elif route == ("DELETE", "/_control/permissions"):
                standin.reset_permissions()
                self._send_json(200, {"ok": True})
            elif route == ("GET", "/_control/requests"):
                self._send_json(200, [list(r) for r in standin.requests])
            elif route == ("DELETE", "/_control/requests"):
                standin.clear_requests()
                self._send_json(200, {"ok": True})
            elif route == ("PUT", "/_control/read_budget"):
                # {"size": N, "refill": R}: ARM's read bucket per subscription (sandbox.arm_throttle).
                standin.read_budget.configure((payload or {}).get("size"), (payload or {}).get("refill"))
                self._send_json(200, {"ok": True})
            elif route[1].startswith("/_control/lro") or route[1].startswith("/_control/operations"):
                self._send_json(200, standin.disk_rp.control(self.command, route[1], payload))
            else:
                self._send_error(ArmError(404, "ResourceNotFound", f"No control route {self.command} {path}."))
        except (ValueError, TypeError) as exc:
            self._send_error(ArmError(400, "InvalidControlRequest", str(exc)))


class _TlsThreadingServer(ThreadingHTTPServer):
    """Accepts plain TCP and does the TLS handshake in the worker thread, so a slow or rejecting
    client never blocks ``accept``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, context: ssl.SSLContext, standin: "ArmStandIn"):
        self.ssl_context = context
        self.standin = standin
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(_Handler.timeout)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class ArmStandIn:
    """The ARM stand-in. The constructor opens nothing; :meth:`start` binds 127.0.0.1:``port``."""

    def __init__(
        self,
        estate: dict[str, Any] | None = None,
        page_size: int = 2,
        cert_dir: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.page_size = page_size
        self._host = host
        self._port = port
        self._cert_dir = cert_dir
        self._own_cert_dir = False
        self._lock = threading.Lock()
        self._estate: dict[str, Any] = {"subscriptions": {}}
        self._faults: list[Fault] = []
        self._hooks: list[Hook] = []
        self._requests: list[tuple[str, str]] = []
        self._permissions: dict[str | None, list[dict[str, Any]]] = {None: copy.deepcopy(DEFAULT_PERMISSIONS)}
        self._user_agents: list[str | None] = []
        self.disk_rp = arm_disks.DiskRP(self)  # long-running operations of disks and snapshots
        self.read_budget = arm_throttle.ReadBudget()  # ARM's subscription read limit and its header
        self._server: _TlsThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self.cert_path: str | None = None
        self.key_path: str | None = None
        if estate is not None:
            self.set_estate(estate)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "ArmStandIn":
        if self._server is not None:
            return self
        if self._cert_dir is None:
            self._cert_dir = tempfile.mkdtemp(prefix="arm-standin-")
            self._own_cert_dir = True
        self.cert_path, self.key_path = make_self_signed(self._cert_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        self._server = _TlsThreadingServer((self._host, self._port), _Handler, context, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="arm-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_cert_dir and self._cert_dir:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None
            self._own_cert_dir = False

    def __enter__(self) -> "ArmStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the ARM stand-in is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    # -- estate, faults, request log -------------------------------------------------------------

    def set_estate(self, estate: dict[str, Any] | None) -> None:
        """Replace the estate (deep-copied, so later changes by the caller do not leak in)."""
        if estate is None:
            estate = {"subscriptions": {}}
        if not isinstance(estate, dict) or not isinstance(estate.get("subscriptions", {}), dict):
            raise ValueError('the estate must be {"subscriptions": {SUB_ID: {...}}}')
        fresh = json.loads(json.dumps(estate))
        fresh.setdefault("subscriptions", {})
        with self._lock:
            self._estate = fresh

    def update_estate(self, change: Any) -> Any:
        """Apply ``change(estate)`` to a copy of the estate and install it (readers keep the old one);
        returns what ``change`` returns. Writes of disks and snapshots go through here."""
        with self._lock:
            fresh = copy.deepcopy(self._estate)
            result = change(fresh)
            self._estate = fresh
            return result

    def _estate_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._estate  # replaced wholesale by set_estate, never mutated in place

    @property
    def estate(self) -> dict[str, Any]:
        return copy.deepcopy(self._estate_snapshot())

    def add_fault(self, path: str = ".*", kind: str = "error", **options: Any) -> Fault:
        """Add a :class:`Fault` rule (see its docstring for ``kind`` and options); returns it."""
        fault = Fault(path=path, kind=kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_faults(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._faults = list(faults)

    def clear_faults(self) -> None:
        self.set_faults([])

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _match_fault(self, method: str, path: str, has_skiptoken: bool) -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self._faults:
                if fault.hit(method, path, has_skiptoken) and chosen is None:
                    chosen = fault
            return chosen

    def on_request(self, path: str, method: str = "GET", action: Any = None, times: int | None = 1) -> Hook:
        """Add a :class:`Hook`: ``action(method, path_and_query)`` runs when a matching request
        arrives, before it is served (True: drop it). Returns the hook (its ``entered``/``done`` events)."""
        re.compile(path)
        hook = Hook(path=path, method=method, action=action, times=times)
        with self._lock:
            self._hooks.append(hook)
        return hook

    def gate(self, path: str, method: str = "GET") -> Gate:
        """Hold the next matching request unserved until ``release()`` (see :class:`Gate`)."""
        return Gate(self, path, method)

    def clear_hooks(self) -> None:
        with self._lock:
            hooks, self._hooks = self._hooks, []
        for hook in hooks:  # a gate still holding a request lets it go (dropped)
            if isinstance(getattr(hook.action, "__self__", None), Gate):
                hook.action.__self__.release()

    def _match_hook(self, method: str, path: str) -> Hook | None:
        with self._lock:
            for hook in self._hooks:
                if hook.take(method, path):
                    return hook
            return None

    # -- what the identity holds (Microsoft.Authorization/permissions) -----------------------------

    def set_permissions(self, permissions: list[dict[str, Any]], scope: str | None = None) -> None:
        """What the identity holds: at every scope (``scope`` None), or at one resource id. Each entry
        is ARM's Permission (``actions``, ``notActions``, ``dataActions``, ``notDataActions``)."""
        if not isinstance(permissions, list) or not all(isinstance(p, dict) for p in permissions):
            raise ValueError("permissions must be a list of objects (actions, notActions, dataActions, notDataActions)")
        entries = [
            {k: list(p.get(k) or []) for k in ("actions", "notActions", "dataActions", "notDataActions")}
            for p in permissions
        ]
        with self._lock:
            self._permissions[None if scope is None else scope.rstrip("/").lower()] = entries

    def reset_permissions(self) -> None:
        with self._lock:
            self._permissions = {None: copy.deepcopy(DEFAULT_PERMISSIONS)}

    def permissions_at(self, scope: str) -> list[dict[str, Any]]:
        with self._lock:
            found = self._permissions.get(scope.rstrip("/").lower(), self._permissions[None])
            return copy.deepcopy(found)

    def _log(self, method: str, path_and_query: str, user_agent: str | None = None) -> None:
        with self._lock:
            self._requests.append((method, path_and_query))
            self._user_agents.append(user_agent)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every ARM request served so far, as ``(method, path+query)`` (control calls excluded)."""
        with self._lock:
            return list(self._requests)

    @property
    def user_agents(self) -> list[str | None]:
        """The User-Agent header of each request in :attr:`requests`, in the same order."""
        with self._lock:
            return list(self._user_agents)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._user_agents.clear()

    # -- disks' long-running operations (sandbox/arm_disks.py) ------------------------------------

    def set_lro(self, polls: int | None = None, retry_after: int | None = None) -> None:
        """Polls answered InProgress before an operation ends; the integer ``Retry-After`` it sends."""
        self.disk_rp.set_lro(polls, retry_after)

    def lro_stuck(self, path: str = ".*", method: str | None = None, times: int | None = None) -> Any:
        """Operations started by matching PUTs/DELETEs never end."""
        return self.disk_rp.lro_stuck(path, method, times)

    def lro_failed(self, path: str = ".*", method: str | None = None, **options: Any) -> Any:
        """Operations started by matching PUTs/DELETEs end Failed (``code``, ``message``, ``times``)."""
        return self.disk_rp.lro_failed(path, method, **options)

    def lose_reply(self, path: str, method: str, **options: Any) -> Fault:
        """The matching request is carried out, and its reply is dropped (a ``lost_reply`` fault)."""
        return self.add_fault(path, "lost_reply", method=method, **options)

    @property
    def operations(self) -> list[Any]:
        """The long-running operations started so far (sandbox.arm_disks.Operation copies)."""
        return self.disk_rp.operations

    def settle_operations(self) -> int:
        """End every pending operation that is not stuck, as if its client had polled it to the end."""
        return self.disk_rp.settle()

    def reset(self, estate: dict[str, Any] | None = None) -> None:
        """Back to a clean slate: the given (or an empty) estate, no faults, an empty request log, a full
        read budget."""
        self.set_estate(estate)
        self.clear_faults()
        self.clear_hooks()
        self.clear_requests()
        self.reset_permissions()
        self.disk_rp.reset()
        self.read_budget.reset()


# Disks, snapshots, their long-running operations, resource groups and locks (issue 13). Imported
# here, after every name it takes from this module is defined.
from sandbox import arm_disks  # noqa: E402
from sandbox import arm_throttle  # noqa: E402

# --------------------------------------------------------------------------------------------------
# python -m sandbox.arm
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.arm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--cert-dir", required=True, help="directory for the self-signed certificate")
    parser.add_argument("--estate", help="JSON file holding the initial estate")
    parser.add_argument("--page-size", type=int, default=2)
    parser.add_argument("--read-budget", type=int, default=arm_throttle.DEFAULT_SIZE,
                        help="reads per subscription before 429 (ARM's bucket: 250)")
    parser.add_argument("--read-refill", type=float, default=arm_throttle.DEFAULT_REFILL,
                        help="reads given back per second (ARM: 25; 0: a plain countdown)")
    args = parser.parse_args(argv)

    estate = None
    if args.estate:
        with open(args.estate, encoding="utf-8") as fh:
            estate = json.load(fh)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    standin = ArmStandIn(estate, page_size=args.page_size, cert_dir=args.cert_dir, port=args.port)
    standin.read_budget = arm_throttle.ReadBudget(args.read_budget, args.read_refill)
    standin.start()
    try:
        print(f"READY {standin.url} {standin.cert_path}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
