"""The owner records on SQLite and PostgreSQL (issue 15): migration 0005_owner_records, the store's
reads (``Store.owner_records(item_ids)``, ``Store.all_owner_records()``) and the pass's write through
its transaction."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from alembic import command

from gc_daemon.domain import BlobKey
from gc_daemon.owners import OwnerRecord, blob_item_id, disk_item_id
from gc_daemon.state import db
from gc_daemon.state.store import Store

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
VM = "/subscriptions/0000AAAA-0000-0000-0000-000000000001/resourceGroups/RG-One/providers/Microsoft.Compute/virtualMachines/vm1"
DISK = "/subscriptions/0000AAAA-0000-0000-0000-000000000001/resourceGroups/RG-One/providers/Microsoft.Compute/disks/Data-01"
BLOB = blob_item_id(BlobKey("gcacct1", "vhds", "Disk One.vhd"))


def record(item_id: str = BLOB, **kw) -> OwnerRecord:
    values = dict(
        item_id=item_id, holder=VM, owner="alice@example.com", tags={"owner": "alice@example.com"},
        group_tags={"costCenter": "42", "team": "data"}, source="reference", first_seen=T0, last_seen=T0,
    )
    values.update(kw)
    return OwnerRecord(**values)


def test_migration_0005_adds_owner_records_and_its_downgrade_drops_them(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, "0004")
        db.upgrade(engine, "0005_owner_records")
        assert db.current_revision(engine) == "0005_owner_records"
        assert "owner_records" in sa.inspect(engine).get_table_names()
        with pytest.raises(sa.exc.IntegrityError):  # the source is checked
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO owner_records (item_id, source) VALUES ('a/c/b', 'guess')"))
        config = db.alembic_config()
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0004")
            conn.commit()
        assert "owner_records" not in sa.inspect(engine).get_table_names()
        db.upgrade(engine)
        assert db.model_drift(engine) == []
    finally:
        engine.dispose()


def test_owner_records_round_trip_and_missing_ids_are_absent(store: Store) -> None:
    disk = record(disk_item_id(DISK), holder=DISK, owner=None, tags={}, group_tags={}, first_seen=None,
                  last_seen=None, source="metadata")
    assert store.put_owner_records([record(), disk], T0) == 2
    got = store.owner_records([BLOB, disk_item_id(DISK), "gcacct1/vhds/none.vhd"])
    assert got == {BLOB: record(), disk_item_id(DISK): disk}
    # A disk's ARM id as Azure spells it finds its (lower-cased) record, keyed as it was asked.
    assert store.owner_records([DISK]) == {DISK: disk}
    assert store.owner_records([]) == {}
    assert store.all_owner_records() == {BLOB: record(), disk_item_id(DISK): disk}


def test_a_write_replaces_the_whole_row_and_the_last_of_one_id_wins(store: Store) -> None:
    store.put_owner_records([record()], T0)
    later = T0 + timedelta(hours=1)
    moved = record(holder=VM + "-b", owner="bob@example.com", tags={"CreatedBy": "bob@example.com"},
                   group_tags={}, first_seen=later, last_seen=later)
    assert store.put_owner_records([replace(moved, owner="nobody"), moved], later) == 1
    assert store.all_owner_records() == {BLOB: moved}
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT updated_at FROM owner_records")).scalar_one() is not None


def test_the_pass_transaction_reads_and_writes_owner_records_and_a_rollback_writes_none(store: Store) -> None:
    many = [record(f"gcacct1/vhds/d{i:05d}.vhd") for i in range(2500)]  # more than one batch
    with store.transaction() as tx:
        assert tx.put_owner_records(many, T0) == 2500
        assert {u for _, u in tx.stored_owner_records()} == {T0}
        assert sum(1 for _ in tx.stored_owner_records()) == 2500
    assert len(store.all_owner_records()) == 2500
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            tx.put_owner_records([record(BLOB)], T0)
            raise RuntimeError("the pass failed")
    assert BLOB not in store.all_owner_records()


def test_naive_times_and_unknown_sources_are_refused(store: Store) -> None:
    with pytest.raises(ValueError):
        store.put_owner_records([record(first_seen=datetime(2026, 1, 1))], T0)
    with pytest.raises(ValueError):
        store.put_owner_records([record(source="guess")], T0)
    assert store.all_owner_records() == {}
