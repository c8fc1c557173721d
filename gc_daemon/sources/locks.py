"""Management locks: not references, but what holds a managed disk or snapshot (a lock on it, its
resource group or its subscription). One list per subscription, at subscription scope: it returns
the locks of every scope within it (ManagementLocks_ListAtSubscriptionLevel)."""

from __future__ import annotations

import re
from typing import Any

from .base import Found, LockAt, Read, Source, SubscriptionContext, attr, holder_id, text

READ = Read(
    "locks",
    "/subscriptions/{subscriptionId}/providers/Microsoft.Authorization/locks",
    "Microsoft.Authorization/locks/read",
    operation="management_locks.list_at_subscription_level (azure-mgmt-resource-locks)",
)

_LOCK = re.compile(r"^(?P<scope>/subscriptions/[^/]+(?:/.*?)?)/providers/Microsoft\.Authorization/locks/[^/]+/?$",
                   re.IGNORECASE)


def lock_at(lock: Any) -> LockAt:
    """A lock, with the scope its id names. A lock whose id names no scope fails the source (a lock
    that cannot be placed could be on any disk); one with no level holds like any other."""
    rid = holder_id(lock)
    m = _LOCK.match(rid if rid.startswith("/") else "/" + rid)
    if not m:
        raise ValueError(f"{rid}: cannot tell the scope of the lock from its id")
    return LockAt(id=rid, scope=m["scope"], level=text(attr(lock, "level"), rid, "level") or "NotSpecified")


def read(ctx: SubscriptionContext) -> Found:
    listed = ctx.locks().management_locks.list_at_subscription_level(**ctx.pages())
    return Found(locks=[lock_at(lock) for lock in listed])


def tasks(ctx: SubscriptionContext) -> list:
    return [ctx.task(READ, "", lambda: read(ctx))]


SOURCE = Source(
    "locks", "Authorization", (READ,), tasks,
    sees="nothing by itself: the management locks that hold a disk or snapshot (on it, its group, its subscription)",
)
