"""The passes table: how each pass began and ended, its sequence number, and the blast-radius guard's
record (a pass it held back, the operator's confirmation): :class:`PassRecord`, :class:`PassRecords`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Row, func, insert, select, update

from gc_daemon.state.models import PASS_OUTCOMES, audit_log, passes

CONFIRM_PASS = "confirm-pass"

# Pass outcomes.
RUNNING = "running"
COMPLETE = "complete"
INCOMPLETE = "incomplete"
FAILED = "failed"
STOPPED = "stopped"  # ended by SIGTERM/SIGINT: a clean stop, not an incident


@dataclass(frozen=True, slots=True)
class PassRecord:
    id: int
    seq: int | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    mode: str
    host: str
    error: str | None
    stats: dict[str, Any] | None


def _pass_record(r: Row[Any]) -> PassRecord:
    return PassRecord(
        id=r.id,
        seq=r.seq,
        started_at=r.started_at,
        finished_at=r.finished_at,
        outcome=r.outcome,
        mode=r.mode,
        host=r.host,
        error=r.error,
        stats=r.stats,
    )


def _last_complete_seq(conn: Connection) -> int:
    return conn.execute(select(func.coalesce(func.max(passes.c.seq), 0))).scalar_one()


class PassRecords:
    """:class:`gc_daemon.state.store.Store`'s pass bookkeeping, committed call by call."""

    engine: Engine

    def begin_pass(self, started_at: datetime, mode: str, host: str) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                insert(passes)
                .values(started_at=started_at, outcome=RUNNING, mode=mode, host=host)
                .returning(passes.c.id)
            ).scalar_one()

    def finish_pass(
        self,
        pass_id: int,
        outcome: str,
        finished_at: datetime,
        error: str | None = None,
        stats: dict[str, Any] | None = None,
    ) -> None:
        """Record how a pass ended. ``error`` and ``stats`` are left as they are when None.

        A pass finished as ``complete`` outside :meth:`StateTx.complete_pass` takes the next
        sequence number unless it already has one; no other outcome ever takes one.
        """
        if outcome not in PASS_OUTCOMES or outcome == RUNNING:
            raise ValueError(f"not a final pass outcome: {outcome!r}")
        values: dict[str, Any] = {"outcome": outcome, "finished_at": finished_at}
        if error is not None:
            values["error"] = error
        if stats is not None:
            values["stats"] = stats
        if outcome == COMPLETE:
            other = passes.alias("other")
            next_seq = select(func.coalesce(func.max(other.c.seq), 0) + 1).scalar_subquery()
            values["seq"] = func.coalesce(passes.c.seq, next_seq)
        with self.engine.begin() as conn:
            result = conn.execute(update(passes).where(passes.c.id == pass_id).values(**values))
            if result.rowcount != 1:
                raise LookupError(f"no pass with id {pass_id}")

    def abandon_running(self, at: datetime) -> int:
        """Passes left `running` by a process that died: recorded as failed."""
        stmt = (
            update(passes)
            .where(passes.c.outcome == RUNNING)
            .values(outcome=FAILED, finished_at=at, error="interrupted: the process stopped during the pass")
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount

    def last_complete_seq(self) -> int:
        with self.engine.connect() as conn:
            return _last_complete_seq(conn)

    def passes(self, limit: int = 20) -> list[PassRecord]:
        """The newest ``limit`` passes, newest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(passes).order_by(passes.c.id.desc()).limit(limit))
            return [_pass_record(r) for r in rows]

    def last_complete_pass(self) -> PassRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(passes).where(passes.c.seq.is_not(None)).order_by(passes.c.seq.desc()).limit(1)
            ).first()
            return _pass_record(row) if row is not None else None

    def pass_outcomes(self) -> dict[str, int]:
        stmt = select(passes.c.outcome, func.count()).group_by(passes.c.outcome)
        with self.engine.connect() as conn:
            return {outcome: int(n) for outcome, n in conn.execute(stmt)}

    def last_blocked_pass(self) -> PassRecord | None:
        """The most recent finished pass, if the blast-radius guard held it back."""
        stmt = select(passes).where(passes.c.outcome != RUNNING).order_by(passes.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        record = _pass_record(row) if row is not None else None
        if record is not None and (record.stats or {}).get("blocked"):
            return record
        return None

    def confirm_pass(self, blocked: PassRecord, actor: str, at: datetime) -> None:
        """Let the next pass mark about what `blocked` would have marked (recorded in the audit log)."""
        stats = blocked.stats or {}
        # The guard counts new disk and snapshot candidates with the blobs (Collector._check_blast_radius):
        # so does what the operator confirms, or a pass held back by disks could never be let through.
        new = int(stats.get("new_candidates") or 0) + int(stats.get("new_disk_candidates") or 0)
        size = int(stats.get("new_bytes") or 0) + int(stats.get("new_disk_bytes") or 0)
        with self.engine.begin() as conn:
            conn.execute(
                insert(audit_log).values(
                    at=at, pass_id=blocked.id, action=CONFIRM_PASS, account="*", container="*", blob="*",
                    url="*", size_bytes=size,
                    billed_bytes=new,
                    reason=f"operator confirmed: {stats.get('blocked')}", actor=actor,
                )
            )

    def pass_confirmation(self) -> dict | None:
        """The operator's confirmation, if one was given after the last complete pass."""
        stmt = (
            select(audit_log).where(audit_log.c.action == CONFIRM_PASS).order_by(audit_log.c.id.desc()).limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        last = self.last_complete_pass()
        if last is not None and last.finished_at is not None and last.finished_at >= row.at:
            return None  # used up by a complete pass since
        return {"new": row.billed_bytes or 0, "bytes": row.size_bytes or 0, "actor": row.actor}
