"""Managed images made from VHDs (an image takes no lease on its source, yet breaks if it goes), and
the managed disks and snapshots images are made from (such a disk or snapshot is in use)."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import (
    keep_tags,
    Found,
    Read,
    Source,
    SubscriptionContext,
    attr,
    disk_or_snapshot_refs,
    holder_id,
    items,
    ref,
    required,
)

READ = Read(
    "images",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/images",
    "Microsoft.Compute/images/read",
    operation="images.list",
)


def image_references(image: Any) -> list[RawReference]:
    """A managed image's source VHDs. Every image has a storage profile with an OS disk."""
    holder = holder_id(image)
    profile = required(image, holder, "storage_profile", where="storageProfile")
    os_disk = required(profile, holder, "os_disk", where="storageProfile.osDisk")
    refs = ref(RefKind.IMAGE_BLOB, holder, attr(os_disk, "blob_uri"), "osDisk.blobUri")
    for i, data_disk in enumerate(items(attr(profile, "data_disks"), holder, "dataDisks")):
        refs += ref(RefKind.IMAGE_BLOB, holder, attr(data_disk, "blob_uri"), f"dataDisks[{i}].blobUri")
    return refs


def image_resource_refs(image: Any) -> list[tuple[str, str]]:
    """``(disk or snapshot key, image id)`` for the managed disks and snapshots the image is made
    from: ``storageProfile.osDisk`` / ``dataDisks[]`` ``.managedDisk.id`` and ``.snapshot.id``."""
    holder = holder_id(image)
    profile = required(image, holder, "storage_profile", where="storageProfile")
    os_disk = required(profile, holder, "os_disk", where="storageProfile.osDisk")
    out = disk_or_snapshot_refs(holder, attr(os_disk, "managed_disk", "id"), attr(os_disk, "snapshot", "id"),
                                where="osDisk")
    for i, data_disk in enumerate(items(attr(profile, "data_disks"), holder, "dataDisks")):
        out += disk_or_snapshot_refs(holder, attr(data_disk, "managed_disk", "id"), attr(data_disk, "snapshot", "id"),
                                     where=f"dataDisks[{i}]")
    return out


def read(client: Any, pages: dict[str, Any]) -> Found:
    out = Found()
    for image in client.images.list(**pages):
        out.references += image_references(image)
        out.resource_refs += image_resource_refs(image)
        keep_tags(out, image)
    return out


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages()))]


SOURCE = Source(
    "images", "Compute", (READ,), tasks,
    sees="managed images' source VHDs (`blobUri`), and the managed disks and snapshots they are made from",
)
