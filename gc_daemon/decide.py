"""The decision: a pure function of (references, blobs, stored state, policy, now, the service's time).

Nothing here does I/O or reads a clock. ``classify`` says what a blob is at an instant (in use,
too young, an orphan and whether it is held); ``decide_blob`` turns that and the stored row into
the lifecycle transition of the contract; ``decide`` runs both over one account's listing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from .domain import (
    BlobKey,
    BlobSeen,
    Change,
    Classification,
    ContainerKey,
    Forget,
    Hold,
    Policy,
    RawReference,
    RefKind,
    Reference,
    State,
    Tracked,
    Verdict,
)
from .urls import UrlError, account_of, blob_url_parser, parse_account_id, parse_container_url, redact_query

# States in which a row counts consecutive sightings (it is an orphan, seen by every complete pass).
COUNTING = (State.CANDIDATE, State.DUE, State.KEPT)


class ReferenceIndex:
    """Every reference of a pass, indexed by the blob (or container, or account) it protects.

    Compact for large estates: it keeps the raw references once and maps each key to their
    positions; :class:`Reference` objects are made only when someone asks (:meth:`lookup`).

    Built for a set of ``accounts`` (the collected ones), a reference on a host that can be no
    collected account (another tenant's account, a managed disk's export host) is *foreign*: it
    cannot name a blob the pass lists, so it is counted (:attr:`foreign`) and left out of matching.
    A reference that cannot be parsed at all, or that names a collected account but cannot be
    placed on one blob, is an error (the pass fails closed).
    """

    __slots__ = ("_raw", "_blobs", "_containers", "_accounts", "_imports_only", "accounts", "foreign", "foreign_sample")

    def __init__(self) -> None:
        self._raw: list[RawReference] = []
        self._blobs: dict[BlobKey, int | tuple[int, ...]] = {}
        self._containers: dict[ContainerKey, tuple[int, ...]] = {}
        self._accounts: dict[str, tuple[int, ...]] = {}  # references that hold every blob of an account
        # Keys every direct reference of which is an import (rare): any other key in _blobs is
        # held by a reference that protects whatever the time.
        self._imports_only: set[BlobKey] = set()
        self.accounts: frozenset[str] | None = None  # the collected accounts it was built for
        self.foreign = 0  # references left out: their host can be no collected account
        self.foreign_sample: list[str] = []  # a few of them, for the log

    @classmethod
    def build(
        cls, raw: Iterable[RawReference], accounts: Iterable[str] | None = None
    ) -> tuple["ReferenceIndex", list[str]]:
        """Parse every raw reference. Unparseable ones come back as errors (the pass fails closed)."""
        index = cls()
        errors: list[str] = []
        collected = None if accounts is None else frozenset(a.lower() for a in accounts)
        index.accounts = collected
        blobs, containers, keep, imports_only = index._blobs, index._containers, index._raw, index._imports_only
        account_refs = index._accounts
        imports = _IMPORT_KINDS
        parse = blob_url_parser()
        for r in raw:
            kind = r.kind
            scope = kind.scope
            try:
                if scope == "container":
                    ckey = parse_container_url(r.uri)
                    if collected is not None and ckey.account not in collected:
                        index._foreign(r)
                        continue
                    containers[ckey] = containers.get(ckey, ()) + (len(keep),)
                elif scope == "account":
                    name = parse_account_id(r.uri)
                    if collected is not None and name not in collected:
                        index._foreign(r)
                        continue
                    account_refs[name] = account_refs.get(name, ()) + (len(keep),)
                else:
                    key = parse(r.uri)
                    if collected is not None and key.account not in collected:
                        index._foreign(r)
                        continue
                    old = blobs.get(key)
                    if old is None:
                        blobs[key] = len(keep)
                        if kind in imports:
                            imports_only.add(key)
                    else:
                        blobs[key] = (old if type(old) is tuple else (old,)) + (len(keep),)
                        if imports_only and kind not in imports:
                            imports_only.discard(key)
            except UrlError as exc:
                if scope != "account" and _foreign_host(r.uri, collected):
                    index._foreign(r)
                    continue
                errors.append(f"{r.kind.value} of {r.holder}: {exc}")
                continue
            keep.append(r)
        return index, errors

    def _foreign(self, r: RawReference) -> None:
        self.foreign += 1
        if len(self.foreign_sample) < 3:
            self.foreign_sample.append(f"{r.kind.value} of {r.holder}: {redact_query(r.uri)}")

    def __len__(self) -> int:
        return len(self._raw)

    def _positions(self, key: BlobKey) -> tuple[int, ...]:
        direct = self._blobs.get(key)
        out = () if direct is None else (direct if isinstance(direct, tuple) else (direct,))
        if self._containers:
            out += self._containers.get(ContainerKey(key.account, key.container), ())
        if self._accounts:
            out += self._accounts.get(key.account, ())
        return out

    def permanently_referenced(self, key: BlobKey) -> bool:
        """Held by a reference that protects whatever the time (anything but an import)."""
        if key in self._blobs and key not in self._imports_only:
            return True
        if self._accounts and key[0] in self._accounts:
            return True
        return bool(self._containers) and (key[0], key[1]) in self._containers

    def mentions(self, key: BlobKey) -> bool:
        """Any reference at all (permanent, import, or through the container or the account)."""
        return (
            key in self._blobs
            or (bool(self._containers) and (key[0], key[1]) in self._containers)
            or (bool(self._accounts) and key[0] in self._accounts)
        )

    def lookup(self, key: BlobKey) -> tuple[Reference, ...]:
        """Every reference naming this blob, directly or through its container or account."""
        refs = []
        for i in self._positions(key):
            r = self._raw[i]
            if r.kind.scope == "container":
                refs.append(Reference(r.kind, r.holder, r.uri, None, ContainerKey(key.account, key.container),
                                      field=r.field))
            elif r.kind.scope == "account":
                refs.append(Reference(r.kind, r.holder, r.uri, None, None, field=r.field))
            else:
                refs.append(Reference(r.kind, r.holder, r.uri, key, None, r.time_created, r.provisioning_state,
                                      field=r.field))
        return tuple(refs)

    def union(self, other: "ReferenceIndex") -> "ReferenceIndex":
        accounts = self.accounts if self.accounts is not None else other.accounts
        merged, _ = ReferenceIndex.build(self._raw + other._raw, accounts)
        return merged


def _foreign_host(uri: str, collected: frozenset[str] | None) -> bool:
    """Whether an unparseable reference is on a host that can be no collected account."""
    try:
        account = account_of(uri)
    except UrlError:
        return False  # not even a URL with a host: it cannot be placed, so it fails the pass
    return account is None or (collected is not None and account not in collected)


_IMPORT_KINDS = frozenset(k for k in RefKind if k.is_import)
_UNLEASED = frozenset(("available", "expired", "broken"))
_UNLOCKED = frozenset(("unlocked", None))
ORPHAN_REASON = "orphan: no reference, no lease"
QUIET_ORPHAN = Classification(Verdict.ORPHAN, reason=ORPHAN_REASON)


def is_tracked_kind(blob: BlobSeen) -> bool:
    """Blobs vhd-gc looks at: anything named .vhd, and every page blob. Other block blobs are data."""
    return blob.blob_type == "PageBlob" or blob.key.blob.lower().endswith(".vhd")


def _describe(ref: Reference) -> str:
    return f"{ref.kind.value} of {ref.holder}"


def classify(
    blob: BlobSeen,
    refs: ReferenceIndex,
    operator_holds: Mapping[BlobKey, str],
    policy: Policy,
    now: datetime,
    service_now: datetime | None = None,
) -> Classification:
    """What the blob is at ``now``. In use beats everything; then age; then the holds.

    Age (``min_age``) is measured at ``service_now``, the storage service's own time when the
    listing gave one, else at ``now``: a blob's last_modified is the service's clock, so its age is
    too. Everything else (import_hold here, grace and sightings in decide_blob) is the pass clock's."""
    found = refs.lookup(blob.key)
    active = tuple(r for r in found if r.protects_at(now, policy.import_hold))
    if active:
        return Classification(Verdict.REFERENCED, references=active, reason=f"referenced: {_describe(active[0])}")
    if blob.leased:
        return Classification(Verdict.LEASED, reason=f"lease {blob.lease_state or blob.lease_status}")
    # A clock that steps backwards makes everything young: uncertainty keeps.
    if (now if service_now is None else service_now) - blob.last_modified < policy.min_age:
        return Classification(Verdict.TOO_YOUNG, reason=f"modified {blob.last_modified.isoformat()}")
    expired = found  # imports past their hold: they name the leftover's last owner
    hold, why = _hold(blob, operator_holds, policy, now if service_now is None else service_now)
    if hold is not None:
        return Classification(Verdict.ORPHAN, hold=hold, references=expired, reason=why)
    reason = ORPHAN_REASON
    if expired:
        reason += f"; import finished: {_describe(expired[0])}"
    return Classification(Verdict.ORPHAN, references=expired, reason=reason)


