"""Storage account discovery: the accounts of the configured subscriptions, through
azure-mgmt-storage, filtered by name and resource group. I/O only; a failure of any subscription is
an error for the pass (an account we did not see must not look empty)."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from .compute import SourceError, arm_client_kwargs, check_list_page, describe_error

_RG = re.compile(r"/resourceGroups/([^/]+)/", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class DiscoveredAccount:
    name: str
    subscription: str
    resource_group: str
    blob_endpoint: str | None
    kind: str | None
    sku: str | None


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
    ) -> None:
        self._credential = credential
        self._arm_endpoint = arm_endpoint.rstrip("/")
        self._subscriptions = list(subscriptions)
        self._verify = connection_verify
        self._retry_total = retry_total
        self._timeout = timeout
        self._clients: dict[str, Any] = {}

    def _client(self, subscription: str) -> Any:
        client = self._clients.get(subscription)
        if client is None:
            from azure.mgmt.storage import StorageManagementClient

            kwargs = arm_client_kwargs(self._arm_endpoint, self._verify, self._retry_total, self._timeout)
            client = self._clients[subscription] = StorageManagementClient(self._credential, subscription, **kwargs)
        return client

    def discover(self) -> Discovery:
        out = Discovery()
        for sub in self._subscriptions:
            try:
                for acct in self._client(sub).storage_accounts.list(raw_response_hook=check_list_page):
                    rid = acct.id or ""
                    m = _RG.search(rid)
                    endpoints = acct.primary_endpoints
                    out.accounts.append(
                        DiscoveredAccount(
                            name=str(acct.name).lower(),
                            subscription=sub,
                            resource_group=m.group(1) if m else "",
                            blob_endpoint=(endpoints.blob if endpoints else None),
                            kind=acct.kind,
                            sku=acct.sku.name if acct.sku else None,
                        )
                    )
            except Exception as exc:  # noqa: BLE001 - one failed subscription fails discovery
                out.errors.append(SourceError(f"{sub}/storageAccounts", describe_error(exc)))
        return out
