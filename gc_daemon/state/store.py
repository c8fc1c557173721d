"""Every query of the state database.

:class:`Store` is cheap to build (no I/O until a method is called). Pass bookkeeping, holds and the
audit log commit call by call; the state changes of one complete pass go through a single
:class:`StateTx` (``with store.transaction() as tx``), so an interrupted pass changes nothing.

While a ``StateTx`` is open on SQLite it holds the database's write lock from its first write on;
write through ``tx`` only, not through other ``Store`` methods, until it has committed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
import functools
import sqlite3
import sys
import threading
from datetime import datetime, timezone
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any, NamedTuple

from sqlalchemy import (

    Connection,
    Engine,
    Insert,
    Row,
    and_,
    delete,
    exists,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
import structlog

from gc_daemon.disks import DiskChange, DiskForget, DiskHold, DiskRow, Kind, resource_key
from gc_daemon.domain import BlobKey, Change, Forget, Hold, State, Tracked
from gc_daemon.state.models import (
    DISK_KINDS,
    PASS_OUTCOMES,
    audit_log,
    disk_holds,
    operator_holds,
    passes,
    tracked_blobs,
    tracked_disks,
)

log = structlog.get_logger("vhd-gc.store")

BATCH_SIZE = 1000
SQLITE_AUTOCHECKPOINT_PAGES = 1000  # SQLite's default, restored after a pass's transaction
UPSERT_BATCH = 4000  # rows an upsert carries at most (SQLite: one statement, as the limit allows)
STREAM_BATCH = 1000

CONFIRM_PASS = "confirm-pass"

# Pass outcomes.
RUNNING = "running"
COMPLETE = "complete"
INCOMPLETE = "incomplete"
FAILED = "failed"
STOPPED = "stopped"  # ended by SIGTERM/SIGINT: a clean stop, not an incident

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

_KEY_COLUMNS = ("account", "container", "blob")
_TRACKED_COLUMNS = tuple(c.name for c in tracked_blobs.columns if c.name != "id")
_UPDATED_ON_CONFLICT = tuple(c for c in _TRACKED_COLUMNS if c not in _KEY_COLUMNS)


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


class DiskCount(NamedTuple):
    """One line of :meth:`Store.disk_counts`: the rows of one subscription, kind and state."""

    subscription: str
    kind: str
    state: str
    rows: int
    size_bytes: int  # provisioned
    billed_bytes: int  # what Azure bills of them (a disk: its tier's size; a snapshot: at most its size)
    monthly_cost: float | None  # with prices: the known costs summed; None without prices


# -- row <-> domain --------------------------------------------------------------------------


def row_to_tracked(r: Row[Any]) -> Tracked:
    return Tracked(
        key=BlobKey(r.account, r.container, r.blob),
        url=r.url,
        state=State(r.state),
        blob_type=r.blob_type,
        size_bytes=r.size_bytes,
        etag=r.etag,
        last_modified=r.last_modified,
        first_orphaned_at=r.first_orphaned_at,
        delete_after=r.delete_after,
        streak_start=r.streak_start,
        sightings_frozen=r.sightings_frozen,
        billed_bytes=r.billed_bytes,
        hold=Hold(r.hold) if r.hold is not None else None,
        reason=r.reason,
        last_owner=r.last_owner,
        tier=r.tier,
        deleted_at=r.deleted_at,
        updated_at=r.updated_at,
        recoverable_until=r.recoverable_until,
    )


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


def _audit_record(r: Row[Any]) -> AuditRecord:
    return AuditRecord(**{c.name: getattr(r, c.name) for c in audit_log.columns})


# -- disk rows -----------------------------------------------------------------------------


_DISK_STATES = {s.value: s for s in State}
_DISK_HOLDS = {h.value: h for h in DiskHold}
_KINDS = {k.value: k for k in Kind}


def disk_values(row: DiskRow) -> dict[str, Any]:
    """The columns of ``tracked_disks`` for ``row`` (every field of DiskRow)."""
    return {
        "resource_key": resource_key(row.id),
        "resource_id": row.id,
        "kind": Kind(row.kind).value,
        "state": State(row.state).value,
        "first_orphaned_at": row.first_orphaned_at,
        "delete_after": row.delete_after,
        "streak_start": row.streak_start,
        "sightings_frozen": row.sightings_frozen,
        "ownership_time": row.ownership_time,
        "ownership_known": bool(row.ownership_known),
        "hold": row.hold.value if row.hold is not None else None,
        "reason": row.reason,
        "updated_at": row.updated_at,
        "deleted_at": row.deleted_at,
        "subscription": row.subscription,
        "resource_group": row.resource_group,
        "name": row.name,
        "sku": row.sku,
        "disk_state": row.disk_state,
        "size_bytes": row.size_bytes,
        "location": row.location,
        "zones": list(row.zones or ()),
        "tags": dict(row.tags or {}),
        "fingerprint": row.fingerprint,
        "quarantine_snapshot": row.quarantine_snapshot,
        "quarantine_until": row.quarantine_until,
    }


_DISK_COLUMNS = tuple(c.name for c in tracked_disks.columns if c.name != "id")
assert set(_DISK_COLUMNS) == set(disk_values(DiskRow("x", Kind.SNAPSHOT, State.CANDIDATE, None, None, None))), \
    "store.disk_values is out of step with the tracked_disks model"


def row_to_disk(r: Row[Any]) -> DiskRow:
    return DiskRow(
        id=r.resource_id,
        kind=_KINDS[r.kind],
        state=_DISK_STATES[r.state],
        first_orphaned_at=r.first_orphaned_at,
        delete_after=r.delete_after,
        streak_start=r.streak_start,
        sightings_frozen=r.sightings_frozen,
        ownership_time=r.ownership_time,
        ownership_known=bool(r.ownership_known),
        hold=_DISK_HOLDS[r.hold] if r.hold is not None else None,
        reason=r.reason,
        updated_at=r.updated_at,
        deleted_at=r.deleted_at,
        subscription=r.subscription,
        resource_group=r.resource_group,
        name=r.name,
        sku=r.sku,
        disk_state=r.disk_state,
        size_bytes=r.size_bytes,
        location=r.location,
        zones=tuple(r.zones or ()),
        tags=dict(r.tags or {}),
        fingerprint=r.fingerprint,
        quarantine_snapshot=r.quarantine_snapshot,
        quarantine_until=r.quarantine_until,
    )


def _apply_disks(conn: Connection, changes: Iterable[DiskChange | DiskForget]) -> int:
    """Write disk changes in order: upserts by resource key, forgets deleted; the rows written."""
    written = 0
    upserts: list[dict[str, Any]] = []
    keys: set[str] = set()

    def flush() -> int:
        if not upserts:
            return 0
        stmt = _dialect_insert(conn, tracked_disks)
        stmt = stmt.on_conflict_do_update(
            index_elements=["resource_key"],
            set_={c: stmt.excluded[c] for c in _DISK_COLUMNS if c != "resource_key"},
        )
        conn.execute(stmt, list(upserts))
        n = len(upserts)
        upserts.clear()
        keys.clear()
        return n

    for item in changes:
        if isinstance(item, DiskForget):
            written += flush()
            written += conn.execute(
                delete(tracked_disks).where(tracked_disks.c.resource_key == resource_key(item.key))
            ).rowcount
        elif isinstance(item, DiskChange):
            values = disk_values(item.row)
            if values["resource_key"] in keys:
                written += flush()  # one statement never carries a key twice (PostgreSQL refuses it)
            upserts.append(values)
            keys.add(values["resource_key"])
            if len(upserts) >= BATCH_SIZE:
                written += flush()
        else:
            raise TypeError(f"apply_disks() takes DiskChange and DiskForget, not {type(item).__name__}")
    written += flush()
    return written


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


def _dialect_insert(conn: Connection, table: Any) -> Insert:
    name = conn.dialect.name
    if name == "postgresql":
        return postgresql.insert(table)
    if name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for the {name} dialect (PostgreSQL and SQLite only)")


def _last_complete_seq(conn: Connection) -> int:
    return conn.execute(select(func.coalesce(func.max(passes.c.seq), 0))).scalar_one()


def _key_filter(key: BlobKey, table: Any = tracked_blobs) -> Any:
    return and_(
        table.c.account == key.account, table.c.container == key.container, table.c.blob == key.blob
    )


_TRACKED_SQL = (
    "SELECT blob, container, url, state, blob_type, size_bytes, etag, last_modified, first_orphaned_at, "
    "delete_after, streak_start, sightings_frozen, billed_bytes, hold, reason, last_owner, tier, "
    "deleted_at, updated_at, recoverable_until FROM tracked_blobs WHERE account = "
)
# The bulk write's column order, spelled out so a row becomes a tuple without an intermediate dict;
# it must name every column of the table (checked at import).
_UPSERT_COLUMNS = (
    "account", "container", "blob", "url", "state", "blob_type", "size_bytes", "billed_bytes", "etag",
    "last_modified", "first_orphaned_at", "delete_after", "deleted_at", "updated_at", "streak_start",
    "sightings_frozen", "hold", "reason", "last_owner", "tier", "recoverable_until",
)
assert set(_UPSERT_COLUMNS) == set(_TRACKED_COLUMNS), "store._UPSERT_COLUMNS is out of step with the model"
_UPSERT_HEAD = f"INSERT INTO tracked_blobs ({', '.join(_UPSERT_COLUMNS)}) VALUES "
_UPSERT_ROW = f"({', '.join('?' for _ in _UPSERT_COLUMNS)})"
_UPSERT_TAIL = " ON CONFLICT (account, container, blob) DO UPDATE SET " + ", ".join(
    f"{c} = excluded.{c}" for c in _UPSERT_COLUMNS if c not in _KEY_COLUMNS
)
_UPSERT_SQL = _UPSERT_HEAD + _UPSERT_ROW + _UPSERT_TAIL
# SQLite: one statement inserts many rows (a multi-row VALUES), so a bulk write costs a statement
# execution per chunk instead of one per row. Chunks are large: each statement is also a round trip
# of the GIL (pysqlite releases it while SQLite works, and a busy decision thread keeps it up to
# the 5 ms switch interval before handing it back), so their count, not their size, is what costs.
SQLITE_MAX_ROWS_PER_STATEMENT = 4000


def _sqlite_rows_per_statement(dbapi_connection: Any) -> int:
    """Rows a statement can carry within this connection's limit on parameters (999 in old builds,
    32766 from SQLite 3.32, often more as distributions build it)."""
    try:
        limit = dbapi_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    except (AttributeError, sqlite3.Error):  # no getlimit, or not a pysqlite connection
        limit = 32766 if sqlite3.sqlite_version_info >= (3, 32, 0) else 999
    return max(1, min(SQLITE_MAX_ROWS_PER_STATEMENT, limit // len(_UPSERT_COLUMNS)))


_TIME_COLUMNS = frozenset(
    {"last_modified", "first_orphaned_at", "delete_after", "deleted_at", "updated_at", "recoverable_until"}
)


def _column_reader(column: str):
    """A function giving one column's values (as bound, before timestamps are converted) for a list
    of rows, read in C where it can be."""
    if column in _KEY_COLUMNS:
        get = attrgetter(f"key.{column}")
    elif column == "state":
        get = attrgetter("state._value_")
    elif column == "hold":
        return lambda rows: [None if h is None else h._value_ for h in map(attrgetter("hold"), rows)]
    else:
        get = attrgetter(column)
    return lambda rows: list(map(get, rows))


_COLUMN_READERS = tuple(_column_reader(c) for c in _UPSERT_COLUMNS)


@functools.lru_cache(maxsize=64)
def _sqlite_upsert_sql(rows: int, shared: tuple[bool, ...]) -> str:
    """An upsert of ``rows`` rows where the columns flagged in ``shared`` hold one value for all
    of them, bound once (``?1``, ``?2``, ... first); the rest are bound row by row, in order."""
    select, n_shared, n_varying = [], 0, 0
    for is_shared in shared:
        if is_shared:
            n_shared += 1
            select.append(f"?{n_shared}")
        else:
            n_varying += 1
            select.append(f"column{n_varying}")
    row = f"({', '.join('?' * n_varying)})"
    return (
        f"INSERT INTO tracked_blobs ({', '.join(_UPSERT_COLUMNS)}) SELECT {', '.join(select)} "
        f"FROM (VALUES {', '.join([row] * rows)}) WHERE true{_UPSERT_TAIL}"
    )


def _sqlite_upsert_params(rows: list[Tracked], when) -> tuple[tuple[bool, ...], tuple]:
    """The shape and parameters of :func:`_sqlite_upsert_sql` for ``rows``: a column whose value
    is the same in every row (the pass's instants, its state, reason and NULLs, in a first pass
    most of them) is bound once, not once a row. Binding is work done holding the GIL."""
    shared_values, varying, shape = [], [], []
    n = len(rows)
    for column, values_of in zip(_UPSERT_COLUMNS, _COLUMN_READERS):
        values = values_of(rows)
        if column in _TIME_COLUMNS:
            values = list(map(when, values))
        # The blob's name always varies: a VALUES row needs a column, even if one key is written twice.
        if n > 1 and column != "blob" and values.count(values[0]) == n:
            shared_values.append(values[0])
            shape.append(True)
        else:
            varying.append(values)
            shape.append(False)
    return tuple(shape), (*shared_values, *chain.from_iterable(zip(*varying)))


# pysqlite binds None through its adaptation protocol unless an adapter is registered for it: a
# failed lookup of __adapt__ and __conform__, two AttributeErrors per NULL parameter, a third of the
# cost of a bulk write whose rows hold half a dozen NULLs each. Adapting None to None binds the same
# NULL without them. (The registry is per process; this adapter changes no value for anyone.)
sqlite3.register_adapter(type(None), {}.get)


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime refused (timezone-aware UTC required): {value!r}")
    return value.astimezone(timezone.utc)


def _sqlite_time(value: datetime | None) -> str | None:
    # The text SQLAlchemy's SQLite DateTime writes and reads: "YYYY-MM-DD HH:MM:SS.ffffff" (UTC).
    if value is None:
        return None
    return _aware(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _pg_time(value: datetime | None) -> datetime | None:
    return None if value is None else _aware(value)


class _Converted(dict):
    """Values converted once each: ``memo[value]`` is ``convert(value)``, computed on first use
    (a hit is a dict lookup with no Python frame: a bulk write converts six timestamps a row)."""

    def __init__(self, convert) -> None:
        super().__init__({None: None})
        self.convert = convert

    def __missing__(self, value):
        out = self[value] = self.convert(value)
        return out


def _upsert_params(t: Tracked, when) -> tuple:
    k = t.key
    return (
        k[0], k[1], k[2], t.url, t.state._value_, t.blob_type, t.size_bytes, t.billed_bytes, t.etag,
        when(t.last_modified), when(t.first_orphaned_at), when(t.delete_after), when(t.deleted_at),
        when(t.updated_at), t.streak_start, t.sightings_frozen, t.hold._value_ if t.hold is not None else None,
        t.reason, t.last_owner, t.tier, when(t.recoverable_until),
    )


_STATES = {s.value: s for s in State}
_HOLDS = {h.value: h for h in Hold}


def _ts(value: Any) -> datetime | None:
    """A stored timestamp as aware UTC: SQLite hands back text, PostgreSQL an aware datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value + "+00:00")
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class StoredRow(tuple):
    """One tracked row as stored: the fields a decision reads first are ready (state, ETag, billed
    bytes, the schedule); the rest becomes a :class:`Tracked` only through :meth:`materialize`."""

    __slots__ = ()

    key = property(itemgetter(0))
    etag = property(itemgetter(5))
    first_orphaned_at = property(itemgetter(7))
    delete_after = property(itemgetter(8))
    streak_start = property(itemgetter(9))
    billed_bytes = property(itemgetter(11))

    @property
    def state(self) -> State:
        return _STATES[self[2]]

    @classmethod
    def stored(cls, t: Tracked) -> "StoredRow":
        """The row SQLite would hand back for ``t`` (timestamps as its text)."""
        return tuple.__new__(cls, (
            t.key, t.url, t.state._value_, t.blob_type, t.size_bytes, t.etag, _sqlite_time(t.last_modified),
            t.first_orphaned_at, t.delete_after, t.streak_start, t.sightings_frozen, t.billed_bytes,
            t.hold._value_ if t.hold is not None else None, t.reason, t.last_owner, t.tier,
            _sqlite_time(t.deleted_at), _sqlite_time(t.updated_at), _sqlite_time(t.recoverable_until),
        ))

    def materialize(self) -> Tracked:
        (key, url, state, blob_type, size_bytes, etag, last_modified, first_orphaned_at, delete_after,
         streak_start, sightings_frozen, billed_bytes, hold, reason, last_owner, tier, deleted_at, updated_at,
         recoverable_until) = self
        return Tracked(
            key, url, _STATES[state], blob_type, size_bytes, etag, _ts(last_modified), first_orphaned_at,
            delete_after, streak_start, sightings_frozen, billed_bytes,
            _HOLDS[hold] if hold is not None else None, reason, last_owner, tier, _ts(deleted_at), _ts(updated_at),
            _ts(recoverable_until),
        )


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


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_lock = threading.Lock()
        # The audit writes of this process (the executor's deletions, several at once) are committed
        # together: one transaction for all that wait (SQLite has one writer, and a commit's fsync is
        # what a deletion's record costs), each caller back once its entry is committed.
        self._audits = _GroupCommit(self._write_audits)

    # -- passes --------------------------------------------------------------------------------

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

    # -- the state of one complete pass ----------------------------------------------------------

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

    # -- report / explain ------------------------------------------------------------------------

    def rows(self, states: Iterable[State] | None = None, accounts: Iterable[str] | None = None) -> Iterator[Tracked]:
        """Tracked rows ordered by account, container, blob, streamed in batches; with ``states``
        or ``accounts``, only those."""
        stmt = select(tracked_blobs).order_by(
            tracked_blobs.c.account, tracked_blobs.c.container, tracked_blobs.c.blob
        )
        if states is not None:
            stmt = stmt.where(tracked_blobs.c.state.in_([State(s).value for s in states]))
        if accounts is not None:
            stmt = stmt.where(tracked_blobs.c.account.in_([a.lower() for a in accounts]))
        with self.engine.connect() as conn:
            result = conn.execute(stmt, execution_options={"yield_per": STREAM_BATCH})
            for r in result:
                yield row_to_tracked(r)

    def row(self, key: BlobKey) -> Tracked | None:
        with self.engine.connect() as conn:
            r = conn.execute(select(tracked_blobs).where(_key_filter(key))).first()
            return row_to_tracked(r) if r is not None else None

    def counts(self) -> list[tuple[str, str, int, int, int]]:
        """(account, state, blobs, sum of size_bytes, sum of billed_bytes) per account and state."""
        t = tracked_blobs
        stmt = (
            select(
                t.c.account,
                t.c.state,
                func.count(),
                func.coalesce(func.sum(t.c.size_bytes), 0),
                func.coalesce(func.sum(t.c.billed_bytes), 0),
            )
            .group_by(t.c.account, t.c.state)
            .order_by(t.c.account, t.c.state)
        )
        with self.engine.connect() as conn:
            return [(a, s, int(n), int(size), int(billed)) for a, s, n, size, billed in conn.execute(stmt)]

    # -- operator holds --------------------------------------------------------------------------

    def holds(self) -> dict[BlobKey, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(operator_holds))
            return {BlobKey(r.account, r.container, r.blob): r.reason for r in rows}

    def hold(self, key: BlobKey) -> str | None:
        """The reason of the operator hold on ``key`` as committed now, None when it is not held.

        A query of its own on a connection of its own, in a transaction that begins here: never a
        snapshot taken earlier (a pass's). On PostgreSQL (read committed, or any stricter level: the
        snapshot is taken at this transaction's first statement) and on SQLite (WAL: a read
        transaction sees every commit made before it began) it sees a hold that another process
        committed a moment ago. The executor asks it right before each delete."""
        stmt = select(operator_holds.c.reason).where(_key_filter(key, operator_holds))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def add_hold(self, key: BlobKey, reason: str, created_by: str, at: datetime) -> None:
        """Keep ``key``; holding it again replaces the reason, who and when."""
        with self.engine.begin() as conn:
            stmt = _dialect_insert(conn, operator_holds).values(
                account=key.account,
                container=key.container,
                blob=key.blob,
                reason=reason,
                created_by=created_by,
                created_at=at,
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=list(_KEY_COLUMNS),
                set_={c: stmt.excluded[c] for c in ("reason", "created_by", "created_at")},
            )
            conn.execute(stmt)

    def remove_hold(self, key: BlobKey) -> bool:
        """Stop keeping ``key``; False when it was not held."""
        with self.engine.begin() as conn:
            return conn.execute(delete(operator_holds).where(_key_filter(key, operator_holds))).rowcount > 0

    # -- audit -----------------------------------------------------------------------------------

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
        return self._audits.submit(("blob", list(changes), dict(
            at=at,
            pass_id=pass_id,
            intent_id=intent_id,
            action=action,
            account=key.account,
            container=key.container,
            blob=key.blob,
            url=url,
            etag=etag,
            size_bytes=size_bytes,
            billed_bytes=billed_bytes,
            reason=reason,
            error_code=error_code,
            actor=actor,
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
        return self._audits.submit(("disk", list(changes), dict(
            at=at,
            pass_id=pass_id,
            intent_id=intent_id,
            action=action,
            kind=kind,
            account=sub,
            container="",
            blob=resource_key(resource_id),
            url=resource_id,
            etag=etag,
            size_bytes=size_bytes,
            billed_bytes=billed_bytes,
            reason=reason,
            error_code=None if error_code is None else error_code[:64],
            actor=actor,
        )))

    # -- managed disks and snapshots -------------------------------------------------------------

    def disk_rows(
        self,
        states: Iterable[State] | None = None,
        kinds: Iterable[Kind | str] | None = None,
        subscriptions: Iterable[str] | None = None,
    ) -> list[DiskRow]:
        """Tracked disks and snapshots ordered by resource key; with ``states``, ``kinds`` or
        ``subscriptions`` (any case), only those."""
        t = tracked_disks
        stmt = select(t).order_by(t.c.resource_key)
        if states is not None:
            stmt = stmt.where(t.c.state.in_([State(s).value for s in states]))
        if kinds is not None:
            stmt = stmt.where(t.c.kind.in_([Kind(k).value for k in kinds]))
        if subscriptions is not None:
            stmt = stmt.where(func.lower(t.c.subscription).in_([s.lower() for s in subscriptions]))
        with self.engine.connect() as conn:
            return [row_to_disk(r) for r in conn.execute(stmt)]

    def disk_row(self, resource_id: str) -> DiskRow | None:
        """The tracked row of one disk or snapshot (its ARM id in any case), None when untracked."""
        stmt = select(tracked_disks).where(tracked_disks.c.resource_key == resource_key(resource_id))
        with self.engine.connect() as conn:
            r = conn.execute(stmt).first()
            return row_to_disk(r) if r is not None else None

    def disk_counts(self, prices: Any = None) -> list[DiskCount]:
        """Per subscription, kind and state: rows, provisioned bytes, billed bytes and (with
        ``prices``, a :class:`gc_daemon.disk_cost.DiskPricesConfig`) the monthly cost of those whose
        cost is known. Ordered by subscription, kind, state."""
        from gc_daemon.disk_cost import billed_bytes, disk_monthly_cost, snapshot_monthly_cost

        t = tracked_disks
        stmt = select(t.c.subscription, t.c.kind, t.c.state, t.c.sku, t.c.size_bytes)
        totals: dict[tuple[str, str, str], list] = {}
        with self.engine.connect() as conn:
            for sub, kind, state, sku, size in conn.execute(stmt):
                entry = totals.setdefault(((sub or "").lower(), kind, state), [0, 0, 0, 0.0])
                entry[0] += 1
                entry[1] += size or 0
                if size is None:
                    continue
                if kind == Kind.SNAPSHOT.value:  # bills the bytes it holds: at most its source's size
                    entry[2] += size
                    if prices is not None:
                        zrs = bool(sku) and sku.upper().endswith("_ZRS")
                        entry[3] += snapshot_monthly_cost(prices, size, zrs=zrs) or 0.0
                elif sku:
                    entry[2] += billed_bytes(sku, size) or 0
                    if prices is not None:
                        entry[3] += disk_monthly_cost(prices, sku, size) or 0.0
        return [
            DiskCount(sub, kind, state, n, size, billed, round(cost, 6) if prices is not None else None)
            for (sub, kind, state), (n, size, billed, cost) in sorted(totals.items())
        ]

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

    def disk_holds(self) -> dict[str, str]:
        """Operator holds on disks and snapshots: resource key -> reason."""
        with self.engine.connect() as conn:
            return {r.resource_key: r.reason for r in conn.execute(select(disk_holds))}

    def disk_hold(self, resource_id: str) -> str | None:
        """The reason of the operator hold on a disk or snapshot (its ARM id or key) as committed now,
        None when it is not held. Like :meth:`hold`: a fresh connection and transaction, so a `keep`
        that returned before this call is seen (the executor asks right before each deletion)."""
        stmt = select(disk_holds.c.reason).where(disk_holds.c.resource_key == resource_key(resource_id))
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def add_disk_hold(self, resource_id: str, reason: str, created_by: str, at: datetime) -> None:
        """Keep a disk or snapshot; holding it again replaces the reason, who and when."""
        with self.engine.begin() as conn:
            stmt = _dialect_insert(conn, disk_holds).values(
                resource_key=resource_key(resource_id),
                resource_id=resource_id,
                reason=reason,
                created_by=created_by,
                created_at=at,
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["resource_key"],
                set_={c: stmt.excluded[c] for c in ("resource_id", "reason", "created_by", "created_at")},
            )
            conn.execute(stmt)

    def remove_disk_hold(self, resource_id: str) -> bool:
        """Stop keeping a disk or snapshot; False when it was not held."""
        with self.engine.begin() as conn:
            stmt = delete(disk_holds).where(disk_holds.c.resource_key == resource_key(resource_id))
            return conn.execute(stmt).rowcount > 0

    # -- aggregates for metrics (so every replica, and a restarted one, exports the same) -------

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

    def pass_outcomes(self) -> dict[str, int]:
        stmt = select(passes.c.outcome, func.count()).group_by(passes.c.outcome)
        with self.engine.connect() as conn:
            return {outcome: int(n) for outcome, n in conn.execute(stmt)}

    def oldest_orphaned(self, states: Iterable[State]) -> datetime | None:
        stmt = select(func.min(tracked_blobs.c.first_orphaned_at)).where(
            tracked_blobs.c.state.in_([s.value for s in states])
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def premium_rows(self, states: Iterable[State]) -> list[tuple[str, str, int, int]]:
        """(account, state, size_bytes, billed_bytes) of premium page blobs (tier P*)."""
        t = tracked_blobs
        stmt = select(t.c.account, t.c.state, t.c.size_bytes, func.coalesce(t.c.billed_bytes, 0)).where(
            t.c.state.in_([s.value for s in states]), t.c.tier.like("P%")
        )
        with self.engine.connect() as conn:
            return [(a, s, int(size), int(billed)) for a, s, size, billed in conn.execute(stmt)]

    # -- the blast-radius guard ---------------------------------------------------------------

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