def _hold(
    blob: BlobSeen, operator_holds: Mapping[BlobKey, str], policy: Policy, aged_at: datetime
) -> tuple[Hold | None, str]:
    if blob.key in operator_holds:
        return Hold.OPERATOR, f"kept by operator: {operator_holds[blob.key]}"
    if blob.blob_type != "PageBlob":
        if not policy.delete_block_blob_vhds:
            return Hold.BLOCK_BLOB, f"a .vhd stored as a {blob.blob_type}: Azure cannot use it; not deleted by policy"
    elif not blob.key.blob.lower().endswith(".vhd") and not policy.delete_non_vhd_page_blobs:
        return Hold.NOT_VHD, "a page blob not named .vhd: reported, not deleted by policy"
    if blob.snapshot_count:
        return Hold.SNAPSHOTS, f"has {blob.snapshot_count} snapshot(s)"
    if blob.keep_metadata:
        return Hold.METADATA, "metadata vhdgc_keep"
    if blob.keep_tag:
        return Hold.TAG, "index tag vhdgc-keep"
    if is_captured_image(blob) and (
        policy.captured_image_max_age is None or aged_at - blob.last_modified < policy.captured_image_max_age
    ):
        return Hold.CAPTURED_IMAGE, "a captured VM image (only the capture's template names it)" + (
            "" if policy.captured_image_max_age is None else f"; held until {policy.captured_image_max_age} old"
        )
    if policy.hold_kubernetes_volumes and is_kubernetes_volume(blob):
        return Hold.KUBERNETES, "a Kubernetes in-tree azureDisk volume (unleased while no pod mounts it)"
    return None, ""


