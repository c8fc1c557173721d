"""The executor: the only code that deletes, and the only place that honours dry-run.

For each due blob, oldest first and at most ``max_deletes`` a pass: read the blob again, read its
operator hold again from the database, classify it again against the freshest references and holds,
and delete it only if it is still an orphan, not held, with the ETag recorded when it was marked,
through a conditional (If-Match) delete that never takes snapshots with it. An audit row is
committed before the call (intent) and after (outcome).

A delete whose outcome is unknown (an attempt lost its reply, timed out or got a 5xx, and then the
delete was refused with 412/404 or never answered) is settled by looking at the blob, exactly as an
intent left by a crash is (:func:`settle`, :func:`resolve_intents`): gone means we deleted it.
"""

from __future__ import annotations

import enum
import os
import socket
from collections import ChainMap, Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Protocol

import structlog

from .azure.storage import DeleteOutcomeUnknown, DeleteRefused, soft_delete_days
from .decide import ReferenceIndex, classify, decide_blob
from .domain import BlobKey, BlobSeen, Change, Forget, Policy, State, Tracked

log = structlog.get_logger("vhd-gc.execute")


class BlobGateway(Protocol):
    """What the executor needs of one storage account (gc_daemon.azure.storage.AccountStorage)."""

    def read_blob(self, key: BlobKey) -> BlobSeen | None: ...

    def delete_if_match(self, key: BlobKey, etag: str) -> None: ...


class AuditSink(Protocol):
    def audit(self, **fields) -> int: ...


class HoldSource(Protocol):
    """The operator holds as they stand now (gc_daemon.state.store.Store)."""

    def hold(self, key: BlobKey) -> str | None: ...


@dataclass(slots=True)
class Execution:
    deleted: list[Tracked] = field(default_factory=list)
    refused: Counter = field(default_factory=Counter)  # reason -> count
    failed: int = 0
    skipped_dry_run: int = 0
    skipped_over_limit: int = 0
    skipped_stopped: int = 0  # due blobs not attempted because a stop was asked for (SIGTERM/SIGINT)
    changes: list[Change | Forget] = field(default_factory=list)
    # Managed disks and snapshots (gc_daemon/execute_disks.py): their row changes are written with
    # their audit entries.
    deleted_disks: list = field(default_factory=list)
    quarantined: int = 0
    quarantine_expired: int = 0


ACTOR_MAX = 255  # audit_log.actor is a String(255)


def default_actor(credential: str | None = None, client_id: str | None = None) -> str:
    """Who the daemon is in the audit log: ``vhd-gc@<host> (<credential kind>[, client <id>], pid N)``.
    The client id is the one the credential is told to use (``AZURE_CLIENT_ID``), when set."""
    who = [f"credential {credential}"] if credential else []
    if client_id is None and credential in ("default", "managed_identity"):
        client_id = os.environ.get("AZURE_CLIENT_ID") or None
    if client_id:
        who.append(f"client {client_id}")
    who.append(f"pid {os.getpid()}")
    return f"vhd-gc@{socket.gethostname()} ({', '.join(who)})"[:ACTOR_MAX]


def daemon_actor(config) -> str:
    """The daemon's identity for a configuration (gc_daemon.config.Config)."""
    return default_actor(config.azure.credential)


