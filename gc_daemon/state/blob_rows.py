"""The tracked blob rows (``tracked_blobs``): a row to and from the domain's :class:`Tracked`, the
pass's hot read (:class:`StoredRow`) and its bulk write (the upsert SQL and its parameters, SQLite's
multi-row statements), and the queries of the report, explain and metrics (:class:`BlobRowQueries`).
The pass's transaction that runs the read and the write is :class:`gc_daemon.state.transaction.StateTx`.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

from sqlalchemy import Engine, Row, func, select

from gc_daemon.domain import BlobKey, Hold, State, Tracked
from gc_daemon.state.models import tracked_blobs
from gc_daemon.state.sql import _KEY_COLUMNS, _aware, _key_filter

STREAM_BATCH = 1000

_TRACKED_COLUMNS = tuple(c.name for c in tracked_blobs.columns if c.name != "id")
_UPDATED_ON_CONFLICT = tuple(c for c in _TRACKED_COLUMNS if c not in _KEY_COLUMNS)


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


# The states whose blobs get their billed bytes measured (decide.decide_blob): orphans, held or not.
_MEASURED_STATES = (State.CANDIDATE.value, State.DUE.value, State.KEPT.value)


class BlobRowQueries:
    """:class:`gc_daemon.state.store.Store`'s reads of tracked blob rows, each on a connection of its own."""

    engine: Engine

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
        """(account, state, blobs, sum of size_bytes, sum of billed_bytes) per account and state (a row
        still pending, its billed bytes unmeasured, counts its size_bytes)."""
        t = tracked_blobs
        stmt = (
            select(
                t.c.account,
                t.c.state,
                func.count(),
                func.coalesce(func.sum(t.c.size_bytes), 0),
                # A row whose billed bytes are not measured yet (pending) counts at its nominal size:
                # an upper bound (written pages never exceed it), never a silent 0.
                func.coalesce(func.sum(func.coalesce(t.c.billed_bytes, t.c.size_bytes)), 0),
            )
            .group_by(t.c.account, t.c.state)
            .order_by(t.c.account, t.c.state)
        )
        with self.engine.connect() as conn:
            return [(a, s, int(n), int(size), int(billed)) for a, s, n, size, billed in conn.execute(stmt)]

    def billed_pending(self) -> list[tuple[str, int, int]]:
        """(account, rows, sum of size_bytes) of the orphaned page blobs whose billed bytes are not
        measured yet (marked before a measurement landed: the next pass measures them)."""
        t = tracked_blobs
        stmt = (
            select(t.c.account, func.count(), func.coalesce(func.sum(t.c.size_bytes), 0))
            .where(t.c.state.in_(_MEASURED_STATES), t.c.blob_type == "PageBlob", t.c.billed_bytes.is_(None))
            .group_by(t.c.account)
            .order_by(t.c.account)
        )
        with self.engine.connect() as conn:
            return [(a, int(n), int(size)) for a, n, size in conn.execute(stmt)]

    def billed_pending_rows(self, accounts: Iterable[str]) -> dict[str, list[tuple[BlobKey, str | None]]]:
        """account -> [(key, recorded ETag)] of its pending rows (see :meth:`billed_pending`)."""
        t = tracked_blobs
        names = list(accounts)
        if not names:
            return {}
        stmt = select(t.c.account, t.c.container, t.c.blob, t.c.etag).where(
            t.c.account.in_(names), t.c.state.in_(_MEASURED_STATES), t.c.blob_type == "PageBlob",
            t.c.billed_bytes.is_(None))
        out: dict[str, list[tuple[BlobKey, str | None]]] = {}
        with self.engine.connect() as conn:
            for a, c, b, etag in conn.execute(stmt):
                out.setdefault(a, []).append((BlobKey(a, c, b), etag))
        return out

    def oldest_orphaned(self, states: Iterable[State]) -> datetime | None:
        stmt = select(func.min(tracked_blobs.c.first_orphaned_at)).where(
            tracked_blobs.c.state.in_([s.value for s in states])
        )
        with self.engine.connect() as conn:
            return conn.execute(stmt).scalar()

    def premium_rows(self, states: Iterable[State]) -> list[tuple[str, str, int, int]]:
        """(account, state, size_bytes, billed_bytes) of premium page blobs (tier P*)."""
        t = tracked_blobs
        stmt = select(t.c.account, t.c.state, t.c.size_bytes, func.coalesce(t.c.billed_bytes, t.c.size_bytes)).where(
            t.c.state.in_([s.value for s in states]), t.c.tier.like("P%")
        )
        with self.engine.connect() as conn:
            return [(a, s, int(size), int(billed)) for a, s, size, billed in conn.execute(stmt)]
