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

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class OwnersConfig(BaseModel):
    """Which tags name an owner (``owners``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

    tags: Annotated[list[Annotated[str, Field(min_length=1, max_length=512)]], Field(max_length=50)] = Field(
        default_factory=lambda: list(DEFAULT_OWNER_TAGS)
    )
    """Tag names whose value names an owner, looked up in this order on the holder (VM, scale set, image,
    gallery image version, disk), then on its resource group; compared without case, as Azure compares tag
    names. Only these tags of a holder are remembered; of its resource group, every tag. An empty list:
    holders and group tags are still remembered, no owner is named."""

    @field_validator("tags")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @property
    def names(self) -> tuple[str, ...]:
        """The tag names, lower-cased, in order, each once."""
        return owner_tag_names(self.tags)


# --------------------------------------------------------------------------------------------------
# Owner tags: which tags of a holder are kept, and the owner they name
# --------------------------------------------------------------------------------------------------

Tags = tuple[tuple[str, str], ...]  # (name as listed, value), in the order of the configured names
NO_TAGS: Tags = ()


def owner_tag_names(tags: Iterable[str]) -> tuple[str, ...]:
    """The configured owner tag names, lower-cased (Azure compares tag names without case), each once."""
    return tuple(dict.fromkeys(t.lower() for t in tags))


def owner_tags_of(tags: Any, names: tuple[str, ...]) -> Tags:
    """The owner tags among a resource's ``tags`` (as listed: a mapping), in the order of ``names``
    (lower-case); empty when it has none. Lenient: tags that are not a mapping carry no owner (an
    owner record is information, never a reason to fail a read)."""
    if not tags or not names or not isinstance(tags, Mapping):
        return NO_TAGS
    by_lower: dict[str, tuple[str, str]] = {}
    for name, value in tags.items():
        if isinstance(name, str):
            by_lower.setdefault(name.lower(), (name, "" if value is None else str(value)))
    return tuple(by_lower[n] for n in names if n in by_lower)


def owner_of(tags: Tags, group_tags: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The owner: the first owner tag (in the configured order) with a value on the holder, then on its
    resource group; None when neither names one."""
    for _, value in tags:
        if value.strip():
            return value.strip()
    if group_tags:
        lowered = {k.lower(): v for k, v in group_tags.items()}
        for n in names:
            value = lowered.get(n)
            if value and str(value).strip():
                return str(value).strip()
    return None


def group_key(resource_id: str) -> str | None:
    """The lower-cased id of a resource's resource group (``/subscriptions/S/resourcegroups/G``), None
    when the id names no group."""
    parts = resource_id.strip().strip("/").split("/")
    if len(parts) >= 4 and parts[0].lower() == "subscriptions" and parts[2].lower() == "resourcegroups":
        return f"/subscriptions/{parts[1]}/resourcegroups/{parts[3]}".lower()
    return None


_EVIDENCE = re.compile(r"^vm:(?P<vm>[^ ]+)(?: \((?:resource group (?P<rg>[^,]+?))?(?:, )?(?:disk (?P<disk>.+))?\))?$")


def parse_owner_evidence(text: str | None) -> tuple[str, str | None, str | None] | None:
    """``(vm, resource group, disk)`` of what gc_daemon.decide.owner_evidence wrote of a blob's
    ``MicrosoftAzureCompute_*`` metadata (``vm:NAME (resource group G, disk D)``); None for anything else
    (a holder's ARM id, nothing)."""
    if not text or not text.startswith("vm:"):
        return None
    m = _EVIDENCE.match(text)
    if m is None:
        return None
    return m["vm"], m["rg"], m["disk"]


def merge_tags(first: Tags, second: Tags, names: tuple[str, ...]) -> Tags:
    """Owner tags of two resources as one (``first`` wins a name both carry), in the configured order."""
    if not second:
        return first
    if not first:
        return second
    by: dict[str, tuple[str, str]] = {k.lower(): (k, v) for k, v in second}
    by.update((k.lower(), (k, v)) for k, v in first)
    return tuple(by[n] for n in names if n in by)


