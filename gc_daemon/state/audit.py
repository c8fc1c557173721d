"""The audit log (``audit_log``): every act on a blob, disk or snapshot, committed entry by entry (an
intent is durable before the act), what it says of unresolved intents and quarantine snapshots, and
its totals for the metrics: :class:`AuditRecord`, :class:`AuditLog`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Row, exists, func, insert, select

from gc_daemon.disks import DiskChange, DiskForget, Kind, resource_key
from gc_daemon.domain import BlobKey, Change, Forget
from gc_daemon.state.disk_rows import _apply_disks
from gc_daemon.state.models import DISK_KINDS, audit_log
from gc_daemon.state.sql import _aware, _key_filter
from gc_daemon.state.transaction import StateTx

# Audit actions (the column is free text; these are the ones vhd-gc writes).
DELETE_INTENT = "delete-intent"
DELETED = "deleted"
DELETE_REFUSED = "delete-refused"
DELETE_FAILED = "delete-failed"
KEEP = "keep"
UNKEEP = "unkeep"
QUARANTINE_INTENT = "quarantine-intent"

# audit_log.kind: a blob's entries (every entry written before managed disks) and a disk's.
VHD = "vhd"


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: datetime
    pass_id: int | None
    intent_id: int | None
    action: str
    account: str
    container: str
    blob: str
    url: str
    etag: str | None
    size_bytes: int | None
    billed_bytes: int | None
    reason: str | None
    error_code: str | None
    actor: str
    kind: str = VHD  # vhd, managed_disk or snapshot; a disk's entry: account = subscription, blob = key

    @property
    def key(self) -> BlobKey:
        return BlobKey(self.account, self.container, self.blob)


def _audit_record(r: Row[Any]) -> AuditRecord:
    return AuditRecord(**{c.name: getattr(r, c.name) for c in audit_log.columns})


def _subscription_of(resource_id: str) -> str:
    parts = resource_id.split("/")
    if len(parts) > 2 and parts[1].lower() == "subscriptions":
        return parts[2]
    raise ValueError(f"not an ARM id with a subscription: {resource_id!r}")


def _quarantine_of(reason: str | None) -> str | None:
    """The disk id in a quarantine-intent's reason (``quarantine of /subscriptions/...``)."""
    prefix = "quarantine of "
    if not reason or not reason.startswith(prefix):
        return None
    rest = reason[len(prefix):].split()
    return rest[0].rstrip(":") if rest else None



class _GroupCommit:
    """Writes submitted from several threads, committed together: a caller whose entry is not yet
    written becomes the writer of everything waiting (one transaction), the others wait for it. A
    caller returns once its own entry is committed (an intent is durable before its delete); if the
    transaction fails, every caller of it gets the error (nothing of it was written)."""

    def __init__(self, write: Callable[[list], list]) -> None:
        self._write = write
        self._lock = threading.Lock()  # the queue
        self._writer = threading.Lock()  # one transaction at a time
        self._pending: list[tuple[Any, Future]] = []

    def submit(self, item: Any) -> Any:
        done: Future = Future()
        with self._lock:
            self._pending.append((item, done))
        with self._writer:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:  # else a writer before took ours (and whatever else was waiting)
                try:
                    results = self._write([i for i, _ in batch])
                except BaseException as exc:
                    for _, f in batch:
                        f.set_exception(exc)
                else:
                    for (_, f), result in zip(batch, results):
                        f.set_result(result)
        return done.result()

