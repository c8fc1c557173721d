"""The operator contract of docs/contract.md ("Command line", "Configuration file", "Report"), black-box:
exit codes as an operator's automation sees them (real subprocesses of `python -m gc_daemon` and
of the `vhd-gc` console script), and the output of every command, against Azurite and the HTTPS
ARM stand-in."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

import gc_daemon
from sandbox import arm as a
from tests.support.estate import SUB

RG = "rg1"
VHD_GC = str(Path(sys.executable).with_name("vhd-gc"))
GIB = 1024**3

CONTRACT_KEYS = {
    "url": str,
    "account": str,
    "container": str,
    "blob": str,
    "state": str,
    "size_bytes": int,
    "billed_bytes": (int, type(None)),
    "first_orphaned_at": str,
    "delete_after": (str, type(None)),
    "sightings": int,
}
STATES = {"candidate", "due", "deleted", "kept", "released"}


# -- helpers ---------------------------------------------------------------------------------


def run(*args: str, script: bool = False, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """vhd-gc as a separate process, exactly as automation runs it."""
    cmd = [VHD_GC, *args] if script else [sys.executable, "-m", "gc_daemon", *args]
    environ = dict(os.environ)
    environ.pop("VHD_GC_CONFIG", None)
    for name in drop:
        environ.pop(name, None)
    environ.update(env or {})
    return subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=300, cwd=Path(__file__).parent.parent)


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def offline_config(tmp_path: Path, **overrides) -> dict:
    """A valid configuration that talks to nothing (loopback ports nobody listens on)."""
    azure = overrides.pop("azure", {})
    data = {
        "database_url": f"sqlite:///{tmp_path / 'offline.db'}",
        "azure": {
            "credential": "emulator",
            "arm_endpoint": "https://127.0.0.1:9",
            "subscriptions": [SUB],
            "storage_accounts": [{"name": "offacct1", "blob_endpoint": "http://127.0.0.1:9/offacct1"}],
            "retry_total": 0,
            "timeout": "2s",
        },
    }
    data.update(overrides)
    data["azure"].update(azure)
    return data


def assert_utc_iso(value: str) -> datetime:
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)", value), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    return parsed


def secrets_of(gc) -> list[str]:
    return [gc.azurite.key(acct) for acct in ("gcacct1", "gcacct2")]


# -- --help / --version -------------------------------------------------------------------------


def test_help_and_version_exit_0():
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    for command in ("scan", "run", "report", "explain", "db", "config"):
        assert re.search(rf"^\s+{command}\b", helped.stdout, re.M), command
    versioned = run("--version", script=True)
    assert versioned.returncode == 0, versioned.stderr
    # The one version (gc_daemon.__version__): an editable install's metadata keeps the version it was
    # installed at; tests/test_package.py checks the wheel's metadata against it.
    assert versioned.stdout.strip() == f"vhd-gc, version {gc_daemon.__version__}"


# -- scan exit codes ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", [False, True], ids=["python-m", "console-script"])
def test_scan_exits_0_on_a_complete_pass(gc, script):
    url = gc.page("vhds", "left.vhd")
    result = run("-c", str(gc.config_path), "scan", script=script)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^pass \d+ complete: ", result.stdout, re.M), result.stdout
    assert "mode dry-run" in result.stdout
    assert gc.state(url) == "due"
    for secret in secrets_of(gc):
        assert secret not in result.stdout + result.stderr


def test_scan_progress_line_ends_with_what_the_pass_read_decided_and_measured(gc):
    gc.page("vhds", "left-1.vhd")
    gc.page("vhds", "left-2.vhd")
    gc.page("vhds", "notes.txt")
    gc.configure(log_level="warning")
    quiet = run("-c", str(gc.config_path), "scan")  # stderr is a pipe: no progress unless asked
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    gc.page("vhds", "left-3.vhd")
    result = run("-c", str(gc.config_path), "scan", "--progress")
    assert result.returncode == 0, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(
        r"pass \d+ complete · account 2/2: 4 blobs listed \(3 VHDs\) · "
        r"new candidates 1, released 0, kept 0 · due 3 · billed bytes 1/1 · \d+ s",
        last,
    ), result.stderr


def test_progress_redraws_one_terminal_line():
    from gc_daemon.domain import PassStats
    from gc_daemon.progress import PassProgress

    out = io.StringIO()
    stats = PassStats()
    with PassProgress(out, interval=0, tty=True, clock=lambda: 7.0, columns=lambda: 120) as progress:
        progress.attach(stats, 3)
        progress.phase("pass 1: listing and deciding")
        stats.blobs_by_account["a"] = 0
        stats.blobs, stats.vhds, stats.references = 1200, 1100, 40
        progress._draw()
        progress.phase("pass 1 complete")
    first = "pass 1: listing and deciding · 40 references · account 1/3: 1,200 blobs listed (1,100 VHDs) · 0 s"
    final = "pass 1 complete · 40 references · account 1/3: 1,200 blobs listed (1,100 VHDs) · 0 s"
    assert out.getvalue() == "\r" + first + "\r" + final + " " * (len(first) - len(final)) + "\n"


def test_scan_at_debug_level_never_prints_account_keys(gc):
    gc.page("vhds", "left.vhd")
    gc.configure(log_level="debug", log_format="console")
    result = run("-c", str(gc.config_path), "scan")
    assert result.returncode == 0, result.stderr
    for secret in secrets_of(gc):
        assert secret not in result.stdout + result.stderr


def test_scan_exits_3_when_arm_fails_names_the_source_and_changes_nothing(gc):
    due = gc.page("vhds", "due.vhd")
    gc.configure(mode="delete", min_sightings=2)
    assert gc.scan().outcome == "complete"  # sighting 1 of due.vhd: the next complete pass deletes it
    fresh = gc.page("vhds", "fresh.vhd")  # a new orphan: an incomplete pass must not mark it
    before = gc.report()
    assert set(before) == {due}
    gc.arm.add_fault(path="/disks$", status=500)

    result = run("-c", str(gc.config_path), "scan", script=True)

    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "incomplete" in result.stderr
    assert re.search(rf"{SUB}\S*disks|disks\S*{SUB}|{SUB}.*disks", result.stderr), result.stderr
    assert gc.exists("vhds", "due.vhd")
    assert gc.report() == before  # no new candidate (fresh.vhd), no sighting counted
    assert fresh not in gc.report()
    passes = gc.cli("passes")
    assert passes.code == 0
    assert re.search(r"^#\d+\s+-\s+incomplete\b", passes.out, re.M), passes.out


# -- configuration errors: exit 2 naming the key ------------------------------------------------


def test_missing_config_file_exits_2_naming_the_path(tmp_path):
    missing = tmp_path / "nope.yaml"
    result = run("-c", str(missing), "scan")
    assert result.returncode == 2, result.stderr
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_no_config_at_all_exits_2_naming_the_variable():
    result = run("scan", script=True)
    assert result.returncode == 2, result.stderr
    assert "VHD_GC_CONFIG" in result.stderr and "--config" in result.stderr


def test_vhd_gc_config_variable_is_used_and_c_wins_over_it(gc, tmp_path):
    url = gc.page("vhds", "left.vhd")
    result = run("scan", script=True, env={"VHD_GC_CONFIG": str(gc.config_path)})
    assert result.returncode == 0, result.stderr
    assert gc.state(url) == "due"
    reported = run("report", "--format", "json", env={"VHD_GC_CONFIG": str(gc.config_path)})
    assert reported.returncode == 0, reported.stderr
    assert [r["url"] for r in json.loads(reported.stdout)] == [url]
    # -c beats the variable
    both = run("-c", str(gc.config_path), "report", "--format", "json", env={"VHD_GC_CONFIG": str(tmp_path / "missing.yaml")})
    assert both.returncode == 0, both.stderr
    assert [r["url"] for r in json.loads(both.stdout)] == [url]


@pytest.mark.parametrize(
    "change, named",
    [
        pytest.param(lambda d: d.update(grace_periode="7d"), "grace_periode", id="unknown-top-key"),
        pytest.param(lambda d: d["azure"]["storage_accounts"][0].update(keyenv="X"), "keyenv", id="unknown-nested-key"),
        pytest.param(lambda d: d.update(grace_period="7 days"), "grace_period", id="bad-duration-words"),
        pytest.param(lambda d: d.update(grace_period="1.5h"), "grace_period", id="bad-duration-fraction"),
        pytest.param(lambda d: d.update(min_age="-1h"), "min_age", id="bad-duration-negative"),
        pytest.param(lambda d: d.update(min_sightings=0), "min_sightings", id="impossible-value"),
        pytest.param(lambda d: d.update(mode="destroy"), "mode", id="bad-mode"),
        pytest.param(lambda d: d["azure"].update(arm_endpoint="https://management.azure.com"), "arm_endpoint", id="emulator-remote-arm"),
        pytest.param(lambda d: d["azure"]["storage_accounts"][0].pop("blob_endpoint"), "blob_endpoint", id="emulator-default-blob-endpoint"),
        pytest.param(lambda d: d.update(interval="0s"), "interval", id="zero-interval"),
        pytest.param(lambda d: d.update(min_sightings="3"), "min_sightings", id="wrong-type"),
        pytest.param(lambda d: d.pop("azure"), "azure", id="missing-azure"),
        pytest.param(lambda d: d["azure"].update(subscriptions=["not-a-guid"]), "subscriptions", id="bad-subscription"),
    ],
)
def test_bad_configuration_exits_2_naming_the_key(tmp_path, change, named):
    data = offline_config(tmp_path)
    change(data)
    cfg = write_config(tmp_path / "bad.yaml", data)
    result = run("-c", str(cfg), "scan")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "offline.db").exists()  # refused at start: nothing touched
    checked = run("-c", str(cfg), "config", "check")
    assert checked.returncode == 2 and named in checked.stderr


@pytest.mark.parametrize(
    "text, named",
    [("azure: [\n", "not valid YAML"), ("- a list\n", "mapping"), ("", "azure")],
    ids=["invalid-yaml", "not-a-mapping", "empty-file"],
)
def test_unreadable_configuration_exits_2(tmp_path, text, named):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    result = run("-c", str(cfg), "scan", script=True)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    assert "Traceback" not in result.stderr


def test_a_directory_as_config_exits_2(tmp_path):
    result = run("-c", str(tmp_path), "scan")
    assert result.returncode == 2
    assert "--config" in result.stderr


def test_valid_duration_forms_are_accepted(tmp_path):
    data = offline_config(tmp_path, grace_period="0s", min_age="0s", import_hold="0s", interval=90)
    data["azure"]["timeout"] = "15m"
    cfg = write_config(tmp_path / "cfg.yaml", data)
    result = run("-c", str(cfg), "config", "check")
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert (effective["grace_period"], effective["min_age"], effective["import_hold"]) == ("0s", "0s", "0s")
    assert effective["interval"] == "90s"
    assert effective["azure"]["timeout"] == "15m"
    assert not (tmp_path / "offline.db").exists()  # config check touches no database


def test_scan_with_a_wrong_account_key_exits_3_naming_the_account(gc):
    gc.page("vhds", "left.vhd")
    wrong = "d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXktd3Jvbmcta2V5LXdyb25nLWtleQ=="
    result = run("-c", str(gc.config_path), "scan", env={"GCACCT1_KEY": wrong})
    assert result.returncode == 3, (result.stdout, result.stderr)
    assert "storage/gcacct1" in result.stderr
    assert gc.report() == {}


def test_scan_exits_1_when_the_database_cannot_be_opened(tmp_path):
    data = offline_config(tmp_path, database_url=f"sqlite:///{tmp_path / 'no' / 'such' / 'dir' / 'x.db'}")
    cfg = write_config(tmp_path / "cfg.yaml", data)
    result = run("-c", str(cfg), "scan")
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("vhd-gc: ") and "Traceback" not in result.stderr


def test_unset_key_env_variable_exits_2_naming_key_env(tmp_path):
    data = offline_config(tmp_path)
    data["azure"]["storage_accounts"][0]["key_env"] = "VHDGC_TEST_UNSET_KEY"
    cfg = write_config(tmp_path / "cfg.yaml", data)
    result = run("-c", str(cfg), "scan", script=True, drop=("VHDGC_TEST_UNSET_KEY",))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "key_env" in result.stderr and "VHDGC_TEST_UNSET_KEY" in result.stderr


@pytest.mark.parametrize(
    "args, named",
    [
        pytest.param(["frobnicate"], "frobnicate", id="unknown-command"),
        pytest.param(["scan", "--bogus"], "--bogus", id="unknown-option"),
        pytest.param(["report", "--format", "xml"], "--format", id="bad-choice"),
        pytest.param(["keep", "https://gcacct1.blob.core.windows.net/vhds/a.vhd"], "--reason", id="missing-option"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, named):
    cfg = write_config(tmp_path / "cfg.yaml", offline_config(tmp_path))
    result = run("-c", str(cfg), *args, script=True)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert named in result.stderr
    assert "Usage:" in result.stderr


@pytest.mark.parametrize(
    "url",
    ["not-a-url", "https://example.com/vhds/a.vhd", "ftp://gcacct1.blob.core.windows.net/vhds/a.vhd", "https://gcacct1.blob.core.windows.net/"],
)
def test_explain_with_an_unparseable_url_exits_2(gc, url):
    result = run("-c", str(gc.config_path), "explain", url)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "URL" in result.stderr
    assert result.stdout == ""


# -- config check -------------------------------------------------------------------------------


def test_config_check_prints_the_effective_configuration_with_defaults(tmp_path):
    minimal = {
        "azure": {
            "subscriptions": [SUB.upper()],
            "storage_accounts": [{"name": "prodacct1"}, {"name": "prodacct2", "key_env": "VHDGC_TEST_PROD2_KEY"}],
        }
    }
    cfg = write_config(tmp_path / "cfg.yaml", minimal)
    secret = "c2VjcmV0LWFjY291bnQta2V5LXZhbHVlLTEyMzQ1Njc4OTA="
    result = run("-c", str(cfg), "config", "check", env={"VHDGC_TEST_PROD2_KEY": secret})
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert effective["database_url"] == "sqlite:///vhd-gc.db"
    assert effective["mode"] == "dry-run"
    assert effective["grace_period"] == "7d"
    assert effective["min_sightings"] == 3
    assert effective["min_age"] in ("24h", "1d")
    assert effective["import_hold"] == "7d"
    assert effective["interval"] == "1h"
    assert effective["max_deletes_per_pass"] == 100
    assert effective["metrics_listen"] == "127.0.0.1:9465"
    assert effective["azure"]["credential"] == "default"
    assert effective["azure"]["arm_endpoint"] == "https://management.azure.com"
    assert effective["azure"]["subscriptions"] == [SUB]
    accounts = {acct["name"]: acct for acct in effective["azure"]["storage_accounts"]}
    assert accounts["prodacct1"]["blob_endpoint"] == "https://prodacct1.blob.core.windows.net"
    assert accounts["prodacct2"]["key_env"] == "VHDGC_TEST_PROD2_KEY"
    assert secret not in result.stdout + result.stderr
    assert "dry-run" in result.stderr  # the reminder that nothing will be deleted


def test_config_check_never_prints_account_keys(gc):
    result = run("-c", str(gc.config_path), "config", "check", script=True)
    assert result.returncode == 0, result.stderr
    effective = yaml.safe_load(result.stdout)
    assert [acct["key_env"] for acct in effective["azure"]["storage_accounts"]] == ["GCACCT1_KEY", "GCACCT2_KEY"]
    for secret in secrets_of(gc):
        assert secret not in result.stdout + result.stderr
    assert effective["database_url"] == gc.db_url


def test_config_check_redacts_a_database_password_and_does_not_connect(tmp_path):
    password = "Sup3rS3cretPw"
    data = offline_config(tmp_path, database_url=f"postgresql+psycopg://gcuser:{password}@127.0.0.1:9/vhdgc?sslpassword=Qu3ryS3cret&application_name=vhd-gc")
    cfg = write_config(tmp_path / "cfg.yaml", data)
    result = run("-c", str(cfg), "config", "check")
    assert result.returncode == 0, result.stderr  # port 9 refuses: a connection attempt would fail
    assert password not in result.stdout + result.stderr
    assert "Qu3ryS3cret" not in result.stdout + result.stderr
    url = yaml.safe_load(result.stdout)["database_url"]
    assert url.startswith("postgresql+psycopg://gcuser:")
    assert "@127.0.0.1:9/vhdgc" in url and "application_name=vhd-gc" in url


def test_config_check_with_an_unset_key_env_warns_and_never_prints_a_key(tmp_path):
    data = offline_config(tmp_path)
    data["azure"]["storage_accounts"][0]["key_env"] = "VHDGC_TEST_UNSET_KEY"
    cfg = write_config(tmp_path / "cfg.yaml", data)
    result = run("-c", str(cfg), "config", "check", drop=("VHDGC_TEST_UNSET_KEY",))
    assert result.returncode == 0, result.stderr
    assert "VHDGC_TEST_UNSET_KEY" in result.stderr and "key_env" in result.stderr
    yaml.safe_load(result.stdout)


# -- db upgrade ---------------------------------------------------------------------------------


def _schema(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))


def test_db_upgrade_creates_the_schema_on_an_empty_file_and_is_idempotent(tmp_path):
    db = tmp_path / "empty.db"
    db.touch()
    cfg = write_config(tmp_path / "cfg.yaml", offline_config(tmp_path, database_url=f"sqlite:///{db}"))

    first = run("-c", str(cfg), "db", "upgrade", script=True)
    assert first.returncode == 0, first.stderr
    tables = {name for kind, name, _ in _schema(db) if kind == "table"}
    assert {"tracked_blobs", "passes", "audit_log", "operator_holds", "alembic_version"} <= tables
    with sqlite3.connect(db) as conn:
        (head,) = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    assert "was empty" in first.stdout and head in first.stdout
    schema = _schema(db)

    second = run("-c", str(cfg), "db", "upgrade")
    assert second.returncode == 0, second.stderr
    assert f"database at {head} (was {head})" in second.stdout
    assert _schema(db) == schema
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM passes").fetchone() == (0,)


# -- report -------------------------------------------------------------------------------------

ODD = "my disk, é.vhd"  # a space, a comma (CSV quoting) and a non-ASCII letter
LITERAL = "100%20 #?.vhd"  # a literal "%20" (must not be decoded twice), "#" and "?"


def _estate(gc) -> dict[str, str]:
    """A due orphan with an odd name, a 2 GiB due orphan, a kept one and a referenced one."""
    urls = {
        "odd": gc.page("vhds", ODD, written=[(0, 8192)]),
        "big": gc.page("vhds", "big.vhd", size=2 * GIB, written=[(0, 4096)]),
        "kept": gc.page("vhds", "kept.vhd", metadata={"vhdgc_keep": "ticket-1"}),
        "used": gc.page("vhds", "used.vhd"),
    }
    gc.compute(a.vm(SUB, RG, "web", os_vhd=urls["used"]))
    assert gc.scan().outcome == "complete"
    return urls


def test_report_json_has_the_contract_keys_types_and_canonical_urls(gc):
    urls = _estate(gc)
    endpoint = gc.azurite.blob_endpoint("gcacct1")
    assert urls["odd"] == f"{endpoint}/vhds/my%20disk%2C%20%C3%A9.vhd"  # the harness agrees with the contract
    literal = gc.page("vhds", LITERAL)
    assert gc.scan().outcome == "complete"

    result = run("-c", str(gc.config_path), "report", "--format", "json")
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert isinstance(records, list)
    for rec in records:
        for key, kind in CONTRACT_KEYS.items():
            assert key in rec, key
            assert isinstance(rec[key], kind) and not isinstance(rec[key], bool), (key, rec[key])
        assert rec["state"] in STATES
        assert_utc_iso(rec["first_orphaned_at"])
        if rec["delete_after"] is not None:
            assert_utc_iso(rec["delete_after"])
    by_url = {rec["url"]: rec for rec in records}
    assert set(by_url) == {urls["odd"], urls["big"], urls["kept"], f"{endpoint}/vhds/100%2520%20%23%3F.vhd"}  # in use: not tracked
    assert by_url[literal]["blob"] == LITERAL
    odd = by_url[urls["odd"]]
    assert (odd["account"], odd["container"], odd["blob"]) == ("gcacct1", "vhds", ODD)
    assert (odd["state"], odd["size_bytes"], odd["billed_bytes"], odd["sightings"]) == ("due", 1024 * 1024, 8192, 2)
    assert assert_utc_iso(odd["delete_after"]) == assert_utc_iso(odd["first_orphaned_at"])  # grace 0s
    big = by_url[urls["big"]]
    assert (big["state"], big["size_bytes"], big["billed_bytes"]) == ("due", 2 * GIB, 4096)
    kept = by_url[urls["kept"]]
    assert (kept["state"], kept["delete_after"]) == ("kept", None)


def test_report_json_of_an_empty_estate_is_an_empty_array(gc):
    result = run("-c", str(gc.config_path), "report", "--format", "json", script=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert gc.scan().outcome == "complete"  # a pass over nothing
    assert json.loads(gc.cli("report", "--format", "json").out) == []


def test_report_csv_has_a_header_and_one_parseable_row_per_blob(gc):
    urls = _estate(gc)
    as_json = {r["url"]: r for r in gc.cli("report", "--format", "json").json()}
    result = gc.cli("report", "--format", "csv")
    assert result.code == 0, result.err
    reader = csv.DictReader(io.StringIO(result.out))
    assert set(CONTRACT_KEYS) <= set(reader.fieldnames)
    rows = list(reader)
    assert len(rows) == 3
    by_url = {row["url"]: row for row in rows}
    assert set(by_url) == set(as_json)
    odd = by_url[urls["odd"]]
    assert odd["blob"] == ODD
    for key in CONTRACT_KEYS:
        expected = as_json[urls["odd"]][key]
        assert odd[key] == ("" if expected is None else str(expected)), key
    assert by_url[urls["kept"]]["delete_after"] == ""
    assert result.out.count("\n") == 4  # header + 3 rows, none split by the comma in a name


def test_report_table_has_gib_sizes_and_totals(gc):
    urls = _estate(gc)
    result = gc.cli("report", "--format", "table")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert "GiB" in lines[0]
    big = next(line for line in lines if "gcacct1/vhds/big.vhd" in line)
    assert re.search(r"\b2\.00\b", big) and big.startswith("due")
    assert any(ODD in line for line in lines)
    totals = lines.index("TOTALS")
    tail = "\n".join(lines[totals:])
    assert re.search(r"due\s+2 blobs\s+2\.00 GiB nominal", tail), tail
    assert re.search(r"kept\s+1 blobs", tail), tail
    assert "nothing tracked" not in result.out
    assert urls["used"]  # never in the table
    assert "used.vhd" not in result.out


def test_report_table_of_an_empty_database_says_nothing_tracked(gc):
    result = run("-c", str(gc.config_path), "report")
    assert result.returncode == 0, result.stderr
    assert "nothing tracked" in result.stdout
    assert "TOTALS" not in result.stdout


def test_report_state_filter(gc):
    urls = _estate(gc)
    due = gc.cli("report", "--format", "json", "--state", "due")
    assert due.code == 0, due.err
    assert sorted(r["url"] for r in due.json()) == sorted([urls["odd"], urls["big"]])
    assert {r["state"] for r in due.json()} == {"due"}
    kept = gc.cli("report", "--format", "json", "--state", "kept")
    assert [r["url"] for r in kept.json()] == [urls["kept"]]
    both = gc.cli("report", "--format", "csv", "--state", "kept", "--state", "due")
    assert len(list(csv.DictReader(io.StringIO(both.out)))) == 3
    assert gc.cli("report", "--format", "json", "--state", "deleted").json() == []


# -- explain ------------------------------------------------------------------------------------


def explain(gc, url: str) -> tuple[str, dict]:
    text = gc.cli("explain", url)
    assert text.code == 0, text.err
    as_json = gc.cli("explain", url, "--format", "json")
    assert as_json.code == 0, as_json.err
    return text.out, as_json.json()


def test_explain_a_referenced_blob_names_the_kind_and_the_holder(gc):
    url = gc.page("vhds", "web-os.vhd")
    vm = a.vm(SUB, RG, "web", os_vhd=url)
    gc.compute(vm)
    text, data = explain(gc, url)
    assert data["verdict"] == "referenced"
    assert [(r["kind"], r["holder"]) for r in data["references"]] == [("vm_os_disk", vm["id"])]
    assert "vm_os_disk" in text and vm["id"] in text
    assert re.search(r"^verdict:\s+referenced$", text, re.M)


def test_explain_accepts_any_spelling_of_the_url_and_answers_with_the_canonical_one(gc):
    url = gc.page("vhds", "my disk é.vhd")
    endpoint = gc.azurite.blob_endpoint("gcacct1")
    spelled = f"{endpoint.replace('gcacct1', 'GCACCT1')}/VHDS/my%20disk%20%C3%A9.vhd?sv=2024&sig=abc"
    _, data = explain(gc, spelled)
    assert data["url"] == url
    assert (data["account"], data["container"], data["blob"]) == ("gcacct1", "vhds", "my disk é.vhd")
    assert data["verdict"] == "orphan"


def test_explain_a_leased_blob_says_leased(gc):
    url = gc.page("vhds", "attached.vhd", lease=True)
    text, data = explain(gc, url)
    assert data["verdict"] == "leased"
    assert data["live"]["lease_state"] == "leased"
    assert re.search(r"^verdict:\s+leased$", text, re.M)


@pytest.mark.parametrize(
    "seed_kw, hold",
    [({"metadata": {"vhdgc_keep": "x"}}, "metadata"), ({"snapshots": 1}, "snapshots"), ({}, "operator")],
)
def test_explain_a_kept_blob_names_the_hold(gc, seed_kw, hold):
    url = gc.page("vhds", "kept.vhd", **seed_kw)
    if hold == "operator":
        assert gc.cli("keep", url, "--reason", "INC-77 forensics").code == 0
    assert gc.scan().outcome == "complete"
    text, data = explain(gc, url)
    assert hold in data["verdict"] and "kept" in data["verdict"]
    assert data["stored"]["state"] == "kept" and data["stored"]["hold"] == hold
    assert f"kept: {hold}" in text
    if hold == "operator":
        assert data["operator_hold"] == "INC-77 forensics"
        assert "INC-77 forensics" in text


def test_explain_an_orphan_candidate_shows_its_stored_state_and_sightings(gc):
    url = gc.page("vhds", "left.vhd")
    gc.configure(grace_period="7d", min_sightings=3)
    assert gc.scan().outcome == "complete"
    assert gc.scan(advance=timedelta(hours=1)).outcome == "complete"
    text, data = explain(gc, url)
    assert data["verdict"] == "orphan"
    stored = data["stored"]
    assert (stored["state"], stored["sightings"]) == ("candidate", 2)
    assert_utc_iso(stored["first_orphaned_at"])
    assert "state=candidate sightings=2" in text


def test_explain_a_deleted_blob_shows_its_audit_history(gc):
    url = gc.page("vhds", "gone.vhd")
    gc.configure(mode="delete")
    assert gc.scan().outcome == "complete"
    assert not gc.exists("vhds", "gone.vhd")
    text, data = explain(gc, url)
    assert data["verdict"] == "absent"
    assert data["stored"]["state"] == "deleted"
    assert [h["action"] for h in data["history"]] == ["delete-intent", "deleted"]
    for h in data["history"]:
        assert_utc_iso(h["at"])
    assert text.index("delete-intent") < text.index(" deleted ")


def test_explain_a_blob_of_an_account_not_configured_says_not_collected(gc):
    url = gc.page("vhds", "foreign.vhd", account="gcacct3")
    text, data = explain(gc, url)
    assert data["verdict"] == "not collected"
    assert "gcacct3" in data["why"]
    assert "not collected" in text


def test_explain_never_says_orphan_when_arm_cannot_be_read(gc):
    url = gc.page("vhds", "maybe.vhd")
    gc.arm.add_fault(path="/disks$", status=500)
    text, data = explain(gc, url)
    assert "orphan" not in data["verdict"]
    assert data["verdict"] == "unknown"
    assert "disks" in data["references_error"]
    assert "NOT READ" in text


def test_explain_of_a_kept_blob_when_arm_cannot_be_read_is_unknown(gc):
    url = gc.page("vhds", "maybe-kept.vhd", metadata={"vhdgc_keep": "1"})
    gc.arm.add_fault(path="/virtualMachines$", status=500)
    _, data = explain(gc, url)
    assert "orphan" not in data["verdict"]


# -- keep / unkeep / audit ----------------------------------------------------------------------


def test_keep_unkeep_audit_round_trip(gc):
    url = gc.page("vhds", "precious é.vhd")
    kept = run("-c", str(gc.config_path), "keep", url, "--reason", "legal hold #7", script=True)
    assert kept.returncode == 0, kept.stderr
    assert gc.scan().outcome == "complete"
    assert gc.report()[url]["state"] == "kept"

    lifted = run("-c", str(gc.config_path), "unkeep", url)
    assert lifted.returncode == 0, lifted.stderr

    again = run("-c", str(gc.config_path), "unkeep", url)
    assert again.returncode == 2, (again.stdout, again.stderr)
    assert "precious é.vhd" in again.stderr or url in again.stderr

    audit = run("-c", str(gc.config_path), "audit", "--format", "json")
    assert audit.returncode == 0, audit.stderr
    records = json.loads(audit.stdout)
    assert [(r["action"], r["url"]) for r in records] == [("keep", url), ("unkeep", url)]
    assert records[0]["reason"] == "legal hold #7"
    for r in records:
        assert_utc_iso(r["at"])
        assert isinstance(r["actor"], str) and r["actor"]
    assert assert_utc_iso(records[0]["at"]) <= assert_utc_iso(records[1]["at"])
    limited = gc.cli("audit", "--format", "json", "--limit", "1").json()
    assert [r["action"] for r in limited] == ["unkeep"]  # the newest


def test_keep_and_unkeep_audit_the_canonical_url_never_a_sas_signature(gc):
    url = gc.page("vhds", "precious.vhd")
    endpoint = gc.azurite.blob_endpoint("gcacct1")
    pasted = f"{endpoint.replace('gcacct1', 'GCACCT1')}/VHDS/precious.vhd?sv=2024-01-01&sr=b&sig=S3cr3tSignature%3D"
    assert gc.cli("keep", pasted, "--reason", "ticket 9").code == 0
    assert gc.cli("unkeep", pasted).code == 0
    records = gc.cli("audit", "--format", "json").json()
    assert [r["action"] for r in records] == ["keep", "unkeep"]
    assert "S3cr3tSignature" not in gc.cli("audit").out
    assert [r["url"] for r in records] == [url, url]


def test_keep_and_unkeep_match_the_blob_whatever_the_url_spelling(gc):
    url = gc.page("vhds", "precious.vhd")
    endpoint = gc.azurite.blob_endpoint("gcacct1")
    assert gc.cli("keep", f"{endpoint.replace('gcacct1', 'GCACCT1')}/VHDS/precious.vhd?sv=1", "--reason", "r").code == 0
    assert gc.scan().outcome == "complete"
    assert gc.report()[url]["hold"] == "operator"
    assert gc.cli("unkeep", url).code == 0
    assert gc.cli("unkeep", url).code == 2


def test_unkeep_of_a_blob_never_kept_exits_2(gc):
    result = gc.cli("unkeep", gc.url("vhds", "never.vhd"))
    assert result.code == 2
    assert "no operator hold" in result.err
    assert gc.cli("audit", "--format", "json").json() == []


def test_keep_with_an_unparseable_url_exits_2(gc):
    result = gc.cli("keep", "nonsense", "--reason", "x")
    assert result.code == 2
    assert "URL" in result.err


# -- passes -------------------------------------------------------------------------------------


def test_passes_lists_each_pass_with_its_outcome(gc):
    assert gc.cli("passes").out == "no passes yet (run `vhd-gc scan`)\n"  # none yet
    assert gc.cli("scan").code == 0
    gc.arm.add_fault(path="/images$", status=500)
    assert gc.cli("scan").code == 3
    gc.arm.clear_faults()
    assert gc.cli("scan").code == 0
    result = run("-c", str(gc.config_path), "passes")
    assert result.returncode == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split()[:3] == ["PASS", "SEQ", "OUTCOME"]
    assert len(lines) == 3
    outcomes = [re.match(r"#(\d+)\s+(\S+)\s+(\S+)", line).groups() for line in lines]
    # newest first; only complete passes are numbered
    assert [(o[1], o[2]) for o in outcomes] == [("2", "complete"), ("-", "incomplete"), ("1", "complete")]
    assert [int(o[0]) for o in outcomes] == sorted((int(o[0]) for o in outcomes), reverse=True)
    assert "images" in lines[1]
