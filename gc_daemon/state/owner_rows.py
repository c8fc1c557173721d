"""Who owned a blob or a disk (``owner_records``, issue 15): a row to and from
:class:`gc_daemon.owners.OwnerRecord`, the pass's write (:func:`put_owner_records`, through
:meth:`gc_daemon.state.transaction.StateTx.put_owner_records`) and the reads of the report, explain and
the notices (:class:`OwnerRecordQueries`: ``Store.owner_records(item_ids)``, ``Store.all_owner_records()``).

One row per item id (:func:`gc_daemon.owners.blob_item_id` / :func:`gc_daemon.owners.disk_item_id`).
A write replaces the whole row; the pass writes a record only when something of it changed (see
gc_daemon/owners.py), so a steady pass over an unchanged estate writes none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from gc_daemon.owners import OwnerRecord
from gc_daemon.state.models import owner_records
from gc_daemon.state.sql import BATCH_SIZE, _aware, _dialect_insert

_COLUMNS = tuple(c.name for c in owner_records.columns)
assert set(_COLUMNS) == {
    "item_id", "holder", "owner", "tags", "group_tags", "source", "first_seen", "last_seen", "updated_at"
}, "owner_rows is out of step with the owner_records model"

_LOOKUP_BATCH = 500  # item ids an IN (...) carries at most (SQLite's variable limit is far above)


def _tags(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):  # a driver that hands JSON back as text
        value = json.loads(value)
    return {str(k): str(v) for k, v in dict(value).items()}


def row_to_owner(r: Any) -> OwnerRecord:
    return OwnerRecord(
        item_id=r.item_id,
        holder=r.holder,
        owner=r.owner,
        tags=_tags(r.tags),
        group_tags=_tags(r.group_tags),
        source=r.source,
        first_seen=r.first_seen,
        last_seen=r.last_seen,
    )


def owner_values(record: OwnerRecord, updated_at: datetime) -> dict[str, Any]:
    """The columns of ``owner_records`` for ``record``, written at ``updated_at``."""
    if record.source not in ("reference", "metadata"):
        raise ValueError(f"an owner record's source is reference or metadata, not {record.source!r}")
    return {
        "item_id": record.item_id,
        "holder": record.holder,
        "owner": record.owner,
        "tags": dict(record.tags),
        "group_tags": dict(record.group_tags),
        "source": record.source,
        "first_seen": _aware(record.first_seen) if record.first_seen is not None else None,
        "last_seen": _aware(record.last_seen) if record.last_seen is not None else None,
        "updated_at": _aware(updated_at),
    }


def put_owner_records(conn: Connection, records: Iterable[OwnerRecord], updated_at: datetime) -> int:
    """Upsert ``records`` (whole rows, by item id; a later record of the same id wins); the rows written."""
    written = 0
    batch: dict[str, dict[str, Any]] = {}

    def flush() -> int:
        if not batch:
            return 0
        stmt = _dialect_insert(conn, owner_records)
        stmt = stmt.on_conflict_do_update(
            index_elements=["item_id"], set_={c: stmt.excluded[c] for c in _COLUMNS if c != "item_id"}
        )
        conn.execute(stmt, list(batch.values()))
        n = len(batch)
        batch.clear()
        return n

    for record in records:
        batch[record.item_id] = owner_values(record, updated_at)  # one statement never carries an id twice
        if len(batch) >= BATCH_SIZE:
            written += flush()
    written += flush()
    return written


def iter_owner_rows(conn: Connection) -> Iterator[tuple[OwnerRecord, datetime | None]]:
    """Every owner record with its ``updated_at``, streamed (not held in memory at once)."""
    # Streamed by this statement only (Connection.execution_options would change the whole connection's).
    result = conn.execute(select(owner_records), execution_options={"stream_results": True, "yield_per": 1000})
    try:
        for r in result:
            yield row_to_owner(r), r.updated_at
    finally:
        result.close()


_FINGERPRINT_SQL = (
    "SELECT item_id, holder, owner, tags, group_tags, source, "
    "(source = 'reference' AND last_seen IS NOT NULL AND last_seen = updated_at) FROM owner_records"
)


def iter_owner_fingerprints(conn: Connection) -> Iterator[Any]:
    """What a pass compares of every stored record (gc_daemon.owners.StoredOwner's fields, as rows),
    streamed, without building records: tags as the driver gives them."""
    result = conn.exec_driver_sql(_FINGERPRINT_SQL, execution_options={"stream_results": True, "yield_per": 1000})
    try:
        # SQLite: the driver's own cursor (its tuples, no Row objects); it streams anyway.
        yield from (result.cursor if conn.dialect.name == "sqlite" else result)
    finally:
        result.close()


def owner_records_of(conn: Connection, item_ids: Iterable[str]) -> dict[str, OwnerRecord]:
    """The full stored records of ``item_ids`` (exact ids), by item id."""
    ids = list(item_ids)
    out: dict[str, OwnerRecord] = {}
    t = owner_records
    for start in range(0, len(ids), _LOOKUP_BATCH):
        for r in conn.execute(select(t).where(t.c.item_id.in_(ids[start : start + _LOOKUP_BATCH]))):
            out[r.item_id] = row_to_owner(r)
    return out


class OwnerRecordQueries:
    """:class:`gc_daemon.state.store.Store`'s reads of owner records."""

    engine: Engine

    def owner_records(self, item_ids: Iterable[str]) -> dict[str, OwnerRecord]:
        """The owner records of ``item_ids`` (blob_item_id / disk_item_id), by item id; ids without a
        record are absent. A disk id is matched lower-cased (as disk_item_id makes it)."""
        ids = list(dict.fromkeys(item_ids))
        out: dict[str, OwnerRecord] = {}
        if not ids:
            return out
        t = owner_records
        wanted = {i: i for i in ids}
        for i in ids:  # a disk's ARM id given as Azure spells it finds its lower-cased record
            if i.startswith("/") and i.lower() not in wanted:
                wanted[i.lower()] = i
        keys = list(wanted)
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _LOOKUP_BATCH):
                chunk = keys[start : start + _LOOKUP_BATCH]
                for r in conn.execute(select(t).where(t.c.item_id.in_(chunk))):
                    out[wanted[r.item_id]] = row_to_owner(r)
        return out

    def all_owner_records(self) -> dict[str, OwnerRecord]:
        """Every owner record, by item id."""
        with self.engine.connect() as conn:
            return {r.item_id: r for r, _ in iter_owner_rows(conn)}

    def put_owner_records(self, records: Iterable[OwnerRecord], updated_at: datetime) -> int:
        """Upsert ``records`` in a transaction of their own (tests, tools; a pass writes through its
        :class:`StateTx`); the rows written."""
        with self.engine.begin() as conn:
            return put_owner_records(conn, records, updated_at)
