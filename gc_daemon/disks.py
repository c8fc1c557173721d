"""The decision for managed disks and snapshots: a pure function of (observation, stored row,
operator holds, policy, now, the pass's sequence number), like gc_daemon/decide.py for blobs.

Nothing here does I/O or reads a clock. The inventory builds :class:`DiskSeen` and
:class:`SnapshotSeen` from the pass's listings (disks, snapshots, images, gallery versions,
resource groups, locks); :func:`classify_disk` says what a disk is at an instant; :func:`decide_disk`
turns that and the stored :class:`DiskRow` into the lifecycle transition of the contract
(docs/contract.md, "What counts as an orphaned managed disk or snapshot"); :func:`recheck_disk` is the
executor's last word after its GET of the disk, right before the quarantine snapshot and the delete.
:func:`classify_snapshot`, :func:`decide_snapshot` and :func:`recheck_snapshot` do the same for
snapshots.

What a disk is, checked in this order (the first that applies decides):

1. **in use** (:attr:`DiskVerdict.IN_USE`): its ``diskState`` is anything but ``Unattached``
   (``Attached``, ``Reserved``, ``Frozen``, ``ActiveSAS``, ``ActiveSASFrozen``, ``ReadyToUpload``,
   ``ActiveUpload``, and any state Azure adds later), or ``managedBy`` is set, or
   ``managedByExtended`` (the VMs of a shared disk) names anything. Never tracked; a tracked row
   is *released*.
2. **referenced**: a managed image or a gallery image version names it as its source. The contract
   calls this in use; since the disk is unattached and billed, it is reported as a ``kept`` row with
   hold ``referenced`` (never a candidate; a candidate that becomes referenced is kept, not released).
3. **unverified** (:attr:`DiskVerdict.UNVERIFIED`): its ``LastOwnershipUpdateTime`` was not read
   (the list call does not return it) and no stored row recorded it: its age cannot be known, so
   nothing is written and it is not a candidate (uncertainty keeps).
4. **too young** (:attr:`DiskVerdict.TOO_YOUNG`): less than ``min_age`` since its last ownership
   change, else since its creation; a disk without either time, or dated after ``now``, is too young.
5. **held** (an orphan, reported ``kept``), by the first hold that applies, in this precedence:
   ``operator`` (``vhd-gc keep``: an explicit human decision, with its reason), ``locked`` (a
   ``CanNotDelete``/``ReadOnly`` lock on the disk, its group or its subscription; a lock of any other
   level holds too), ``managed_group`` (the resource group's ``managedBy`` is set: AKS ``MC_*``,
   managed applications, Databricks), ``kubernetes``, ``site_recovery``, ``backup`` (by the tags and
   names of AZURE-NOTES), and last ``tag`` (``vhdgc-keep`` on the disk or its group; the generic
   opt-out comes after the specific evidence so the report names the owner when there is one).
   With ``referenced`` first (2), that is the whole order:
   ``referenced > operator > locked > managed_group > kubernetes > site_recovery > backup > tag``
   (:data:`HOLD_PRECEDENCE`).
6. otherwise an **orphan**: a candidate at its first sighting, due once orphaned for
   ``grace_period`` and seen by ``min_sightings`` consecutive complete passes. The ownership time
   recorded when it was marked is the disk's ETag: a different one starts the run over. In
   ``managed_disks.mode: report`` a disk moves candidate -> due and is never handed over for
   deletion (:attr:`DiskDecision.delete` stays None).

A snapshot is an orphan when the disk it was taken from (``creationData.sourceResourceId``) is known
to be gone, no image or gallery version names it, it is not a quarantine snapshot (tag
``vhdgc-quarantine-of``: those belong to the collector's quarantine expiry, never to this decision),
and it is older than ``snapshot_min_age`` (from ``timeCreated``). A snapshot without a source id (an
import, an upload) or whose source's existence is unknown is not an orphan. The holds of a disk apply
to snapshots too (same precedence; ``referenced`` is in use for a snapshot and releases it). Its
``timeCreated`` is its ETag (a snapshot recreated under the same id starts over). An orphaned snapshot
is deletable only with ``snapshots: delete``.

Tag names compare without case (Azure tag names are case-insensitive), as do resource names and ids.
Operator holds are keyed by the lower-cased ARM id (:func:`resource_key`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from .domain import State

GIB = 1024**3
UNATTACHED = "unattached"
QUARANTINE_TAG = "vhdgc-quarantine-of"
KEEP_TAG = "vhdgc-keep"

# The disk states of AZURE-NOTES; only Unattached can be an orphan. Listed for the reader and the
# tests: any state not Unattached (these, and any Azure adds later) is in use.
IN_USE_DISK_STATES = ("Attached", "Reserved", "Frozen", "ActiveSAS", "ActiveSASFrozen", "ReadyToUpload", "ActiveUpload")

KUBERNETES_TAGS = ("kubernetes.io-created-for-pvc-name", "kubernetes.io-created-for-pv-name", "k8s-azure-created-by")
KUBERNETES_NAME_PREFIXES = ("kubernetes-dynamic-pvc-", "pvc-")
SITE_RECOVERY_TAGS = ("asr-replicadisk", "asrseeddisk")
SITE_RECOVERY_NAME_PREFIXES = ("ms-asr-", "asrseeddisk-")
SITE_RECOVERY_NAME_SUFFIXES = ("-asrreplica",)
BACKUP_TAGS = ("rsvaultbackup",)
DELETE_BLOCKING_LOCKS = ("cannotdelete", "readonly")


class DiskHold(str, enum.Enum):
    """Why an unattached disk (or an orphaned snapshot) is kept: the report's ``hold``."""

    REFERENCED = "referenced"  # a managed image or gallery image version names it as its source
    OPERATOR = "operator"  # `vhd-gc keep`
    LOCKED = "locked"  # a management lock on the disk, its resource group or its subscription
    MANAGED_GROUP = "managed_group"  # its resource group's managedBy is set
    KUBERNETES = "kubernetes"  # an AKS / cloud-provider-azure volume
    SITE_RECOVERY = "site_recovery"  # a Site Recovery replica or seed disk
    BACKUP = "backup"  # an Azure Backup restore
    TAG = "tag"  # vhdgc-keep on the disk or its resource group


