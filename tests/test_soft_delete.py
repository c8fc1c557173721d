"""Blob soft delete: what the report promises about restoring, `config check`'s warning, and
`vhd-gc restore` (Azurite 3.37 keeps the retention setting but does not implement undelete, so the
successful restore itself cannot run here; its refusal paths can)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from azure.storage.blob import RetentionPolicy


@pytest.fixture
def retention(gc):
    def set_days(days: int | None, account: str = "gcacct1") -> None:
        policy = RetentionPolicy(enabled=days is not None, days=days)
        gc.svc(account).set_service_properties(delete_retention_policy=policy)

    yield set_days
    for account in ("gcacct1", "gcacct2"):
        set_days(None, account)


def test_config_check_warns_where_soft_delete_is_off(gc, retention):
    retention(7, "gcacct1")
    run = gc.cli("config", "check")
    assert run.code == 0
    assert "gcacct1: blob soft delete on: deleted VHDs stay restorable for 7 days" in run.err
    assert "warning: gcacct2: blob soft delete is off" in run.err
    assert "soft delete" not in gc.cli("config", "check", "--offline").err


def test_report_says_until_when_a_deleted_vhd_is_recoverable(gc, retention):
    retention(7)
    url = gc.page("vhds", "leftover.vhd")
    other = gc.page("vhds", "leftover.vhd", account="gcacct2")  # soft delete off there
    gc.configure(mode="delete")
    assert gc.cli("scan").code == 0
    report = gc.report()
    rec = report[url]
    deleted = datetime.fromisoformat(rec["deleted_at"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(rec["recoverable_until"].replace("Z", "+00:00"))
    assert rec["state"] == "deleted" and until - deleted == timedelta(days=7)
    assert report[other]["state"] == "deleted" and report[other]["recoverable_until"] is None
    assert "restorable 7.0d" in gc.cli("report", "--format", "table").out


def test_restore_refuses_where_soft_delete_is_off(gc):
    url = gc.page("vhds", "leftover.vhd")
    gc.configure(mode="delete")
    assert gc.cli("scan").code == 0
    run = gc.cli("restore", url)
    assert run.code == 1 and "soft delete is off for account gcacct1" in run.err
    assert not gc.exists("vhds", "leftover.vhd")


def test_restore_reports_the_service_refusal_clearly_and_changes_nothing(gc, retention):
    retention(7)
    url = gc.page("vhds", "leftover.vhd")
    gc.configure(mode="delete")
    assert gc.cli("scan").code == 0
    run = gc.cli("restore", url)
    # Azurite answers undelete with "not implemented": the command says so and records nothing.
    assert run.code == 1 and run.err.startswith("vhd-gc: restore failed:")
    assert [r["action"] for r in gc.cli("audit", "--format", "json").json()] == ["delete-intent", "deleted"]


def test_restore_of_an_account_not_collected_is_a_usage_error(gc):
    run = gc.cli("restore", "https://elsewhere1.blob.core.windows.net/vhds/x.vhd")
    assert run.code == 2 and "not collected" in run.err
