"""Storage accounts of the configured subscriptions: not references, but where each collected
account belongs. An account whose own subscription is not configured would have the VMs and images
that use its VHDs unread, and those VHDs would look orphaned: the pass fails closed instead."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .base import Found, PlacedAccount, Read, Source, SubscriptionContext, attr, holder_id, name_of

READ = Read(
    "storageAccounts",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Storage/storageAccounts",
    "Microsoft.Storage/storageAccounts/read",
    operation="storage_accounts.list (azure-mgmt-storage)",
)

_RG = re.compile(r"/resourceGroups/([^/]+)/", re.IGNORECASE)


def placed(subscription: str, account: Any) -> PlacedAccount:
    rid = holder_id(account)
    m = _RG.search(rid)
    endpoints = attr(account, "primary_endpoints")
    sku = attr(account, "sku")
    return PlacedAccount(
        name=name_of(account).lower(),
        subscription=subscription,
        resource_group=m.group(1) if m else "",
        blob_endpoint=attr(endpoints, "blob"),
        kind=attr(account, "kind"),
        sku=attr(sku, "name"),
    )


def read(ctx: SubscriptionContext) -> Found:
    accounts = ctx.storage().storage_accounts.list(**ctx.pages())
    return Found(accounts=[placed(ctx.subscription, a) for a in accounts])


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx))]


SOURCE = Source(
    "storage_accounts", "Storage", (READ,), tasks,
    sees="nothing by itself: it places every collected account in a configured subscription",
)


def placement_problems(
    placed_accounts: Mapping[str, PlacedAccount],
    collected: Iterable[str],
    locate: Callable[[str], PlacedAccount | None] | None = None,
) -> list[str]:
    """Why each collected account that no configured subscription holds cannot be collected."""
    problems = []
    for name in collected:
        if name in placed_accounts:
            continue
        where = locate(name) if locate is not None else None
        if where is not None:
            problems.append(
                f"storage account {name} belongs to subscription {where.subscription}, which is not in "
                "azure.subscriptions: the references of that subscription are not read, so its VHDs in use "
                "would look orphaned; add the subscription (or stop collecting the account)"
            )
        else:
            problems.append(
                f"storage account {name} is in no configured subscription and ARM cannot place it: "
                "check azure.subscriptions and the identity's access to the account's subscription"
            )
    return problems
