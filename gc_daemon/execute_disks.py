"""The executor's managed-disk path: the only code that deletes a disk or a snapshot.

Called by :class:`gc_daemon.execute.Executor` (which alone honours dry-run, and counts disks and
blobs under one ``max_deletes_per_pass``). For each due disk, in this order:

1. GET the disk again and read its operator hold again; join the freshest resource groups, locks
   and image references of the pass; :func:`gc_daemon.disks.recheck_disk` says delete, refuse or
   restart (its ``LastOwnershipUpdateTime`` is the ETag recorded when it was marked);
2. with ``managed_disks.quarantine`` above ``0s``: audit ``quarantine-intent`` (the snapshot's id is
   known before it exists: its name is derived from the disk and its ownership time, so a retry after
   a crash PUTs the same snapshot), create the incremental snapshot and wait for it to succeed, audit
   ``quarantined``; a snapshot that fails stops this disk (nothing deleted);
3. audit ``delete-intent``; ``begin_delete`` and wait for the operation; audit the outcome with the
   row's new state in the same transaction.

A refusal (409 ``OperationNotAllowed``: attached meanwhile; 409 ``ScopeLocked``: a lock) is recorded
and the disk's run of sightings starts over: it is never retried blindly. An outcome that is unknown
(the operation never ended, its reply was lost) is settled by looking at the disk: gone, now; still
there (the operation may yet end) or unreadable, at the next pass (:func:`resolve_disk_intents`), as
after a crash.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from .disks import (
    DiskChange,
    DiskForget,
    DiskPolicy,
    DiskRow,
    DiskSeen,
    Kind,
    RecheckAction,
    SnapshotSeen,
    decide_disk,
    decide_snapshot,
    recheck_disk,
    recheck_snapshot,
    resource_key,
)
from .domain import State

log = structlog.get_logger("vhd-gc.execute")

NEVER_ATTACHED = "never-attached"


def ownership_etag(when: datetime | None) -> str:
    """How the audit log records the ownership time a disk's deletion was bound to."""
    return when.isoformat() if when is not None else NEVER_ATTACHED


def snapshot_id(disk_id: str, name: str) -> str:
    """The id of a snapshot named ``name`` in the resource group of ``disk_id``."""
    parts = disk_id.split("/")
    return "/".join(parts[:5] + ["providers", "Microsoft.Compute", "snapshots", name])


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]


def _errors():
    from .azure.disks import DiskOperationFailed, DiskOutcomeUnknown, DiskRefused

    return DiskRefused, DiskOperationFailed, DiskOutcomeUnknown


@dataclass
class DiskContext:
    """What a re-check joins a fresh GET with: the freshest inventory of the pass (groups, locks,
    references), as :class:`gc_daemon.disk_pass.DiskInventory` holds it."""

    disks: Mapping[str, DiskSeen]
    snapshots: Mapping[str, SnapshotSeen]

    def join_disk(self, fresh: DiskSeen | None) -> DiskSeen | None:
        if fresh is None:
            return None
        listed = self.disks.get(fresh.key)
        if listed is None:
            return fresh  # no joined facts: a hold read by the pass cannot apply; holds are re-read below
        return replace(fresh, group_tags=listed.group_tags, group_managed_by=listed.group_managed_by,
                       locks=listed.locks, referenced_by=listed.referenced_by)

    def join_snapshot(self, fresh: SnapshotSeen | None) -> SnapshotSeen | None:
        if fresh is None:
            return None
        listed = self.snapshots.get(fresh.key)
        if listed is None:
            return replace(fresh, source_exists=None)  # unknown: never an orphan
        return replace(fresh, group_tags=listed.group_tags, group_managed_by=listed.group_managed_by,
                       locks=listed.locks, referenced_by=listed.referenced_by, source_exists=listed.source_exists)