CAPTURED_PREFIX = "microsoft.compute/images/"  # in container `system`, as Compute's capture writes it
# The in-tree azureDisk provisioner names a blob volume <cluster>-dynamic-<pv name>.vhd (the cluster
# name is "kubernetes" unless set), PV names are pvc-<uid>, and it sets metadata createdby:
# k8sAzureDataDisk (kubernetes/kubernetes, staging/src/k8s.io/legacy-cloud-providers/azure/
# azure_blobDiskController.go, createVHDBlobDisk, and volumeutil.GenerateVolumeName).
_KUBERNETES_NAME = re.compile(r"(?:^|/)(?:[^/]*-)?dynamic-pvc-[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\.vhd$", re.I)
KUBERNETES_MARK = "dynamic-pvc-"  # what every such name holds (the fast paths look for it, lower-cased)


def is_captured_image(blob: BlobSeen) -> bool:
    return blob.image_type is not None or (
        blob.key.container == "system" and blob.key.blob.lower().startswith(CAPTURED_PREFIX)
    )


def is_kubernetes_volume(blob: BlobSeen) -> bool:
    return (blob.created_by or "").lower() == "k8sazuredatadisk" or _KUBERNETES_NAME.search(blob.key.blob) is not None


def _owner(c: Classification, blob: BlobSeen, prev: Tracked | None) -> str | None:
    if c.references:
        return c.references[0].holder
    if blob.owner_hint:
        return owner_evidence(blob)
    return prev.last_owner if prev else None


