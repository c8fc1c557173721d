"""Managed disks imported from a VHD (the import protects its source for a while) and their
confidential-VM security blobs; and, from the same listing, every disk as the managed-disk half of a
pass sees it (:class:`~gc_daemon.disks.DiskSeen`)."""

from __future__ import annotations

from typing import Any

from gc_daemon.disks import DiskSeen
from gc_daemon.domain import RawReference, RefKind

from .base import (
    keep_tags,
    Found,
    Read,
    Source,
    SubscriptionContext,
    attr,
    holder_id,
    integer,
    name_of,
    ref,
    resource_group_of,
    strings,
    tags_of,
    text,
    utc,
)

READ = Read(
    "disks",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/disks",
    "Microsoft.Compute/disks/read",
    operation="disks.list",
)


def import_references(resource: Any, import_kind: RefKind) -> list[RawReference]:
    """A disk's or snapshot's import source (time-limited: see ``import_hold``) and security blobs."""
    holder = holder_id(resource)
    creation = attr(resource, "creation_data")
    refs = ref(
        import_kind,
        holder,
        attr(creation, "source_uri"),
        "creationData.sourceUri",
        time_created=utc(attr(resource, "time_created"), holder),
        provisioning_state=attr(resource, "provisioning_state"),
    )
    # Confidential-VM state blobs: not VHDs, but kept as references for as long as the disk exists.
    refs += ref(RefKind.DISK_SECURITY, holder, attr(creation, "security_data_uri"), "creationData.securityDataUri")
    refs += ref(
        RefKind.DISK_SECURITY, holder, attr(creation, "security_metadata_uri"), "creationData.securityMetadataUri"
    )
    return refs


def disk_references(disk: Any) -> list[RawReference]:
    return import_references(disk, RefKind.DISK_IMPORT)


def disk_seen(subscription: str, disk: Any, *, from_get: bool = False) -> DiskSeen:
    """A listed disk, for the disk decision. The list has no ``LastOwnershipUpdateTime``:
    ``ownership_read=False``, and the pass GETs the disks that need it. Missing or null fields are
    None (a disk with no ``diskState`` is in use: uncertainty keeps); a field of the wrong type fails
    the source. ``from_get``: ``disk`` is the answer of a GET of the disk, whose
    ``LastOwnershipUpdateTime`` is read (None: never attached) and ``ownership_read`` True."""
    rid = holder_id(disk)
    owned = utc(attr(disk, "last_ownership_update_time"), rid, "LastOwnershipUpdateTime") if from_get else None
    return DiskSeen(
        id=rid,
        subscription=subscription,
        resource_group=resource_group_of(rid),
        name=name_of(disk),
        sku=text(attr(disk, "sku", "name"), rid, "sku.name"),
        size_gb=integer(attr(disk, "disk_size_gb"), rid, "diskSizeGB") or 0,
        size_bytes=integer(attr(disk, "disk_size_bytes"), rid, "diskSizeBytes"),
        disk_state=text(attr(disk, "disk_state"), rid, "diskState"),
        time_created=utc(attr(disk, "time_created"), rid),
        managed_by=text(attr(disk, "managed_by"), rid, "managedBy"),
        managed_by_extended=strings(attr(disk, "managed_by_extended"), rid, "managedByExtended"),
        tags=tags_of(attr(disk, "tags"), rid),
        last_ownership_update=owned,
        ownership_read=from_get,
        location=text(attr(disk, "location"), rid, "location"),
        zones=strings(attr(disk, "zones"), rid, "zones"),
        provisioning_state=text(attr(disk, "provisioning_state"), rid, "provisioningState"),
    )


def read(client: Any, pages: dict[str, Any], subscription: str = "") -> Found:
    out = Found()
    for disk in client.disks.list(**pages):
        out.references += disk_references(disk)
        out.disks.append(disk_seen(subscription, disk))
        keep_tags(out, disk)
    return out


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages(), ctx.subscription))]


SOURCE = Source(
    "disks", "Compute", (READ,), tasks,
    sees="managed disks imported from a VHD (`creationData.sourceUri`, for `import_hold`) and security blobs; "
    "every disk, for the managed-disk half of a pass",
)
