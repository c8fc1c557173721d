"""`vhd-gc run` as a real process against Azurite, the ARM stand-in and (for replicas) PostgreSQL.

Waiting is always for an event (a pass record, an HTTP answer, a process exit) with a deadline,
never a sleep of a guessed length."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from gc_daemon.state.db import make_engine
from gc_daemon.state.models import passes as passes_table
from sandbox import arm as a
from tests.support.estate import ACCOUNTS, SUB

# Limits that only catch a hang: a loaded machine is slow, never this slow.
DEADLINE = 180.0
STOP_LIMIT = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, deadline: float = DEADLINE, poll: float = 0.1):
    end = time.monotonic() + deadline
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


class DaemonProc:
    def __init__(self, config_path: Path, env: dict, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gc_daemon", "-c", str(config_path), "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError:
            return 0, ""

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, body = self.get("/metrics")
        assert status == 200
        out = {}
        for fam in text_string_to_metric_families(body):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGTERM, timeout: float = STOP_LIMIT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()


@pytest.fixture
def daemon_env(gc, tmp_path):
    """Config writer and process starter for daemons sharing the harness's estate."""
    procs: list[DaemonProc] = []

    def start(name: str = "d1", **overrides) -> DaemonProc:
        port = free_port()
        settings = dict(gc.settings)
        settings.update({"metrics_listen": f"127.0.0.1:{port}", "interval": "2s"})
        settings.update(overrides)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(settings))
        env = dict(os.environ)
        env.update({f"{acct.upper()}_KEY": gc.azurite.key(acct) for acct in ACCOUNTS})
        env["REQUESTS_CA_BUNDLE"] = str(gc.arm.cert_path)
        proc = DaemonProc(path, env, port, tmp_path / f"{name}.log")
        proc.config_path = path
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()


