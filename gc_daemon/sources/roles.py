"""The Azure custom roles in deploy/azure/, generated from what the reference sources declare.

``python -m gc_daemon.sources.roles`` rewrites deploy/azure/vhd-gc-role.json and
vhd-gc-reader-role.json from the declarations (keeping each file's AssignableScopes);
tests/test_deploy.py checks that the files in the tree are what this makes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import permissions

# Beyond the reference sources: what listing and deleting blobs needs.
STORAGE_ACTIONS = (
    "Microsoft.Storage/storageAccounts/blobServices/read",  # the blob service of each account
    "Microsoft.Storage/storageAccounts/blobServices/containers/read",  # List Containers with Entra ID
)
READ_DATA_ACTIONS = (
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read",
    "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/tags/read",
)
DELETE_DATA_ACTION = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete"
# What deleting managed disks needs beyond the reads (the reads of disks, snapshots, resource groups and
# locks come from the reference sources): the quarantine snapshot (write; its expiry, delete), the disk's
# delete, and `vhd-gc restore`, which recreates a deleted disk from its quarantine snapshot (disks/write).
# Only the full role has them.
DISK_WRITE_ACTIONS = (
    "Microsoft.Compute/disks/delete",
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/snapshots/delete",
    "Microsoft.Compute/snapshots/write",
)
DEFAULT_SCOPES = ["/subscriptions/00000000-0000-0000-0000-000000000001"]

ROLES = {
    "vhd-gc-role.json": (
        "vhd-gc",
        "vhd-gc: read what references VHDs (Compute, Site Recovery, Azure Migrate, Image Builder, DevTest Labs, "
        "galleries), list VHD blobs, delete orphaned ones; delete unattached managed disks and orphaned snapshots "
        "after a quarantine snapshot, and restore a disk from it. No other write, no account keys.",
        True,
    ),
    "vhd-gc-reader-role.json": (
        "vhd-gc reader",
        "vhd-gc in dry-run: read what references VHDs, list VHD blobs, managed disks and snapshots. Cannot delete "
        "anything, no write, no account keys.",
        False,
    ),
}


def actions(deletes: bool = False) -> list[str]:
    return sorted(set(permissions()) | set(STORAGE_ACTIONS) | (set(DISK_WRITE_ACTIONS) if deletes else set()))


def role(file_name: str, scopes: list[str] | None = None) -> dict:
    name, description, deletes = ROLES[file_name]
    data_actions = list(READ_DATA_ACTIONS) + ([DELETE_DATA_ACTION] if deletes else [])
    return {
        "Name": name,
        "IsCustom": True,
        "Description": description,
        "Actions": actions(deletes),
        "NotActions": [],
        "DataActions": sorted(data_actions),
        "NotDataActions": [],
        "AssignableScopes": scopes or DEFAULT_SCOPES,
    }


def render(file_name: str, scopes: list[str] | None = None) -> str:
    return json.dumps(role(file_name, scopes), indent=2) + "\n"


def main(directory: str = "deploy/azure") -> int:
    for file_name in ROLES:
        path = Path(directory) / file_name
        scopes = json.loads(path.read_text())["AssignableScopes"] if path.exists() else None
        path.write_text(render(file_name, scopes))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
