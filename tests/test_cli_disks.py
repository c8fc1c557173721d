"""The command line with managed disks and snapshots in the state database: `report` (--kind,
--subscription, the contract's disk keys in json, csv and table), `keep`/`unkeep`/`audit`/`explain`
with an ARM id in any case, and blob rows beside them unchanged. The store is seeded through the
Store API (what a pass writes); the commands run as an operator runs them (the real CLI, in process,
and once as a separate process)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gc_daemon.cli import cli
from gc_daemon.config import load_config
from gc_daemon.disks import DiskChange, DiskHold, DiskRow, Kind
from gc_daemon.domain import BlobKey, Change, State, Tracked
from gc_daemon.report import DISK_FIELDS, FIELDS
from gc_daemon.state.db import make_engine, upgrade
from gc_daemon.state.store import Store

SUB = "00000000-0000-0000-0000-00000000000a"
SUB2 = "00000000-0000-0000-0000-00000000000b"
GIB = 1024**3
NOW = datetime.now(UTC).replace(microsecond=0)
MARKED = NOW - timedelta(days=2)
OWNED = NOW - timedelta(days=40)
BLOB = BlobKey("offacct1", "vhds", "old.vhd")
BLOB_URL = "http://127.0.0.1:9/offacct1/vhds/old.vhd"


def rid(name: str, kind: str = "disks", sub: str = SUB, rg: str = "RG-One") -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/{kind}/{name}"


def disk(name: str, **kw) -> DiskRow:
    sub = kw.pop("sub", SUB)
    kind = kw.get("kind", Kind.MANAGED_DISK)
    values = dict(
        id=rid(name, "disks" if kind is Kind.MANAGED_DISK else "snapshots", sub), kind=kind, state=State.CANDIDATE,
        first_orphaned_at=MARKED, delete_after=MARKED + timedelta(days=7), streak_start=1, ownership_time=OWNED,
        ownership_known=True, reason="orphan: unattached since ...", updated_at=MARKED, subscription=sub,
        resource_group="RG-One", name=name, sku="Premium_LRS",
        disk_state="Unattached" if kind is Kind.MANAGED_DISK else None, size_bytes=100 * GIB,
        location="westeurope", zones=("1",), tags={"owner": "team-a"},
    )
    values.update(kw)
    return DiskRow(**values)


DATA = disk("data-01")
LOCKED = disk("locked-01", sub=SUB2, state=State.KEPT, hold=DiskHold.LOCKED, reason="CanNotDelete lock x",
              delete_after=None, size_bytes=4 * GIB, sku="Standard_LRS")
SNAP = disk("snap-01", kind=Kind.SNAPSHOT, size_bytes=64 * GIB, sku="Standard_LRS", zones=())
QUARANTINE = rid("vhdgc-q-gone-01", "snapshots")
GONE = disk("gone-01", state=State.DELETED, deleted_at=NOW - timedelta(days=1), streak_start=None, sightings_frozen=3,
            quarantine_snapshot=QUARANTINE, quarantine_until=NOW + timedelta(days=29), size_bytes=8 * GIB)


def blob_row() -> Tracked:
    return Tracked(key=BLOB, url=BLOB_URL, state=State.CANDIDATE, blob_type="PageBlob", size_bytes=2 * GIB,
                   etag='"0x1"', last_modified=OWNED, first_orphaned_at=MARKED, delete_after=MARKED + timedelta(days=7),
                   streak_start=1, billed_bytes=GIB)


@pytest.fixture
def env(tmp_path: Path):
    db_url = f"sqlite:///{tmp_path / 'state.db'}"
    config = tmp_path / "vhd-gc.yaml"
    config.write_text(yaml.safe_dump({
        "database_url": db_url,
        "azure": {
            "credential": "emulator",
            "arm_endpoint": "https://127.0.0.1:9",
            "subscriptions": [SUB, SUB2],
            "storage_accounts": [{"name": "offacct1", "blob_endpoint": "http://127.0.0.1:9/offacct1"}],
            "retry_total": 0,
            "timeout": "2s",
        },
    }))
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(engine)
    pass_id = store.begin_pass(MARKED, "dry-run", "host-a")
    with store.transaction() as tx:
        tx.apply([Change(blob_row(), "marked")])
        tx.apply_disks([DiskChange(r, "marked") for r in (DATA, LOCKED, SNAP, GONE)])
        tx.complete_pass(pass_id, MARKED + timedelta(minutes=1), {})
    yield Env(config, store)
    engine.dispose()


class Env:
    def __init__(self, config: Path, store: Store) -> None:
        self.config = config
        self.store = store
        self.prices = load_config(config).prices

    def cli(self, *args: str):
        result = CliRunner().invoke(cli, ["-c", str(self.config), *args], obj={}, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    def json(self, *args: str):
        code, out, err = self.cli(*args, "--format", "json")
        assert code == 0, err
        return json.loads(out)


# -- report ------------------------------------------------------------------------------------


def test_report_json_has_the_contracts_disk_keys_beside_unchanged_blob_rows(env: Env) -> None:
    rows = env.json("report")
    assert [(r["kind"], r["url"]) for r in rows] == [
        ("vhd", BLOB_URL), ("managed_disk", DATA.id), ("managed_disk", GONE.id), ("snapshot", SNAP.id),
        ("managed_disk", LOCKED.id)]  # blobs first, then disks by (lower-cased) id
    blob, data, gone, snap, locked = rows
    assert (blob["account"], blob["container"], blob["blob"], blob["state"], blob["size_bytes"], blob["sightings"]) == (
        "offacct1", "vhds", "old.vhd", "candidate", 2 * GIB, 1)
    assert "subscription" not in blob
    assert data == {
        "url": DATA.id, "account": None, "container": None, "blob": "data-01", "state": "candidate",
        "size_bytes": 100 * GIB, "billed_bytes": 128 * GIB,  # P10
        "first_orphaned_at": MARKED.isoformat().replace("+00:00", "Z"),
        "delete_after": (MARKED + timedelta(days=7)).isoformat().replace("+00:00", "Z"), "sightings": 1,
        "hold": None, "reason": "orphan: unattached since ...", "deleted_at": None, "kind": "managed_disk",
        "owner": None, "holder": None, "owner_source": None,  # no owner record
        "subscription": SUB, "resource_group": "RG-One", "sku": "Premium_LRS", "disk_state": "Unattached",
        "quarantine_snapshot": None, "quarantine_until": None, "location": "westeurope", "zones": ["1"],
        "ownership_time": OWNED.isoformat().replace("+00:00", "Z"),
        "monthly_cost": env.prices.disks.premium_lrs["P10"],
    }
    assert (locked["state"], locked["hold"], locked["billed_bytes"], locked["monthly_cost"]) == (
        "kept", "locked", 32 * GIB, env.prices.disks.standard_hdd_lrs["S4"])  # HDD's smallest tier is S4
    # A snapshot bills the bytes it holds: at most its source's size, at the snapshot rate (as the metrics).
    assert (snap["kind"], snap["billed_bytes"], snap["monthly_cost"], snap["disk_state"]) == (
        "snapshot", 64 * GIB, round(64 * env.prices.disks.snapshot_gb_month, 6), None)
    assert (gone["state"], gone["sightings"], gone["quarantine_snapshot"]) == ("deleted", 3, QUARANTINE)


def test_report_filters_by_kind_subscription_account_and_state(env: Env) -> None:
    def urls(*args: str) -> list[str]:
        return [r["url"] for r in env.json("report", *args)]

    assert urls("--kind", "vhd") == [BLOB_URL]
    assert urls("--kind", "snapshot", "--kind", "managed_disk") == [DATA.id, GONE.id, SNAP.id, LOCKED.id]
    assert urls("--subscription", SUB2.upper()) == [LOCKED.id]  # disks only, any case
    assert urls("--account", "offacct1") == [BLOB_URL]  # blobs only
    assert urls("--state", "kept", "--state", "deleted") == [GONE.id, LOCKED.id]
    assert urls("--kind", "vhd", "--subscription", SUB) == []
    assert urls("--sort", "size", "--limit", "2") == [DATA.id, SNAP.id]
    assert urls("--sort", "account") == [BLOB_URL, DATA.id, GONE.id, SNAP.id, LOCKED.id]
    code, _, err = env.cli("report", "--kind", "disk")
    assert code == 2 and "disk" in err


def test_report_csv_adds_the_disk_columns_only_when_it_holds_disks(env: Env) -> None:
    code, out, err = env.cli("report", "--format", "csv")
    assert code == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == FIELDS + DISK_FIELDS
    by_url = {r["url"]: r for r in reader}
    data = by_url[DATA.id]
    assert (data["kind"], data["account"], data["blob"], data["subscription"], data["zones"], data["billed_bytes"]) == (
        "managed_disk", "", "data-01", SUB, "1", str(128 * GIB))
    assert (by_url[BLOB_URL]["kind"], by_url[BLOB_URL]["subscription"]) == ("vhd", "")
    code, out, err = env.cli("report", "--format", "csv", "--kind", "vhd")
    assert code == 0, err
    assert csv.DictReader(io.StringIO(out)).fieldnames == FIELDS


def test_report_table_lists_disks_in_their_own_table_with_totals(env: Env) -> None:
    code, out, err = env.cli("report")
    assert code == 0, err
    blobs, disks = out.split("\n\nKIND ")
    assert "offacct1/vhds/old.vhd" in blobs and "TOTALS" in blobs and "data-01" not in blobs
    lines = ("KIND " + disks).splitlines()
    assert lines[0].split()[:4] == ["KIND", "STATE", "SIZE", "GiB"]
    data = next(line for line in lines if line.endswith(f"{SUB}/RG-One/data-01"))
    assert data.split()[:4] == ["managed_disk", "candidate", "100.00", "128.00"]
    gone = next(line for line in lines if line.endswith("gone-01"))
    assert "restorable 29.0d" in gone or "restorable 28.9d" in gone
    locked = next(line for line in lines if line.endswith("locked-01"))
    assert " locked " in locked
    assert "DISK TOTALS" in lines
    assert any(line.split()[:4] == ["managed_disk", "candidate", "1", "disks"] for line in lines)
    assert any(line.split()[:4] == ["snapshot", "candidate", "1", "snapshots"] for line in lines)
    code, only, _ = env.cli("report", "--kind", "snapshot")
    assert code == 0 and only.startswith("KIND ") and "offacct1" not in only and "snap-01" in only


# -- keep, unkeep, audit -----------------------------------------------------------------------


def test_keep_and_unkeep_a_disk_by_its_arm_id_in_any_case(env: Env) -> None:
    typed = DATA.id.upper()
    code, out, err = env.cli("keep", typed, "--reason", "needed by finance", "--actor", "alice")
    assert code == 0, err
    assert out == f"kept {DATA.id}: needed by finance\n"  # the id as Azure spells it (the stored row's)
    assert env.store.disk_holds() == {DATA.id.lower(): "needed by finance"}
    assert env.store.holds() == {}
    code, out, err = env.cli("unkeep", typed.lower(), "--actor", "bob")
    assert (code, out) == (0, f"hold lifted on {DATA.id}\n"), err
    assert env.store.disk_holds() == {}
    code, out, err = env.cli("unkeep", DATA.id)
    assert code == 2 and f"no operator hold on {DATA.id}" in err
    entries = env.json("audit")
    assert [(e["action"], e["url"], e["actor"], e["etag"], e["size_bytes"]) for e in entries] == [
        ("keep", DATA.id, "alice", OWNED.isoformat(), 100 * GIB), ("unkeep", DATA.id, "bob", OWNED.isoformat(), 100 * GIB)]
    [keep, _] = env.store.audit_log(kinds=["managed_disk"])
    assert (keep.kind, keep.account, keep.container, keep.blob, keep.reason) == (
        "managed_disk", SUB, "", DATA.id.lower(), "needed by finance")


def test_keep_an_untracked_snapshot_holds_it_for_when_a_pass_sees_it(env: Env) -> None:
    snap = rid("Not-Yet-Seen", "snapshots", SUB2)
    code, out, err = env.cli("keep", snap + "/", "--reason", "audit evidence")
    assert (code, out) == (0, f"kept {snap}: audit evidence\n"), err
    assert env.store.disk_hold(snap) == "audit evidence"
    [entry] = env.store.audit_log(kinds=["snapshot"])
    assert (entry.action, entry.url, entry.account, entry.etag, entry.size_bytes) == ("keep", snap, SUB2, None, None)


@pytest.mark.parametrize("bad", [
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Network/publicIPAddresses/ip1",
    f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks",
    f"/SUBSCRIPTIONS/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/a/b",
])
def test_an_arm_id_of_anything_else_is_a_usage_error(env: Env, bad: str) -> None:
    for args in (("keep", bad, "--reason", "x"), ("unkeep", bad), ("explain", bad), ("audit", bad)):
        code, out, err = env.cli(*args)
        assert code == 2, (args, out, err)
        assert err.startswith("vhd-gc: ID: not the id of a managed disk or snapshot"), err
    assert env.store.disk_holds() == {} and env.store.audit_log() == []


def test_audit_by_kind_and_by_resource(env: Env) -> None:
    assert env.cli("keep", BLOB_URL, "--reason", "blob hold")[0] == 0
    assert env.cli("keep", SNAP.id, "--reason", "snap hold")[0] == 0
    assert env.cli("keep", DATA.id, "--reason", "disk hold")[0] == 0
    env.store.audit_disk(action="delete-intent", resource_id=GONE.id, kind="managed_disk", subscription=SUB,
                         at=NOW, actor="vhd-gc@host-a", etag=OWNED.isoformat(), size_bytes=8 * GIB)

    def reasons(*args: str) -> list:
        return [(e["action"], e["url"]) for e in env.json("audit", *args)]

    assert reasons() == [("keep", BLOB_URL), ("keep", SNAP.id), ("keep", DATA.id), ("delete-intent", GONE.id)]
    assert reasons("--kind", "vhd") == [("keep", BLOB_URL)]
    assert reasons("--kind", "managed_disk") == [("keep", DATA.id), ("delete-intent", GONE.id)]
    assert reasons("--kind", "snapshot", "--kind", "vhd") == [("keep", BLOB_URL), ("keep", SNAP.id)]
    assert reasons(GONE.id.lower()) == [("delete-intent", GONE.id)]
    assert reasons(BLOB_URL) == [("keep", BLOB_URL)]
    assert reasons(DATA.id, "--kind", "snapshot") == []
    code, out, err = env.cli("audit", "--format", "csv", "--kind", "managed_disk")
    assert code == 0, err
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == ["at", "action", "url", "etag", "size_bytes", "billed_bytes", "actor", "reason",
                                 "error_code", "pass_id", "intent_id"]  # the blob audit's columns
    assert [r["url"] for r in reader] == [DATA.id, GONE.id]
    code, out, err = env.cli("audit", SNAP.id)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and lines[1].split()[2] == "keep" and SNAP.id in lines[1], err


# -- explain -----------------------------------------------------------------------------------


def test_explain_a_disk_by_its_arm_id(env: Env) -> None:
    assert env.cli("keep", LOCKED.id, "--reason", "owner found", "--actor", "carol")[0] == 0
    data = env.json("explain", LOCKED.id.lower())
    assert (data["id"], data["kind"], data["verdict"], data["why"], data["operator_hold"]) == (
        LOCKED.id, "managed_disk", "kept (kept: locked)", "CanNotDelete lock x", "owner found")
    assert (data["stored"]["subscription"], data["stored"]["size_bytes"], data["stored"]["hold"]) == (SUB2, 4 * GIB, "locked")
    assert [(h["action"], h["actor"], h["reason"]) for h in data["history"]] == [("keep", "carol", "owner found")]
    code, out, err = env.cli("explain", LOCKED.id)
    assert code == 0, err
    assert out.splitlines()[:4] == [f"managed disk: {LOCKED.id}", "verdict:  kept (kept: locked)",
                                    "why:      CanNotDelete lock x", "operator hold: owner found"]


def test_explain_a_deleted_disk_shows_its_quarantine_snapshots_history(env: Env) -> None:
    common = dict(subscription=SUB, at=NOW, actor="vhd-gc@host-a")
    q = env.store.audit_disk(action="quarantine-intent", resource_id=QUARANTINE, kind="snapshot",
                             reason=f"quarantine of {GONE.id}", **common)
    env.store.audit_disk(action="quarantined", resource_id=QUARANTINE, kind="snapshot", intent_id=q, **common)
    i = env.store.audit_disk(action="delete-intent", resource_id=GONE.id, kind="managed_disk", **common)
    env.store.audit_disk(action="deleted", resource_id=GONE.id, kind="managed_disk", intent_id=i, **common)
    data = env.json("explain", GONE.id)
    assert data["verdict"] == "deleted"
    assert [(h["action"], h["kind"]) for h in data["history"]] == [
        ("quarantine-intent", "snapshot"), ("quarantined", "snapshot"), ("delete-intent", "managed_disk"),
        ("deleted", "managed_disk")]
    assert data["stored"]["quarantine_snapshot"] == QUARANTINE


def test_explain_a_disk_whose_quarantine_failed_shows_the_snapshots_entries(env: Env) -> None:
    snap = rid("vhdgc-q-data-01", "snapshots")
    common = dict(subscription=SUB, at=NOW, actor="vhd-gc@host-a")
    q = env.store.audit_disk(action="quarantine-intent", resource_id=snap, kind="snapshot",
                             reason=f"quarantine of {DATA.id}", **common)
    env.store.audit_disk(action="quarantine-failed", resource_id=snap, kind="snapshot", intent_id=q,
                         error_code="QuotaExceeded", reason=f"quarantine of {DATA.id}: quota", **common)
    data = env.json("explain", DATA.id)
    assert [(h["action"], h["id"], h["error_code"]) for h in data["history"]] == [
        ("quarantine-intent", snap, None), ("quarantine-failed", snap, "QuotaExceeded")]
    assert env.json("explain", LOCKED.id)["history"] == []  # another disk's quarantine is not its own


def test_explain_an_untracked_disk(env: Env) -> None:
    other = rid("never-seen")
    data = env.json("explain", other)
    assert (data["verdict"], data["stored"], data["history"], data["operator_hold"]) == ("not tracked", None, [], None)


# -- as a separate process -----------------------------------------------------------------------


def test_report_of_disks_from_a_separate_process(env: Env) -> None:
    environ = {k: v for k, v in os.environ.items() if k != "VHD_GC_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(env.config), "report", "--format", "json",
                           "--kind", "snapshot"], capture_output=True, text=True, env=environ, timeout=120,
                          cwd=Path(__file__).parent.parent)
    assert proc.returncode == 0, proc.stderr
    assert [(r["kind"], r["url"], r["account"], r["blob"]) for r in json.loads(proc.stdout)] == [
        ("snapshot", SNAP.id, None, "snap-01")]