class DiskExecution:
    """The disk half of one :meth:`Executor.execute`."""

    def __init__(self, executor, gateway, policy: DiskPolicy, context: DiskContext, store,
                 holds: Mapping[str, str]) -> None:
        self.x = executor
        self.gateway = gateway
        self.policy = policy
        self.context = context
        self.store = store
        self.holds = holds

    # -- helpers -----------------------------------------------------------------------------

    def _audit(self, row_or_id, kind: Kind, subscription: str | None, **fields) -> int:
        rid = row_or_id.id if isinstance(row_or_id, DiskRow) else row_or_id
        return self.store.audit_disk(resource_id=rid, kind=kind.value,
                                     subscription=(subscription or rid.split("/")[2]).lower(),
                                     actor=self.x.actor, at=self.x.clock(), **fields)

    def _holds_now(self, key: str) -> Mapping[str, str]:
        held = self.store.disk_hold(key)
        return ChainMap({key: held}, self.holds) if held is not None else self.holds

    def _restart(self, row: DiskRow, why: str, now: datetime, seq: int) -> DiskRow:
        """A refused delete starts the run over: the grace period and the sightings again."""
        return replace(row, state=State.CANDIDATE, first_orphaned_at=now, delete_after=now + self.policy.grace_period,
                       streak_start=seq + 1, reason=why, updated_at=now)

    # -- one disk ----------------------------------------------------------------------------

    def one(self, row: DiskRow, now: datetime, seq: int, pass_id: int | None, out) -> bool:
        """Re-verify, quarantine and delete one disk (or delete one snapshot). Whether a write call
        was made (it counts against the pass limit)."""
        if row.kind is Kind.SNAPSHOT:
            return self._one_snapshot(row, now, seq, pass_id, out)
        DiskRefused, DiskOperationFailed, DiskOutcomeUnknown = _errors()
        key = row.key if hasattr(row, "key") else resource_key(row.id)
        key = resource_key(row.id)
        try:
            fresh = self.context.join_disk(self.gateway.get_disk(row.id))
            holds = self._holds_now(key)
        except Exception as exc:  # noqa: BLE001 - one disk's trouble never stops the others
            out.failed += 1
            log.warning("disk_reverify_failed", id=row.id, error=_short(exc))
            return False
        r = recheck_disk(row, fresh, holds, self.policy, now)
        if r.action is not RecheckAction.DELETE:
            self._refused(row, fresh, holds, r.action.value if r.action is RecheckAction.RESTART else "recheck",
                          r.reason, now, seq, pass_id, out)
            return False
        assert fresh is not None
        common = dict(pass_id=pass_id, etag=ownership_etag(row.ownership_time), size_bytes=row.size_bytes)
        quarantine_id = None
        until = None
        if self.policy.quarantine > timedelta(0):
            until = now + self.policy.quarantine
            name = self.gateway.quarantine_name(fresh, row.ownership_time)
            quarantine_id = snapshot_id(row.id, name)
            q_intent = self._audit(quarantine_id, Kind.SNAPSHOT, row.subscription, action="quarantine-intent",
                                   reason=f"quarantine of {row.id}", **common)
            try:
                made = self._make_quarantine(fresh, name, until, quarantine_id, row, common)
            except Exception as exc:  # noqa: BLE001 - no undo, no delete
                code = str(getattr(exc, "code", None) or type(exc).__name__)
                self._audit(quarantine_id, Kind.SNAPSHOT, row.subscription, action="quarantine-failed",
                            intent_id=q_intent, error_code=code, reason=f"quarantine of {row.id}: {_short(exc)}",
                            **common)
                out.failed += 1
                log.warning("quarantine_failed", id=row.id, snapshot=quarantine_id, code=code)
                return True
            quarantine_id = made or quarantine_id
            self._audit(quarantine_id, Kind.SNAPSHOT, row.subscription, action="quarantined", intent_id=q_intent,
                        reason=f"quarantine of {row.id} until {until.isoformat()}", **common)
            out.quarantined += 1
            log.info("quarantined", id=row.id, snapshot=quarantine_id, until=until.isoformat())
            # The hold again: the snapshot took a while, and a `vhd-gc keep` meanwhile wins.
            if self.store.disk_hold(key) is not None:
                self._refused(row, fresh, self._holds_now(key), "operator", "held by an operator during the quarantine",
                              now, seq, pass_id, out)
                return True
        reason = row.reason or "orphan"
        if quarantine_id:
            reason += f"; quarantine snapshot {quarantine_id}"
        intent = self._audit(row, Kind.MANAGED_DISK, row.subscription, action="delete-intent", reason=reason, **common)
        common["intent_id"] = intent
        try:
            self.gateway.delete_disk(row.id)
        except DiskRefused as exc:
            restarted = self._restart(row, f"delete refused: {exc.code}: {_short(exc)}", now, seq)
            self._audit(row, Kind.MANAGED_DISK, row.subscription, action="delete-refused", error_code=exc.code,
                        reason=_short(exc), changes=[DiskChange(restarted, "restarted")], **common)
            out.refused[exc.code] += 1
            log.warning("disk_delete_refused", id=row.id, code=exc.code)
            return True
        except DiskOperationFailed as exc:
            self._audit(row, Kind.MANAGED_DISK, row.subscription, action="delete-failed", error_code=exc.code,
                        reason=_short(exc), **common)
            out.failed += 1
            log.warning("disk_delete_failed", id=row.id, code=exc.code)
            return True
        except DiskOutcomeUnknown as exc:
            self._settle(row, f"an unknown outcome ({_short(exc)})", quarantine_id, until, now, seq, out, common)
            return True
        except Exception as exc:  # noqa: BLE001 - a definite error: nothing was deleted
            code = str(getattr(exc, "code", None) or type(exc).__name__)
            self._audit(row, Kind.MANAGED_DISK, row.subscription, action="delete-failed", error_code=code,
                        reason=_short(exc), **common)
            out.failed += 1
            return True
        self._deleted(row, now, seq, quarantine_id, until, out, common, reason)
        return True

    def _make_quarantine(self, fresh: DiskSeen, name: str, until: datetime, quarantine_id: str, row: DiskRow,
                         common: dict) -> str:
        """The quarantine snapshot, made; an earlier attempt's copy of this disk left ``Failed`` (a PUT
        over it answers it as it is: the disk could never be quarantined) is deleted first, audited
        like any deletion, and the copy made again once."""
        _, DiskOperationFailed, DiskOutcomeUnknown = _errors()
        try:
            return self.gateway.create_quarantine_snapshot(fresh, name, until)
        except DiskOperationFailed as exc:
            if exc.code != "ProvisioningStateFailed":
                raise
        why = f"a failed quarantine snapshot of {row.id}, to be made again"
        intent = self._audit(quarantine_id, Kind.SNAPSHOT, row.subscription, action="delete-intent", reason=why,
                             **common)
        try:
            self.gateway.delete_snapshot(quarantine_id)
        except DiskOutcomeUnknown:
            raise  # the intent stays open: the next pass settles it by looking at the snapshot
        except Exception as exc:
            self._audit(quarantine_id, Kind.SNAPSHOT, row.subscription, action="delete-failed", intent_id=intent,
                        error_code=str(getattr(exc, "code", None) or type(exc).__name__)[:64], reason=_short(exc),
                        **common)
            raise
        self._audit(quarantine_id, Kind.SNAPSHOT, row.subscription, action="deleted", intent_id=intent, reason=why,
                    **common)
        return self.gateway.create_quarantine_snapshot(fresh, name, until)

    def _deleted(self, row, now, seq, quarantine_id, until, out, common, reason) -> None:
        gone = replace(row, state=State.DELETED, deleted_at=now, sightings_frozen=row.sightings(seq),
                       streak_start=None, quarantine_snapshot=quarantine_id, quarantine_until=until, updated_at=now)
        self._audit(row, row.kind, row.subscription, action="deleted", reason=reason,
                    changes=[DiskChange(gone, "deleted")], **common)
        out.deleted_disks.append(gone)
        log.info("disk_deleted", id=row.id, kind=row.kind.value, size_bytes=row.size_bytes, quarantine=quarantine_id)

    def _settle(self, row, after, quarantine_id, until, now, seq, out, common) -> None:
        """The disk says what an unknown outcome was: gone means deleted. Still there, or unreadable:
        the intent stays unresolved and the next pass settles it (:func:`resolve_disk_intents`).

        Still there is no answer either: the operation had not ended when the wait did (or its reply
        was lost), and may end later, the disk then gone. Recorded ``delete-failed`` now, that later
        end would be a deletion vhd-gc made and its records deny (the row forgotten as no longer
        listed). The next pass looks again before it decides anything: gone, ``deleted``; there and
        not being deleted, ``delete-failed``, and the disk is decided again."""
        try:
            fresh = self.gateway.get_disk(row.id) if row.kind is Kind.MANAGED_DISK else self.gateway.get_snapshot(row.id)
        except Exception as exc:  # noqa: BLE001
            out.failed += 1
            log.warning("disk_delete_outcome_unknown", id=row.id, error=_short(exc))
            return
        if fresh is None:
            self._deleted(row, now, seq, quarantine_id, until, out, common, f"settled after {after}: the resource is gone")
            return
        out.failed += 1
        log.warning("disk_delete_outcome_unknown", id=row.id, detail=after,
                    resource="still there: the next pass settles the intent")

    def _refused(self, row, fresh, holds, code, why, now, seq, pass_id, out) -> None:
        """Not deleted: the resource is no longer what was marked. Recorded; the row is decided again
        from what the GET said (kept, released, started over); gone: forgotten."""
        out.refused[code] += 1
        changes: list = []
        if fresh is None:
            changes.append(DiskForget(resource_key(row.id), "gone before deletion"))
        else:
            as_candidate = replace(row, state=State.CANDIDATE)
            if row.kind is Kind.MANAGED_DISK:
                d = decide_disk(fresh, as_candidate, holds, self.policy, now, seq)
            else:
                d = decide_snapshot(fresh, as_candidate, holds, self.policy, now, seq)
            if d.change is not None and d.change.row.state is not State.DUE:
                changes.append(d.change)
            elif d.change is None or d.change.row.state is State.DUE:
                changes.append(DiskChange(self._restart(row, f"re-check refused: {why}", now, seq), "restarted"))
        self._audit(row, row.kind, row.subscription, action="delete-refused", pass_id=pass_id,
                    etag=ownership_etag(row.ownership_time), size_bytes=row.size_bytes, error_code=code[:64],
                    reason=f"re-verification: {why}", changes=changes)
        log.info("disk_delete_refused", id=row.id, reason=code, detail=why)

    # -- snapshots ---------------------------------------------------------------------------

    def _one_snapshot(self, row: DiskRow, now, seq, pass_id, out) -> bool:
        key = resource_key(row.id)
        try:
            fresh = self.context.join_snapshot(self.gateway.get_snapshot(row.id))
            holds = self._holds_now(key)
        except Exception as exc:  # noqa: BLE001
            out.failed += 1
            log.warning("snapshot_reverify_failed", id=row.id, error=_short(exc))
            return False
        r = recheck_snapshot(row, fresh, holds, self.policy, now)
        if r.action is not RecheckAction.DELETE:
            self._refused(row, fresh, holds, "recheck", r.reason, now, seq, pass_id, out)
            return False
        common = dict(pass_id=pass_id, etag=ownership_etag(row.ownership_time), size_bytes=row.size_bytes)
        return self._delete_snapshot(row, row.reason or "orphaned snapshot", now, seq, out, common)

    def _delete_snapshot(self, row: DiskRow, reason: str, now, seq, out, common) -> bool:
        DiskRefused, DiskOperationFailed, DiskOutcomeUnknown = _errors()
        intent = self._audit(row, Kind.SNAPSHOT, row.subscription, action="delete-intent", reason=reason, **common)
        common = dict(common, intent_id=intent)
        try:
            self.gateway.delete_snapshot(row.id)
        except DiskRefused as exc:
            self._audit(row, Kind.SNAPSHOT, row.subscription, action="delete-refused", error_code=exc.code,
                        reason=_short(exc), changes=[DiskChange(self._restart(row, f"delete refused: {exc.code}", now, seq),
                                                                "restarted")], **common)
            out.refused[exc.code] += 1
            return True
        except DiskOutcomeUnknown as exc:
            self._settle(row, f"an unknown outcome ({_short(exc)})", None, None, now, seq, out, common)
            return True
        except Exception as exc:  # noqa: BLE001 - DiskOperationFailed and any definite error
            code = str(getattr(exc, "code", None) or type(exc).__name__)
            self._audit(row, Kind.SNAPSHOT, row.subscription, action="delete-failed", error_code=code,
                        reason=_short(exc), **common)
            out.failed += 1
            return True
        self._deleted(row, now, seq, None, None, out, common, reason)
        return True

    def expire(self, snap: SnapshotSeen, made_for: str, now: datetime, seq: int, pass_id, out) -> bool:
        """Delete a quarantine snapshot whose quarantine is over (the caller checked tag and stored id).
        The deleted disk's row keeps the record (its quarantine_snapshot names what is gone)."""
        DiskRefused, DiskOperationFailed, DiskOutcomeUnknown = _errors()
        common = dict(pass_id=pass_id, etag=None, size_bytes=snap.provisioned_bytes)
        intent = self._audit(snap.id, Kind.SNAPSHOT, snap.subscription, action="delete-intent",
                             reason=f"quarantine of {made_for} over", **common)
        common["intent_id"] = intent
        try:
            self.gateway.delete_snapshot(snap.id)
        except DiskOutcomeUnknown as exc:
            try:
                gone = self.gateway.get_snapshot(snap.id) is None
            except Exception:  # noqa: BLE001 - the next pass settles the intent
                out.failed += 1
                return True
            self._audit(snap.id, Kind.SNAPSHOT, snap.subscription, action="deleted" if gone else "delete-failed",
                        error_code=None if gone else "OutcomeUnknown",
                        reason=f"settled after an unknown outcome ({_short(exc)}): "
                               + ("the snapshot is gone" if gone else "the snapshot is still there"), **common)
            if gone:
                out.quarantine_expired += 1
            else:
                out.failed += 1
            return True
        except Exception as exc:  # noqa: BLE001
            code = str(getattr(exc, "code", None) or type(exc).__name__)
            self._audit(snap.id, Kind.SNAPSHOT, snap.subscription,
                        action="delete-refused" if isinstance(exc, DiskRefused) else "delete-failed",
                        error_code=code, reason=_short(exc), **common)
            out.failed += 1
            return True
        self._audit(snap.id, Kind.SNAPSHOT, snap.subscription, action="deleted",
                    reason=f"quarantine of {made_for} over", **common)
        out.quarantine_expired += 1
        log.info("quarantine_expired", snapshot=snap.id, disk=made_for)
        return True


