"""The one transaction of a complete pass: :class:`StateTx` (read the tracked rows, write the changes,
complete the pass) and :class:`Transactions`, the :class:`gc_daemon.state.store.Store` side that opens
it and, on a SQLite file, checkpoints the write-ahead log after it on a thread of its own.

While a ``StateTx`` is open on SQLite it holds the database's write lock from its first write on;
write through ``tx`` only, not through other ``Store`` methods, until it has committed.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, delete, select, tuple_, update
import structlog

from gc_daemon.disks import DiskChange, DiskForget, DiskRow
from gc_daemon.domain import BlobKey, Change, Forget, Tracked
from gc_daemon.owners import OwnerRecord
from gc_daemon.state.blob_rows import (
    _TRACKED_SQL,
    _UPSERT_SQL,
    StoredRow,
    _Converted,
    _pg_time,
    _sqlite_rows_per_statement,
    _sqlite_time,
    _sqlite_upsert_params,
    _sqlite_upsert_sql,
    _ts,
    _upsert_params,
)
from gc_daemon.state.disk_rows import _apply_disks, row_to_disk
from gc_daemon.state.owner_rows import iter_owner_fingerprints, iter_owner_rows, owner_records_of, put_owner_records
from gc_daemon.state.models import passes, tracked_blobs, tracked_disks
from gc_daemon.state.pass_records import COMPLETE, _last_complete_seq
from gc_daemon.state.sql import BATCH_SIZE

log = structlog.get_logger("vhd-gc.store")

SQLITE_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, restored after a pass's transaction
UPSERT_BATCH = 4000  # rows an upsert carries at most (SQLite: one statement, as the limit allows)


class StateTx:
    """The one transaction of a complete pass: read the tracked rows, write the changes, complete."""

    def __init__(self, conn: Connection, seq: int) -> None:
        self._conn = conn
        self.seq = seq  # the sequence number this pass takes if it completes

    def tracked(self, account: str) -> dict[BlobKey, Tracked]:
        """Every row of one account, as Tracked values."""
        return {key: row.materialize() for key, row in self.stored_rows(account).items()}

    def stored_rows(self, account: str) -> dict[BlobKey, "StoredRow"]:
        """Every row of one account, as the database gave it (the hot read of a pass): the
        decision reads the few fields it needs and materializes a Tracked only for what changes."""
        marker = "?" if self._conn.dialect.paramstyle == "qmark" else "%s"
        result = self._conn.exec_driver_sql(_TRACKED_SQL + marker, (account,))
        out: dict[BlobKey, StoredRow] = {}
        # Rows marked by one pass share their timestamps: each distinct one is parsed once (looked
        # up inline: a helper's call per value costs more than the lookup).
        memo: dict = {None: None}
        memo_get, miss = memo.get, memo  # the memo itself is never a value

        intern, new_key, new_row = sys.intern, tuple.__new__, tuple.__new__
        for (blob, container, url, state, blob_type, size_bytes, etag, last_modified, first_orphaned_at,
             delete_after, streak_start, sightings_frozen, billed_bytes, hold, reason, last_owner, tier,
             deleted_at, updated_at, recoverable_until) in result.cursor:
            key = new_key(BlobKey, (account, intern(container), blob))
            orphaned = memo_get(first_orphaned_at, miss)
            if orphaned is miss:
                orphaned = memo[first_orphaned_at] = _ts(first_orphaned_at)
            after = memo_get(delete_after, miss)
            if after is miss:
                after = memo[delete_after] = _ts(delete_after)
            out[key] = new_row(StoredRow, (
                key, url, state, blob_type, size_bytes, etag, last_modified, orphaned, after, streak_start,
                sightings_frozen, billed_bytes, hold, reason, last_owner, tier, deleted_at, updated_at,
                recoverable_until,
            ))
        result.close()
        return out

    def apply(self, changes: Iterable[Change | Forget]) -> int:
        """Write ``changes`` in order (upserts and deletes in batches); returns the rows written."""
        written = 0
        upserts: list[dict[str, Any]] = []
        forgets: list[BlobKey] = []
        for item in changes:
            if isinstance(item, Forget):
                if upserts:
                    written += self._upsert(upserts)
                    upserts = []
                forgets.append(item.key)
                if len(forgets) >= BATCH_SIZE:
                    written += self._delete(forgets)
                    forgets = []
            elif isinstance(item, Change):
                if forgets:
                    written += self._delete(forgets)
                    forgets = []
                upserts.append(item.row)
                if len(upserts) >= UPSERT_BATCH:
                    written += self._upsert(upserts)
                    upserts = []
            else:
                raise TypeError(f"apply() takes Change and Forget, not {type(item).__name__}")
        if upserts:
            written += self._upsert(upserts)
        if forgets:
            written += self._delete(forgets)
        return written

    def _upsert(self, rows: list[Tracked]) -> int:
        """INSERT ... ON CONFLICT DO UPDATE, the bulk write of a pass, without per-row ORM or
        type-processing overhead: multi-row statements on SQLite, the driver's executemany on
        PostgreSQL (same SQL)."""
        sqlite_ = self._conn.dialect.name == "sqlite"
        marker = "?" if self._conn.dialect.paramstyle == "qmark" else "%s"
        sql = _UPSERT_SQL.replace("?", marker) if marker != "?" else _UPSERT_SQL
        convert = _sqlite_time if sqlite_ else _pg_time
        when = _Converted(convert).__getitem__  # one pass writes the same few instants into many rows

        if sqlite_:
            # Multi-row statements, in order: a later row of the same key updates the earlier one,
            # exactly as row-by-row execution would.
            n = _sqlite_rows_per_statement(self._conn.connection.driver_connection)
            for i in range(0, len(rows), n):
                chunk = rows[i : i + n]
                shape, params = _sqlite_upsert_params(chunk, when)
                self._conn.exec_driver_sql(_sqlite_upsert_sql(len(chunk), shape), params)
        else:
            self._conn.exec_driver_sql(sql, [_upsert_params(t, when) for t in rows])
        return len(rows)

    def _delete(self, keys: list[BlobKey]) -> int:
        stmt = delete(tracked_blobs).where(
            tuple_(tracked_blobs.c.account, tracked_blobs.c.container, tracked_blobs.c.blob).in_(
                [tuple(k) for k in keys]
            )
        )
        return self._conn.execute(stmt).rowcount

    def disk_rows(self) -> dict[str, DiskRow]:
        """Every tracked disk and snapshot, by resource key (the lower-cased ARM id)."""
        return {r.resource_key: row_to_disk(r) for r in self._conn.execute(select(tracked_disks))}

    def apply_disks(self, changes: Iterable[DiskChange | DiskForget]) -> int:
        """Write the disk half of a pass (:func:`gc_daemon.disk_pass.decide_all`'s changes) in order;
        returns the rows written."""
        return _apply_disks(self._conn, changes)

    def stored_owner_records(self) -> Iterator[tuple[OwnerRecord, datetime | None]]:
        """Every owner record with its ``updated_at``, streamed, as this transaction sees them."""
        return iter_owner_rows(self._conn)

    def owner_fingerprints(self) -> Iterator[Any]:
        """What a pass compares of every owner record (gc_daemon.owners.StoredOwner's fields), streamed."""
        return iter_owner_fingerprints(self._conn)

    def owner_records_of(self, item_ids: Iterable[str]) -> dict[str, OwnerRecord]:
        """The full owner records of ``item_ids``, by item id."""
        return owner_records_of(self._conn, item_ids)

    def last_complete_started(self) -> datetime | None:
        """When the last complete pass before this one started (None: there was none)."""
        return self._conn.execute(
            select(passes.c.started_at).where(passes.c.seq.is_not(None)).order_by(passes.c.seq.desc()).limit(1)
        ).scalar()

    def put_owner_records(self, records: Iterable[OwnerRecord], updated_at: datetime) -> int:
        """Upsert owner records (whole rows, by item id); returns the rows written."""
        return put_owner_records(self._conn, records, updated_at)

    def complete_pass(self, pass_id: int, finished_at: datetime, stats: dict[str, Any]) -> None:
        """Mark the pass complete with ``self.seq``.

        ``passes.seq`` is unique: if another replica completed a pass with this number meanwhile,
        this raises and the whole transaction (every change of this pass) rolls back.
        """
        result = self._conn.execute(
            update(passes)
            .where(passes.c.id == pass_id)
            .values(outcome=COMPLETE, finished_at=finished_at, stats=stats, seq=self.seq)
        )
        if result.rowcount != 1:
            raise LookupError(f"no pass with id {pass_id}")


def _is_sqlite_file(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:")


class Transactions:
    """:class:`gc_daemon.state.store.Store`'s transaction of a pass, and the checkpoint after it."""

    engine: Engine
    _checkpointer: threading.Thread | None
    _checkpoint_lock: threading.Lock

    @contextmanager
    def transaction(self) -> Iterator[StateTx]:
        """One transaction: committed on a clean exit, rolled back on an exception.

        On a SQLite file, the commit does not also checkpoint the write-ahead log (copy what the
        transaction wrote into the database file: as long again as the write itself after a first
        pass over a large estate). The write is durable at the commit; the checkpoint runs after it
        on a thread of its own, as SQLite's documentation suggests for latency (:meth:`settle`).
        """
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection if _is_sqlite_file(self.engine) else None
            if raw is not None:
                raw.execute("PRAGMA wal_autocheckpoint=0")  # this connection only, until the commit
            try:
                with conn.begin():
                    yield StateTx(conn, _last_complete_seq(conn) + 1)
            finally:
                if raw is not None:
                    try:
                        raw.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_PAGES}")
                    except sqlite3.Error:  # a connection the failure closed: nothing to restore
                        pass  # (and the failure, not this, is what the caller must see)
        if raw is not None:
            self._checkpoint_in_background()

    def _checkpoint_in_background(self) -> None:
        with self._checkpoint_lock:
            if self._checkpointer is not None and self._checkpointer.is_alive():
                return  # the one running copies this transaction's pages too
            # Not a daemon thread: a process that exits first waits for the checkpoint to end.
            self._checkpointer = threading.Thread(target=self._checkpoint, name="wal-checkpoint")
            self._checkpointer.start()

    def _checkpoint(self) -> None:
        try:
            with self.engine.connect() as conn:
                # On the driver's connection, outside any transaction; PASSIVE: never waits for
                # readers or writers (what it cannot copy now, a later checkpoint copies).
                conn.connection.driver_connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except Exception as exc:  # noqa: BLE001 - the log keeps growing until a later checkpoint; nothing is lost
            log.warning("wal_checkpoint_failed", error=f"{type(exc).__name__}: {exc}")

    def settle(self, timeout: float | None = None) -> bool:
        """Wait for a background checkpoint, if one runs; False if it still runs after ``timeout``."""
        thread = self._checkpointer
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True