def owner_evidence(blob: BlobSeen) -> str:
    """The last owner Compute wrote in an attached VHD's metadata: evidence, not a reference (a VM
    converted to managed disks still exists under that name)."""
    text = f"vm:{blob.owner_hint}"
    extra = [f"resource group {blob.owner_group}"] if blob.owner_group else []
    if blob.owner_disk:
        extra.append(f"disk {blob.owner_disk}")
    return f"{text} ({', '.join(extra)})" if extra else text


@dataclass(slots=True)
class BlobDecision:
    key: BlobKey
    change: Change | None  # None: nothing to write
    due: Tracked | None  # the row to hand the executor, when the blob is due
    classification: Classification


def decide_blob(
    blob: BlobSeen,
    prev: Tracked | None,
    c: Classification,
    policy: Policy,
    now: datetime,
    seq: int,
) -> BlobDecision:
    """The transition of one blob seen by complete pass number ``seq``."""
    if c.verdict is not Verdict.ORPHAN:
        if prev is None or prev.state is State.RELEASED:
            return BlobDecision(blob.key, None, None, c)  # in use and not tracked (or already released): no write
        row = replace(
            prev,
            state=State.RELEASED,
            sightings_frozen=0,  # in use: no orphan sightings now
            streak_start=None,
            delete_after=None,
            reason=c.reason,
            updated_at=now,
        )
        return BlobDecision(blob.key, Change(row, event="released"), None, c)

    counting = prev is not None and prev.state in COUNTING
    same_blob = prev is not None and prev.etag == blob.etag
    needs_measure = blob.blob_type == "PageBlob" and (not same_blob or prev is None or prev.billed_bytes is None)
    billed = None if blob.blob_type == "PageBlob" else blob.size  # block blobs bill their size

    if c.hold is not None:
        if prev is not None and prev.state is State.KEPT and prev.hold is c.hold and same_blob and not needs_measure:
            return BlobDecision(blob.key, None, None, c)
        keep_streak = counting and same_blob
        row = _fresh_row(blob, prev, c, now) if not keep_streak else replace(prev, updated_at=now)
        row.state = State.KEPT
        row.hold = c.hold
        row.reason = c.reason
        row.delete_after = None
        row.streak_start = prev.streak_start if keep_streak else seq
        if not needs_measure and prev is not None:
            row.billed_bytes = prev.billed_bytes
        elif billed is not None:
            row.billed_bytes = billed
        return BlobDecision(blob.key, Change(row, measure=needs_measure, event="kept"), None, c)

    # An orphan that is not held.
    if prev is None or prev.state not in (State.CANDIDATE, State.DUE) or not same_blob:
        event = "restarted" if prev is not None and prev.state in (State.CANDIDATE, State.DUE) else "marked"
        row = _fresh_row(blob, prev, c, now)
        row.streak_start = seq
        row.delete_after = now + policy.grace_period
        if same_blob and prev is not None and not needs_measure:
            row.billed_bytes = prev.billed_bytes
        elif billed is not None:
            row.billed_bytes = billed
        # A grace period of 0s and min_sightings 1 make a blob due at its first sighting.
        is_due = _is_due(row, policy, now, seq)
        row.state = State.DUE if is_due else State.CANDIDATE
        change = Change(row, measure=needs_measure, event="due" if is_due else event)
        return BlobDecision(blob.key, change, row if is_due else None, c)

    # A candidate seen again, unchanged: one more sighting, derived from seq, so no write is needed.
    assert prev is not None and prev.first_orphaned_at is not None
    delete_after = prev.first_orphaned_at + policy.grace_period  # the current grace period applies
    row = prev if prev.delete_after == delete_after else replace(prev, delete_after=delete_after)
    is_due = _is_due(row, policy, now, seq)
    target = State.DUE if is_due else State.CANDIDATE
    if row is prev and prev.state is target and not needs_measure:
        return BlobDecision(blob.key, None, prev if is_due else None, c)
    row = replace(row, state=target, updated_at=now)
    event = "due" if is_due and prev.state is not State.DUE else ("measured" if row.delete_after == prev.delete_after else "rescheduled")
    return BlobDecision(blob.key, Change(row, measure=needs_measure, event=event), row if is_due else None, c)


