"""The reference inventory: every registered source, for every configured subscription, read
concurrently into one :class:`~gc_daemon.sources.base.ReferenceRead`. No I/O until :meth:`read`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from azure.core.credentials import TokenCredential

from gc_daemon import USER_AGENT
from gc_daemon.azure.arm_budget import ArmBudgetPolicy, ArmReadBudget, process_budget

from gc_daemon.owners import DEFAULT_OWNER_TAGS, owner_tag_names, owner_tags_of

from .sdk_models import guard_model_setup

from .base import (
    _MAX_MESSAGE,
    DEFAULT_MAX_PAGES,
    Found,
    HostPinPolicy,
    PlacedAccount,
    ReferenceRead,
    ReadStopped,
    Source,
    SourceError,
    SubscriptionContext,
    Task,
    arm_key,
    arm_list,
    describe_error,
)


def arm_client_kwargs(
    arm_endpoint: str,
    connection_verify: str | bool | None,
    retry_total: int,
    timeout: float,
    retry_backoff: float = 0.8,
    budget: ArmReadBudget | None = None,
) -> dict[str, Any]:
    """azure-core settings for an ARM management client (compute, storage). The host pin keeps the
    bearer token on the ARM endpoint's host, whatever a nextLink or a redirect says; the budget
    policy reads ARM's remaining-reads count and paces reads by it (``budget``, else the process's:
    gc_daemon.azure.arm_budget)."""
    kwargs: dict[str, Any] = {
        "base_url": arm_endpoint,
        "credential_scopes": [arm_endpoint + "/.default"],
        "retry_total": retry_total,
        "retry_backoff_factor": retry_backoff,
        "retry_backoff_max": max(retry_backoff * 16, 1.0),
        "connection_timeout": timeout,
        "read_timeout": timeout,
        "per_retry_policies": [HostPinPolicy(arm_endpoint), ArmBudgetPolicy(budget or process_budget())],
        # "vhd-gc/<version> azsdk-python-mgmt-compute/... Python/...": the SDK prepends it. arm_list's
        # REST reads go through the same client pipeline, so they carry it too.
        "user_agent": USER_AGENT,
    }
    if connection_verify is not None:
        kwargs["connection_verify"] = connection_verify
    return kwargs


class ReferenceInventory:
    """Reads every reference the registered sources hold, in the given subscriptions."""

    def __init__(
        self,
        credential: TokenCredential,
        arm_endpoint: str,
        subscriptions: list[str],
        *,
        sources: Sequence[Source] | None = None,
        connection_verify: str | bool | None = None,
        retry_total: int = 4,
        retry_backoff: float = 0.8,
        timeout: float = 60,
        max_workers: int = 8,
        max_pages: int = DEFAULT_MAX_PAGES,
        arm_budget: ArmReadBudget | None = None,
        owner_tags: Sequence[str] = DEFAULT_OWNER_TAGS,
    ) -> None:
        from . import REGISTRY

        self._credential = credential
        self._arm_endpoint = arm_endpoint.rstrip("/")
        self._subscriptions = list(subscriptions)
        self.sources: tuple[Source, ...] = tuple(REGISTRY if sources is None else sources)
        self._connection_verify = connection_verify
        self._retry_total = retry_total
        self._retry_backoff = retry_backoff
        self._timeout = timeout
        self._max_workers = max(1, max_workers)
        self._max_pages = max_pages
        self.owner_tags = owner_tag_names(owner_tags)  # the holders' tags kept: gc_daemon.owners
        self.arm_budget = arm_budget or process_budget()  # ARM's remaining reads, and the pace they ask for
        self._clients: dict[tuple[str, str], Any] = {}
        self._clients_lock = threading.Lock()

    # -- clients ---------------------------------------------------------------------------------

    def _kwargs(self) -> dict[str, Any]:
        return arm_client_kwargs(
            self._arm_endpoint, self._connection_verify, self._retry_total, self._timeout, self._retry_backoff,
            self.arm_budget,
        )

    def _client(self, kind: str, subscription: str) -> Any:
        with self._clients_lock:
            client = self._clients.get((kind, subscription))
            if client is None:
                if kind == "compute":
                    from azure.mgmt.compute import ComputeManagementClient as make
                elif kind == "resources":
                    from azure.mgmt.resource.resources import ResourceManagementClient as make
                elif kind == "locks":
                    from azure.mgmt.resource.locks import ManagementLockClient as make
                else:
                    from azure.mgmt.storage import StorageManagementClient as make
                client = self._clients[(kind, subscription)] = make(self._credential, subscription, **self._kwargs())
            return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> "ReferenceInventory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def context(self, subscription: str) -> SubscriptionContext:
        return SubscriptionContext(
            subscription,
            self._arm_endpoint,
            self._max_pages,
            lambda: self._client("compute", subscription),
            lambda: self._client("storage", subscription),
            lambda: self._client("resources", subscription),
            lambda: self._client("locks", subscription),
        )

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(label for source in self.sources for label in source.labels)

    @property
    def places_accounts(self) -> bool:
        return any(s.name == "storage_accounts" for s in self.sources)

    # -- the read --------------------------------------------------------------------------------

    def read(self, should_stop: Callable[[], bool] = lambda: False) -> ReferenceRead:
        """Read every source of every subscription; never raises for a source's failure. A stop
        asked for meanwhile raises :class:`ReadStopped` within a moment, without waiting for the
        calls in flight."""
        guard_model_setup()  # before any pool thread constructs an SDK model (see sdk_models)
        result = ReferenceRead(accounts={} if self.places_accounts else None)
        disks: list = []
        snapshots: list = []
        refs: dict[str, dict[str, None]] = {}
        for sub in self._subscriptions:
            for label in self.labels:
                result.counts[f"{sub}/{label}"] = 0
        tasks = [
            task
            for sub in self._subscriptions
            for ctx in (self.context(sub),)
            for source in self.sources
            for task in source.tasks(ctx)
        ]
        if not tasks:
            return result
        pool = ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="reference-read")
        stopped = False
        try:
            pending: dict[Future[Found], Task] = {pool.submit(task.run): task for task in tasks}
            while pending:
                done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                if should_stop():
                    stopped = True
                    raise ReadStopped("stopped during the reference read")
                for future in done:
                    task = pending.pop(future)
                    try:
                        found = future.result()
                    except Exception as exc:  # noqa: BLE001 - every failure of a source is a SourceError
                        message = describe_error(exc)
                        if task.what:
                            message = f"{task.what}: {message}"
                        result.errors.append(SourceError(task.source, message[:_MAX_MESSAGE]))
                        continue
                    result.references.extend(found.references)
                    result.counts[task.source] = result.counts.get(task.source, 0) + len(found.references)
                    if result.accounts is not None:
                        for account in found.accounts:
                            result.accounts.setdefault(account.name, account)
                    disks += found.disks
                    snapshots += found.snapshots
                    for group in found.groups:
                        result.groups[arm_key(group.id)] = group
                    result.locks += found.locks
                    for holder, tags in found.tags:
                        kept = owner_tags_of(tags, self.owner_tags)
                        if kept:
                            result.holder_tags[arm_key(holder)] = kept
                    for key, holder in found.resource_refs:
                        refs.setdefault(key, {})[holder] = None
                    for follow_task in found.follow:
                        pending[pool.submit(follow_task.run)] = follow_task
        finally:
            # After a stop the calls in flight are not waited for: each ends with its timeout.
            pool.shutdown(wait=not stopped, cancel_futures=True)
        result.errors.sort(key=lambda e: (e.source, e.message))
        self._disk_half(result, disks, snapshots, refs)
        return result

    def _disk_half(self, result: ReferenceRead, disks: list, snapshots: list, refs: dict[str, dict[str, None]]) -> None:
        """What the managed-disk half of a pass gets: the disks and snapshots only when every source it
        joins them with was read, and read completely (else None: the pass skips the disk half)."""
        from . import DISK_SOURCES

        failed = {e.source for e in result.errors}
        by_name = {s.name: s for s in self.sources}
        if "disks" in by_name:
            result.disks_read = {
                sub.lower() for sub in self._subscriptions
                if not any(f"{sub}/{label}" in failed for label in by_name["disks"].labels)
            }
        result.resource_refs = {key: tuple(sorted(holders)) for key, holders in sorted(refs.items())}
        result.locks.sort(key=lambda lock: lock.id.lower())
        if not all(name in by_name for name in DISK_SOURCES):
            return
        labels = {label for name in DISK_SOURCES for label in by_name[name].labels}
        if any(source.split("/", 1)[-1] in labels for source in failed):
            return
        # A disk whose group the groups list lacks (an identity that may read the disk but not its
        # group): the group's tags and managedBy are unknown, and either may hold the disk.
        unlisted: dict[str, list[str]] = {}
        for obs in (*disks, *snapshots):
            if arm_key(f"/subscriptions/{obs.subscription}/resourceGroups/{obs.resource_group}") not in result.groups:
                unlisted.setdefault(obs.subscription, []).append(obs.id)
        for sub, ids in sorted(unlisted.items()):
            more = f" (and {len(ids) - 1} more)" if len(ids) > 1 else ""
            result.errors.append(SourceError(f"{sub}/resourceGroups", (
                f"the resource group of {ids[0]}{more} is not in the resource groups list: its tags and managedBy "
                "cannot be read (Microsoft.Resources/subscriptions/resourceGroups/read on the group)")[:_MAX_MESSAGE]))
        if unlisted:
            result.errors.sort(key=lambda e: (e.source, e.message))
            return
        result.disks = sorted(disks, key=lambda d: d.id.lower())
        result.snapshots = sorted(snapshots, key=lambda s: s.id.lower())

    # -- placing an account outside the configuration ---------------------------------------------

    def locate(self, account: str) -> PlacedAccount | None:
        """Where ARM places an account that no configured subscription holds: the storage accounts
        of every subscription the identity can see (only asked when placement failed). None when
        ARM cannot place it, or cannot be asked."""
        from .storage_accounts import placed

        configured = set(self._subscriptions)
        try:
            client = self._client("compute", self._subscriptions[0])
            subs = [s.get("subscriptionId") for s in arm_list(client, self._arm_endpoint, "/subscriptions", "2022-12-01",
                                                              self._max_pages)]
        except Exception:  # noqa: BLE001 - only a better message is at stake
            return None
        for sub in subs:
            if not isinstance(sub, str) or sub.lower() in configured:
                continue
            try:
                for acct in self._client("storage", sub).storage_accounts.list():
                    if str(acct.name).lower() == account:
                        return placed(sub.lower(), acct)
            except Exception:  # noqa: BLE001
                continue
        return None