class AuditLog:
    """:class:`gc_daemon.state.store.Store`'s audit log: entries appended and committed one by one."""

    engine: Engine
    _audits: "_GroupCommit"  # the Store's: entries written together

    def audit(
        self,
        *,
        action: str,
        key: BlobKey,
        url: str,
        at: datetime,
        actor: str,
        pass_id: int | None = None,
        intent_id: int | None = None,
        etag: str | None = None,
        size_bytes: int | None = None,
        billed_bytes: int | None = None,
        reason: str | None = None,
        error_code: str | None = None,
        changes: Iterable[Change | Forget] = (),
    ) -> int:
        """Append one entry and commit it at once (an intent is durable before the delete).

        ``changes`` are written in the same transaction: an outcome and the row it settles are
        recorded together or not at all (a crash between them would lose a deletion's record).
        """
        return self._audits.submit(("blob", list(changes), _entry(
            at=at, pass_id=pass_id, intent_id=intent_id, action=action, account=key.account,
            container=key.container, blob=key.blob, url=url, etag=etag, size_bytes=size_bytes,
            billed_bytes=billed_bytes, reason=reason, error_code=error_code, actor=actor,
        )))

    def _write_audits(self, batch: list[tuple[str, list, dict[str, Any]]]) -> list[int]:
        """Append audit entries (each with the row changes it settles) in ONE transaction; their ids."""
        ids = []
        with self.engine.begin() as conn:
            for kind, changes, values in batch:
                if changes:
                    StateTx(conn, 0).apply(changes) if kind == "blob" else _apply_disks(conn, changes)
                ids.append(conn.execute(insert(audit_log).values(**values).returning(audit_log.c.id)).scalar_one())
        return ids

    def audit_log(
        self,
        key: BlobKey | None = None,
        actions: Iterable[str] | None = None,
        limit: int | None = None,
        since: datetime | None = None,
        *,
        kinds: Iterable[str] | None = None,
        resource_id: str | None = None,
    ) -> list[AuditRecord]:
        """Entries oldest first; with ``limit``, the newest ``limit`` of them (still oldest first);
        with ``since``, only those at or after that instant. ``key`` (a blob) or ``resource_id`` (a
        disk or snapshot, any case) selects one resource's entries; ``kinds`` (vhd, managed_disk,
        snapshot) only those kinds."""
        stmt = select(audit_log)
        if key is not None:
            stmt = stmt.where(_key_filter(key, audit_log), audit_log.c.kind == VHD)
        if resource_id is not None:
            stmt = stmt.where(audit_log.c.blob == resource_key(resource_id), audit_log.c.kind != VHD)
        if kinds is not None:
            stmt = stmt.where(audit_log.c.kind.in_([str(getattr(k, "value", k)) for k in kinds]))
        if actions is not None:
            stmt = stmt.where(audit_log.c.action.in_(list(actions)))
        if since is not None:
            stmt = stmt.where(audit_log.c.at >= _aware(since))
        if limit is not None:
            stmt = stmt.order_by(audit_log.c.id.desc()).limit(limit)
        else:
            stmt = stmt.order_by(audit_log.c.id)
        with self.engine.connect() as conn:
            records = [_audit_record(r) for r in conn.execute(stmt)]
        if limit is not None:
            records.reverse()
        return records

    def unresolved_intents(self) -> list[AuditRecord]:
        """Delete intents with no outcome recorded: the process stopped between intent and result."""
        outcome = audit_log.alias("outcome")
        stmt = (
            select(audit_log)
            .where(audit_log.c.action == DELETE_INTENT, audit_log.c.kind == VHD)
            .where(~exists().where(outcome.c.intent_id == audit_log.c.id))
            .order_by(audit_log.c.id)
        )
        with self.engine.connect() as conn:
            return [_audit_record(r) for r in conn.execute(stmt)]

    def unresolved_disk_intents(self) -> list[AuditRecord]:
        """Disk and snapshot intents (``delete-intent``, ``quarantine-intent``) with no outcome: the
        process stopped between intent and result (:func:`gc_daemon.execute_disks.resolve_disk_intents`)."""
        outcome = audit_log.alias("outcome")
        stmt = (
            select(audit_log)
            .where(audit_log.c.action.in_([DELETE_INTENT, QUARANTINE_INTENT]), audit_log.c.kind.in_(DISK_KINDS))
            .where(~exists().where(outcome.c.intent_id == audit_log.c.id))
            .order_by(audit_log.c.id)
        )
        with self.engine.connect() as conn:
            return [_audit_record(r) for r in conn.execute(stmt)]

    def quarantine_snapshots(self) -> dict[str, str]:
        """The quarantine snapshots vhd-gc set out to make: snapshot key (lower-cased ARM id) -> the id
        of the disk it quarantines, from the ``quarantine-intent`` entries (made or not: only a snapshot
        named here is ever deleted by the quarantine expiry)."""
        stmt = (
            select(audit_log.c.blob, audit_log.c.reason)
            .where(audit_log.c.action == QUARANTINE_INTENT, audit_log.c.kind == Kind.SNAPSHOT.value)
            .order_by(audit_log.c.id)
        )
        out: dict[str, str] = {}
        with self.engine.connect() as conn:
            for blob, reason in conn.execute(stmt):
                disk = _quarantine_of(reason)
                if disk is not None:
                    out[blob] = disk
        return out

    def audit_disk(
        self,
        *,
        action: str,
        resource_id: str,
        kind: Kind | str,
        subscription: str | None,
        at: datetime,
        actor: str,
        pass_id: int | None = None,
        intent_id: int | None = None,
        etag: str | None = None,
        size_bytes: int | None = None,
        billed_bytes: int | None = None,
        reason: str | None = None,
        error_code: str | None = None,
        changes: Iterable[DiskChange | DiskForget] = (),
    ) -> int:
        """Append one entry about a managed disk or snapshot and commit it at once; returns its id.

        Recorded as account = subscription (lower-case), container = '', blob = resource key, url = the
        ARM id, etag = the ownership time the act was bound to (``never-attached``). ``changes`` are
        written to ``tracked_disks`` in the same transaction, as :meth:`audit` does for blobs."""
        kind = Kind(kind).value
        sub = (subscription or _subscription_of(resource_id)).lower()
        return self._audits.submit(("disk", list(changes), _entry(
            at=at, pass_id=pass_id, intent_id=intent_id, action=action, account=sub, container="",
            blob=resource_key(resource_id), url=resource_id, etag=etag, size_bytes=size_bytes,
            billed_bytes=billed_bytes, reason=reason,
            error_code=None if error_code is None else error_code[:64], actor=actor, kind=kind,
        )))

    def audit_totals(self, action: str, by: str = "account") -> list[tuple[str, int, int]]:
        """(label, entries, sum of size_bytes) of one audit action, grouped by a column."""
        col = audit_log.c[by]
        stmt = (
            select(col, func.count(), func.coalesce(func.sum(audit_log.c.size_bytes), 0))
            .where(audit_log.c.action == action, audit_log.c.kind == VHD)
            .group_by(col)
            .order_by(col)
        )
        with self.engine.connect() as conn:
            return [(label or "", int(n), int(size)) for label, n, size in conn.execute(stmt)]

    def disk_audit_totals(self, action: str) -> list[tuple[str, str, int, int]]:
        """(subscription, kind, entries, sum of size_bytes) of one audit action on disks and
        snapshots, per subscription and kind."""
        a = audit_log
        stmt = (
            select(a.c.account, a.c.kind, func.count(), func.coalesce(func.sum(a.c.size_bytes), 0))
            .where(a.c.action == action, a.c.kind.in_(DISK_KINDS))
            .group_by(a.c.account, a.c.kind)
            .order_by(a.c.account, a.c.kind)
        )
        with self.engine.connect() as conn:
            return [(sub or "", kind, int(n), int(size)) for sub, kind, n, size in conn.execute(stmt)]


def _entry(
    *, at: datetime, pass_id: int | None, intent_id: int | None, action: str, account: str,
    container: str, blob: str, url: str, etag: str | None, size_bytes: int | None,
    billed_bytes: int | None, reason: str | None, error_code: str | None, actor: str, **extra: Any,
) -> dict[str, Any]:
    """The values of one ``audit_log`` row, blob or disk alike (``extra``: ``kind`` of a disk entry)."""
    return dict(
        at=at, pass_id=pass_id, intent_id=intent_id, action=action, account=account, container=container,
        blob=blob, url=url, etag=etag, size_bytes=size_bytes, billed_bytes=billed_bytes, reason=reason,
        error_code=error_code, actor=actor, **extra,
    )