def operator_actor(name: str | None = None) -> str:
    """The person behind an operator command: ``--actor NAME``, else ``SUDO_USER`` (who ran sudo),
    else ``USER``, else the login name of this process's uid."""
    for candidate in (name, os.environ.get("SUDO_USER"), os.environ.get("USER")):
        if candidate and candidate.strip():
            return candidate.strip()[:ACTOR_MAX]
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name[:ACTOR_MAX]
    except (ImportError, KeyError, OSError):
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown operator"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Executor:
    mode: str  # "dry-run" | "delete"
    max_deletes: int
    storage: Mapping[str, BlobGateway]
    audit: AuditSink
    policy: Policy
    # Read again right before each delete, in a transaction of its own: a `vhd-gc keep` that
    # returned before a deletion started is honoured by it. None: the holds read with the pass only.
    holds: HoldSource | None = None
    actor: str = field(default_factory=default_actor)
    should_stop: Callable[[], bool] = lambda: False  # honoured between deletions, never during one
    # The wall clock of the audit log: each row carries the moment of its own event (the intent
    # when it is written, the outcome when it is known), not the pass's start.
    clock: Callable[[], datetime] = utcnow
    # Managed disks: the gateway (gc_daemon.azure.disks.DiskGateway), the decision's policy and the
    # pass's freshest inventory to re-check against (gc_daemon.execute_disks.DiskContext).
    disks: object | None = None
    disk_policy: object | None = None
    disk_context: object | None = None
    _retention: dict = field(default_factory=dict, repr=False)

    def retention_days(self, account: str) -> int | None:
        """Blob soft-delete retention of an account (asked once per executor), None when off/unknown."""
        if account not in self._retention:
            try:
                self._retention[account] = soft_delete_days(self.storage[account])
            except Exception as exc:  # noqa: BLE001 - unknown: the report just will not promise a restore
                log.warning("soft_delete_unknown", account=account, error=_short(exc))
                self._retention[account] = None
        return self._retention[account]

    def execute(
        self,
        due: Sequence[Tracked],
        refs: ReferenceIndex,
        operator_holds: Mapping[BlobKey, str],
        now: datetime,
        seq: int,
        pass_id: int | None = None,
        *,
        disk_due: Sequence = (),
        disk_holds: Mapping[str, str] | None = None,
        expire: Sequence[tuple] = (),
    ) -> Execution:
        """Delete what is due: blobs (``due``), managed disks and snapshots (``disk_due``, DiskRows)
        and expired quarantine snapshots (``expire``: (SnapshotSeen, disk id) pairs), oldest first,
        all under one ``max_deletes``. Dry-run deletes nothing, here and only here."""
        out = Execution()
        ordered = sorted(
            [(r.delete_after or now, str(r.key), "blob", r) for r in due]
            + [(r.delete_after or now, r.id.lower(), "disk", r) for r in disk_due],
            key=lambda item: (item[0], item[1]),
        )
        if self.mode != "delete":
            out.skipped_dry_run = len(ordered) + len(expire)
            return out
        disk_exec = None
        if (disk_due or expire) and self.disks is not None:
            from .execute_disks import DiskExecution

            disk_exec = DiskExecution(self, self.disks, self.disk_policy, self.disk_context, self.audit,
                                      disk_holds or {})
        budget = max(0, self.max_deletes)
        for _, _, what, row in ordered:
            if self.should_stop():  # no deletion starts after a stop; they stay due for the next pass
                out.skipped_stopped += 1
                continue
            if budget == 0:
                out.skipped_over_limit += 1
                continue
            if what == "blob":
                attempted = self._one(row, refs, operator_holds, now, seq, pass_id, out)
            elif disk_exec is None:
                out.failed += 1  # no gateway: never deleted (a wiring without Azure Compute)
                continue
            else:
                attempted = disk_exec.one(row, now, seq, pass_id, out)
            if attempted:
                budget -= 1
        for snap, disk_id in expire:
            if self.should_stop() or budget == 0 or disk_exec is None:
                out.skipped_over_limit += 1
                continue
            if disk_exec.expire(snap, disk_id, now, seq, pass_id, out):
                budget -= 1
        return out

    def _one(self, row, refs, operator_holds, now, seq, pass_id, out: Execution) -> bool:
        """Re-verify and delete one blob. Returns whether a delete call was made."""
        key = row.key
        gateway = self.storage[key.account]
        try:
            fresh = gateway.read_blob(key)
            held = self.holds.hold(key) if self.holds is not None else None
        except Exception as exc:  # noqa: BLE001 - one blob's trouble never stops the others
            out.failed += 1
            log.warning("reverify_failed", url=row.url, error=_short(exc))
            return False
        if fresh is None:
            out.refused["gone"] += 1
            out.changes.append(Forget(key, reason="gone before deletion"))
            log.info("delete_skipped", url=row.url, reason="gone")
            return False
        if held is not None:  # taken since the pass read the holds (or still there): it wins
            operator_holds = ChainMap({key: held}, operator_holds)
        c = classify(fresh, refs, operator_holds, self.policy, now)
        if fresh.etag != row.etag or not c.deletable:
            reason = "etag_changed" if fresh.etag != row.etag else (c.hold.value if c.hold else c.verdict.value)
            self._refuse(row, fresh, c, reason, f"re-verification: {reason}: {c.reason}", now, seq, pass_id, out)
            return False

        common = dict(key=key, url=row.url, actor=self.actor, pass_id=pass_id, etag=row.etag,
                      size_bytes=row.size_bytes, billed_bytes=row.billed_bytes)
        intent = self.audit.audit(action="delete-intent", reason=row.reason, at=self.clock(), **common)
        common["intent_id"] = intent
        try:
            gateway.delete_if_match(key, row.etag or "")
        except DeleteRefused as exc:
            settled = None
            if exc.after:  # an earlier attempt may have been executed: the blob says what happened
                detail = "; ".join((*exc.after, f"then {exc.code}"))
                settled = self._settle(row, detail, refs, operator_holds, now, seq, out, common)
                if settled is not Settled.NOT_DELETED:
                    return True
            # Refused, and nothing was deleted (no earlier attempt, or the blob is there untouched).
            self.audit.audit(action="delete-refused", error_code=exc.code, reason=_short(exc), at=self.clock(), **common)
            out.refused[exc.code] += 1
            if exc.code == "BlobNotFound" and settled is None:
                out.changes.append(Forget(key, reason="gone before deletion"))
            log.warning("delete_refused", url=row.url, code=exc.code)
            return True
        except DeleteOutcomeUnknown as exc:  # no attempt got an answer: it may have gone through
            detail = "; ".join(exc.attempts)
            if self._settle(row, detail, refs, operator_holds, now, seq, out, common) is Settled.NOT_DELETED:
                self.audit.audit(action="delete-failed", error_code=exc.code, at=self.clock(),
                                 reason=settlement_reason(Settled.NOT_DELETED, f"a lost reply ({detail})"), **common)
                out.failed += 1
            return True
        except Exception as exc:  # noqa: BLE001 - a definite error: nothing was deleted
            code = str(getattr(exc, "code", None) or type(exc).__name__)
            self.audit.audit(action="delete-failed", error_code=code, reason=_short(exc), at=self.clock(), **common)
            out.failed += 1
            log.warning("delete_failed", url=row.url, code=code)
            return True
        self._deleted(row, now, seq, out, common, reason=row.reason)
        log.info("deleted", url=row.url, size_bytes=row.size_bytes, billed_bytes=row.billed_bytes, etag=row.etag)
        return True

    def _deleted(self, row: Tracked, now: datetime, seq: int, out: Execution, common: dict, reason) -> None:
        """Record a deletion: the outcome and the row's new state in one transaction."""
        days = self.retention_days(row.key.account)
        gone = deleted_row(row, now, row.sightings(seq), now + timedelta(days=days) if days else None)
        self.audit.audit(action="deleted", reason=reason, changes=[Change(gone, event="deleted")], at=self.clock(),
                         **common)
        out.deleted.append(gone)

    def _refuse(self, row, fresh, c, code, reason, now, seq, pass_id, out: Execution, intent=None) -> None:
        """Not deleted because the blob is no longer what was marked: it starts over (or is kept,
        or released), as the decision would have it now."""
        out.refused[code] += 1
        d = decide_blob(fresh, replace(row, state=State.CANDIDATE), c, self.policy, now, seq)
        if d.change is not None:
            out.changes.append(d.change)
        self.audit.audit(
            action="delete-refused", key=row.key, url=row.url, at=self.clock(), actor=self.actor, pass_id=pass_id,
            intent_id=intent, etag=row.etag, size_bytes=row.size_bytes, billed_bytes=row.billed_bytes,
            error_code=code, reason=reason,
        )
        log.info("delete_refused", url=row.url, reason=code, detail=c.reason)

    def _settle(self, row, detail, refs, operator_holds, now, seq, out: Execution, common: dict) -> "Settled | None":
        """Settle a delete whose outcome is unknown by looking at the blob (see :func:`settle`), and
        record it when it was deleted or changed; NOT_DELETED is the caller's to record. None when
        the blob cannot be read either: the intent is left without an outcome, and the next pass
        settles it (:func:`resolve_intents`), as after a crash."""
        after = f"a lost reply ({detail})"
        try:
            settled, fresh = settle(self.storage[row.key.account], row.key, row.etag)
        except Exception as exc:  # noqa: BLE001 - still unknown: never guessed
            out.failed += 1
            log.warning("delete_outcome_unknown", url=row.url, attempts=detail, error=_short(exc))
            return None
        log.warning("delete_settled", url=row.url, outcome=settled.value, attempts=detail)
        if settled is Settled.DELETED:
            self._deleted(row, now, seq, out, common, reason=settlement_reason(settled, after))
        elif settled is Settled.CHANGED:
            c = classify(fresh, refs, operator_holds, self.policy, now)
            self._refuse(row, fresh, c, "etag_changed", settlement_reason(settled, after), now, seq,
                         common["pass_id"], out, intent=common["intent_id"])
        return settled


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]


