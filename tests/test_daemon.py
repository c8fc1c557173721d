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

DEADLINE = 60.0


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

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
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


def test_sigterm_does_not_wait_forever_for_a_stuck_pass(gc, daemon_env):
    """A source that stops answering must not make the daemon unkillable: after shutdown_grace it
    exits (the interrupted pass changed nothing: it is fail-closed)."""
    gc.page("vhds", "leftover.vhd")
    d = daemon_env(mode="delete", min_sightings=1, shutdown_grace="1s",
                   azure={**gc.settings["azure"], "timeout": "60s", "retry_total": 0})
    wait_for(lambda: d.get("/healthz")[0] == 200, "daemon up")
    wait_for(lambda: any(p.outcome == "complete" for p in complete_passes(gc.db_url)), "a first pass")
    gc.page("vhds", "second.vhd")
    gc.arm.add_fault(path="/virtualMachines$", kind="delay", delay=25)  # the next pass hangs on it
    wait_for(lambda: any(r[1].startswith("/subscriptions/") and "virtualMachines" in r[1]
                         for r in list(gc.arm.requests)[-20:]) and any(p.outcome == "running" for p in complete_passes(gc.db_url)),
             "a pass stuck in the reference read")
    code = d.stop(signal.SIGTERM, timeout=20)
    assert code == 1
    assert "stop_timeout" in d.log()
    assert gc.exists("vhds", "second.vhd")
