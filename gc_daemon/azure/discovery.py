"""Storage account discovery: the accounts of the configured subscriptions, through
azure-mgmt-storage, filtered by name and resource group. I/O only; a failure of any subscription is
an error for the pass (an account we did not see must not look empty)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from ..sources.base import PageGuard, PlacedAccount, SourceError, describe_error
from ..sources.inventory import arm_client_kwargs
from ..sources.storage_accounts import placed

# An account found by discovery is an account as ARM places it.
DiscoveredAccount = PlacedAccount


@dataclass(slots=True)
class Discovery:
    accounts: list[DiscoveredAccount] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)


def matches(value: str, include: list[str], exclude: list[str]) -> bool:
    """fnmatch patterns, without case; exclusion wins."""
    v = value.lower()
    return any(fnmatch.fnmatchcase(v, p.lower()) for p in include) and not any(
        fnmatch.fnmatchcase(v, p.lower()) for p in exclude
    )


class AccountDiscovery:
    def __init__(
        self,
        credential: Any,
        arm_endpoint: str,
        subscriptions: list[str],
        *,
        connection_verify: str | bool | None = None,
        retry_total: int = 4,
        timeout: float = 60,
        max_pages: int = 10_000,
        budget: Any = None,
    ) -> None:
        self._credential = credential
        self._budget = budget  # ARM's read budget (gc_daemon.azure.arm_budget); None: the process's
        self._arm_endpoint = arm_endpoint.rstrip("/")
        self._subscriptions = list(subscriptions)
        self._verify = connection_verify
        self._retry_total = retry_total
        self._timeout = timeout
        self._max_pages = max_pages
        self._clients: dict[str, Any] = {}

    def _client(self, subscription: str) -> Any:
        client = self._clients.get(subscription)
        if client is None:
            from azure.mgmt.storage import StorageManagementClient

            kwargs = arm_client_kwargs(self._arm_endpoint, self._verify, self._retry_total, self._timeout,
                                       budget=self._budget)
            client = self._clients[subscription] = StorageManagementClient(self._credential, subscription, **kwargs)
        return client

    def discover(self) -> Discovery:
        out = Discovery()
        for sub in self._subscriptions:
            try:
                accounts = self._client(sub).storage_accounts.list(**PageGuard(self._arm_endpoint, self._max_pages).kwargs())
                out.accounts.extend(placed(sub, acct) for acct in accounts)
            except Exception as exc:  # noqa: BLE001 - one failed subscription fails discovery
                out.errors.append(SourceError(f"{sub}/storageAccounts", describe_error(exc)))
        return out