def resolve_disk_intents(store, gateway, now: datetime, actor: str, clock: Callable[[], datetime]) -> int:
    """Settle the disk intents a crash (SIGKILL, a lost database) left without an outcome, by looking
    at the resource: a quarantine snapshot that exists and succeeded is recorded ``quarantined``; a
    disk or snapshot gone is recorded ``deleted`` (a disk's row with its quarantine snapshot); one still
    there and not being deleted, ``delete-failed``. Anything unreadable, or still in progress, waits."""
    n = 0
    made = store.quarantine_snapshots() if hasattr(store, "quarantine_snapshots") else {}
    by_disk = {disk.lower(): snap for snap, disk in made.items()}
    for intent in store.unresolved_disk_intents():
        rid = intent.url
        kind = getattr(intent, "kind", "managed_disk")
        try:
            if kind == Kind.SNAPSHOT.value:
                fresh = gateway.get_snapshot(rid)
            else:
                fresh = gateway.get_disk(rid)
        except Exception as exc:  # noqa: BLE001 - next pass
            log.warning("disk_intent_unresolved", id=rid, error=_short(exc))
            continue
        common = dict(resource_id=rid, kind=kind, subscription=intent.account, at=clock(), actor=actor,
                      pass_id=intent.pass_id, intent_id=intent.id, etag=intent.etag, size_bytes=intent.size_bytes)
        state = (getattr(fresh, "provisioning_state", None) or "").lower() if fresh is not None else ""
        if intent.action == "quarantine-intent":
            if fresh is not None and state == "succeeded":
                store.audit_disk(action="quarantined", reason=f"settled after an interruption: {intent.reason}", **common)
            elif fresh is None:
                store.audit_disk(action="quarantine-failed", error_code="Interrupted",
                                 reason=f"settled after an interruption: the snapshot does not exist ({intent.reason})",
                                 **common)
            else:
                continue  # still being made, or failed (its own deletion is the expiry's): look again later
            n += 1
            continue
        if fresh is not None and state in ("deleting", "updating", "creating"):
            continue
        if fresh is None:
            changes = []
            row = store.disk_row(rid)
            if row is not None and row.state is not State.DELETED:
                snap = by_disk.get(resource_key(rid))
                until = None
                if snap is not None and row.kind is Kind.MANAGED_DISK:
                    snap_id = snap
                else:
                    snap_id = None
                gone = replace(row, state=State.DELETED, deleted_at=now, streak_start=None,
                               sightings_frozen=row.sightings(store.last_complete_seq()),
                               quarantine_snapshot=snap_id or row.quarantine_snapshot,
                               quarantine_until=row.quarantine_until or until, updated_at=now)
                changes.append(DiskChange(gone, "deleted"))
            store.audit_disk(action="deleted", reason="settled after an interruption: the resource is gone",
                             changes=changes, **common)
        else:
            store.audit_disk(action="delete-failed", error_code="Interrupted",
                             reason="settled after an interruption: the resource is still there", **common)
        log.info("disk_intent_settled", id=rid, gone=fresh is None)
        n += 1
    return n