def complete_passes(db_url: str) -> list:
    """Every pass record (empty while the daemon has not created the schema yet)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(passes_table).order_by(passes_table.c.id)))
    except DBAPIError:
        return []
    finally:
        engine.dispose()


def test_daemon_runs_passes_exports_metrics_and_stops_on_sigterm(gc, daemon_env):
    gc.page("vhds", "leftover.vhd", written=[(0, 4096), (8192, 4096)])
    gc.page("vhds", "attached.vhd", lease=True)
    seed_url = gc.page("vhds", "referenced.vhd")
    gc.compute(a.vm(SUB, "rg1", "vm1", os_vhd=seed_url))
    d = daemon_env(mode="dry-run", min_sightings=1, grace_period="0s")

    wait_for(lambda: d.get("/healthz")[0] == 200, "/healthz 200")
    wait_for(
        lambda: sum(1 for p in complete_passes(gc.db_url) if p.outcome == "complete") >= 2,
        "two complete passes (the scheduler keeps going)",
    )
    m = d.metrics()
    assert m[("vhdgc_orphan_blobs", (("account", "gcacct1"), ("state", "due")))] == 1
    assert m[("vhdgc_orphan_billed_bytes", (("account", "gcacct1"), ("state", "due")))] == 8192
    assert m[("vhdgc_orphan_size_bytes", (("account", "gcacct1"), ("state", "due")))] == 1 << 20
    assert m[("vhdgc_passes_total", (("outcome", "complete"),))] >= 2
    assert m[("vhdgc_last_complete_pass_timestamp_seconds", ())] > time.time() - 60
    assert m[("vhdgc_dry_run", ())] == 1 and m[("vhdgc_leader", ())] == 1
    assert m[("vhdgc_interval_seconds", ())] == 2
    assert m[("vhdgc_blast_radius_blocked", ())] == 0
    assert m[("vhdgc_references_seen", (("kind", "vm_os_disk"),))] == 1
    assert m[("vhdgc_blobs_seen", (("account", "gcacct1"),))] == 3
    assert ("vhdgc_pass_duration_seconds_count", ()) in m
    assert d.get("/")[0] == 404 and d.get("/debug")[0] == 404

    assert d.stop(signal.SIGTERM) == 0
    assert "daemon_stopped" in d.log()
    assert gc.exists("vhds", "leftover.vhd")  # dry-run


def test_a_failing_source_is_counted_and_the_loop_keeps_going(gc, daemon_env):
    gc.page("vhds", "leftover.vhd")
    gc.arm.add_fault(path="/disks$", status=500, times=3)
    d = daemon_env(min_sightings=1, azure={**gc.settings["azure"], "retry_total": 0})
    wait_for(lambda: any(p.outcome == "incomplete" for p in complete_passes(gc.db_url)), "an incomplete pass")
    wait_for(lambda: any(p.outcome == "complete" for p in complete_passes(gc.db_url)), "a complete pass after it")
    m = d.metrics()
    assert m[("vhdgc_passes_total", (("outcome", "incomplete"),))] >= 1
    assert m[("vhdgc_inventory_errors_total", (("source", "disks"),))] >= 1
    assert d.proc.poll() is None  # still running
    assert d.stop() == 0


def test_health_turns_503_when_the_last_complete_pass_is_older_than_three_intervals(gc, daemon_env):
    gc.arm.add_fault(path="/virtualMachines$", status=403)  # every pass incomplete from the start
    d = daemon_env(interval="1s", azure={**gc.settings["azure"], "retry_total": 0})
    wait_for(lambda: d.get("/healthz")[0] == 503, "/healthz 503 after three intervals without a complete pass")
    gc.arm.clear_faults()
    wait_for(lambda: d.get("/healthz")[0] == 200, "/healthz 200 once a pass completes")
    assert d.stop() == 0


def test_a_second_daemon_on_the_same_sqlite_file_is_refused(gc, daemon_env):
    first = daemon_env("first")
    wait_for(lambda: first.get("/healthz")[0] == 200, "first daemon up")
    second = daemon_env("second")
    code = second.proc.wait(timeout=DEADLINE)
    assert code != 0
    assert "another vhd-gc process is using this SQLite database" in second.log()
    assert first.proc.poll() is None
    assert first.stop() == 0


def test_delete_mode_daemon_deletes_leftovers_and_counts_them(gc, daemon_env):
    gc.page("vhds", "leftover.vhd")
    gc.page("vhds", "kept.vhd", snapshots=1)
    d = daemon_env(mode="delete", min_sightings=2, grace_period="0s")
    wait_for(lambda: not gc.exists("vhds", "leftover.vhd"), "the leftover deleted on its second sighting")
    m = wait_for(lambda: (lambda m: m if m.get(("vhdgc_deleted_blobs_total", (("account", "gcacct1"),))) else None)(d.metrics()), "deletion counted")
    assert m[("vhdgc_deleted_bytes_total", (("account", "gcacct1"),))] == 1 << 20
    assert m[("vhdgc_orphan_blobs", (("account", "gcacct1"), ("state", "kept")))] == 1
    assert gc.exists("vhds", "kept.vhd")
    assert d.stop() == 0


@pytest.mark.postgres
@pytest.mark.parametrize("gc", ["postgres"], indirect=True)
def test_two_replicas_on_postgresql_never_overlap_and_fail_over(gc, daemon_env):
    gc.page("vhds", "leftover.vhd")
    one = daemon_env("one", interval="2s")
    two = daemon_env("two", interval="2s")
    wait_for(lambda: one.get("/healthz")[0] == 200 and two.get("/healthz")[0] == 200, "both replicas up")
    wait_for(lambda: len([p for p in complete_passes(gc.db_url) if p.outcome == "complete"]) >= 3, "three passes")
    leaders = [d for d in (one, two) if d.metrics()[("vhdgc_leader", ())] == 1]
    assert len(leaders) == 1
    leader = leaders[0]
    standby = two if leader is one else one
    assert standby.metrics()[("vhdgc_leader", ())] == 0

    leader.proc.kill()  # SIGKILL: no goodbye, the server drops its advisory lock with the session
    leader.proc.wait()
    killed_at = time.time()
    before = len(complete_passes(gc.db_url))
    wait_for(lambda: standby.metrics()[("vhdgc_leader", ())] == 1, "the standby takes over")
    wait_for(lambda: len(complete_passes(gc.db_url)) > before + 1, "passes by the new leader")
    first_new = min(p.started_at for p in complete_passes(gc.db_url) if p.started_at.timestamp() > killed_at)
    print(f"\nfailover: the standby started a pass {first_new.timestamp() - killed_at:.1f}s after the leader was killed (interval 2s)")

    rows = [p for p in complete_passes(gc.db_url) if p.finished_at is not None]
    hosts_pids = {p.host for p in rows}
    assert hosts_pids  # recorded
    spans = sorted((p.started_at, p.finished_at) for p in rows)
    for (s1, f1), (s2, f2) in zip(spans, spans[1:]):
        assert f1 <= s2, f"passes overlap: {s1}..{f1} and {s2}..{f2}"
    assert standby.stop() == 0


class BlackHole:
    """An endpoint that accepts connections and never answers: a call to it is in flight until the
    client's timeout. ``connected`` is set once vhd-gc is inside such a call."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connected = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.connected.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def black_hole():
    hole = BlackHole()
    yield hole
    hole.close()


def pass_rows(db_url: str) -> list:
    return complete_passes(db_url)


