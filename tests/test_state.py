"""The state database on SQLite and PostgreSQL: migrations, round trips, bulk writes, passes, audit."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from alembic import command
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError

from gc_daemon.domain import BlobKey, Change, Forget, Hold, State, Tracked
from gc_daemon.passes import Writer
from gc_daemon.state import db
from gc_daemon.state.models import tracked_blobs
from gc_daemon.state import blob_rows
from gc_daemon.state.store import DELETE_FAILED, DELETE_INTENT, DELETED, Store
from sandbox.postgres import PostgresServer

REPO_ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)
KEY = BlobKey("gcacct1", "vhds", "Disk One.vhd")


def tracked(key: BlobKey = KEY, **overrides: object) -> Tracked:
    row = Tracked(
        key=key,
        url=f"https://{key.account}.blob.core.windows.net/{key.container}/{key.blob}",
        state=State.CANDIDATE,
        blob_type="PageBlob",
        size_bytes=127 * 1024**3,
        etag='"0x8DC0FFEE"',
        last_modified=T0 - timedelta(days=30),
        first_orphaned_at=T0,
        delete_after=T0 + timedelta(days=7),
        streak_start=1,
    )
    return dataclasses.replace(row, **overrides)


def complete_pass(store: Store, changes: list[Change | Forget] = (), at: datetime = T0) -> int:
    pass_id = store.begin_pass(at, "dry-run", "host-a")
    with store.transaction() as tx:
        tx.apply(changes)
        tx.complete_pass(pass_id, at + timedelta(minutes=1), {"changes": len(changes)})
    return pass_id


# -- migrations ----------------------------------------------------------------------------


def test_migrations_reach_head_from_empty_without_drift(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        assert db.current_revision(engine) is None
        assert db.needs_upgrade(engine)
        db.upgrade(engine)
        assert db.current_revision(engine) == db.head_revision() is not None
        assert not db.needs_upgrade(engine)
        assert db.model_drift(engine) == []
        db.upgrade(engine)  # at head already: a no-op
        assert db.current_revision(engine) == db.head_revision()
        names = set(sa.inspect(engine).get_table_names())
        assert {"tracked_blobs", "passes", "audit_log", "operator_holds"} <= names
        # The downgrade undoes it all, and the schema comes back the same.
        config = db.alembic_config()
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "base")
        assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
        db.upgrade(engine)
        assert db.model_drift(engine) == []
    finally:
        engine.dispose()


def test_migration_0003_admits_stopped_and_keeps_the_audit_logs_pass_references(db_url: str) -> None:
    """0003 replaces the outcome check (SQLite rebuilds `passes`, which audit_log refers to): the
    audit rows keep their pass, the check admits `stopped` and still refuses anything else, and the
    downgrade turns stopped passes into failed ones."""
    engine = db.make_engine(db_url)
    try:
        db.upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO passes (id, seq, started_at, outcome, mode, host) "
                                 "VALUES (7, 1, '2026-01-01 00:00:00', 'complete', 'delete', 'h')"))
            conn.execute(sa.text("INSERT INTO audit_log (at, pass_id, action, account, container, blob, url, actor) "
                                 "VALUES ('2026-01-01 00:00:00', 7, 'deleted', 'a', 'c', 'b', 'u', 'x'), "
                                 "('2026-01-01 00:00:00', NULL, 'keep', 'a', 'c', 'b', 'u', 'x')"))
        with pytest.raises(IntegrityError):
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO passes (started_at, outcome, mode, host) "
                                     "VALUES ('2026-01-01 00:00:00', 'stopped', 'delete', 'h')"))
        db.upgrade(engine, "0003")
        assert db.current_revision(engine) == "0003"
        with engine.begin() as conn:
            assert conn.execute(sa.text("SELECT action, pass_id FROM audit_log ORDER BY id")).all() == [
                ("deleted", 7), ("keep", None)]
            conn.execute(sa.text("INSERT INTO passes (id, started_at, outcome, mode, host) "
                                 "VALUES (8, '2026-01-01 00:00:00', 'stopped', 'delete', 'h')"))
        with pytest.raises(IntegrityError):
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO passes (started_at, outcome, mode, host) "
                                     "VALUES ('2026-01-01 00:00:00', 'paused', 'delete', 'h')"))
        with pytest.raises(IntegrityError):  # the foreign key still holds
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO audit_log (at, pass_id, action, account, container, blob, url, actor) "
                                     "VALUES ('2026-01-01 00:00:00', 99, 'deleted', 'a', 'c', 'b', 'u', 'x')"))
        config = db.alembic_config()
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, "0002")
            conn.commit()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT id, outcome FROM passes ORDER BY id")).all() == [
                (7, "complete"), (8, "failed")]
            assert conn.execute(sa.text("SELECT pass_id FROM audit_log ORDER BY id")).all() == [(7,), (None,)]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_concurrent_upgrades_serialise_on_the_advisory_lock(postgres_server: PostgresServer) -> None:
    # Separate processes, like replicas deploying at once (Alembic itself is not thread-safe).
    url = postgres_server.create_database("concurrent_upgrade")
    code = "import sys; from gc_daemon.state import db; db.upgrade(db.make_engine(sys.argv[1]))"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err  # none fails on "relation already exists"
    engine = db.make_engine(url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        assert db.model_drift(engine) == []
    finally:
        engine.dispose()


def test_sqlite_engine_settings_all_good(tmp_path: Path) -> None:
    engine = db.make_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_check_constraint_refuses_unknown_state_borked(store: Store) -> None:
    row = {**_raw_row(), "state": "limbo"}
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(tracked_blobs).values(**row))


def test_foreign_key_refuses_unknown_intent_borked(store: Store) -> None:
    with pytest.raises(IntegrityError):
        store.audit(action=DELETED, key=KEY, url="u", at=T0, actor="me", intent_id=424242)


def _raw_row() -> dict[str, object]:
    return {
        "account": "a",
        "container": "c",
        "blob": "b.vhd",
        "url": "u",
        "state": "candidate",
        "blob_type": "PageBlob",
        "size_bytes": 1,
    }


# -- tracked rows --------------------------------------------------------------------------


def test_round_trip_every_field_set(store: Store) -> None:
    row = tracked(
        state=State.KEPT,
        billed_bytes=10 * 1024**3,
        sightings_frozen=4,
        hold=Hold.SNAPSHOTS,
        reason="has 2 snapshots",
        last_owner="vm-web-01",
        tier="P10",
        recoverable_until=T0 + timedelta(days=15),
        deleted_at=T0 + timedelta(days=8),
        updated_at=T0 + timedelta(seconds=1),
    )
    assert all(getattr(row, f.name) is not None for f in dataclasses.fields(row))
    with store.transaction() as tx:
        assert tx.apply([Change(row)]) == 1
    back = store.row(KEY)
    assert back == row
    assert isinstance(back.state, State) and isinstance(back.hold, Hold)
    for name in ("last_modified", "first_orphaned_at", "delete_after", "deleted_at", "updated_at"):
        value = getattr(back, name)
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0), name
    with store.transaction() as tx:
        assert tx.tracked("gcacct1") == {KEY: row}
        assert tx.tracked("elsewhere") == {}


def test_round_trip_minimal_row_keeps_nones(store: Store) -> None:
    row = tracked(etag=None, last_modified=None, first_orphaned_at=None, delete_after=None, streak_start=None)
    with store.transaction() as tx:
        tx.apply([Change(row)])
    assert store.row(KEY) == row
    assert store.row(BlobKey("gcacct1", "vhds", "disk one.vhd")) is None  # blob names keep their case


def test_other_time_zones_are_stored_as_utc(store: Store) -> None:
    cet = timezone(timedelta(hours=1))
    row = tracked(first_orphaned_at=datetime(2026, 3, 1, 13, 0, tzinfo=cet))
    with store.transaction() as tx:
        tx.apply([Change(row)])
    back = store.row(KEY)
    assert back.first_orphaned_at == datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
    assert back.first_orphaned_at.tzinfo == timezone.utc


def test_naive_datetimes_refused_borked(store: Store) -> None:
    naive = datetime(2026, 3, 1, 12, 0)
    with pytest.raises(StatementError, match="naive datetime"):
        store.begin_pass(naive, "dry-run", "host-a")
    with pytest.raises((StatementError, ValueError), match="naive datetime"), store.transaction() as tx:
        tx.apply([Change(tracked(first_orphaned_at=naive))])
    assert store.row(KEY) is None
    assert store.passes() == []


def test_apply_inserts_then_updates_then_forgets(store: Store) -> None:
    other = BlobKey("gcacct1", "vhds", "other.vhd")
    with store.transaction() as tx:
        assert tx.apply([Change(tracked()), Change(tracked(other))]) == 2
    updated = tracked(state=State.DUE, etag='"0x2"', streak_start=1, reason="due")
    with store.transaction() as tx:
        assert tx.apply([Change(updated)]) == 1
    assert store.row(KEY) == updated
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tracked_blobs)).scalar_one() == 2
    with store.transaction() as tx:
        assert tx.apply([Forget(KEY), Forget(BlobKey("gcacct1", "vhds", "never-tracked.vhd"))]) == 1
    assert store.row(KEY) is None
    assert store.row(other) is not None


def test_apply_keeps_the_order_of_changes_and_forgets(store: Store) -> None:
    with store.transaction() as tx:
        tx.apply([Change(tracked()), Forget(KEY), Change(tracked(state=State.RELEASED))])
    assert store.row(KEY).state is State.RELEASED


def test_bulk_apply_of_5000_changes(store: Store) -> None:
    keys = [BlobKey(f"gcacct{i % 3 + 1}", "vhds", f"disk-{i:05d}.vhd") for i in range(5000)]
    with store.transaction() as tx:
        assert tx.apply(Change(tracked(k)) for k in keys) == 5000
    assert sum(n for _, _, n, _, _ in store.counts()) == 5000
    with store.transaction() as tx:
        mine = tx.tracked("gcacct2")
        assert len(mine) == len([k for k in keys if k.account == "gcacct2"])
        changes = [Change(tracked(k, state=State.DUE)) for k in keys[:2500]]
        forgets = [Forget(k) for k in keys[2500:4000]]
        assert tx.apply([*changes, *forgets]) == 4000
    states = [t.state for t in store.rows()]
    assert len(states) == 3500
    assert states.count(State.DUE) == 2500
    assert sum(n for _, state, n, _, _ in store.counts() if state == "due") == 2500


def test_bulk_apply_in_one_batch_keeps_order_and_nones_of_every_row(store: Store) -> None:
    """A batch large enough for SQLite's multi-row statements: a key written twice in one batch
    ends as its last write, and every row round-trips (NULLs included) as row-by-row writes would."""
    keys = [BlobKey("gcacct1", "vhds", f"disk-{i:04d}.vhd") for i in range(1200)]
    rows = [tracked(k, billed_bytes=None if i % 3 else i, reason=None if i % 2 else "r", hold=Hold.TAG if i % 5 == 0 else None)
            for i, k in enumerate(keys)]
    last = tracked(keys[3], state=State.DUE, etag='"0x3"', streak_start=2)
    with store.transaction() as tx:
        assert tx.apply([Change(r) for r in rows[:700]] + [Change(last)] + [Change(r) for r in rows[700:]]) == 1201
    assert store.row(keys[3]) == last
    stored = {t.key: t for t in store.rows()}
    assert len(stored) == 1200
    assert all(stored[r.key] == r for r in rows if r.key != keys[3])


# Few values a column, so that chunks have columns shared by every row, columns that vary, and NULLs.
_ROW_VALUES = st.fixed_dictionaries({
    "state": st.sampled_from([State.CANDIDATE, State.DUE, State.KEPT]),
    "size_bytes": st.sampled_from([0, 512, 127 * 1024**3]),
    "billed_bytes": st.sampled_from([None, 0, 4096]),
    "etag": st.sampled_from(['"0x1"', '"0x2"']),
    "first_orphaned_at": st.sampled_from([T0, T0 + timedelta(microseconds=1)]),
    "delete_after": st.sampled_from([None, T0 + timedelta(days=7)]),
    "streak_start": st.sampled_from([1, 2]),
    "hold": st.sampled_from([None, Hold.TAG]),
    "reason": st.sampled_from([None, "orphan", "it's \"quoted\""]),
    "tier": st.sampled_from([None, "P10"]),
})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(st.integers(0, 40), _ROW_VALUES), min_size=1, max_size=120),
    per_statement=st.sampled_from([1, 2, 7, 4000]),
)
def test_bulk_apply_equals_row_by_row_writes(store: Store, rows, per_statement: int, monkeypatch) -> None:
    """Whatever the mix of shared, varying and NULL values (SQLite binds a value every row shares
    once), keys written twice included, what is stored is what row-by-row writes in order store."""
    monkeypatch.setattr(blob_rows, "SQLITE_MAX_ROWS_PER_STATEMENT", per_statement)
    with store.engine.begin() as conn:
        conn.execute(sa.delete(tracked_blobs))
    written = [tracked(BlobKey("gcacct1", "vhds", f"disk-{i:02d}.vhd"), **values) for i, values in rows]
    with store.transaction() as tx:
        assert tx.apply([Change(r) for r in written]) == len(written)
    expected = {r.key: r for r in written}  # the last write of a key is what stays
    assert {t.key: t for t in store.rows()} == expected


def test_rows_ordered_and_filtered_by_state(store: Store) -> None:
    rows = [
        tracked(BlobKey("b", "c1", "z.vhd")),
        tracked(BlobKey("a", "c2", "a.vhd"), state=State.DELETED),
        tracked(BlobKey("a", "c1", "b.vhd"), state=State.KEPT, hold=Hold.OPERATOR),
        tracked(BlobKey("a", "c1", "a.vhd")),
    ]
    with store.transaction() as tx:
        tx.apply(Change(r) for r in rows)
    assert [t.key for t in store.rows()] == sorted(r.key for r in rows)
    assert [t.key for t in store.rows([State.CANDIDATE])] == [
        BlobKey("a", "c1", "a.vhd"),
        BlobKey("b", "c1", "z.vhd"),
    ]
    assert list(store.rows([])) == []


def test_counts_per_account_and_state(store: Store) -> None:
    rows = [
        tracked(BlobKey("a", "c", "1.vhd"), size_bytes=100, billed_bytes=10),
        tracked(BlobKey("a", "c", "2.vhd"), size_bytes=200, billed_bytes=None),
        tracked(BlobKey("a", "c", "3.vhd"), size_bytes=50, billed_bytes=5, state=State.DUE),
        tracked(BlobKey("b", "c", "1.vhd"), size_bytes=7, billed_bytes=7, state=State.KEPT, hold=Hold.TAG),
    ]
    with store.transaction() as tx:
        tx.apply(Change(r) for r in rows)
    assert store.counts() == [
        ("a", "candidate", 2, 300, 210),  # 2.vhd's billed bytes are pending: counted at its nominal size
        ("a", "due", 1, 50, 5),
        ("b", "kept", 1, 7, 7),
    ]
    assert store.billed_pending() == [("a", 1, 200)]
    assert store.billed_pending_rows(["a", "b"]) == {"a": [(BlobKey("a", "c", "2.vhd"), '"0x8DC0FFEE"')]}
    assert store.billed_pending_rows([]) == {}


# -- transactions and passes ---------------------------------------------------------------


def test_transaction_rollback_on_exception_leaves_nothing(store: Store) -> None:
    pass_id = store.begin_pass(T0, "delete", "host-a")
    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.apply([Change(tracked())])
        tx.complete_pass(pass_id, T0 + timedelta(minutes=1), {"changes": 1})
        raise RuntimeError("boom")
    assert store.row(KEY) is None
    assert list(store.rows()) == []
    assert store.last_complete_seq() == 0
    assert store.last_complete_pass() is None
    (record,) = store.passes()
    assert record.outcome == "running" and record.seq is None and record.finished_at is None


def test_writer_thread_writes_batches_in_order_and_counts_them(store: Store) -> None:
    keys = [BlobKey("gcacct1", "vhds", f"disk-{i:04d}.vhd") for i in range(3000)]
    batches = [[Change(tracked(k)) for k in keys[i : i + 250]] for i in range(0, len(keys), 250)]
    later = tracked(keys[7], state=State.DUE, etag='"0x7"', streak_start=2)
    with store.transaction() as tx, Writer(tx) as writer:
        for batch in batches:
            writer.submit(batch)
        writer.submit([Change(later), Forget(keys[8])])
        assert writer.finish() == len(keys) + 2
    stored = {t.key: t for t in store.rows()}
    assert len(stored) == len(keys) - 1 and keys[8] not in stored
    assert stored[keys[7]] == later  # submitted after the first write of the key: it stays


def test_writer_error_reaches_the_pass_and_the_transaction_writes_nothing(store: Store) -> None:
    """A write that fails on the writer's thread is raised in the pass (here: a naive timestamp);
    submitting goes on without blocking, nothing after it is written, and the rollback leaves nothing."""
    good = [[Change(tracked(BlobKey("gcacct1", "vhds", f"disk-{b}-{i}.vhd"))) for i in range(50)] for b in range(40)]
    bad = tracked(BlobKey("gcacct1", "vhds", "naive.vhd"), first_orphaned_at=T0.replace(tzinfo=None))
    submitted = 0
    with pytest.raises(ValueError, match="naive datetime refused"):
        with store.transaction() as tx, Writer(tx) as writer:
            writer.submit(good[0])
            writer.submit([Change(bad)])
            for batch in good[1:]:  # more batches than the writer's queue holds
                writer.submit(batch)
                submitted += 1
            writer.finish()
    assert submitted <= len(good) - 1
    assert list(store.rows()) == []


def test_pass_transaction_checkpoints_the_log_after_its_commit(tmp_path: Path) -> None:
    """SQLite: the commit leaves the write-ahead log to a checkpoint on its own thread; once it
    has run, the database file alone (a copy without its -wal) holds what the transaction wrote."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    try:
        db.upgrade(engine)
        store = Store(engine)
        keys = [BlobKey("gcacct1", "vhds", f"disk-{i:04d}.vhd") for i in range(2000)]
        with store.transaction() as tx:
            tx.apply([Change(tracked(k)) for k in keys])
        assert store.settle(timeout=300)
        shutil.copyfile(tmp_path / "state.db", tmp_path / "copy.db")
        with closing(sqlite3.connect(tmp_path / "copy.db")) as copy:
            assert copy.execute("SELECT count(*) FROM tracked_blobs").fetchone() == (2000,)
        with engine.connect() as conn:  # connections are back on SQLite's automatic checkpoints
            assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one() == 1000
    finally:
        engine.dispose()