HOLD_PRECEDENCE = tuple(DiskHold)  # the order above is the precedence: the first that applies is reported


class DiskVerdict(str, enum.Enum):
    """What the pure classifier says of one disk or snapshot at one instant."""

    IN_USE = "in_use"  # attached / owned (a disk), or its source disk exists or is unknown (a snapshot)
    UNVERIFIED = "unverified"  # a fact the age needs was not read
    TOO_YOUNG = "too_young"
    QUARANTINE = "quarantine"  # a snapshot vhd-gc made before deleting a disk: the collector's business
    ORPHAN = "orphan"  # possibly held (see DiskClassification.hold)


class Kind(str, enum.Enum):
    """The report's ``kind`` for these rows."""

    MANAGED_DISK = "managed_disk"
    SNAPSHOT = "snapshot"


def resource_key(resource_id: str) -> str:
    """ARM ids compare without case: the key of a disk or snapshot (rows, operator holds)."""
    return resource_id.lower()


@dataclass(frozen=True, slots=True)
class LockSeen:
    """A management lock that covers the resource (on it, its resource group or its subscription)."""

    id: str
    level: str  # CanNotDelete | ReadOnly (NotSpecified and anything else hold too)


@dataclass(frozen=True, slots=True)
class DiskSeen:
    """One managed disk as the pass saw it, with the facts around it the decision needs."""

    id: str
    subscription: str
    resource_group: str
    name: str
    sku: str | None  # Premium_LRS, StandardSSD_LRS, Standard_LRS, *_ZRS, PremiumV2_LRS, UltraSSD_LRS
    size_gb: int  # diskSizeGB
    disk_state: str | None
    time_created: datetime | None  # timezone-aware UTC
    managed_by: str | None = None
    managed_by_extended: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    # LastOwnershipUpdateTime from a GET of the disk; None when never attached (or not read: see
    # ownership_read). The list call does not return it.
    last_ownership_update: datetime | None = None
    ownership_read: bool = True  # whether last_ownership_update comes from a GET of this pass
    group_tags: Mapping[str, str] = field(default_factory=dict)
    group_managed_by: str | None = None
    locks: tuple[LockSeen, ...] = ()  # the locks covering it (disk, group, subscription)
    referenced_by: tuple[str, ...] = ()  # ids of the images / gallery image versions naming it as source
    size_bytes: int | None = None  # diskSizeBytes when the service gave it
    # Descriptive (for the report, the quarantine snapshot and `restore`); not part of the decision.
    location: str | None = None
    zones: tuple[str, ...] = ()
    provisioning_state: str | None = None

    @property
    def provisioned_bytes(self) -> int:
        return self.size_bytes if self.size_bytes is not None else self.size_gb * GIB

    @property
    def key(self) -> str:
        return resource_key(self.id)


