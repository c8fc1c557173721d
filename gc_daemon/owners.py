"""Who owned a blob or a disk (issue 15): the holder that referenced it and that holder's owner tags.

While an item is referenced, each pass remembers its holder (the VM, scale set, image or disk whose
reference it is) with the holder's owner tags and its resource group's tags, from the references the
pass already reads (no extra calls). When the reference goes, the record stays: it is what the notices
and the report name as the owner of a leftover. For blobs vhd-gc never saw in use, the
``MicrosoftAzureCompute_*`` metadata fills the gap (``source = "metadata"``).

This module holds the plain data and the item ids; the table is ``owner_records`` (see
gc_daemon.state) and the store API is ``Store.owner_records(item_ids)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from .domain import BlobKey

# Tag names whose value names an owner, looked up in this order on the holder, then on its resource
# group (configurable: `owners.tags`).
DEFAULT_OWNER_TAGS = ("owner", "createdBy", "CreatedBy", "contact")


def blob_item_id(key: BlobKey) -> str:
    """The item id of a blob: ``account/container/blob`` (account and container lower-case)."""
    return str(key)


def disk_item_id(arm_id: str) -> str:
    """The item id of a managed disk or snapshot: its ARM id, lower-case (ARM ids compare without case)."""
    return arm_id.lower()


@dataclass(frozen=True, slots=True)
class OwnerRecord:
    item_id: str  # blob_item_id / disk_item_id
    holder: str | None  # ARM id of the last holder seen (VM, scale set, image, gallery version, disk)
    owner: str | None  # the first owner tag's value found on the holder, then on its group
    tags: dict[str, str] = field(default_factory=dict)  # the holder's owner tags (only those names)
    group_tags: dict[str, str] = field(default_factory=dict)  # its resource group's tags (all of them)
    source: str = "reference"  # "reference" (seen held) | "metadata" (MicrosoftAzureCompute_* only)
    first_seen: datetime | None = None  # first pass that saw it held by this holder
    last_seen: datetime | None = None  # last pass that saw it held (None: only from metadata)