def test_seq_increments_only_on_complete_passes(store: Store) -> None:
    assert store.last_complete_seq() == 0
    with store.transaction() as tx:
        assert tx.seq == 1
    first = complete_pass(store)
    assert store.last_complete_seq() == 1

    failed = store.begin_pass(T0 + timedelta(hours=1), "dry-run", "host-a")
    store.finish_pass(failed, "incomplete", T0 + timedelta(hours=1, minutes=1), error="ARM 503")
    crashed = store.begin_pass(T0 + timedelta(hours=2), "dry-run", "host-a")
    store.finish_pass(crashed, "failed", T0 + timedelta(hours=2, minutes=1), error="bug")
    assert store.last_complete_seq() == 1
    with store.transaction() as tx:
        assert tx.seq == 2

    second = complete_pass(store, at=T0 + timedelta(hours=3))
    assert store.last_complete_seq() == 2
    records = store.passes()
    assert [r.id for r in records] == [second, crashed, failed, first]  # newest first
    assert [r.seq for r in records] == [2, None, None, 1]
    assert [r.outcome for r in records] == ["complete", "failed", "incomplete", "complete"]
    assert records[2].error == "ARM 503"
    assert records[0].stats == {"changes": 0}
    assert records[0].started_at == T0 + timedelta(hours=3)
    assert store.last_complete_pass() == records[0]
    assert store.passes(limit=1) == records[:1]

    # Recording stats after the state transaction keeps the pass's number.
    store.finish_pass(second, "complete", T0 + timedelta(hours=4), stats={"deleted": 3})
    assert store.last_complete_pass().seq == 2
    assert store.last_complete_pass().stats == {"deleted": 3}
    # A complete pass that never went through a state transaction takes the next number.
    bare = store.begin_pass(T0 + timedelta(hours=5), "dry-run", "host-b")
    store.finish_pass(bare, "complete", T0 + timedelta(hours=5, minutes=1))
    assert store.last_complete_pass().id == bare and store.last_complete_seq() == 3


