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

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, NamedTuple

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


class _Facts:
    """What one set of owner tags and group tags says, made once and shared by every holder that
    carries the same (its owner, its tags as dicts and as the JSON text SQLite stores)."""

    __slots__ = ("owner", "tags_dict", "group_dict", "tags_json", "group_json")

    def __init__(self, tags: Tags, group_tags: Mapping[str, str], names: tuple[str, ...]) -> None:
        self.owner = owner_of(tags, group_tags, names)
        self.tags_dict = dict(tags)
        self.group_dict = dict(group_tags)
        self.tags_json = json.dumps(self.tags_dict)
        self.group_json = json.dumps(self.group_dict)


class _Held:
    """What one holder (or an item on its own) says of ownership now; one object per holder."""

    __slots__ = ("holder", "tags", "group_tags", "source", "owner", "tags_dict", "group_dict", "tags_json",
                 "group_json")

    def __init__(self, holder: str | None, tags: Tags, group_tags: Mapping[str, str], source: str,
                 facts: _Facts) -> None:
        self.holder = holder
        self.tags = tags
        self.group_tags = group_tags
        self.source = source  # reference (held by ``holder``) | metadata (held by nothing: its own tags)
        owner = facts.owner
        if owner is None and source == "metadata" and holder:
            owner = holder.rsplit("/", 1)[-1]  # the VM the metadata names is all there is
        self.owner = owner
        self.tags_dict, self.group_dict = facts.tags_dict, facts.group_dict
        self.tags_json, self.group_json = facts.tags_json, facts.group_json

    @property
    def informative(self) -> bool:
        return bool(self.tags or self.group_tags)


_NO_GROUP: Mapping[str, str] = {}  # one object: the facts of holders without group tags are shared


class StoredOwner(NamedTuple):
    """What a pass reads of a stored owner record to tell whether it changed (StateTx.owner_fingerprints):
    ``tags`` and ``group_tags`` as the driver gives them (SQLite: the JSON text; PostgreSQL: dicts)."""

    item_id: str
    holder: str | None
    owner: str | None
    tags: Any
    group_tags: Any
    source: str
    held: bool  # written by a pass that saw it held, and not marked gone since (last_seen == updated_at)