@dataclass(frozen=True, slots=True)
class SnapshotSeen:
    """One managed snapshot as the pass saw it."""

    id: str
    subscription: str
    resource_group: str
    name: str
    time_created: datetime | None
    source_resource_id: str | None  # creationData.sourceResourceId; None: an import or upload
    source_exists: bool | None  # whether that disk exists (the same pass's disk listing); None: unknown
    incremental: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)
    sku: str | None = None
    size_gb: int = 0  # the source's provisioned size (diskSizeGB); not what an incremental snapshot bills
    group_tags: Mapping[str, str] = field(default_factory=dict)
    group_managed_by: str | None = None
    locks: tuple[LockSeen, ...] = ()
    referenced_by: tuple[str, ...] = ()
    location: str | None = None
    used_bytes: int | None = None  # an incremental snapshot bills its used bytes (None: unknown)
    provisioning_state: str | None = None

    @property
    def provisioned_bytes(self) -> int:
        return self.size_gb * GIB

    @property
    def key(self) -> str:
        return resource_key(self.id)


@dataclass(frozen=True, slots=True)
class DiskPolicy:
    """The ``managed_disks`` keys and the shared lifecycle keys, as the decision reads them.

    ``mode`` is ``delete`` only when both the top-level ``mode`` and ``managed_disks.mode`` say delete."""

    min_age: timedelta
    grace_period: timedelta
    min_sightings: int
    snapshot_min_age: timedelta = timedelta(days=90)
    mode: str = "report"  # report | delete
    snapshots: str = "report"  # report | delete
    quarantine: timedelta = timedelta(days=30)  # 0s: no quarantine snapshot (the executor's business)

    def __post_init__(self) -> None:
        if self.mode not in ("report", "delete"):
            raise ValueError(f"managed_disks.mode: report or delete, not {self.mode!r}")
        if self.snapshots not in ("report", "delete"):
            raise ValueError(f"managed_disks.snapshots: report or delete, not {self.snapshots!r}")
        if self.min_sightings < 1:
            raise ValueError("min_sightings: at least 1")