def test_finish_pass_refuses_running_and_unknown_outcomes_borked(store: Store) -> None:
    pass_id = store.begin_pass(T0, "dry-run", "host-a")
    for outcome in ("running", "great"):
        with pytest.raises(ValueError):
            store.finish_pass(pass_id, outcome, T0)
    with pytest.raises(LookupError):
        store.finish_pass(pass_id + 1000, "failed", T0)


def test_unique_seq_refuses_two_passes_with_the_same_number_borked(store: Store) -> None:
    a = store.begin_pass(T0, "delete", "replica-a")
    b = store.begin_pass(T0, "delete", "replica-b")
    # Both replicas read the same number; b completes first; a must not complete as well.
    with pytest.raises(DBAPIError), store.transaction() as tx_a:
        assert tx_a.seq == 1
        tx_a.tracked("gcacct1")
        with store.transaction() as tx_b:
            assert tx_b.seq == 1
            tx_b.apply([Change(tracked(state=State.DUE))])
            tx_b.complete_pass(b, T0 + timedelta(minutes=1), {})
        tx_a.apply([Change(tracked(BlobKey("gcacct1", "vhds", "from-a.vhd")))])
        tx_a.complete_pass(a, T0 + timedelta(minutes=1), {})
    assert {r.id: r.seq for r in store.passes()} == {a: None, b: 1}
    assert store.row(BlobKey("gcacct1", "vhds", "from-a.vhd")) is None  # a's changes rolled back
    assert store.row(KEY).state is State.DUE