def _is_due(row: Tracked, policy: Policy, now: datetime, seq: int) -> bool:
    assert row.delete_after is not None and row.streak_start is not None
    return now >= row.delete_after and seq - row.streak_start + 1 >= policy.min_sightings


def _fresh_row(blob: BlobSeen, prev: Tracked | None, c: Classification, now: datetime) -> Tracked:
    return Tracked(
        key=blob.key,
        url=blob.url,
        state=State.CANDIDATE,
        blob_type=blob.blob_type,
        size_bytes=blob.size,
        etag=blob.etag,
        last_modified=blob.last_modified,
        first_orphaned_at=now,
        delete_after=None,
        streak_start=None,
        sightings_frozen=None,
        billed_bytes=None,
        hold=None,
        reason=c.reason,
        last_owner=_owner(c, blob, prev),
        tier=blob.tier,
        deleted_at=None,
        updated_at=now,
    )


def _full(row) -> Tracked:
    """A stored row as a Tracked (the store may hand over rows that materialize on demand)."""
    return row if type(row) is Tracked else row.materialize()


def vanished(left: Iterable[Tracked]) -> Iterator[Forget]:
    """Rows whose blob a complete listing did not see: gone without vhd-gc. Deletions stay as history."""
    for row in left:
        if row.state is not State.DELETED:
            yield Forget(row.key)


@dataclass(slots=True)
class Decision:
    changes: list[Change | Forget] = field(default_factory=list)
    due: list[Tracked] = field(default_factory=list)
    classifications: dict[BlobKey, Classification] = field(default_factory=dict)