def _same_tags(stored: Any, text: str, value: dict[str, str]) -> bool:
    if isinstance(stored, str):
        return stored == text or json.loads(stored) == value
    return (stored or {}) == value


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
    a steady pass over an unchanged estate writes none. The stored records are streamed and compared
    on what is cheap to compare (:class:`StoredOwner`); only the ones to rewrite are read in full.

    Without a record from a reference: a blob's ``MicrosoftAzureCompute_*`` metadata (what the pass
    wrote of it into ``last_owner``) gives a ``metadata`` record (the VM it names, that VM's group's
    tags, the VM's owner tags if it still exists, the VM's name as the owner when no tag names one); a
    disk or snapshot held by nothing gives one from its own owner tags and its group's tags.
    """

    def __init__(self, names: tuple[str, ...], refs: Any, read: Any, now: datetime,
                 last_pass_at: datetime | None, evidence: Mapping[BlobKey, str]) -> None:
        self.names = names
        self.refs = refs
        self.now = now
        self.last_pass_at = last_pass_at  # the last complete pass before this one: it saw what is held
        self.evidence = dict(evidence)
        self.holder_tags: Mapping[str, Tags] = getattr(read, "holder_tags", None) or {}
        self.groups: Mapping[str, Any] = getattr(read, "groups", None) or {}
        self.placed: Mapping[str, Any] = getattr(read, "accounts", None) or {}
        self.disks_seen = getattr(read, "disks", None)
        self.snapshots = getattr(read, "snapshots", None) or []
        self._memo: dict[str, _Held] = {}
        self._facts: dict[tuple, _Facts] = {}
        self._blobs: dict[BlobKey, _Held] = {}
        self._disks: dict[str, _Held] | None = None
        self._revisit: dict[str, _Held | None] = {}  # item id -> what it says now (None: not held now)

    # -- what each item says now ------------------------------------------------------------------

    def _held(self, holder: str | None, tags: Tags, group_tags: Mapping[str, str], source: str) -> _Held:
        key = (tags, id(group_tags))  # a group's tags are one object, shared by its holders
        facts = self._facts.get(key)
        if facts is None:
            facts = self._facts[key] = _Facts(tags, group_tags, self.names)
        return _Held(holder, tags, group_tags, source, facts)

    def _group_tags(self, resource_id: str) -> Mapping[str, str]:
        if not self.groups:
            return _NO_GROUP
        group = self.groups.get(group_key(resource_id) or "")
        return getattr(group, "tags", None) or _NO_GROUP

    def held_by(self, holder: str) -> _Held:
        held = self._memo.get(holder)
        if held is None:
            held = self._memo[holder] = self._held(
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
            if not own:
                return held
            return self._held(holder, merge_tags(own, held.tags, self.names), held.group_tags, "reference")
        return self._held(None, own, self._group_tags(disk.id), "metadata")

    def _evidence_now(self, key: BlobKey, text: str) -> _Held | None:
        parsed = parse_owner_evidence(text)
        if parsed is None:
            return None
        vm, rg, _disk = parsed
        sub = getattr(self.placed.get(key.account), "subscription", None)
        if sub and rg:
            holder = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/{vm}"
            tags = self.holder_tags.get(holder.lower(), NO_TAGS) if self.holder_tags else NO_TAGS
            return self._held(holder, tags, self._group_tags(holder), "metadata")
        return self._held(vm, NO_TAGS, _NO_GROUP, "metadata")

    def _prepare(self) -> None:
        if self.holder_tags or any(getattr(g, "tags", None) for g in self.groups.values()):
            raw, held_by, blobs = self.refs._raw, self.held_by, self._blobs
            for key, pos in self.refs._blobs.items():
                held = held_by(raw[pos if type(pos) is int else pos[0]].holder)
                if held.informative:
                    blobs[key] = held
        if self.disks_seen is not None:
            disks = self._disks = {}
            for d in self.disks_seen:
                disks[disk_item_id(d.id)] = self._disk_now(d)
            for snap in self.snapshots:
                disks[disk_item_id(snap.id)] = self._held(None, owner_tags_of(getattr(snap, "tags", None), self.names),
                                                          self._group_tags(snap.id), "metadata")

    # -- the records -------------------------------------------------------------------------------

    def scan(self, stored: Iterable[StoredOwner]) -> list[str]:
        """Compare every stored record (streamed) with what this pass saw; the item ids to read in full
        and rewrite (changed, gone, held again)."""
        self._prepare()
        blobs, disks, evidence, revisit = self._blobs, self._disks, self.evidence, self._revisit
        for rec in stored:
            item = rec[0]
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
            source, held = rec[5], rec[6]
            if now is None or (now.source == "metadata" and source == "reference"):
                if held:  # the reference went: the record stays, as the last owner, once marked so
                    revisit[item] = None
                continue
            if (source == now.source and rec[1] == now.holder and rec[2] == now.owner
                    and (held or source == "metadata")
                    and _same_tags(rec[3], now.tags_json, now.tags_dict)
                    and _same_tags(rec[4], now.group_json, now.group_dict)):
                continue  # unchanged (and, from a reference, still marked held): no write
            revisit[item] = now
        return list(revisit)

    def _record(self, item_id: str, now: _Held, prev: OwnerRecord | None) -> OwnerRecord:
        if now.source == "metadata":
            first = last = None
        else:
            kept = prev is not None and prev.source == "reference" and prev.holder == now.holder
            first = prev.first_seen if kept and prev.first_seen is not None else self.now
            last = self.now
        return OwnerRecord(item_id, now.holder, now.owner, now.tags_dict, now.group_dict, now.source, first, last)

    def records(self, previous: Mapping[str, OwnerRecord]) -> Iterator[OwnerRecord]:
        """The records to write (after :meth:`scan`), made as they are written; ``previous``: the full
        stored records of the ids :meth:`scan` returned."""
        for item, now in self._revisit.items():
            rec = previous.get(item)
            if rec is None:
                continue
            if now is None:
                seen = self.last_pass_at
                last = seen if seen is not None and rec.last_seen is not None and rec.last_seen < seen < self.now \
                    else rec.last_seen
                yield OwnerRecord(rec.item_id, rec.holder, rec.owner, rec.tags, rec.group_tags, rec.source,
                                  rec.first_seen, last)
            else:
                yield self._record(item, now, rec)
        for key, now in self._blobs.items():
            self.evidence.pop(key, None)
            yield self._record(blob_item_id(key), now, None)
        for key, text in self.evidence.items():
            if key in self.refs._blobs:
                continue
            now = self._evidence_now(key, text)
            if now is not None:
                yield self._record(blob_item_id(key), now, None)
        for item, now in (self._disks or {}).items():
            if now.informative:
                yield self._record(item, now, None)

    def plan(self, stored: Iterable[tuple[OwnerRecord, datetime | None]]) -> list[OwnerRecord]:
        """Both steps at once, from full stored records with their ``updated_at`` (tests, small estates)."""
        stored = list(stored)
        self.scan(StoredOwner(r.item_id, r.holder, r.owner, r.tags, r.group_tags, r.source,
                              r.source == "reference" and r.last_seen is not None and r.last_seen == u)
                  for r, u in stored)
        return list(self.records({r.item_id: r for r, _ in stored}))
