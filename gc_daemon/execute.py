"""The executor: the only code that deletes, and the only place that honours dry-run.

For each due blob, oldest first and at most ``max_deletes`` a pass: read the blob again, read its
operator hold again from the database, classify it again against the freshest references and holds,
and delete it only if it is still an orphan, not held, with the ETag recorded when it was marked,
through a conditional (If-Match) delete that never takes snapshots with it. An audit row is
committed before the call (intent) and after (outcome).
"""

from __future__ import annotations

import os
import socket
from collections import ChainMap, Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from .azure.storage import DeleteRefused, soft_delete_days
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
    changes: list[Change | Forget] = field(default_factory=list)


def default_actor() -> str:
    return f"vhd-gc@{socket.gethostname()}:{os.getpid()}"


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
    ) -> Execution:
        out = Execution()
        ordered = sorted(due, key=lambda r: (r.delete_after or now, str(r.key)))
        if self.mode != "delete":
            out.skipped_dry_run = len(ordered)
            return out
        budget = max(0, self.max_deletes)
        for row in ordered:
            if budget == 0 or self.should_stop():
                out.skipped_over_limit += 1
                continue
            attempted = self._one(row, refs, operator_holds, now, seq, pass_id, out)
            if attempted:
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
            out.refused[reason] += 1
            d = decide_blob(fresh, replace(row, state=State.CANDIDATE), c, self.policy, now, seq)
            if d.change is not None:
                out.changes.append(d.change)
            self.audit.audit(
                action="delete-refused", key=key, url=row.url, at=now, actor=self.actor, pass_id=pass_id,
                etag=row.etag, size_bytes=row.size_bytes, billed_bytes=row.billed_bytes,
                error_code=reason, reason=f"re-verification: {reason}: {c.reason}",
            )
            log.info("delete_refused", url=row.url, reason=reason, detail=c.reason)
            return False

        intent = self.audit.audit(
            action="delete-intent", key=key, url=row.url, at=now, actor=self.actor, pass_id=pass_id,
            etag=row.etag, size_bytes=row.size_bytes, billed_bytes=row.billed_bytes, reason=row.reason,
        )
        try:
            gateway.delete_if_match(key, row.etag or "")
        except Exception as exc:  # noqa: BLE001
            code = getattr(exc, "code", None) or type(exc).__name__
            refused = isinstance(exc, DeleteRefused)
            action = "delete-refused" if refused else "delete-failed"
            self.audit.audit(
                action=action, key=key, url=row.url, at=now, actor=self.actor, pass_id=pass_id,
                intent_id=intent, etag=row.etag, size_bytes=row.size_bytes, error_code=str(code),
                reason=_short(exc),
            )
            if refused:
                out.refused[str(code)] += 1
                if str(code) == "BlobNotFound":
                    out.changes.append(Forget(key, reason="gone before deletion"))
            else:
                out.failed += 1
            log.warning("delete_" + ("refused" if refused else "failed"), url=row.url, code=str(code))
            return True
        days = self.retention_days(key.account)
        gone = replace(
            row,
            state=State.DELETED,
            deleted_at=now,
            recoverable_until=now + timedelta(days=days) if days else None,
            sightings_frozen=row.sightings(seq),
            streak_start=None,
            updated_at=now,
        )
        self.audit.audit(
            action="deleted", key=key, url=row.url, at=now, actor=self.actor, pass_id=pass_id,
            intent_id=intent, etag=row.etag, size_bytes=row.size_bytes, billed_bytes=row.billed_bytes,
            reason=row.reason, changes=[Change(gone, event="deleted")],
        )
        out.deleted.append(gone)
        log.info("deleted", url=row.url, size_bytes=row.size_bytes, billed_bytes=row.billed_bytes, etag=row.etag)
        return True


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:limit]


def resolve_intents(store, storage: Mapping[str, BlobGateway], now: datetime, actor: str | None = None) -> int:
    """Settle deletion intents that have no outcome: the process stopped between writing the
    intent and writing the result (a crash, SIGKILL, a lost database connection). The blob says
    what happened: gone means the delete went through; still there with the recorded ETag means it
    did not; a new ETag means it changed and starts over. Returns how many were settled."""
    actor = actor or default_actor()
    settled = 0
    for intent in store.unresolved_intents():
        key = intent.key
        gateway = storage.get(key.account)
        if gateway is None:
            continue  # its account is no longer collected: left for the operator (`vhd-gc audit`)
        try:
            fresh = gateway.read_blob(key)
        except Exception as exc:  # noqa: BLE001 - try again at the next pass
            log.warning("intent_unresolved", url=intent.url, error=_short(exc))
            continue
        common = dict(key=key, url=intent.url, at=now, actor=actor, pass_id=intent.pass_id, intent_id=intent.id,
                      etag=intent.etag, size_bytes=intent.size_bytes, billed_bytes=intent.billed_bytes)
        if fresh is None:
            row = store.row(key)
            changes = []
            if row is not None and row.state is not State.DELETED:
                changes.append(Change(replace(row, state=State.DELETED, deleted_at=now, streak_start=None,
                                              sightings_frozen=row.sightings(store.last_complete_seq()),
                                              updated_at=now), event="deleted"))
            store.audit(action="deleted", reason="settled after an interruption: the blob is gone",
                        changes=changes, **common)
            log.info("intent_settled", url=intent.url, outcome="deleted")
        elif fresh.etag == intent.etag:
            store.audit(action="delete-failed", error_code="Interrupted",
                        reason="settled after an interruption: the blob is still there", **common)
            log.info("intent_settled", url=intent.url, outcome="not deleted")
        else:
            store.audit(action="delete-refused", error_code="etag_changed",
                        reason="settled after an interruption: the blob changed", **common)
            log.info("intent_settled", url=intent.url, outcome="changed")
        settled += 1
    return settled