@dataclass(slots=True)
class DiskRow:
    """The stored state of one tracked disk or snapshot."""

    id: str
    kind: Kind
    state: State
    first_orphaned_at: datetime | None
    delete_after: datetime | None
    # Sequence number of the first complete pass of the current run of sightings; the count is
    # derived from it (an unchanged candidate costs no write), as for blobs.
    streak_start: int | None
    sightings_frozen: int | None = None
    # The disk's ETag: LastOwnershipUpdateTime when it was marked (None: never attached), or a
    # snapshot's timeCreated. ownership_known is False when no value was ever recorded.
    ownership_time: datetime | None = None
    ownership_known: bool = False
    hold: DiskHold | None = None
    reason: str | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None
    # Descriptive, refreshed by the pass from the latest sighting (see :func:`describe`); the
    # decision never reads them.
    subscription: str | None = None
    resource_group: str | None = None
    name: str | None = None
    sku: str | None = None
    disk_state: str | None = None
    size_bytes: int | None = None  # provisioned bytes (a snapshot: its source's size)
    location: str | None = None
    zones: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    # What the listing showed when the ownership time was last read (:func:`listing_fingerprint`):
    # the pass GETs a disk again when it differs.
    fingerprint: str | None = None
    # The quarantine snapshot made before deleting it (its ARM id), and until when it is kept.
    quarantine_snapshot: str | None = None
    quarantine_until: datetime | None = None

    def sightings(self, current_seq: int) -> int:
        if self.state in COUNTING and self.streak_start is not None:
            return max(0, current_seq - self.streak_start + 1)
        return self.sightings_frozen or 0


COUNTING = (State.CANDIDATE, State.DUE, State.KEPT)


@dataclass(frozen=True, slots=True)
class DiskForget:
    """A tracked disk or snapshot that the listing no longer shows (and vhd-gc did not delete)."""

    key: str
    reason: str


def listing_fingerprint(disk: DiskSeen) -> str:
    """What of a disk's listing entry tells that its ownership may have changed since the last GET:
    its state, owners, creation time and size. Equal fingerprints spare the GET of
    LastOwnershipUpdateTime (the executor's GET before any delete checks it anyway)."""
    owners = ",".join(sorted(v.lower() for v in disk.managed_by_extended if v))
    created = disk.time_created.isoformat() if disk.time_created else ""
    return "|".join(((disk.disk_state or "").lower(), (disk.managed_by or "").lower(), owners, created,
                     str(disk.provisioned_bytes)))


def describe(row: DiskRow, obs: "DiskSeen | SnapshotSeen") -> DiskRow:
    """``row`` with its descriptive fields from the latest sighting (in place; returned)."""
    row.subscription = obs.subscription
    row.resource_group = obs.resource_group
    row.name = obs.name
    row.sku = obs.sku
    row.size_bytes = obs.provisioned_bytes
    row.location = obs.location
    row.tags = dict(obs.tags)
    if isinstance(obs, DiskSeen):
        row.disk_state = obs.disk_state
        row.zones = tuple(obs.zones)
    return row


_ORPHAN_STATES = (State.CANDIDATE, State.DUE)


@dataclass(frozen=True, slots=True)
class DiskClassification:
    verdict: DiskVerdict
    hold: DiskHold | None = None
    reason: str = ""
    ownership_time: datetime | None = None  # the ownership time the verdict used (a snapshot: timeCreated)
    ownership_known: bool = True  # False: no ownership time was read or recorded (never marked on it)

    @property
    def deletable(self) -> bool:
        return self.verdict is DiskVerdict.ORPHAN and self.hold is None


@dataclass(slots=True)
class DiskChange:
    row: DiskRow
    event: str  # marked, due, kept, released, restarted, rescheduled


@dataclass(slots=True)
class DiskDecision:
    key: str
    change: DiskChange | None  # None: nothing to write
    due: DiskRow | None  # the row when it is due (any mode)
    delete: DiskRow | None  # the row to hand the executor: due, and the policy allows deleting it
    classification: DiskClassification


# --- holds -------------------------------------------------------------------------------------


def _lower_keys(tags: Mapping[str, str]) -> set[str]:
    return {k.lower() for k in tags}


