"""Crash safety: a real `vhd-gc run` (delete mode, a pass a second, a few deletions a pass) SIGKILLed
at random points and restarted, again and again, until every leftover is gone.

Afterwards: every blob that went has its delete-intent and exactly one `deleted` outcome tied to it
(the restarted daemon settles intents left without an outcome at its next pass); nothing in use is
gone; the state database is consistent (no candidate/due row for a blob that no longer exists, no
unresolved intent, no two overlapping complete passes); and a final `vhd-gc scan` exits 0.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from gc_daemon.state.db import make_engine
from gc_daemon.state.models import audit_log, passes as passes_table, tracked_blobs
from gc_daemon.state.store import Store
from sandbox import arm as a
from tests.support.estate import SUB
from tests.support.faults import env_with_keys

SEED = 20261126
LEFTOVERS = 60
MAX_KILLS = 20
START_DEADLINE = 180.0  # only catches a hang: a loaded machine is slow, never this slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, config: Path, env: dict, log: Path) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "gc_daemon", "-c", str(config), "run"], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self) -> None:
        end = time.monotonic() + START_DEADLINE
        while "daemon_started" not in self.log():
            if self.proc.poll() is not None:
                raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > end:
                raise AssertionError("the daemon did not start")
            time.sleep(0.02)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 180) -> int:
        """SIGTERM; if it has not exited within ``timeout``, SIGABRT (PYTHONFAULTHANDLER dumps every
        thread's stack into the log) and fail with the end of the log."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=10)
            raise AssertionError(f"the daemon did not stop within {timeout}s of SIGTERM:\n{self.log()[-6000:]}") from None
        finally:
            self._log.close()


def test_sigkill_at_random_points_loses_no_deletion_and_deletes_nothing_in_use(gc, tmp_path):
    rng = random.Random(SEED)
    # In use: referenced (no lease: only the reference protects them) and leased.
    referenced = [("vhds", f"vm{i}-os.vhd") for i in range(4)]
    leased = [("vhds", f"attached{i}.vhd") for i in range(2)]
    for n in referenced:
        gc.page(*n)
    for n in leased:
        gc.page(*n, lease=True)
    gc.compute(*[a.vm(SUB, "rg1", f"vm{i}", os_vhd=gc.url(*n)) for i, n in enumerate(referenced)])
    leftovers = [("left", f"leftover-{i:02d}.vhd") for i in range(LEFTOVERS)]
    for n in leftovers:
        gc.page(*n, written=[(0, 512)])
    in_use = referenced + leased

    gc.configure(mode="delete", grace_period="0s", min_sightings=1, max_deletes_per_pass=3, interval="1s",
                 azure={"retry_total": 1, "timeout": "5s"})
    settings = dict(gc.settings)
    env = env_with_keys(gc, PYTHONFAULTHANDLER="1")
    service = gc.svc("gcacct1")

    def remaining() -> list[tuple[str, str]]:
        names = {("left", b.name) for b in service.get_container_client("left").list_blobs()}
        return [n for n in leftovers if n in names]

    def start(i: int) -> Daemon:
        settings["metrics_listen"] = f"127.0.0.1:{_free_port()}"
        path = tmp_path / f"run{i}.yaml"
        path.write_text(yaml.safe_dump(settings))
        return Daemon(path, env, tmp_path / f"run{i}.log")

    kills = 0
    delays = []
    near_deletion = 0
    while kills < MAX_KILLS and remaining():
        d = start(kills)
        d.wait_started()
        t0 = time.monotonic()
        if rng.random() < 0.5:
            # Anywhere: startup, a pass, between passes.
            time.sleep(rng.uniform(0.05, 1.5))
        else:
            # Close to a deletion: a few milliseconds after the daemon logs one, inside the
            # next blob's intent -> delete -> outcome window, or right after it.
            end = time.monotonic() + 5
            while d.log().count('"event": "deleted"') == 0 and time.monotonic() < end:
                time.sleep(0.003)
            time.sleep(rng.uniform(0.0, 0.03))
            near_deletion += 1
        delays.append(time.monotonic() - t0)
        d.kill()
        kills += 1
        gone = [n for n in in_use if not gc.exists(*n)]
        assert not gone, f"after kill {kills}: blobs in use deleted: {gone}"
    left_after_kills = len(remaining())

    # No more kills: the daemon finishes the job.
    d = start(kills)
    d.wait_started()
    end = time.monotonic() + 90
    while remaining():
        assert d.proc.poll() is None, d.log()[-3000:]
        assert time.monotonic() < end, f"{len(remaining())} leftovers still there"
        time.sleep(0.2)
    assert d.stop() == 0

    final = gc.cli("scan")
    assert final.code == 0, final.err

    # Nothing in use is gone.
    assert [n for n in in_use if not gc.exists(*n)] == []
    assert remaining() == []

    store = Store(make_engine(gc.db_url))
    assert store.unresolved_intents() == []
    engine = store.engine
    with engine.connect() as conn:
        audit = list(conn.execute(select(audit_log).order_by(audit_log.c.id)))
        rows = list(conn.execute(select(tracked_blobs)))
        passes = list(conn.execute(select(passes_table).order_by(passes_table.c.id)))

    # Every deleted blob: its intent, and exactly one `deleted` outcome tied to an intent of that blob.
    intents = {r.id: r for r in audit if r.action == "delete-intent"}
    deleted = Counter()
    for r in audit:
        if r.action == "deleted":
            assert r.intent_id in intents, f"a deletion without its intent: {r.url}"
            i = intents[r.intent_id]
            assert (i.account, i.container, i.blob) == (r.account, r.container, r.blob)
            deleted[(r.container, r.blob)] += 1
    for n in leftovers:
        assert deleted[n] == 1, f"{n}: {deleted[n]} `deleted` outcomes"
    for r in audit:  # every intent has an outcome
        if r.action == "delete-intent":
            assert any(o.intent_id == r.id for o in audit), f"intent without outcome: {r.url}"
    assert not any((r.container, r.blob) in in_use for r in audit if r.action in ("delete-intent", "deleted"))

    # The tracked rows agree with Azurite.
    by_key = {(r.container, r.blob): r for r in rows if r.account == "gcacct1"}
    for n in leftovers:  # deleted, or (BUG, see test_deleted_state_survives_a_crash_after_the_outcome) forgotten
        assert by_key.get(n) is None or by_key[n].state == "deleted", (n, by_key.get(n))
    forgotten = [n for n in leftovers if by_key.get(n) is None]
    for r in rows:
        if r.state in ("candidate", "due"):
            assert gc.exists(r.container, r.blob, r.account), f"{r.url}: {r.state} but gone"

    # No two complete passes overlap; killed passes are the only ones left running.
    complete = sorted((p.started_at, p.finished_at) for p in passes if p.outcome == "complete")
    for (s1, f1), (s2, f2) in zip(complete, complete[1:]):
        assert f1 <= s2, f"complete passes overlap: {s1}..{f1} and {s2}..{f2}"
    seqs = [p.seq for p in passes if p.seq is not None]
    assert len(seqs) == len(set(seqs))
    running = sum(1 for p in passes if p.outcome == "running")
    settled = sum(1 for r in audit if (r.reason or "").startswith("settled after an interruption"))

    print(
        f"\ncrash test: {kills} SIGKILLs survived ({near_deletion} of them just after a deletion; "
        f"{min(delays):.2f}-{max(delays):.2f}s after start; seed {SEED}); "
        f"{LEFTOVERS - left_after_kills} of {LEFTOVERS} leftovers deleted under the kills, the rest after; "
        f"{len(intents)} delete intents, {settled} settled after an interruption, {running} passes killed mid-way; "
        f"0 blobs in use lost; {len(forgotten)} deleted blobs missing from the report (known bug)"
    )


class SimulatedCrash(BaseException):
    """The process dies here (nothing in vhd-gc catches a BaseException that is not an Exception)."""


def test_deleted_state_survives_a_crash_after_the_outcome(gc):
    """The window between the audit's `deleted` outcome (committed blob by blob) and the end-of-pass
    write of the tracked rows: a crash there must not make vhd-gc forget that it deleted the blob."""
    from gc_daemon.config import load_config
    from gc_daemon.wiring import build_collector

    url = gc.page("left", "leftover.vhd")
    gc.configure(mode="delete", grace_period="0s", min_sightings=1)
    collector = build_collector(load_config(gc.config_path))
    real = collector.store

    class DiesAfterTheOutcome:
        deleted = False

        def __getattr__(self, name):
            return getattr(real, name)

        def audit(self, **fields):
            out = real.audit(**fields)
            if fields.get("action") == "deleted":
                self.deleted = True
            return out

        def transaction(self):
            if self.deleted:  # the executor's changes are about to be written: die first
                raise SimulatedCrash()
            return real.transaction()

        def finish_pass(self, *args, **kwargs):
            if self.deleted:  # or die before the pass records its end
                raise SimulatedCrash()
            return real.finish_pass(*args, **kwargs)

    collector.store = DiesAfterTheOutcome()
    with pytest.raises(SimulatedCrash):
        collector.run_pass()
    assert not gc.exists("left", "leftover.vhd")
    assert gc.scan().outcome == "complete"  # the restarted process
    assert gc.state(url) == "deleted", "the report forgot a blob vhd-gc deleted"