def decide_stream(
    blobs: Iterable[BlobSeen],
    tracked: dict[BlobKey, Tracked],
    refs: ReferenceIndex,
    operator_holds: Mapping[BlobKey, str],
    policy: Policy,
    now: datetime,
    seq: int,
    skip_quiet: bool = True,
    *,
    service_now: datetime | None = None,
) -> Iterator[BlobDecision | Forget]:
    """Decide one account's listing as it streams. ``tracked`` is consumed (what is left vanished).

    With ``skip_quiet``, untracked blobs that a permanent reference holds yield nothing at all.
    ``service_now`` is the storage service's time, for ``min_age`` only (see :func:`classify`).
    """
    grace, min_sightings = policy.grace_period, policy.min_sightings
    aged_at = now if service_now is None else service_now
    # `aged_at - last_modified >= min_age`, as one comparison a blob instead of a subtraction and one.
    try:
        old_enough = aged_at - policy.min_age
    except OverflowError:  # a min_age reaching back before year 1: no blob is old enough
        old_enough = datetime.min.replace(tzinfo=aged_at.tzinfo)
    counting_orphan = (State.CANDIDATE, State.DUE)
    due_state = State.DUE
    # What ReferenceIndex.permanently_referenced and .mentions read, looked up here without a call.
    ref_blobs, imports_only, ref_containers = refs._blobs, refs._imports_only, refs._containers
    ref_accounts = refs._accounts
    mark = KUBERNETES_MARK
    # Every new plain orphan of this pass gets the same schedule (decide_blob's first sighting).
    new_delete_after = now + grace
    new_is_due = now >= new_delete_after and 1 >= min_sightings
    new_state, new_event = (State.DUE, "due") if new_is_due else (State.CANDIDATE, "marked")
    for blob in blobs:
        key = blob.key
        prev = tracked.pop(key, None)
        if skip_quiet:
            if prev is None:
                if key in ref_blobs:
                    if key not in imports_only:
                        continue  # in use and untracked: the common case in a large estate, and no write
                elif ref_containers and (key[0], key[1]) in ref_containers:
                    continue  # in use through its container
                elif ref_accounts and key[0] in ref_accounts:
                    continue  # in use through its account (a Site Recovery staging account, ...)
                elif (
                    # An untracked orphan, seen for the first time: the first pass of a large estate
                    # marks many. What classify + decide_blob conclude for it (the property test
                    # holds the two together), built directly.
                    blob.blob_type == "PageBlob"
                    and not blob.snapshot_count
                    and not blob.keep_metadata
                    and not blob.keep_tag
                    and blob.lease_state in _UNLEASED
                    and blob.lease_status in _UNLOCKED
                    and blob.last_modified <= old_enough
                    and (low := key[2].lower()).endswith(".vhd")
                    and key not in operator_holds
                    # what the service holds (captured images, Kubernetes volumes) takes classify
                    and blob.image_type is None
                    and blob.created_by is None
                    and key[1] != "system"
                    and mark not in low
                ):
                    row = Tracked(
                        key, blob.url, new_state, blob.blob_type, blob.size, blob.etag, blob.last_modified, now,
                        new_delete_after, seq, None, None, None, ORPHAN_REASON,
                        owner_evidence(blob) if blob.owner_hint else None, blob.tier, None, now,
                    )
                    yield BlobDecision(key, Change(row, True, new_event), row if new_is_due else None, QUIET_ORPHAN)
                    continue
            elif (
                # A candidate seen again exactly as it was: the other common case. This is what
                # classify + decide_blob conclude for it (a property test holds the two together),
                # without building their intermediate objects.
                (prev_state := prev.state) in counting_orphan
                and prev.etag == blob.etag
                and prev.billed_bytes is not None
                and blob.blob_type == "PageBlob"
                and not blob.snapshot_count
                and not blob.keep_metadata
                and not blob.keep_tag
                and blob.lease_state in _UNLEASED
                and blob.lease_status in _UNLOCKED
                and blob.last_modified <= old_enough
                and (low := key[2].lower()).endswith(".vhd")
                and key not in operator_holds
                and key not in ref_blobs
                and not (ref_containers and (key[0], key[1]) in ref_containers)
                and not (ref_accounts and key[0] in ref_accounts)
                and blob.image_type is None
                and blob.created_by is None
                and key[1] != "system"
                and mark not in low
                and prev.delete_after == prev.first_orphaned_at + grace
            ):
                is_due = now >= prev.delete_after and seq - prev.streak_start + 1 >= min_sightings
                if is_due == (prev_state is due_state):
                    if is_due:
                        yield BlobDecision(key, None, _full(prev), QUIET_ORPHAN)
                    continue
        if prev is not None:
            prev = _full(prev)
        if not is_tracked_kind(blob):
            if prev is not None and prev.state is not State.DELETED:
                yield Forget(blob.key, reason="no longer a VHD")
            continue
        c = classify(blob, refs, operator_holds, policy, now, service_now)
        yield decide_blob(blob, prev, c, policy, now, seq)
    yield from vanished(tracked.values())
    tracked.clear()


def decide(
    blobs: Iterable[BlobSeen],
    tracked: Mapping[BlobKey, Tracked],
    refs: ReferenceIndex,
    operator_holds: Mapping[BlobKey, str],
    policy: Policy,
    now: datetime,
    seq: int,
    *,
    service_now: datetime | None = None,
) -> Decision:
    """The whole decision for one complete listing, collected (tests and small estates)."""
    out = Decision()
    for d in decide_stream(blobs, dict(tracked), refs, operator_holds, policy, now, seq, skip_quiet=False,
                           service_now=service_now):
        if isinstance(d, Forget):
            out.changes.append(d)
            continue
        out.classifications[d.key] = d.classification
        if d.change is not None:
            out.changes.append(d.change)
        if d.due is not None:
            out.due.append(d.due)
    return out
