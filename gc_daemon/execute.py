"""The executor: the only code that deletes, and the only place that honours dry-run.

For each due blob, oldest first and at most ``max_deletes`` a pass: read the blob again (the pass
reads the first ones while it reads the references a second time: :class:`Prefetch`), read its
operator hold again from the database, classify it again against the freshest references and holds,
and delete it only if it is still an orphan, not held, with the ETag recorded when it was marked,
through a conditional (If-Match) delete that never takes snapshots with it. An audit row is
committed before the call (intent) and after (outcome). Blobs are deleted ``concurrency`` at once
(each on a worker from its re-read to its outcome); managed disks one at a time.

A delete whose outcome is unknown (an attempt lost its reply, timed out or got a 5xx, and then the
delete was refused with 412/404 or never answered) is settled by looking at the blob, exactly as an
intent left by a crash is (:func:`settle`, :func:`resolve_intents`): gone means we deleted it.
"""

from __future__ import annotations

import enum
import os
import socket
import threading
from collections import ChainMap, Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
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

    def merge(self, other: "Execution") -> None:
        """Add what another part of the same execution recorded (a blob deleted on a worker)."""
        self.deleted += other.deleted
        self.refused.update(other.refused)
        self.failed += other.failed
        self.changes += other.changes


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
    # Blob deletions in flight at once (``max_concurrent_deletes``); 1: one after the other.
    concurrency: int = 1
    # The re-reads of the first due blobs, made while the pass read the references again (Prefetch).
    prefetched: "Prefetch | None" = None
    _retention: dict = field(default_factory=dict, repr=False)
    _retention_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def retention_days(self, account: str) -> int | None:
        """Blob soft-delete retention of an account (asked once per executor), None when off/unknown."""
        with self._retention_lock:
            return self._retention_days(account)

    def _retention_days(self, account: str) -> int | None:
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
        all under one ``max_deletes``. Dry-run deletes nothing, here and only here.

        Blobs are deleted up to ``concurrency`` at once, each on a worker of its own from its re-read
        to its outcome; disks and snapshots one at a time, here (they wait on long operations). A
        deletion starts only after ``should_stop`` said no, a worker and a share of the limit were
        free: the limit counts deletions exactly (a share whose blob turns out not to be deletable,
        with no delete call made, goes back), and a stop lets the deletions started finish and record."""
        out = Execution()
        ordered = deletion_order(due, disk_due, now)
        try:
            if self.mode != "delete":
                out.skipped_dry_run = len(ordered) + len(expire)
                return out
            self._execute(ordered, refs, operator_holds, now, seq, pass_id, out, disk_holds, expire)
            return out
        finally:
            if self.prefetched is not None:
                self.prefetched.close()

    def _execute(self, ordered, refs, operator_holds, now, seq, pass_id, out: Execution, disk_holds, expire) -> None:
        disk_exec = None
        if any(what == "disk" for _, _, what, _ in ordered) or expire:
            if self.disks is not None:
                from .execute_disks import DiskExecution

                disk_exec = DiskExecution(self, self.disks, self.disk_policy, self.disk_context, self.audit,
                                          disk_holds or {})
        slots = _Slots(max(0, self.max_deletes), max(1, self.concurrency))
        parts: list[tuple[Future, Execution]] = []  # each blob's own record, merged in order at the end
        pool = ThreadPoolExecutor(max_workers=max(1, self.concurrency), thread_name_prefix="delete") \
            if any(what == "blob" for _, _, what, _ in ordered) else None
        try:
            for _, _, what, row in ordered:
                taken = slots.take(worker=what == "blob")  # waits for a worker and a share of the limit
                if slots.error is not None:
                    break  # a deletion failed in a way that must end the pass (its database): no more start
                if self.should_stop():  # no deletion starts after a stop; they stay due for the next pass
                    slots.give_back(taken, attempted=False, worker=what == "blob")
                    out.skipped_stopped += 1
                    continue
                if not taken:
                    out.skipped_over_limit += 1
                    continue
                if what == "blob":
                    part = Execution()
                    parts.append((pool.submit(self._blob_task, slots, row, refs, operator_holds, now, seq, pass_id,
                                              part), part))
                elif disk_exec is None:
                    slots.give_back(True, attempted=False, worker=False)
                    out.failed += 1  # no gateway: never deleted (a wiring without Azure Compute)
                else:
                    attempted = False
                    try:
                        attempted = disk_exec.one(row, now, seq, pass_id, out)
                    finally:
                        slots.give_back(True, attempted=attempted, worker=False)
            for snap, disk_id in expire:
                taken = slots.take(worker=False) if slots.error is None else False
                if self.should_stop() or not taken or disk_exec is None:
                    slots.give_back(taken, attempted=False, worker=False)
                    out.skipped_over_limit += 1
                    continue
                attempted = False
                try:
                    attempted = disk_exec.expire(snap, disk_id, now, seq, pass_id, out)
                finally:
                    slots.give_back(True, attempted=attempted, worker=False)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # the deletions started finish and record, whatever happened
            for _, part in parts:
                out.merge(part)
        if slots.error is not None:
            raise slots.error

    def _blob_task(self, slots: "_Slots", row, refs, operator_holds, now, seq, pass_id, part: Execution) -> None:
        attempted = True  # an error out of _one (the database failed): counted, never under-counted
        try:
            attempted = self._one(row, refs, operator_holds, now, seq, pass_id, part)
        except BaseException as exc:  # noqa: BLE001 - raised by execute() once the others are done
            slots.fail(exc)
        finally:
            slots.give_back(True, attempted=attempted, worker=True)

    def _fresh(self, gateway: BlobGateway, key: BlobKey) -> BlobSeen | None:
        """The blob as it is now: its read made while the pass re-read the references, if there is one."""
        if self.prefetched is not None:
            found, fresh = self.prefetched.take(key)
            if found:
                return fresh
        return gateway.read_blob(key)

    def _one(self, row, refs, operator_holds, now, seq, pass_id, out: Execution) -> bool:
        """Re-verify and delete one blob. Returns whether a delete call was made."""
        key = row.key
        gateway = self.storage[key.account]
        try:
            fresh = self._fresh(gateway, key)
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


def deletion_order(due: Sequence[Tracked], disk_due: Sequence, now: datetime) -> list[tuple]:
    """The order deletions are tried in: oldest due first, blobs and disks together
    (``(delete_after, key, "blob" | "disk", row)``)."""
    return sorted(
        [(r.delete_after or now, str(r.key), "blob", r) for r in due]
        + [(r.delete_after or now, r.id.lower(), "disk", r) for r in disk_due],
        key=lambda item: (item[0], item[1]),
    )


class _Slots:
    """Who may start a deletion: a free worker (blobs) and a share of the pass limit. A share is
    taken before a deletion starts and kept when a delete call was made; a deletion that made none
    gives it back, and the next due one may start. So deletions are counted exactly: never more
    than the limit, and as many as sequential deletion would make."""

    def __init__(self, limit: int, workers: int) -> None:
        self.left = limit  # shares not yet spent by a delete call
        self.taken = 0  # shares held by deletions running now
        self.free = workers
        self.error: BaseException | None = None
        self._cond = threading.Condition()

    def take(self, worker: bool) -> bool:
        """Wait for a worker (``worker``) and a share; False when the limit is spent (by the
        deletions done: the ones running may still give theirs back, so this waits for them)."""
        with self._cond:
            while True:
                if self.error is not None:
                    return False
                if self.left <= 0:
                    return False
                if self.left - self.taken > 0 and (not worker or self.free > 0):
                    self.taken += 1
                    self.free -= worker
                    return True
                self._cond.wait()  # for a running deletion to end (and spend or give back its share)

    def give_back(self, taken: bool, attempted: bool, worker: bool) -> None:
        if not taken:
            return
        with self._cond:
            self.taken -= 1
            self.free += worker
            if attempted:
                self.left -= 1
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            if self.error is None:
                self.error = exc
            self._cond.notify_all()


class Prefetch:
    """The re-reads of blobs about to be deleted (properties, snapshots, tags), made on a bounded pool
    while the pass reads the references again; the executor takes each once, in place of its own
    read. A read that failed raises in the executor as its own would have."""

    def __init__(self, storage: Mapping[str, BlobGateway], keys: Iterable[BlobKey], concurrency: int) -> None:
        keys = list(keys)
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(keys) or 1)),
                                        thread_name_prefix="reread")
        self._futures: dict[BlobKey, Future] = {
            key: self._pool.submit(storage[key.account].read_blob, key) for key in keys if key.account in storage
        }
        self._lock = threading.Lock()

    def take(self, key: BlobKey) -> tuple[bool, BlobSeen | None]:
        """(True, the blob read) for a key read ahead (raising what its read raised), else (False, None)."""
        with self._lock:
            future = self._futures.pop(key, None)
        if future is None or future.cancelled():
            return False, None
        return True, future.result()

    def close(self) -> None:
        """Drop what was not taken (reads not started are not made; those in flight end on their own)."""
        self._pool.shutdown(wait=False, cancel_futures=True)


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
