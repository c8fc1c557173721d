"""`vhd-gc doctor`, black-box: a real subprocess against Azurite, the HTTPS ARM stand-in and a real
database, first with everything in order (exit 0), then with each failure injected on its own: the
failing check is a cross with its fix, the exit status is 3, and the other checks still run."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gc_daemon.sources import virtual_machines
from gc_daemon.sources.roles import DELETE_DATA_ACTION, READ_DATA_ACTIONS
from sandbox import arm as a
from tests.support.estate import SUB, SUB2

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^(✓ ok  |! warn|✗ FAIL)  (.+?): (.*)$")
READER = [{"actions": ["*/read"], "notActions": [], "dataActions": list(READ_DATA_ACTIONS), "notDataActions": []}]


def doctor(gc, env: dict[str, str] | None = None) -> tuple[int, dict[str, tuple[str, str, str]], str]:
    environ = dict(os.environ)
    environ.pop("VHD_GC_CONFIG", None)
    environ["PYTHONIOENCODING"] = "utf-8"
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(gc.config_path), "doctor"],
                          capture_output=True, text=True, encoding="utf-8", env=environ, timeout=180, cwd=ROOT)
    checks: dict[str, tuple[str, str, str]] = {}
    last = None
    for line in done.stdout.splitlines():
        m = LINE.match(line)
        if m:
            status = {"✓ ok  ": "ok", "! warn": "warn", "✗ FAIL": "FAIL"}[m.group(1)]
            last = m.group(2)
            checks[last] = (status, m.group(3), "")
        elif line.startswith("        fix: ") and last:
            status, detail, _ = checks[last]
            checks[last] = (status, detail, line.removeprefix("        fix: "))
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, checks, done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ready(gc):
    """An estate where every check holds: a migrated database, a free metrics port, reader rights."""
    gc.page("vhds", "left.vhd")
    gc.configure(metrics_listen=f"127.0.0.1:{free_port()}")
    gc.arm.set_permissions(READER)
    upgraded = gc.cli("db", "upgrade")
    assert upgraded.code == 0, upgraded.err
    return gc


def failed(checks: dict) -> list[str]:
    return [name for name, (status, _, _) in checks.items() if status == "FAIL"]


def test_all_good_exits_0_with_a_tick_for_every_check(ready):
    code, checks, out = doctor(ready)
    assert code == 0, out
    assert failed(checks) == [], out
    from gc_daemon.sources import REGISTRY

    for source in REGISTRY:
        assert checks[f"references {source.name} @ {SUB}"][0] == "ok", out
    assert checks["credential"][0] == "ok"
    for acct in ("gcacct1", "gcacct2"):
        assert checks[f"account {acct} placement"] == ("ok", "in subscription " + SUB + " (resource group storage-rg)", "")
        assert checks[f"account {acct} listing"][0] == "ok"
        assert checks[f"account {acct} soft delete"][0] in ("ok", "warn")  # Azurite: off unless set
        assert checks[f"account {acct} delete permission"][0] == "ok"
    for name in ("database reachable", "database writable", "database migrated", "metrics address"):
        assert checks[name][0] == "ok", out
    assert re.search(r"^\d+ checks: \d+ ok, \d+ warnings, 0 failed$", out, re.M), out


def test_mode_delete_with_the_delete_permission_is_all_good(ready):
    ready.configure(mode="delete", metrics_listen=ready.settings["metrics_listen"])
    ready.arm.reset_permissions()  # the stand-in's default: every blob data action
    code, checks, out = doctor(ready)
    assert code == 0, out
    assert checks["account gcacct1 delete permission"][0] == "ok"
    assert DELETE_DATA_ACTION in checks["account gcacct1 delete permission"][1]


def test_dry_run_holding_the_delete_permission_is_a_warning_not_a_failure(ready):
    ready.arm.reset_permissions()
    code, checks, out = doctor(ready)
    assert code == 0, out
    status, detail, fix = checks["account gcacct1 delete permission"]
    assert status == "warn" and DELETE_DATA_ACTION in detail
    assert "deploy/azure/vhd-gc-reader-role.json" in fix


def test_a_credential_that_gets_no_token_is_a_cross_and_the_rest_still_runs(ready, tmp_path):
    ready.configure(metrics_listen=ready.settings["metrics_listen"], azure={"credential": "azure_cli"})
    empty = tmp_path / "no-az"
    empty.mkdir()
    code, checks, out = doctor(ready, env={"PATH": str(empty)})
    assert code == 3, out
    status, detail, fix = checks["credential"]
    assert status == "FAIL" and "azure_cli" in detail, out
    assert "az login" in fix
    # The accounts use their keys and the database is local: those checks ran and hold.
    assert checks["account gcacct1 listing"][0] == "ok", out
    assert checks["database migrated"][0] == "ok"
    assert checks["metrics address"][0] == "ok"


def test_a_source_answering_403_names_source_subscription_and_the_missing_action(ready):
    ready.arm.add_fault(
        path=virtual_machines.READ.path_regex(), status=403, code="AuthorizationFailed",
        message="The client 'vhd-gc' does not have authorization to perform action "
        "'Microsoft.Compute/virtualMachines/read' over scope '/subscriptions/" + SUB + "'.",
    )
    code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == [f"references virtual_machines @ {SUB}"], out
    status, detail, fix = checks[f"references virtual_machines @ {SUB}"]
    assert "HTTP 403 AuthorizationFailed" in detail and "Microsoft.Compute/virtualMachines/read" in detail
    assert f"subscription {SUB}" in fix and "deploy/azure/vhd-gc-reader-role.json" in fix
    assert checks[f"references images @ {SUB}"][0] == "ok"
    assert checks["database reachable"][0] == "ok"


def test_an_account_that_cannot_be_listed_is_a_cross(ready, monkeypatch):
    dead = free_port()  # nobody listens there
    monkeypatch.setenv("GCACCT9_KEY", ready.azurite.key("gcacct1"))
    accounts = ready.settings["azure"]["storage_accounts"] + [
        {"name": "gcacct9", "blob_endpoint": f"http://127.0.0.1:{dead}/gcacct9", "key_env": "GCACCT9_KEY"}
    ]
    ready.configure(metrics_listen=ready.settings["metrics_listen"], azure={"storage_accounts": accounts})
    code, checks, out = doctor(ready)
    assert code == 3, out
    status, detail, fix = checks["account gcacct9 listing"]
    assert status == "FAIL" and "cannot be listed" in detail, out
    assert "key" in fix and "blob_endpoint" in fix
    assert checks["account gcacct9 placement"][0] == "ok"
    assert checks["account gcacct1 listing"][0] == "ok"
    assert "account gcacct9 listing" in failed(checks)


def test_an_account_of_an_unconfigured_subscription_is_a_cross(ready):
    ready.compute(a.storage_account(SUB2, "other-rg", "gcacct2", blob_endpoint=ready.azurite.blob_endpoint("gcacct2")),
                  subscriptions=[SUB, SUB2])
    code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == ["account gcacct2 placement"], out
    status, detail, fix = checks["account gcacct2 placement"]
    assert SUB2 in detail and "azure.subscriptions" in detail
    assert fix == f"add {SUB2} to azure.subscriptions (or stop collecting gcacct2)"
    assert checks["account gcacct1 placement"][0] == "ok"


def test_mode_delete_without_the_delete_permission_is_a_cross(ready):
    ready.configure(mode="delete", metrics_listen=ready.settings["metrics_listen"])
    acct_id = a.storage_account_id(SUB, "storage-rg", "gcacct2")
    ready.arm.set_permissions(a.DEFAULT_PERMISSIONS)
    ready.arm.set_permissions(READER, scope=acct_id)  # gcacct2 only: read, no delete
    code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == ["account gcacct2 delete permission"], out
    status, detail, fix = checks["account gcacct2 delete permission"]
    assert DELETE_DATA_ACTION in detail and acct_id in detail
    assert "deploy/azure/vhd-gc-role.json" in fix
    assert checks["account gcacct1 delete permission"][0] == "ok"
    # The stand-in answered Permissions - List For Resource on each account's id.
    asked = [p for m, p in ready.arm.requests if "/providers/Microsoft.Authorization/permissions" in p]
    assert any(p.startswith(acct_id + "/providers/Microsoft.Authorization/permissions?api-version=2022-04-01") for p in asked)


def test_an_unreachable_database_is_a_cross(ready):
    ready.configure(metrics_listen=ready.settings["metrics_listen"],
                    database_url=f"postgresql+psycopg://vhdgc:secret@127.0.0.1:{free_port()}/vhdgc")
    code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == ["database reachable"], out
    status, detail, fix = checks["database reachable"]
    assert "127.0.0.1" in detail and "secret" not in out
    assert "database_url" in fix
    assert checks["metrics address"][0] == "ok"
    assert checks["account gcacct1 listing"][0] == "ok"


def test_a_database_behind_the_migrations_is_a_cross(ready, tmp_path):
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    ready.configure(metrics_listen=ready.settings["metrics_listen"], database_url=f"sqlite:///{empty}")
    code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == ["database migrated"], out
    status, detail, fix = checks["database migrated"]
    assert "empty schema" in detail and "db upgrade" in fix
    assert checks["database reachable"][0] == "ok" and checks["database writable"][0] == "ok"


def test_a_read_only_database_is_a_cross(ready, tmp_path):
    path = Path(ready.db_url.removeprefix("sqlite:///"))
    ready.configure(metrics_listen=ready.settings["metrics_listen"],
                    database_url=f"sqlite:///file:{path}?mode=ro&uri=true")
    code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == ["database writable"], out
    status, detail, fix = checks["database writable"]
    assert "readonly" in detail.lower().replace("-", "").replace(" ", ""), detail
    assert "read-only" in fix
    assert checks["database reachable"][0] == "ok" and checks["database migrated"][0] == "ok"


def test_a_metrics_address_in_use_is_a_cross(ready):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ready.configure(metrics_listen=f"127.0.0.1:{port}")
        code, checks, out = doctor(ready)
    assert code == 3, out
    assert failed(checks) == ["metrics address"], out
    status, detail, fix = checks["metrics address"]
    assert f"127.0.0.1:{port}" in detail and "in use" in detail.lower()
    assert "metrics_listen" in fix and "another process" in fix
    assert checks["database writable"][0] == "ok"


def test_doctor_takes_c_after_the_command_and_a_bad_config_exits_2(ready, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("mode: sometimes\nazure: {subscriptions: ['" + SUB + "']}\n")
    done = subprocess.run([sys.executable, "-m", "gc_daemon", "doctor", "-c", str(bad)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "mode" in done.stderr