class Settled(str, enum.Enum):
    """What became of a delete whose outcome is unknown, as the blob tells it."""

    DELETED = "deleted"  # gone: the delete went through
    NOT_DELETED = "not deleted"  # there, with the ETag the delete named: it did not
    CHANGED = "changed"  # there with another ETag: it changed (or was re-created) and starts over


_SETTLED_TEXT = {
    Settled.DELETED: "the blob is gone",
    Settled.NOT_DELETED: "the blob is still there",
    Settled.CHANGED: "the blob changed",
}


def settle(gateway: BlobGateway, key: BlobKey, etag: str | None) -> tuple[Settled, BlobSeen | None]:
    """Ask the one witness of a delete whose outcome is unknown, the blob itself, what happened:
    gone means the delete went through; there with ``etag`` means it did not; there with another
    ETag means it changed (if our delete did go through, what is there now is another blob, which
    the If-Match kept safe). Raises what ``read_blob`` raises: then it is still unknown."""
    fresh = gateway.read_blob(key)
    if fresh is None:
        return Settled.DELETED, None
    return (Settled.NOT_DELETED if fresh.etag == etag else Settled.CHANGED), fresh


def settlement_reason(settled: Settled, after: str) -> str:
    return f"settled after {after}: {_SETTLED_TEXT[settled]}"


