"""Managed images made from VHDs (an image takes no lease on its source, yet breaks if it goes)."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import Found, Read, Source, SubscriptionContext, attr, collect, holder_id, items, ref, required

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


def read(client: Any, pages: dict[str, Any]) -> Found:
    return collect(client.images.list(**pages), image_references)


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages()))]


SOURCE = Source("images", "Compute", (READ,), tasks, sees="managed images' source VHDs (`blobUri`)")