def log_events(text: str) -> list[dict]:
    import json

    events = []
    for line in text.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def test_sigterm_during_a_call_that_never_answers_ends_the_pass_as_stopped(gc, daemon_env, black_hole):
    """The reference read is inside a call that would last an hour (timeout and shutdown_grace
    too): SIGTERM ends the pass as `stopped`, logged at info, and the process exits 0 without
    waiting for the call; the pass changed nothing."""
    gc.page("vhds", "leftover.vhd")
    d = daemon_env(mode="delete", min_sightings=1, shutdown_grace="1h",
                   azure={**gc.settings["azure"], "arm_endpoint": black_hole.url, "timeout": "1h", "retry_total": 0})
    assert black_hole.connected.wait(DEADLINE), "the pass never called ARM"
    wait_for(lambda: any(p.outcome == "running" for p in pass_rows(gc.db_url)), "the pass running")

    assert d.stop(signal.SIGTERM) == 0  # within STOP_LIMIT: it did not wait for the hour-long call
    rows = pass_rows(gc.db_url)
    assert [p.outcome for p in rows] == ["stopped"]
    assert rows[0].seq is None and rows[0].finished_at is not None
    assert "nothing was changed" in rows[0].error
    events = log_events(d.log())
    stopped = [e for e in events if e.get("event") == "pass_stopped"]
    assert len(stopped) == 1 and stopped[0]["level"] == "info"
    assert not [e for e in events if e.get("level") in ("error", "critical")], events
    assert not [e for e in events if e.get("event") == "stop_timeout"]
    assert [e["signal"] for e in events if e.get("event") == "daemon_stopped"] == ["SIGTERM"]
    assert gc.exists("vhds", "leftover.vhd")
    assert gc.report() == {}  # no sighting counted, nothing tracked

    from prometheus_client import generate_latest

    from gc_daemon.config import load_config
    from gc_daemon.metrics import Metrics
    from gc_daemon.wiring import open_store

    config = load_config(d.config_path)
    m = {(s.name, tuple(sorted(s.labels.items()))): s.value
         for fam in text_string_to_metric_families(generate_latest(Metrics(open_store(config), config).registry).decode())
         for s in fam.samples}
    assert m[("vhdgc_passes_total", (("outcome", "stopped"),))] == 1
    assert m[("vhdgc_passes_total", (("outcome", "failed"),))] == 0
    assert m[("vhdgc_passes_total", (("outcome", "incomplete"),))] == 0


def test_sigint_stops_the_daemon_as_sigterm_does(gc, daemon_env, black_hole):
    d = daemon_env(shutdown_grace="1h",
                   azure={**gc.settings["azure"], "arm_endpoint": black_hole.url, "timeout": "1h", "retry_total": 0})
    assert black_hole.connected.wait(DEADLINE)
    wait_for(lambda: any(p.outcome == "running" for p in pass_rows(gc.db_url)), "the pass running")
    assert d.stop(signal.SIGINT) == 0
    assert [p.outcome for p in pass_rows(gc.db_url)] == ["stopped"]
    assert [e["signal"] for e in log_events(d.log()) if e.get("event") == "daemon_stopped"] == ["SIGINT"]


@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_scan_interrupted_by_a_signal_records_a_stopped_pass(gc, tmp_path, black_hole, sig, status):
    gc.page("vhds", "leftover.vhd")
    path = gc.configure(azure={"arm_endpoint": black_hole.url, "timeout": "1h", "retry_total": 0})
    env = dict(os.environ)  # the harness set the account keys and the CA bundle
    proc = subprocess.Popen([sys.executable, "-m", "gc_daemon", "-c", str(path), "scan", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert black_hole.connected.wait(DEADLINE), "the scan never called ARM"
        wait_for(lambda: any(p.outcome == "running" for p in pass_rows(gc.db_url)), "the pass running")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=STOP_LIMIT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert "stopped:" in out
    assert f"the pass was stopped by {sig.name}" in err
    rows = pass_rows(gc.db_url)
    assert [p.outcome for p in rows] == ["stopped"] and rows[0].seq is None
    assert not [e for e in log_events(err + out) if e.get("level") == "error"]


def test_a_stop_during_the_deletions_starts_none_and_keeps_the_complete_inventory(gc):
    """A stop that comes after the inventory was recorded: no deletion starts; the pass is
    `stopped` but keeps its seq (its sightings were complete and count); the blob stays due."""
    from gc_daemon.config import load_config
    from gc_daemon.wiring import build_collector

    url = gc.page("vhds", "leftover.vhd")
    gc.configure(mode="delete", min_sightings=1)
    collector = build_collector(load_config(gc.config_path))
    committed = lambda: collector.store.last_complete_pass() is not None  # noqa: E731 - the event
    result = collector.run_pass(should_stop=committed)
    assert result.outcome == "stopped"
    assert result.execution.skipped_stopped == 1 and not result.execution.deleted
    rows = pass_rows(gc.db_url)
    assert [(p.outcome, p.seq) for p in rows] == [("stopped", 1)]
    assert "stay due for the next pass" in rows[0].error
    assert gc.exists("vhds", "leftover.vhd")
    assert gc.state(url) == "due"
    assert not [r for r in collector.store.audit_log() if r.action == "delete-intent"]

    again = build_collector(load_config(gc.config_path)).run_pass()
    assert again.outcome == "complete" and again.seq == 2
    assert not gc.exists("vhds", "leftover.vhd")


def test_a_stop_before_the_listing_changes_nothing(gc):
    from gc_daemon.config import load_config
    from gc_daemon.wiring import build_collector

    gc.page("vhds", "leftover.vhd")
    collector = build_collector(load_config(gc.config_path))
    result = collector.run_pass(should_stop=lambda: True)
    assert result.outcome == "stopped" and result.seq is None
    assert [(p.outcome, p.seq) for p in pass_rows(gc.db_url)] == [("stopped", None)]
    assert gc.report() == {}