def test_unique_seq_constraint_borked(store: Store) -> None:
    a = store.begin_pass(T0, "delete", "replica-a")
    b = store.begin_pass(T0, "delete", "replica-b")
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        passes = sa.table("passes", sa.column("id"), sa.column("seq"))
        conn.execute(sa.update(passes).where(passes.c.id.in_([a, b])).values(seq=7))


# -- holds and audit -----------------------------------------------------------------------


def test_holds_add_and_remove(store: Store) -> None:
    other = BlobKey("gcacct2", "vhds", "b.vhd")
    assert store.holds() == {}
    store.add_hold(KEY, "golden image", "alice", T0)
    store.add_hold(other, "ticket 42", "bob", T0)
    store.add_hold(KEY, "golden image, still", "carol", T0 + timedelta(days=1))  # replaces
    assert store.holds() == {KEY: "golden image, still", other: "ticket 42"}
    assert store.remove_hold(KEY) is True
    assert store.remove_hold(KEY) is False
    assert store.holds() == {other: "ticket 42"}


def test_hold_reads_what_another_connection_committed_while_a_snapshot_is_open(store: Store) -> None:
    """Store.hold (asked before each delete) never answers from an older snapshot: a transaction
    that began before the hold (REPEATABLE READ on PostgreSQL, a WAL read on SQLite) does not see
    it; hold() does, the moment the other connection has committed it."""
    assert store.hold(KEY) is None
    with store.engine.connect() as old:
        if old.dialect.name == "postgresql":
            old = old.execution_options(isolation_level="REPEATABLE READ")
        with old.begin():
            assert old.execute(sa.text("SELECT count(*) FROM operator_holds")).scalar() == 0  # snapshot taken
            other = Store(db.make_engine(store.engine.url.render_as_string(hide_password=False)))
            other.add_hold(KEY, "INC-11", "operator", T0)  # committed by another engine's connection
            other.engine.dispose()
            assert old.execute(sa.text("SELECT count(*) FROM operator_holds")).scalar() == 0  # the old snapshot
            assert store.hold(KEY) == "INC-11"  # a transaction of its own: sees it
    assert store.hold(BlobKey("gcacct1", "vhds", "other.vhd")) is None
    store.remove_hold(KEY)
    assert store.hold(KEY) is None