def find_hold(
    *,
    name: str,
    key: str,
    tags: Mapping[str, str],
    group_tags: Mapping[str, str],
    group_managed_by: str | None,
    locks: tuple[LockSeen, ...],
    operator_holds: Mapping[str, str],
) -> tuple[DiskHold | None, str]:
    """The first hold of :data:`HOLD_PRECEDENCE` (after ``referenced``) that applies, and why."""
    if key in operator_holds:
        return DiskHold.OPERATOR, f"kept by operator: {operator_holds[key]}"
    if locks:
        lock = locks[0]
        return DiskHold.LOCKED, f"{lock.level} lock {lock.id}"
    if group_managed_by:
        return DiskHold.MANAGED_GROUP, f"resource group managed by {group_managed_by}"
    tag_keys = _lower_keys(tags)
    low = name.lower()
    for t in KUBERNETES_TAGS:
        if t in tag_keys:
            return DiskHold.KUBERNETES, f"a Kubernetes volume (tag {t})"
    for p in KUBERNETES_NAME_PREFIXES:
        if low.startswith(p):
            return DiskHold.KUBERNETES, f"a Kubernetes volume (name {p}...)"
    for t in SITE_RECOVERY_TAGS:
        if t in tag_keys:
            return DiskHold.SITE_RECOVERY, f"a Site Recovery replica or seed (tag {t})"
    for p in SITE_RECOVERY_NAME_PREFIXES:
        if low.startswith(p):
            return DiskHold.SITE_RECOVERY, f"a Site Recovery replica or seed (name {p}...)"
    for s in SITE_RECOVERY_NAME_SUFFIXES:
        if low.endswith(s):
            return DiskHold.SITE_RECOVERY, f"a Site Recovery replica (name ...{s})"
    for t in BACKUP_TAGS:
        if t in tag_keys:
            return DiskHold.BACKUP, f"an Azure Backup restore (tag {t})"
    if KEEP_TAG in tag_keys:
        return DiskHold.TAG, f"tag {KEEP_TAG}"
    if KEEP_TAG in _lower_keys(group_tags):
        return DiskHold.TAG, f"tag {KEEP_TAG} on resource group"
    return None, ""


def _hold_of(obs: DiskSeen | SnapshotSeen, operator_holds: Mapping[str, str]) -> tuple[DiskHold | None, str]:
    return find_hold(name=obs.name, key=obs.key, tags=obs.tags, group_tags=obs.group_tags,
                     group_managed_by=obs.group_managed_by, locks=obs.locks, operator_holds=operator_holds)


# --- disks -------------------------------------------------------------------------------------


def _held_or_orphan(obs: DiskSeen | SnapshotSeen, operator_holds: Mapping[str, str],
                    ownership_time: datetime | None, orphan_reason: str) -> DiskClassification:
    """The last step of classifying a disk or snapshot that is free and old enough: held, or an orphan."""
    hold, why = _hold_of(obs, operator_holds)
    if hold is not None:
        return DiskClassification(DiskVerdict.ORPHAN, hold, why, ownership_time)
    return DiskClassification(DiskVerdict.ORPHAN, reason=orphan_reason, ownership_time=ownership_time)


def _recheck_verdict(c: DiskClassification, row: DiskRow, now: datetime) -> Recheck:
    """The last step of a re-check, once the fresh read is the same resource: the classification
    of now decides (not an orphan, or held: refuse), then the grace period."""
    refuse = RecheckAction.REFUSE
    if c.verdict is not DiskVerdict.ORPHAN:
        return Recheck(refuse, c.reason, c.hold, c)
    if c.hold is not None:
        return Recheck(refuse, f"held ({c.hold.value}): {c.reason}", c.hold, c)
    if row.delete_after is None or now < row.delete_after:
        return Recheck(refuse, "not due yet: grace period not over", classification=c)
    return Recheck(RecheckAction.DELETE, c.reason, classification=c)


def is_in_use(disk: DiskSeen) -> bool:
    """Only an Unattached disk with empty managedBy and managedByExtended can be an orphan."""
    return (
        (disk.disk_state or "").lower() != UNATTACHED
        or bool(disk.managed_by)
        or any(disk.managed_by_extended)
    )


def _in_use_reason(disk: DiskSeen) -> str:
    if (disk.disk_state or "").lower() != UNATTACHED:
        return f"diskState {disk.disk_state}"
    if disk.managed_by:
        return f"managed by {disk.managed_by}"
    return f"shared with {', '.join(v for v in disk.managed_by_extended if v)}"


