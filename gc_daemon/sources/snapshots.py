"""Snapshots imported from a VHD (the import protects its source for a while)."""

from __future__ import annotations

from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import Found, Read, Source, SubscriptionContext, collect
from .disks import import_references

READ = Read(
    "snapshots",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Compute/snapshots",
    "Microsoft.Compute/snapshots/read",
    operation="snapshots.list",
)


def snapshot_references(snapshot: Any) -> list[RawReference]:
    return import_references(snapshot, RefKind.SNAPSHOT_IMPORT)


def read(client: Any, pages: dict[str, Any]) -> Found:
    return collect(client.snapshots.list(**pages), snapshot_references)


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx.compute(), ctx.pages()))]


SOURCE = Source(
    "snapshots", "Compute", (READ,), tasks,
    sees="snapshots imported from a VHD (`creationData.sourceUri`, for `import_hold`)",
)
