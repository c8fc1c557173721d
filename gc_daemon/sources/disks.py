"""Managed disks imported from a VHD (the import protects its source for a while) and their
confidential-VM security blobs."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import Found, Read, Source, SubscriptionContext, attr, collect, holder_id, ref, utc

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


def read(client: Any, pages: dict[str, Any]) -> Found:
    return collect(client.disks.list(**pages), disk_references)


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages()))]


SOURCE = Source(
    "disks", "Compute", (READ,), tasks,
    sees="managed disks imported from a VHD (`creationData.sourceUri`, for `import_hold`) and security blobs",
)
