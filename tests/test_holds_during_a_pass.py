"""An operator hold takes effect for every deletion that starts after `vhd-gc keep` returned, even in
the middle of a deleting pass, on SQLite and PostgreSQL.

The event is real and needs no timing: the executor asks ``should_stop`` before each deletion; once
Azurite shows the first leftover gone, the test runs a real `vhd-gc keep` (another process, another
database connection) on the second one and waits for it to return. The pass had read the holds
before the hold existed; the deletions that follow must see it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from gc_daemon.config import load_config
from gc_daemon.state.db import make_engine
from gc_daemon.state.store import Store
from gc_daemon.urls import parse_blob_url
from gc_daemon.wiring import build_collector
from tests.support.faults import env_with_keys

BACKENDS = [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


def _keep(gc, url: str, reason: str) -> subprocess.CompletedProcess:
    """`vhd-gc keep` as an operator runs it: its own process, its own connection; returns when it has."""
    return subprocess.run(
        [sys.executable, "-m", "gc_daemon", "-c", str(gc.config_path), "keep", url, "--reason", reason],
        env=env_with_keys(gc), capture_output=True, text=True, timeout=120,
    )


@pytest.mark.parametrize("gc", BACKENDS, indirect=True)
def test_a_hold_taken_between_two_deletions_of_a_pass_stops_the_later_ones(gc):
    names = ["a.vhd", "b.vhd", "c.vhd", "d.vhd"]  # deleted in this order: all due at the same instant
    urls = {n: gc.page("left", n) for n in names}
    # One deletion after the other (a hold "between two deletions" needs an order of them; the
    # concurrent executor's case is tests/test_concurrent_deletes.py's).
    gc.configure(mode="delete", grace_period="0s", min_sightings=1, max_concurrent_deletes=1)
    collector = build_collector(load_config(gc.config_path))
    kept: list[subprocess.CompletedProcess] = []
    gone_when_kept: list[str] = []

    def between_deletions() -> bool:
        # Asked before each deletion (and while listing): act once the first leftover is gone.
        if not kept and not gc.exists("left", "a.vhd"):
            gone_when_kept.extend(n for n in names if not gc.exists("left", n))
            kept.append(_keep(gc, urls["c.vhd"], "INC-11 forensics"))
        return False

    result = collector.run_pass(should_stop=between_deletions)

    assert kept, "the pass never reached its second deletion"
    run = kept[0]
    assert run.returncode == 0 and run.stdout.startswith("kept "), (run.stdout, run.stderr)
    assert gone_when_kept == ["a.vhd"]  # the hold was taken between the first and the second deletion
    assert result.outcome == "complete", result.errors
    # Ground truth: the held blob is there, every other leftover gone.
    assert {n: gc.exists("left", n) for n in names} == {"a.vhd": False, "b.vhd": False, "c.vhd": True, "d.vhd": False}
    assert result.stats.deleted == 3
    assert result.execution.refused == {"operator": 1}

    report = gc.report()
    assert report[urls["c.vhd"]]["state"] == "kept" and report[urls["c.vhd"]]["hold"] == "operator"
    assert [report[urls[n]]["state"] for n in ("a.vhd", "b.vhd", "d.vhd")] == ["deleted"] * 3

    store = Store(make_engine(gc.db_url))
    audit = store.audit_log(parse_blob_url(urls["c.vhd"]))
    assert [(r.action, r.error_code) for r in audit] == [("keep", None), ("delete-refused", "operator")]
    assert "INC-11 forensics" in audit[1].reason
    for n in ("a.vhd", "b.vhd", "d.vhd"):
        actions = [(r.action, r.intent_id is not None) for r in store.audit_log(parse_blob_url(urls[n]))]
        assert actions == [("delete-intent", False), ("deleted", True)], (n, actions)

    # And it stays kept.
    again = gc.scan()
    assert again.outcome == "complete" and again.stats.deleted == 0
    assert gc.exists("left", "c.vhd") and gc.state(urls["c.vhd"]) == "kept"
