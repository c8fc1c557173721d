"""Site Recovery and Azure Migrate: the replicas, seeds and targets that replication protected items
and migration items of every Recovery Services vault name, and the staging (cache) and log
accounts they write to.

A replicated unmanaged disk's replica, and an agentless migration's seed, are page blobs that hold
no lease and that no Compute resource names: only the vault knows them. The items' provider-specific
details differ by scenario (A2A, HyperVReplicaAzure, InMageAzureV2, InMageRcm, VMwareCbt, ...) and
grow fields over time (a replica's URI is ``recoveryDiskUri`` in A2A, ``targetDiskLocation`` in
HyperVReplicaAzure, ``targetBlobUri`` in VMwareCbt), so rather than trusting a list of field names
the whole item is read:

- every http(s) URL anywhere in the item is a reference (one on a host that can be no collected
  account, a key vault's say, is ignored for matching, as for every source);
- every storage account id under a key that names a storage account (``primaryStagingAzureStorageAccountId``
  (the cache), ``logStorageAccountId``, ``recoveryAzureLogStorageAccountId``, ``recoveryAzureStorageAccount``
  and ``recoveryAzureStorageAccountId`` (the target), ``storageAccountId``, ...) holds every blob of that
  account, except the primary disks' own account and boot-diagnostics accounts: replicas such as
  HyperVReplicaAzure's ``vhdName`` are named only by blob name, inside those accounts.

Field names are those of the 2025-08-01 schema (azure-rest-api-specs,
specification/recoveryservicessiterecovery/.../stable/2025-08-01/service.json).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from gc_daemon.domain import RawReference, RefKind

from .base import Found, Read, Source, SubscriptionContext, holder_id, name_of, resource_group_of

VAULTS = Read(
    "recoveryServicesVaults",
    "/subscriptions/{subscriptionId}/providers/Microsoft.RecoveryServices/vaults",
    "Microsoft.RecoveryServices/vaults/read",
    api_version="2025-02-01",
)
PROTECTED_ITEMS = Read(
    "replicationProtectedItems",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/"
    "vaults/{resourceName}/replicationProtectedItems",
    "Microsoft.RecoveryServices/vaults/replicationProtectedItems/read",
    api_version="2025-08-01",
)
MIGRATION_ITEMS = Read(
    "replicationMigrationItems",
    "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.RecoveryServices/"
    "vaults/{resourceName}/replicationMigrationItems",
    "Microsoft.RecoveryServices/vaults/replicationMigrationItems/read",
    api_version="2025-08-01",
)

_ACCOUNT_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/[^/]+/?$", re.IGNORECASE
)


def holds_account(key: str) -> bool:
    """Storage accounts whose every blob a replication writes: staging (cache), log and recovery
    (target) accounts. Not the primary disks' own account (its disks are their VMs'), nor boot
    diagnostics accounts."""
    low = key.lower()
    return "storageaccount" in low and "primarydisk" not in low and "bootdiag" not in low


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(dotted path, key, string value) for every string in a JSON value."""
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _walk(child, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _walk(child, f"{path}[{i}]")
    elif isinstance(value, str):
        key = path.rsplit(".", 1)[-1].split("[", 1)[0]
        yield path, key, value


def item_references(item: dict[str, Any], blob_kind: RefKind, account_kind: RefKind) -> list[RawReference]:
    """The blobs and held accounts one replication or migration item names."""
    holder = holder_id(item)
    props = item.get("properties")
    if not isinstance(props, dict):
        raise ValueError(f"{holder}: properties is missing or not an object: the item cannot be read in full")
    refs: list[RawReference] = []
    for path, key, value in _walk(props):
        if not value.strip():
            continue
        if value.lstrip().lower().startswith(("http://", "https://")):
            refs.append(RawReference(kind=blob_kind, holder=holder, uri=value, field=path))
        elif _ACCOUNT_ID.match(value) and holds_account(key):
            refs.append(RawReference(kind=account_kind, holder=holder, uri=value, field=path))
    return refs


def read_vaults(ctx: SubscriptionContext) -> list[tuple[str, str]]:
    return [(resource_group_of(holder_id(v)), name_of(v)) for v in ctx.rest_list(VAULTS)]


def read_items(ctx: SubscriptionContext, read: Read, rg: str, vault: str, blob_kind: RefKind, account_kind: RefKind) -> Found:
    out = Found()
    for item in ctx.rest_list(read, resourceGroupName=rg, resourceName=vault):
        out.references += item_references(item, blob_kind, account_kind)
    return out


def tasks(ctx: SubscriptionContext) -> list:
    def vaults() -> Found:
        follow = []
        for rg, vault in read_vaults(ctx):
            what = f"vault {rg}/{vault}"
            follow.append(ctx.task(PROTECTED_ITEMS, what, lambda rg=rg, vault=vault: read_items(
                ctx, PROTECTED_ITEMS, rg, vault, RefKind.SITE_RECOVERY, RefKind.SITE_RECOVERY_ACCOUNT)))
            follow.append(ctx.task(MIGRATION_ITEMS, what, lambda rg=rg, vault=vault: read_items(
                ctx, MIGRATION_ITEMS, rg, vault, RefKind.MIGRATION, RefKind.MIGRATION_ACCOUNT)))
        return Found(follow=follow)

    return [ctx.task(VAULTS, "", vaults)]


SOURCE = Source(
    "site_recovery", "Site Recovery / Azure Migrate", (VAULTS, PROTECTED_ITEMS, MIGRATION_ITEMS), tasks,
    sees="replicas, seeds and targets named by replication protected items and migration items "
    "(`diskUri`, `recoveryDiskUri`, `seedBlobUri`, `targetBlobUri`, ...); every blob of their staging, "
    "cache, log and recovery storage accounts",
)
