"""Builders of the ARM stand-in's managed disks and snapshots, as its ``disks`` / ``snapshots`` buckets
hold them: :func:`disk` and :func:`snapshot` (an import from a VHD, ``creationData.sourceUri``: a VHD
reference), and issue 13's, made from the REST examples (:func:`managed_disk`,
:func:`incremental_snapshot`, the images and gallery versions made of disks, resource groups and
management locks). What ARM does with them (GET, PUT, DELETE, long-running operations, locks) is
sandbox/arm_disks.py.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Iterable

from sandbox.arm_estate import COMPUTE, DEFAULT_LOCATION, _iso, compute_id, rg_id
from sandbox.arm_images import gallery_image_version, image
from sandbox.arm_services import example

LOCK_LEVELS = ("CanNotDelete", "ReadOnly", "NotSpecified")
OWNERSHIP_KEY = "LastOwnershipUpdateTime"


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


# --------------------------------------------------------------------------------------------------
# Builders (from the REST examples in sandbox/rest_examples/)
# --------------------------------------------------------------------------------------------------


def _sku(name: str) -> dict[str, Any]:
    return {"name": name, "tier": name.split("_")[0] if "_" in name else name}


def managed_disk(
    sub: str,
    rg: str,
    name: str,
    *,
    disk_state: str = "Unattached",
    managed_by: str | None = None,
    managed_by_extended: Iterable[str] = (),
    max_shares: int | None = None,
    last_ownership_update_time: datetime | str | None = None,
    time_created: datetime | str | None = None,
    tags: dict[str, str] | None = None,
    sku: str = "Premium_LRS",
    size_gb: int = 32,
    zones: Iterable[str] = (),
    create_option: str = "Empty",
    source_resource_id: str | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A managed disk shaped like DiskRP's Disk_Get example (its odd extras kept: purchasePlan,
    encryptionSettingsCollection, ...). Unattached with no owner unless told; ``LastOwnershipUpdateTime``
    only when given (a disk never attached has none)."""
    item = example("compute-disk__Disk_Get", index=None)
    rid = compute_id(sub, rg, "disks", name)
    item["id"] = rid
    item["name"] = name
    item["location"] = location
    item["sku"] = _sku(sku)
    item.pop("managedBy", None)
    if managed_by:
        item["managedBy"] = managed_by
    extended = list(managed_by_extended)
    if extended:
        item["managedByExtended"] = extended
    if tags is not None:
        item["tags"] = dict(tags)
    else:
        item.pop("tags", None)
    zone_list = list(zones)
    if zone_list:
        item["zones"] = zone_list
    props = item["properties"]
    creation: dict[str, Any] = {"createOption": create_option}
    if source_resource_id:
        creation["sourceResourceId"] = source_resource_id
    props["creationData"] = creation
    props["diskSizeGB"] = size_gb
    props["diskSizeBytes"] = size_gb * 1024**3
    props["uniqueId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, rid))
    props["diskState"] = disk_state
    props["timeCreated"] = _iso(time_created)
    props.pop(OWNERSHIP_KEY, None)
    if last_ownership_update_time is not None:
        props[OWNERSHIP_KEY] = _iso(last_ownership_update_time)
    if max_shares is not None:
        props["maxShares"] = max_shares
    props["provisioningState"] = "Succeeded"
    return item


def incremental_snapshot(
    sub: str,
    rg: str,
    name: str,
    *,
    source_disk_id: str,
    source_unique_id: str | None = None,
    tags: dict[str, str] | None = None,
    time_created: datetime | str | None = None,
    size_gb: int = 32,
    sku: str = "Standard_ZRS",
    incremental: bool = True,
    provisioning_state: str = "Succeeded",
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A snapshot of a disk, shaped like DiskRP's Snapshot_GetIncrementalSnapshot example."""
    item = example("compute-disk__Snapshot_GetIncrementalSnapshot", index=None)
    rid = compute_id(sub, rg, "snapshots", name)
    item["id"] = rid
    item["name"] = name
    item["location"] = location
    item["sku"] = _sku(sku)
    if tags is not None:
        item["tags"] = dict(tags)
    else:
        item.pop("tags", None)
    props = item["properties"]
    props["creationData"] = {
        "createOption": "Copy",
        "sourceResourceId": source_disk_id,
        "sourceUniqueId": source_unique_id or str(uuid.uuid5(uuid.NAMESPACE_URL, source_disk_id)),
    }
    props["diskSizeGB"] = size_gb
    props["diskSizeBytes"] = size_gb * 1024**3
    props["incremental"] = incremental
    props["uniqueId"] = str(uuid.uuid5(uuid.NAMESPACE_URL, rid + "@" + _iso(time_created)))
    props["timeCreated"] = _iso(time_created)
    props["provisioningState"] = provisioning_state
    return item


def resource_group(
    sub: str,
    name: str,
    *,
    managed_by: str | None = None,
    tags: dict[str, str] | None = None,
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A resource group (CreateResourceGroup example, 200 body) with ``type``; ``managedBy`` when the
    group belongs to another resource (an AKS cluster's ``MC_*`` group, a managed application)."""
    item = example("resources__CreateResourceGroup", index=None)
    item["id"] = rg_id(sub, name)
    item["name"] = name
    item["type"] = "Microsoft.Resources/resourceGroups"
    item["location"] = location
    if managed_by:
        item["managedBy"] = managed_by
    if tags is not None:
        item["tags"] = dict(tags)
    return item


def management_lock(scope: str, name: str, level: str = "CanNotDelete", *, notes: str | None = None) -> dict[str, Any]:
    """A management lock at ``scope`` (a subscription, group or resource id), shaped like
    ManagementLocks_ListAtSubscriptionLevel's item."""
    if level not in LOCK_LEVELS:
        raise ValueError(f"unknown lock level {level!r}; expected one of {LOCK_LEVELS}")
    item = example("resources-locks__ManagementLocks_ListAtSubscriptionLevel")
    item["id"] = f"{scope.rstrip('/')}/providers/Microsoft.Authorization/locks/{name}"
    item["name"] = name
    item["properties"] = {"level": level}
    if notes is not None:
        item["properties"]["notes"] = notes
    return item


def image_of_disks(
    sub: str,
    rg: str,
    name: str,
    *,
    os_disk: str | None = None,
    os_snapshot: str | None = None,
    data: Iterable[tuple[str | None, str | None]] = (),
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A managed image made from managed disks or snapshots: ``storageProfile.osDisk`` and
    ``dataDisks[]`` carry ``managedDisk.id`` / ``snapshot.id`` as ComputeRP's
    Image_ListBySubscription example does (sandbox/rest_examples/compute__Image_ListBySubscription.json);
    ``data`` is one ``(disk id, snapshot id)`` per data disk. Ids are written as given (the example's
    have no leading ``/``)."""
    item = image(sub, rg, name, location=location)
    profile = item["properties"]["storageProfile"]
    profile["osDisk"].pop("managedDisk", None)
    if os_disk is not None:
        profile["osDisk"]["managedDisk"] = {"id": os_disk}
    if os_snapshot is not None:
        profile["osDisk"]["snapshot"] = {"id": os_snapshot}
    for lun, (disk_id, snapshot_id) in enumerate(data):
        entry: dict[str, Any] = {"lun": lun, "caching": "None", "storageAccountType": "Standard_LRS"}
        if disk_id is not None:
            entry["managedDisk"] = {"id": disk_id}
        if snapshot_id is not None:
            entry["snapshot"] = {"id": snapshot_id}
        profile["dataDisks"].append(entry)
    return item


def gallery_version_of_disks(
    sub: str,
    rg: str,
    gallery_name: str,
    image_name: str,
    name: str,
    *,
    source: str | None = None,
    os_source: str | None = None,
    data_sources: Iterable[str] = (),
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    """A gallery image version made from managed disks or snapshots: ``storageProfile.source.id``
    (a whole image or VM) or ``osDiskImage.source.id`` and ``dataDiskImages[].source.id``, as GalleryRP's
    GalleryImageVersion_Get_WithSnapshotsAsSource.json and _Create_WithSnapshotsAsSource.json
    (specification/compute/resource-manager/Microsoft.Compute/GalleryRP/stable/2025-03-03/examples/
    galleryExamples/, commit 0c20ffea1c2726ecaee61c69148099d3e1227989) show them."""
    item = gallery_image_version(sub, rg, gallery_name, image_name, name, location=location)
    profile = item["properties"]["storageProfile"]
    profile.pop("source", None)
    if source is not None:
        profile["source"] = {"id": source}
    profile["osDiskImage"] = {"hostCaching": "ReadOnly", "sizeInGB": 10}
    if os_source is not None:
        profile["osDiskImage"]["source"] = {"id": os_source}
    profile["dataDiskImages"] = [
        {"source": {"id": sid}, "lun": lun, "sizeInGB": 10, "hostCaching": "None"} for lun, sid in enumerate(data_sources)
    ]
    return item