class RestoreRefused(Exception):
    """`vhd-gc restore ID` cannot bring this disk back (the message says why)."""


def restore_disk(store, gateway, rid: str, actor: str, clock: Callable[[], datetime]) -> str:
    """Recreate a disk vhd-gc deleted from its quarantine snapshot (same name, group, location, SKU,
    size, zones and tags), and keep it with an operator hold. Audited before (``restore-intent``) and
    after (``restored``). Returns the restored disk's id."""
    row = store.disk_row(rid)
    if row is None or row.kind is not Kind.MANAGED_DISK:
        raise RestoreRefused(f"{rid}: not a managed disk vhd-gc tracks")
    if row.state is not State.DELETED:
        raise RestoreRefused(f"{rid}: not deleted by vhd-gc (state {row.state.value})")
    if not row.quarantine_snapshot:
        raise RestoreRefused(f"{rid}: deleted without a quarantine snapshot (managed_disks.quarantine was 0s): "
                             "it cannot be restored")
    snap = gateway.get_snapshot(row.quarantine_snapshot)
    if snap is None:
        raise RestoreRefused(f"{rid}: its quarantine snapshot {row.quarantine_snapshot} no longer exists "
                             "(the quarantine is over)")
    if gateway.get_disk(row.id) is not None:
        raise RestoreRefused(f"{rid}: a disk of that id exists again: nothing restored")
    sub = (row.subscription or row.id.split("/")[2]).lower()
    common = dict(resource_id=row.id, kind=Kind.MANAGED_DISK.value, subscription=sub, actor=actor,
                  etag=ownership_etag(row.ownership_time), size_bytes=row.size_bytes)
    intent = store.audit_disk(action="restore-intent", at=clock(), reason=f"from {row.quarantine_snapshot}", **common)
    try:
        made = gateway.restore_disk(row, row.quarantine_snapshot)
    except Exception as exc:
        code = str(getattr(exc, "code", None) or type(exc).__name__)
        store.audit_disk(action="restore-failed", at=clock(), intent_id=intent, error_code=code[:64],
                         reason=_short(exc), **common)
        raise
    now = clock()
    store.add_disk_hold(row.id, "restored by an operator", actor, now)
    kept = replace(row, state=State.KEPT, hold=None, reason="restored; kept by an operator hold", deleted_at=None,
                   streak_start=None, sightings_frozen=0, ownership_known=False, ownership_time=None,
                   fingerprint=None, updated_at=now)
    from .disks import DiskHold

    kept.hold = DiskHold.OPERATOR
    store.audit_disk(action="restored", at=now, intent_id=intent, changes=[DiskChange(kept, "restored")],
                     reason=f"recreated from {row.quarantine_snapshot}; kept by an operator hold "
                            "(`vhd-gc unkeep` to let it be collected again)", **common)
    return made or row.id