def test_audit_intent_then_outcome_and_unresolved_intents(store: Store) -> None:
    pass_id = store.begin_pass(T0, "delete", "host-a")
    other = BlobKey("gcacct1", "vhds", "other.vhd")
    common = {"at": T0, "actor": "host-a", "pass_id": pass_id}
    i1 = store.audit(action=DELETE_INTENT, key=KEY, url="u1", etag='"e1"', size_bytes=10, billed_bytes=5, reason="due", **common)
    i2 = store.audit(action=DELETE_INTENT, key=other, url="u2", etag='"e2"', **common)
    i3 = store.audit(action=DELETE_INTENT, key=KEY, url="u1", etag='"e1"', **common)
    assert [r.id for r in store.unresolved_intents()] == [i1, i2, i3]

    d1 = store.audit(action=DELETED, key=KEY, url="u1", intent_id=i1, etag='"e1"', **common)
    store.audit(action=DELETE_FAILED, key=KEY, url="u1", intent_id=i3, error_code="ServerBusy", **common)
    assert [r.id for r in store.unresolved_intents()] == [i2]

    log = store.audit_log(KEY)
    assert [r.action for r in log] == [DELETE_INTENT, DELETE_INTENT, DELETED, DELETE_FAILED]
    intent = log[0]
    assert (intent.id, intent.key, intent.etag, intent.size_bytes, intent.billed_bytes) == (i1, KEY, '"e1"', 10, 5)
    assert intent.at == T0 and intent.pass_id == pass_id and intent.intent_id is None
    assert log[2].intent_id == i1 and log[2].id == d1
    assert log[3].error_code == "ServerBusy"
    assert [r.id for r in store.audit_log(actions=[DELETED])] == [d1]
    assert [r.action for r in store.audit_log(limit=2)] == [DELETED, DELETE_FAILED]  # newest two, oldest first
    assert len(store.audit_log()) == 5


# -- the throwaway server ------------------------------------------------------------------


@pytest.mark.postgres
def test_sandbox_postgres_cli_ready_then_stops_on_sigterm(postgres_server: PostgresServer) -> None:
    basedir = Path(tempfile.mkdtemp(prefix="vhdgc-pgcli-"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.postgres", "--dir", str(basedir)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY postgresql+psycopg://postgres@127.0.0.1:"), (line, proc.stderr)
        engine = sa.create_engine(line.split()[1])
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        engine.dispose()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=180) == 0
        assert not basedir.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