def _ownership(disk: DiskSeen, prev: DiskRow | None) -> tuple[bool, datetime | None]:
    """The ownership time the decision uses: this pass's GET, else the one a stored row recorded
    (the inventory reads it only for new candidates and when the listing changed)."""
    if disk.ownership_read:
        return True, disk.last_ownership_update
    if prev is not None and prev.ownership_known:
        return True, prev.ownership_time
    return False, None


def classify_disk(
    disk: DiskSeen,
    operator_holds: Mapping[str, str],
    policy: DiskPolicy,
    now: datetime,
    prev: DiskRow | None = None,
) -> DiskClassification:
    """What the disk is at ``now`` (the order of the module docstring)."""
    if is_in_use(disk):
        return DiskClassification(DiskVerdict.IN_USE, reason=f"in use: {_in_use_reason(disk)}")
    known, owned_at = _ownership(disk, prev)
    if disk.referenced_by:
        return DiskClassification(DiskVerdict.ORPHAN, DiskHold.REFERENCED, f"referenced: source of {disk.referenced_by[0]}",
                                  owned_at, known)
    if not known:
        return DiskClassification(DiskVerdict.UNVERIFIED, reason="LastOwnershipUpdateTime not read")
    since = owned_at if owned_at is not None else disk.time_created
    what = "last ownership change" if owned_at is not None else "created"
    if since is None:
        return DiskClassification(DiskVerdict.TOO_YOUNG, reason="no creation time: age unknown", ownership_time=owned_at)
    if now - since < policy.min_age:  # a clock behind the disk's times makes it young: uncertainty keeps
        return DiskClassification(DiskVerdict.TOO_YOUNG, reason=f"{what} {since.isoformat()}", ownership_time=owned_at)
    return _held_or_orphan(disk, operator_holds, owned_at,
                           f"orphan: unattached since {since.isoformat()} ({what})")


def decide_disk(
    disk: DiskSeen,
    prev: DiskRow | None,
    operator_holds: Mapping[str, str],
    policy: DiskPolicy,
    now: datetime,
    seq: int,
) -> DiskDecision:
    """The transition of one disk seen by complete pass number ``seq``."""
    c = classify_disk(disk, operator_holds, policy, now, prev)
    return _transition(disk.id, Kind.MANAGED_DISK, c, prev, policy, now, seq, policy.mode == "delete")


