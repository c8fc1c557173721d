"""The plain data of notices, shared by the outbox, the routing and the channels.

A pass turns candidates into :class:`NoticeItem` values, routes each to its recipients, and writes
one :class:`Digest` per (channel, recipient) into the outbox table. The delivery loop sends digests
through a :class:`Channel`; a channel raises :class:`DeliveryError` on failure and never anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

NoticeReason = Literal["candidate", "reminder"]  # new candidate | `notify.remind_before` its delete time


@dataclass(frozen=True, slots=True)
class NoticeItem:
    kind: Literal["vhd", "managed_disk", "snapshot"]
    item_id: str  # gc_daemon.owners.blob_item_id / disk_item_id
    name: str  # blob name, or the disk's name
    location: str  # "account/container" for a blob; "subscription/resource group" for a disk
    url: str  # the blob URL, or the ARM id
    size_bytes: int  # nominal
    billed_bytes: int | None  # None: not measured yet
    monthly_cost: float | None  # None: unpriced
    currency: str
    state: str  # candidate | due
    delete_after: datetime | None  # when it may be deleted at the earliest (with the notice lead time)
    owner: str | None  # from the owner record; None: unknown (routed to the default recipient)
    holder: str | None  # the last holder seen, if any
    keep_command: str  # the exact command that stops it, e.g. "vhd-gc keep acct/cont/x.vhd --reason ..."
    reason: NoticeReason


@dataclass(frozen=True, slots=True)
class Digest:
    """One message: everything one recipient is told by one pass on one channel."""

    key: str  # idempotency key: stable for (pass, channel, recipient); receivers may deduplicate on it
    channel: str  # the name of a `notify.channels` entry
    recipient: str  # an email address for smtp; the channel's name (or a label) for webhooks
    created_at: datetime
    items: tuple[NoticeItem, ...]


class DeliveryError(Exception):
    """A digest was not delivered. ``permanent``: retrying will not help (e.g. SMTP 5xx, HTTP 4xx other
    than 408/429); it is still retried, at the longest backoff, and counted as failed."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Channel(Protocol):
    name: str

    def send(self, digest: Digest) -> None:
        """Deliver ``digest`` or raise :class:`DeliveryError`. Bounded by the channel's timeout."""
        ...
