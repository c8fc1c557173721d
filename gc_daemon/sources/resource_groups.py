"""Resource groups: not references, but what the managed-disk decision needs of each disk's and
snapshot's group: its tags (``vhdgc-keep`` on the group) and ``managedBy`` (a group that belongs to
another resource: an AKS cluster's ``MC_*`` group, a managed application, Databricks)."""

from __future__ import annotations

from typing import Any

from .base import Found, GroupSeen, Read, Source, SubscriptionContext, attr, holder_id, tags_of, text

READ = Read(
    "resourceGroups",
    "/subscriptions/{subscriptionId}/resourcegroups",
    "Microsoft.Resources/subscriptions/resourceGroups/read",
    operation="resource_groups.list (azure-mgmt-resource)",
)


def group_seen(group: Any) -> GroupSeen:
    rid = holder_id(group)
    return GroupSeen(
        id=rid,
        tags=tags_of(attr(group, "tags"), rid),
        managed_by=text(attr(group, "managed_by"), rid, "managedBy"),
    )


def read(ctx: SubscriptionContext) -> Found:
    return Found(groups=[group_seen(g) for g in ctx.resources().resource_groups.list(**ctx.pages())])


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx))]


SOURCE = Source(
    "resource_groups", "Resources", (READ,), tasks,
    sees="nothing by itself: disks' and snapshots' groups (`vhdgc-keep` tag, `managedBy`) for the disk holds",
)
