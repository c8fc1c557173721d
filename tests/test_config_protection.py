"""Configuration that protects the operator, black-box through the CLI (real subprocesses, Azurite and
the HTTPS ARM stand-in): -c after the command, the default path, --dry-run for one invocation, the
warning for a configuration that deletes quickly, and a database path that cannot be created."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gc_daemon.cli import cli
from gc_daemon.config import DEFAULT_CONFIG_PATH
from tests.support.estate import SUB

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environ = dict(os.environ)
    environ.pop("VHD_GC_CONFIG", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "gc_daemon", *args], capture_output=True, text=True,
                          env=environ, timeout=120, cwd=ROOT)


def pass_modes(gc) -> list[str]:
    with sqlite3.connect(gc.db_url.removeprefix("sqlite:///")) as db:
        return [row[0] for row in db.execute("SELECT mode FROM passes ORDER BY id")]


def leaf_commands(group, prefix=()):
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            yield from leaf_commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


# -- -c after the command ---------------------------------------------------------------------


def test_every_command_takes_c_after_its_name():
    commands = list(leaf_commands(cli))
    assert len(commands) >= 12
    for path, cmd in commands:
        opts = [o for p in cmd.params for o in getattr(p, "opts", [])]
        assert "-c" in opts and "--config" in opts, path


def test_c_after_the_command_is_used(gc):
    url = gc.page("vhds", "left.vhd")
    scanned = run("scan", "-c", str(gc.config_path))
    assert scanned.returncode == 0, scanned.stderr
    reported = run("report", "--format", "json", "--config", str(gc.config_path))
    assert reported.returncode == 0, reported.stderr
    assert [r["url"] for r in json.loads(reported.stdout)] == [url]
    upgraded = run("db", "upgrade", "-c", str(gc.config_path))
    assert upgraded.returncode == 0 and "database at" in upgraded.stdout, upgraded.stderr
    checked = run("config", "check", "--offline", "-c", str(gc.config_path))
    assert checked.returncode == 0, checked.stderr
    assert yaml.safe_load(checked.stdout)["database_url"] == gc.db_url


def test_c_after_the_command_wins_over_c_before_and_the_variable(gc, tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run("-c", str(missing), "report", "--format", "json", "-c", str(gc.config_path),
                 env={"VHD_GC_CONFIG": str(missing)})
    assert result.returncode == 0, result.stderr
    wrong = run("report", "-c", str(missing), env={"VHD_GC_CONFIG": str(gc.config_path)})
    assert wrong.returncode == 2 and str(missing) in wrong.stderr


# -- the default path ---------------------------------------------------------------------------


@pytest.mark.skipif(Path(DEFAULT_CONFIG_PATH).exists(), reason=f"{DEFAULT_CONFIG_PATH} exists on this machine")
def test_without_c_or_the_variable_the_default_path_is_named_when_missing():
    result = run("scan")
    assert result.returncode == 2, result.stderr
    assert DEFAULT_CONFIG_PATH in result.stderr
    assert "-c/--config" in result.stderr and "VHD_GC_CONFIG" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_default_path_is_read_when_it_exists(tmp_path, monkeypatch):
    cfg = tmp_path / "etc-vhd-gc.yaml"
    cfg.write_text(yaml.safe_dump({"database_url": f"sqlite:///{tmp_path / 'x.db'}", "azure": {"subscriptions": [SUB]}}))
    monkeypatch.setattr("gc_daemon.config.DEFAULT_CONFIG_PATH", str(cfg))
    monkeypatch.delenv("VHD_GC_CONFIG", raising=False)
    result = CliRunner().invoke(cli, ["config", "check", "--offline"], obj={})
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["database_url"] == f"sqlite:///{tmp_path / 'x.db'}"


# -- --dry-run for one invocation ---------------------------------------------------------------


def test_scan_dry_run_deletes_nothing_in_mode_delete_and_records_dry_run(gc):
    gc.configure(mode="delete")  # grace_period 0s, min_sightings 1, min_age 0s: the blob is due at once
    url = gc.page("vhds", "due.vhd")
    dry = run("-c", str(gc.config_path), "scan", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "mode dry-run" in dry.stdout and "deleted 0" in dry.stdout
    assert gc.exists("vhds", "due.vhd")
    assert gc.state(url) == "due"
    assert pass_modes(gc) == ["dry-run"]
    # Without the flag the same configuration deletes it: it was due, and only --dry-run kept it.
    real = run("-c", str(gc.config_path), "scan")
    assert real.returncode == 0, real.stderr
    assert not gc.exists("vhds", "due.vhd")
    assert pass_modes(gc) == ["dry-run", "delete"]


def test_run_dry_run_deletes_nothing_in_mode_delete(gc):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gc.configure(mode="delete", metrics_listen=f"127.0.0.1:{port}")
    url = gc.page("vhds", "due.vhd")
    once = run("-c", str(gc.config_path), "run", "--once", "--dry-run")
    assert once.returncode == 0, once.stderr
    assert gc.exists("vhds", "due.vhd")
    assert gc.state(url) == "due"
    assert pass_modes(gc) == ["dry-run"]
    assert "quick_deletion" not in once.stderr  # for this invocation the mode is dry-run


# -- a configuration that deletes quickly -------------------------------------------------------


def test_a_quick_deleting_configuration_is_named_at_every_start(gc):
    gc.configure(mode="delete")  # the harness: grace_period 0s, min_sightings 1
    for args in (("scan",), ("config", "check", "--offline")):
        result = run("-c", str(gc.config_path), *args)
        assert result.returncode == 0, result.stderr
        warning = [l for l in result.stderr.splitlines() if l.startswith("vhd-gc: warning: mode: delete")]
        assert len(warning) == 1, result.stderr
        assert "grace_period: 0s (under 1d)" in warning[0] and "min_sightings: 1 (under 2)" in warning[0]
        logged = [json.loads(l) for l in result.stderr.splitlines() if l.startswith("{")]
        events = [e for e in logged if e.get("event") == "quick_deletion"]
        assert len(events) == 1 and events[0]["level"] == "warning", result.stderr
        assert events[0]["keys"] == ["grace_period", "min_sightings"]


def test_the_warning_names_only_the_quick_key(gc):
    gc.configure(mode="delete", grace_period="2d", min_sightings=1)
    result = run("-c", str(gc.config_path), "config", "check", "--offline")
    assert result.returncode == 0, result.stderr
    assert "vhd-gc: warning: mode: delete with min_sightings: 1 (under 2): " in result.stderr, result.stderr
    assert "grace_period: 2d" not in result.stderr
    gc.configure(mode="delete", grace_period="12h", min_sightings=3)
    result = run("-c", str(gc.config_path), "config", "check", "--offline")
    assert "vhd-gc: warning: mode: delete with grace_period: 12h (under 1d): " in result.stderr, result.stderr
    assert "min_sightings: 3 (" not in result.stderr


@pytest.mark.parametrize("overrides", [
    {"mode": "dry-run"},  # the harness's quick values, but nothing is deleted
    {"mode": "delete", "grace_period": "1d", "min_sightings": 2},  # the edges are not quick
], ids=["dry-run", "one-day-two-sightings"])
def test_no_warning_for_a_configuration_that_does_not_delete_quickly(gc, overrides):
    gc.configure(**overrides)
    result = run("-c", str(gc.config_path), "config", "check", "--offline")
    assert result.returncode == 0, result.stderr
    assert "quick_deletion" not in result.stderr and "warning: mode: delete" not in result.stderr


def test_scan_dry_run_of_a_quick_configuration_does_not_warn(gc):
    gc.configure(mode="delete")
    result = run("-c", str(gc.config_path), "scan", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "warning: mode: delete" not in result.stderr


# -- a database path that cannot be created ------------------------------------------------------


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_config_check_names_a_sqlite_path_that_cannot_be_created(gc, tmp_path, offline):
    path = tmp_path / "no" / "such" / "dir" / "vhd-gc.db"
    gc.configure(database_url=f"sqlite:///{path}")
    result = run("-c", str(gc.config_path), "config", "check", *(["--offline"] if offline else []))
    assert result.returncode == 2, result.stderr
    line = [l for l in result.stderr.splitlines() if l.startswith("error: database_url:")]
    assert line == [f"error: database_url: cannot create the SQLite database {path}: the directory "
                    f"{path.parent} does not exist"], result.stderr
    assert not path.parent.exists()


def test_config_check_names_a_sqlite_path_under_a_file(gc, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    gc.configure(database_url=f"sqlite:///{blocker / 'vhd-gc.db'}")
    result = run("-c", str(gc.config_path), "config", "check", "--offline")
    assert result.returncode == 2, result.stderr
    assert f"error: database_url: cannot create the SQLite database {blocker / 'vhd-gc.db'}: {blocker} is not a directory" in result.stderr


def test_config_check_accepts_a_sqlite_path_that_can_be_created(gc, tmp_path):
    gc.configure(database_url=f"sqlite:///{tmp_path / 'new.db'}")
    result = run("-c", str(gc.config_path), "config", "check", "--offline")
    assert result.returncode == 0, result.stderr
    assert "database_url" not in result.stderr
    assert not (tmp_path / "new.db").exists()  # checked, not created