def deleted_row(row: Tracked, now: datetime, sightings: int, recoverable_until: datetime | None) -> Tracked:
    """The stored state of a blob vhd-gc deleted."""
    return replace(row, state=State.DELETED, deleted_at=now, recoverable_until=recoverable_until,
                   sightings_frozen=sightings, streak_start=None, updated_at=now)


def resolve_intents(store, storage: Mapping[str, BlobGateway], now: datetime, actor: str | None = None,
                    clock: Callable[[], datetime] | None = None) -> int:
    """Settle deletion intents that have no outcome: the process stopped between writing the
    intent and writing the result (a crash, SIGKILL, a lost database connection), or neither the
    delete nor the blob could be read. The blob says what happened (:func:`settle`). Returns how
    many were settled."""
    actor = actor or default_actor()
    after = "an interruption"
    settled_n = 0
    for intent in store.unresolved_intents():
        key = intent.key
        gateway = storage.get(key.account)
        if gateway is None:
            continue  # its account is no longer collected: left for the operator (`vhd-gc audit`)
        try:
            settled, _ = settle(gateway, key, intent.etag)
        except Exception as exc:  # noqa: BLE001 - try again at the next pass
            log.warning("intent_unresolved", url=intent.url, error=_short(exc))
            continue
        common = dict(key=key, url=intent.url, at=clock() if clock is not None else now, actor=actor, pass_id=intent.pass_id, intent_id=intent.id,
                      etag=intent.etag, size_bytes=intent.size_bytes, billed_bytes=intent.billed_bytes,
                      reason=settlement_reason(settled, after))
        if settled is Settled.DELETED:
            row = store.row(key)
            changes = []
            if row is not None and row.state is not State.DELETED:
                changes.append(Change(deleted_row(row, now, row.sightings(store.last_complete_seq()), None),
                                      event="deleted"))
            store.audit(action="deleted", changes=changes, **common)
        elif settled is Settled.NOT_DELETED:
            store.audit(action="delete-failed", error_code="Interrupted", **common)
        else:
            store.audit(action="delete-refused", error_code="etag_changed", **common)
        log.info("intent_settled", url=intent.url, outcome=settled.value)
        settled_n += 1
    return settled_n
