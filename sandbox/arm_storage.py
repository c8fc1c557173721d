"""Builders of the ARM stand-in's storage accounts (Microsoft.Storage/storageAccounts, listed by
sandbox/arm_http.py: where vhd-gc finds the blob endpoints to list)."""

from __future__ import annotations

from typing import Any

from sandbox.arm_estate import DEFAULT_LOCATION, STORAGE, _iso, storage_account_id


def storage_account(
    sub: str,
    rg: str,
    name: str,
    *,
    blob_endpoint: str | None = None,
    kind: str = "StorageV2",
    sku: str = "Standard_LRS",
    location: str = DEFAULT_LOCATION,
) -> dict[str, Any]:
    return {
        "id": storage_account_id(sub, rg, name),
        "name": name,
        "type": f"{STORAGE}/storageAccounts",
        "location": location,
        "kind": kind,
        "sku": {"name": sku, "tier": sku.split("_")[0]},
        "properties": {
            "primaryEndpoints": {"blob": blob_endpoint or f"https://{name}.blob.core.windows.net/"},
            "primaryLocation": location,
            "statusOfPrimary": "available",
            "provisioningState": "Succeeded",
            "creationTime": _iso(None),
        },
    }