# --------------------------------------------------------------------------------------------------
# The pass: which owner records to write
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Held:
    """What one holder (or an item on its own) says of ownership now; one object per holder."""

    holder: str | None
    tags: Tags
    group_tags: Mapping[str, str]
    source: str  # reference (held by ``holder``) | metadata (held by nothing: the item's own tags)

    @property
    def informative(self) -> bool:
        return bool(self.tags or self.group_tags)


class OwnerPlan:
    """The owner records one complete pass writes: only what changed.

    Recorded, while an item is held: its holder, the holder's owner tags (``owners.tags`` only) and
    its resource group's tags, from the references and listings the pass read anyway. To keep a large
    estate's pass as cheap as before, an item gets a record only when there is something to say of its
    owner: its holder or the holder's resource group carries tags (owner tags of the holder, any tags of
    the group), or it has a record already (then any change is written, a removed tag too). A held item
    whose holder and group carry no tag at all is not recorded: its holder is what ``explain`` shows of
    its references anyway.

    A record is written when its holder, owner, tags or group tags change, when the reference goes
    (once: ``last_seen`` becomes the last complete pass that saw it held, and the record stays as the
    leftover's last owner) and when it is held again. A held record has ``last_seen == updated_at``;
    a steady pass over an unchanged estate writes none.

    Without a record from a reference: a blob's ``MicrosoftAzureCompute_*`` metadata (what the pass
    wrote of it into ``last_owner``) gives a ``metadata`` record (the VM it names, that VM's group's
    tags, the VM's owner tags if it still exists); a disk or snapshot held by nothing gives one from its
    own owner tags and its group's tags.
    """

    def __init__(self, names: tuple[str, ...], refs: Any, read: Any, now: datetime,
                 last_pass_at: datetime | None, evidence: Mapping[BlobKey, str]) -> None:
        self.names = names
        self.refs = refs
        self.now = now
        self.last_pass_at = last_pass_at  # the last complete pass before this one: it saw what is held
        self.evidence = evidence
        self.holder_tags: Mapping[str, Tags] = getattr(read, "holder_tags", None) or {}
        self.groups: Mapping[str, Any] = getattr(read, "groups", None) or {}
        self.placed: Mapping[str, Any] = getattr(read, "accounts", None) or {}
        self.disks = getattr(read, "disks", None)
        self.snapshots = getattr(read, "snapshots", None) or []
        self._memo: dict[str, _Held] = {}
        self._tagged_groups = any(getattr(g, "tags", None) for g in self.groups.values())

    # -- what each item says now ------------------------------------------------------------------

    def _group_tags(self, resource_id: str) -> Mapping[str, str]:
        if not self.groups:
            return {}
        group = self.groups.get(group_key(resource_id) or "")
        return getattr(group, "tags", None) or {}

    def held_by(self, holder: str) -> _Held:
        held = self._memo.get(holder)
        if held is None:
            held = self._memo[holder] = _Held(
                holder, self.holder_tags.get(holder.lower(), NO_TAGS) if self.holder_tags else NO_TAGS,
                self._group_tags(holder), "reference")
        return held

    def blob_now(self, key: BlobKey) -> _Held | None:
        pos = self.refs._blobs.get(key)
        if pos is None:
            return None
        return self.held_by(self.refs._raw[pos if type(pos) is int else pos[0]].holder)

    def _disk_now(self, disk: Any) -> _Held:
        own = owner_tags_of(getattr(disk, "tags", None), self.names)
        holder = getattr(disk, "managed_by", None) or next(iter(getattr(disk, "referenced_by", ()) or ()), None)
        if holder:
            held = self.held_by(holder)
            return _Held(holder, merge_tags(own, held.tags, self.names), held.group_tags, "reference") if own else held
        return _Held(None, own, self._group_tags(disk.id), "metadata")

    def _evidence_now(self, key: BlobKey, text: str) -> _Held | None:
        parsed = parse_owner_evidence(text)
        if parsed is None:
            return None
        vm, rg, _disk = parsed
        placed = self.placed.get(key.account)
        sub = getattr(placed, "subscription", None)
        if sub and rg:
            holder = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
            tags = self.holder_tags.get(holder.lower(), NO_TAGS) if self.holder_tags else NO_TAGS
            return _Held(holder, tags, self._group_tags(holder), "metadata")
        return _Held(vm, NO_TAGS, {}, "metadata")

    # -- the records -------------------------------------------------------------------------------

    def _record(self, item_id: str, now: _Held, prev: OwnerRecord | None) -> OwnerRecord:
        owner = owner_of(now.tags, now.group_tags, self.names)
        if now.source == "metadata":
            first = last = None
            if owner is None and now.holder and not now.holder.startswith("/"):
                owner = now.holder  # the VM the metadata names is all there is
            elif owner is None and now.holder:
                owner = now.holder.rsplit("/", 1)[-1]
        else:
            kept = prev is not None and prev.source == "reference" and prev.holder == now.holder
            first = prev.first_seen if kept and prev.first_seen is not None else self.now
            last = self.now
        return OwnerRecord(item_id, now.holder, owner, dict(now.tags), dict(now.group_tags), now.source, first, last)

    def plan(self, stored: Iterable[tuple[OwnerRecord, datetime | None]]) -> list[OwnerRecord]:
        """The records to write, given every stored record (with its ``updated_at``), streamed."""
        out: list[OwnerRecord] = []
        blobs: dict[BlobKey, _Held] = {}
        if self.holder_tags or self._tagged_groups:
            raw, held_by = self.refs._raw, self.held_by
            for key, pos in self.refs._blobs.items():
                held = held_by(raw[pos if type(pos) is int else pos[0]].holder)
                if held.informative:
                    blobs[key] = held
        disks: dict[str, _Held] | None = None
        if self.disks is not None:
            disks = {}
            for d in self.disks:
                disks[disk_item_id(d.id)] = self._disk_now(d)
            for s in self.snapshots:
                disks[disk_item_id(s.id)] = _Held(None, owner_tags_of(getattr(s, "tags", None), self.names),
                                                  self._group_tags(s.id), "metadata")
        evidence = dict(self.evidence)

        for rec, updated_at in stored:
            item = rec.item_id
            if item.startswith("/"):
                if disks is None:
                    continue  # the disks were not listed: their records stay as they are
                now = disks.pop(item, None)
            else:
                key = BlobKey(*item.split("/", 2))
                now = blobs.pop(key, None) or self.blob_now(key)
                text = evidence.pop(key, None)
                if now is None and text is not None:
                    now = self._evidence_now(key, text)
            held = rec.source == "reference" and rec.last_seen is not None and rec.last_seen == updated_at
            if now is None or (now.source == "metadata" and rec.source == "reference"):
                if held:  # the reference went: the record stays, as the last owner, once marked so
                    seen = self.last_pass_at
                    last = seen if seen is not None and rec.last_seen < seen < self.now else rec.last_seen
                    out.append(OwnerRecord(rec.item_id, rec.holder, rec.owner, rec.tags, rec.group_tags,
                                           rec.source, rec.first_seen, last))
                continue
            new = self._record(item, now, rec)
            if (new.source == rec.source and new.holder == rec.holder and new.owner == rec.owner
                    and new.tags == rec.tags and new.group_tags == rec.group_tags
                    and (held or new.source == "metadata")):
                continue  # unchanged (and, from a reference, still marked held): no write
            out.append(new)

        for key, now in blobs.items():
            out.append(self._record(blob_item_id(key), now, None))
            evidence.pop(key, None)
        for key, text in evidence.items():
            if key in self.refs._blobs:
                continue
            now = self._evidence_now(key, text)
            if now is not None:
                out.append(self._record(blob_item_id(key), now, None))
        for item, now in (disks or {}).items():
            if now.informative:
                out.append(self._record(item, now, None))
        return out