def _transition(
    rid: str,
    kind: Kind,
    c: DiskClassification,
    prev: DiskRow | None,
    policy: DiskPolicy,
    now: datetime,
    seq: int,
    may_delete: bool,
) -> DiskDecision:
    key = resource_key(rid)
    if c.verdict is DiskVerdict.UNVERIFIED or c.verdict is DiskVerdict.QUARANTINE:
        return DiskDecision(key, None, None, None, c)  # nothing known to write; never due
    if c.verdict is not DiskVerdict.ORPHAN:
        if prev is None or prev.state is State.RELEASED:
            return DiskDecision(key, None, None, None, c)
        row = replace(prev, state=State.RELEASED, sightings_frozen=0, streak_start=None, delete_after=None,
                      hold=c.hold, reason=c.reason, updated_at=now)
        return DiskDecision(key, DiskChange(row, "released"), None, None, c)

    counting = prev is not None and prev.state in COUNTING
    # The ownership time is the disk's ETag (a snapshot's: timeCreated). Unknown on both sides is
    # the same only for a held row (an unheld orphan always has a known one: else UNVERIFIED).
    same = prev is not None and (prev.ownership_known, prev.ownership_time) == (c.ownership_known, c.ownership_time)

    if c.hold is not None:
        if prev is not None and prev.state is State.KEPT and prev.hold is c.hold and same:
            return DiskDecision(key, None, None, None, c)
        keep_streak = counting and same
        row = _fresh_row(rid, kind, c, now) if not keep_streak else replace(prev, updated_at=now)
        row.state = State.KEPT
        row.hold = c.hold
        row.reason = c.reason
        row.delete_after = None
        row.streak_start = prev.streak_start if keep_streak else seq
        return DiskDecision(key, DiskChange(row, "kept"), None, None, c)

    if prev is None or prev.state not in _ORPHAN_STATES or not same:
        event = "restarted" if prev is not None and prev.state in _ORPHAN_STATES else "marked"
        row = _fresh_row(rid, kind, c, now)
        row.streak_start = seq
        row.delete_after = now + policy.grace_period
        is_due = _is_due(row, policy, now, seq)
        row.state = State.DUE if is_due else State.CANDIDATE
        due = row if is_due else None
        return DiskDecision(key, DiskChange(row, "due" if is_due else event), due, due if may_delete else None, c)

    assert prev.first_orphaned_at is not None
    delete_after = prev.first_orphaned_at + policy.grace_period  # the current grace period applies
    row = prev if prev.delete_after == delete_after else replace(prev, delete_after=delete_after)
    is_due = _is_due(row, policy, now, seq)
    target = State.DUE if is_due else State.CANDIDATE
    if row is prev and prev.state is target:
        due = prev if is_due else None
        return DiskDecision(key, None, due, due if may_delete else None, c)
    row = replace(row, state=target, updated_at=now)
    event = "due" if is_due and prev.state is not State.DUE else "rescheduled"
    due = row if is_due else None
    return DiskDecision(key, DiskChange(row, event), due, due if may_delete else None, c)


def _is_due(row: DiskRow, policy: DiskPolicy, now: datetime, seq: int) -> bool:
    assert row.delete_after is not None and row.streak_start is not None
    return now >= row.delete_after and seq - row.streak_start + 1 >= policy.min_sightings


def _fresh_row(rid: str, kind: Kind, c: DiskClassification, now: datetime) -> DiskRow:
    return DiskRow(
        id=rid,
        kind=kind,
        state=State.CANDIDATE,
        first_orphaned_at=now,
        delete_after=None,
        streak_start=None,
        ownership_time=c.ownership_time,
        ownership_known=c.ownership_known,
        hold=None,
        reason=c.reason,
        updated_at=now,
    )


# --- the executor's re-check ---------------------------------------------------------------------


class RecheckAction(str, enum.Enum):
    DELETE = "delete"  # go on: quarantine snapshot (if configured), then the delete
    REFUSE = "refuse"  # do not delete; record why (the next pass decides the row again)
    RESTART = "restart"  # the ownership time changed since marking: the run starts over


@dataclass(frozen=True, slots=True)
class Recheck:
    action: RecheckAction
    reason: str
    hold: DiskHold | None = None
    classification: DiskClassification | None = None


def recheck_disk(
    row: DiskRow,
    fresh: DiskSeen | None,
    operator_holds: Mapping[str, str],
    policy: DiskPolicy,
    now: datetime,
) -> Recheck:
    """After the executor's GET of a due disk (``fresh``; None when it answered 404): delete only
    if it is still unattached, not held, with the ownership time recorded when it was marked."""
    refuse = RecheckAction.REFUSE
    if policy.mode != "delete":
        return Recheck(refuse, "managed_disks.mode report: never deleted")
    if row.kind is not Kind.MANAGED_DISK or row.state is not State.DUE:
        return Recheck(refuse, f"not a due disk ({row.kind.value}, {row.state.value})")
    if fresh is None:
        return Recheck(refuse, "gone: the disk no longer exists")
    if fresh.key != resource_key(row.id):
        return Recheck(refuse, f"the GET answered another disk: {fresh.id}")
    if not fresh.ownership_read:
        return Recheck(refuse, "LastOwnershipUpdateTime not read by the GET")
    if is_in_use(fresh):
        return Recheck(refuse, f"in use: {_in_use_reason(fresh)}")
    if not row.ownership_known or fresh.last_ownership_update != row.ownership_time:
        was = row.ownership_time.isoformat() if row.ownership_time else "never attached"
        now_ = fresh.last_ownership_update.isoformat() if fresh.last_ownership_update else "never attached"
        return Recheck(RecheckAction.RESTART, f"LastOwnershipUpdateTime changed: {was} -> {now_}")
    c = classify_disk(fresh, operator_holds, policy, now)
    return _recheck_verdict(c, row, now)


