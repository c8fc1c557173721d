"""Snapshots imported from a VHD (the import protects its source for a while); and, from the same
listing, every snapshot as the managed-disk half of a pass sees it (:class:`~gc_daemon.disks.SnapshotSeen`)."""

from __future__ import annotations

from typing import Any

from gc_daemon.disks import SnapshotSeen
from gc_daemon.domain import RawReference, RefKind

from .base import (
    keep_tags,
    Found,
    Read,
    Source,
    SubscriptionContext,
    arm_id,
    attr,
    flag,
    holder_id,
    integer,
    name_of,
    resource_group_of,
    tags_of,
    text,
    utc,
)
from .disks import import_references

READ = Read(
    "snapshots",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/snapshots",
    "Microsoft.Compute/snapshots/read",
    operation="snapshots.list",
)


def snapshot_references(snapshot: Any) -> list[RawReference]:
    return import_references(snapshot, RefKind.SNAPSHOT_IMPORT)


def snapshot_seen(subscription: str, snapshot: Any) -> SnapshotSeen:
    """A listed snapshot, for the disk decision. ``source_exists`` is the pass's to say (it joins the
    source id with the same read's disks); ``sourceResourceId`` keeps its case, with a leading ``/``
    when the service left it out."""
    rid = holder_id(snapshot)
    return SnapshotSeen(
        id=rid,
        subscription=subscription,
        resource_group=resource_group_of(rid),
        name=name_of(snapshot),
        time_created=utc(attr(snapshot, "time_created"), rid),
        source_resource_id=arm_id(attr(snapshot, "creation_data", "source_resource_id"), rid,
                                  "creationData.sourceResourceId"),
        source_exists=None,
        incremental=flag(attr(snapshot, "incremental"), rid, "incremental"),
        tags=tags_of(attr(snapshot, "tags"), rid),
        sku=text(attr(snapshot, "sku", "name"), rid, "sku.name"),
        size_gb=integer(attr(snapshot, "disk_size_gb"), rid, "diskSizeGB") or 0,
        location=text(attr(snapshot, "location"), rid, "location"),
        used_bytes=None,  # the list does not say what an incremental snapshot holds
        provisioning_state=text(attr(snapshot, "provisioning_state"), rid, "provisioningState"),
    )


def read(client: Any, pages: dict[str, Any], subscription: str = "") -> Found:
    out = Found()
    for snapshot in client.snapshots.list(**pages):
        out.references += snapshot_references(snapshot)
        out.snapshots.append(snapshot_seen(subscription, snapshot))
        keep_tags(out, snapshot)
    return out


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages(), ctx.subscription))]


SOURCE = Source(
    "snapshots", "Compute", (READ,), tasks,
    sees="snapshots imported from a VHD (`creationData.sourceUri`, for `import_hold`); every snapshot, for the "
    "managed-disk half of a pass",
)