# --- snapshots -----------------------------------------------------------------------------------


def classify_snapshot(
    snap: SnapshotSeen, operator_holds: Mapping[str, str], policy: DiskPolicy, now: datetime
) -> DiskClassification:
    """What the snapshot is at ``now`` (the module docstring's snapshot rule)."""
    created = snap.time_created
    if QUARANTINE_TAG in _lower_keys(snap.tags):
        return DiskClassification(DiskVerdict.QUARANTINE, reason=f"a quarantine snapshot ({QUARANTINE_TAG})",
                                  ownership_time=created)
    if snap.referenced_by:
        return DiskClassification(DiskVerdict.IN_USE, DiskHold.REFERENCED, f"referenced: source of {snap.referenced_by[0]}",
                                  created)
    if not snap.source_resource_id:
        return DiskClassification(DiskVerdict.IN_USE, reason="no source disk (an import or upload)", ownership_time=created)
    if snap.source_exists is None:
        return DiskClassification(DiskVerdict.IN_USE, reason=f"source {snap.source_resource_id}: existence unknown",
                                  ownership_time=created)
    if snap.source_exists:
        return DiskClassification(DiskVerdict.IN_USE, reason=f"source disk exists: {snap.source_resource_id}",
                                  ownership_time=created)
    if created is None:
        return DiskClassification(DiskVerdict.TOO_YOUNG, reason="no creation time: age unknown")
    if now - created < policy.snapshot_min_age:
        return DiskClassification(DiskVerdict.TOO_YOUNG, reason=f"created {created.isoformat()}", ownership_time=created)
    return _held_or_orphan(snap, operator_holds, created, f"orphan: source disk gone ({snap.source_resource_id})")


def decide_snapshot(
    snap: SnapshotSeen,
    prev: DiskRow | None,
    operator_holds: Mapping[str, str],
    policy: DiskPolicy,
    now: datetime,
    seq: int,
) -> DiskDecision:
    """The transition of one snapshot seen by complete pass number ``seq``; deletable only with
    ``snapshots: delete`` (and ``mode: delete``)."""
    c = classify_snapshot(snap, operator_holds, policy, now)
    may_delete = policy.snapshots == "delete" and policy.mode == "delete"
    return _transition(snap.id, Kind.SNAPSHOT, c, prev, policy, now, seq, may_delete)


def recheck_snapshot(
    row: DiskRow,
    fresh: SnapshotSeen | None,
    operator_holds: Mapping[str, str],
    policy: DiskPolicy,
    now: datetime,
) -> Recheck:
    """After the executor's GET of a due orphaned snapshot: delete only if it is still one, not
    held, and the same snapshot (its timeCreated) as when it was marked."""
    refuse = RecheckAction.REFUSE
    if policy.snapshots != "delete" or policy.mode != "delete":
        return Recheck(refuse, "managed_disks.snapshots report: never deleted")
    if row.kind is not Kind.SNAPSHOT or row.state is not State.DUE:
        return Recheck(refuse, f"not a due snapshot ({row.kind.value}, {row.state.value})")
    if fresh is None:
        return Recheck(refuse, "gone: the snapshot no longer exists")
    if fresh.key != resource_key(row.id):
        return Recheck(refuse, f"the GET answered another snapshot: {fresh.id}")
    if not row.ownership_known or fresh.time_created != row.ownership_time:
        return Recheck(RecheckAction.RESTART, "timeCreated changed: another snapshot under the same id")
    c = classify_snapshot(fresh, operator_holds, policy, now)
    return _recheck_verdict(c, row, now)
