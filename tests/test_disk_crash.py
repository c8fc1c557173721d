"""Crash safety on the managed-disk path: a real `vhd-gc run` (delete mode, quarantine on) SIGKILLed
at an exact point of a disk's deletion, then the next pass settles it by looking at the disk and its
quarantine snapshot, with the audit log complete.

The points are reached by events, never by time: the ARM stand-in holds the request that marks the
point (a gate: sandbox/arm_faults.py) until the daemon is dead, then drops it (ARM never saw it):

- between the quarantine snapshot and the delete: the DELETE of the disk is held (the snapshot has
  succeeded, ``quarantined`` and ``delete-intent`` are recorded, ARM has not received the delete);
- during the delete operation: the first poll of the delete's operation is held (ARM accepted the
  delete); Azure then finishes it on its own, or has not yet by the next pass;
- while the quarantine snapshot is being made: the first poll of the snapshot's operation is held.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from tests.support.disks import (
    VM,
    actions,
    audit,
    configure,
    disk,
    disk_id,
    exists,
    quarantine_of,
    report,
    seed,
    unresolved_intents,
)
from tests.support.faults import env_with_keys
from tests.test_crash import Daemon

HANG = 180.0  # only catches a hang: a loaded machine is slow, never this slow
LEFT = disk_id("left-0")
ATTACHED = disk_id("web-os")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(gc, tmp_path: Path) -> Daemon:
    settings = dict(gc.settings)
    settings["metrics_listen"] = f"127.0.0.1:{_free_port()}"
    settings["interval"] = "1s"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    return Daemon(path, env_with_keys(gc, PYTHONFAULTHANDLER="1"), tmp_path / "run.log")


def _estate(gc) -> None:
    configure(gc, quarantine="30d")
    seed(gc, disk("left-0", size_gb=64, tags={"team": "a"}), disk("web-os", disk_state="Attached", managed_by=VM))


def _audit_complete(gc) -> None:
    """Every intent has an outcome; every `deleted` of the disk is tied to an intent of the disk."""
    entries = audit(gc)
    assert unresolved_intents(gc) == []
    by_id = {e["id"]: e for e in entries}
    for e in entries:
        if e["action"] in ("deleted", "delete-failed", "quarantined", "quarantine-failed"):
            intent = by_id.get(e["intent_id"])
            assert intent is not None and intent["url"].lower() == e["url"].lower(), e
    assert [e["action"] for e in entries if e["url"].lower() == LEFT.lower()].count("deleted") == 1
    assert not any(e["url"].lower() == ATTACHED.lower() for e in entries)


def _settled(gc) -> dict:
    """The disk is gone, deleted once, with exactly one quarantine snapshot, recorded in the report."""
    assert not exists(gc, LEFT)
    assert exists(gc, ATTACHED)
    (snap,) = quarantine_of(gc, LEFT)
    assert snap["properties"]["provisioningState"] == "Succeeded"
    rec = report(gc)[LEFT.lower()]
    assert rec["state"] == "deleted"
    assert (rec["quarantine_snapshot"] or "").lower() == snap["id"].lower()
    return snap


@pytest.mark.parametrize(
    "gc", [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
    indirect=True,
)
def test_sigkill_between_the_quarantine_snapshot_and_the_delete(gc, tmp_path):
    _estate(gc)
    gate = gc.arm.gate(r"/disks/left-0$", "DELETE")
    d = _start(gc, tmp_path)
    try:
        assert gate.wait(HANG), f"the daemon never sent the delete:\n{d.log()[-3000:]}"
    finally:
        d.kill()
        gate.release(serve=False)  # ARM never received it

    # Where the daemon died: the snapshot made and recorded, the delete intended, the disk there.
    assert exists(gc, LEFT)
    (snap,) = quarantine_of(gc, LEFT)
    assert snap["properties"]["provisioningState"] == "Succeeded"
    assert actions(gc, snap["id"]) == ["quarantine-intent", "quarantined"]
    assert actions(gc, LEFT) == ["delete-intent"]

    run = gc.cli("scan")  # the restarted collector's next pass
    assert run.code == 0, run.err
    again = _settled(gc)
    assert again["id"] == snap["id"]  # the same snapshot, not a second one
    acts = actions(gc, LEFT)
    assert acts[0] == "delete-intent" and acts[1] == "delete-failed"  # settled: still there then
    assert acts[-2:] == ["delete-intent", "deleted"]
    _audit_complete(gc)


@pytest.mark.parametrize("azure_finishes", [True, False], ids=["azure-finishes-the-delete", "delete-never-ends"])
def test_sigkill_during_the_delete_operation(gc, tmp_path, azure_finishes):
    _estate(gc)
    gates = []
    # The DELETE is served (ARM accepts it); the first poll of its operation is held.
    hook = gc.arm.on_request(r"/disks/left-0$", "DELETE", lambda m, p: gates.append(gc.arm.gate(r"/operations/", "GET")))
    d = _start(gc, tmp_path)
    try:
        assert hook.done.wait(HANG), f"the daemon never sent the delete:\n{d.log()[-3000:]}"
        assert gates[0].wait(HANG), f"the daemon never polled the delete:\n{d.log()[-3000:]}"
    finally:
        d.kill()
        for g in gates:
            g.release(serve=False)
    (op,) = [op for op in gc.arm.operations if op.kind == "delete"]
    assert op.status == "InProgress" and exists(gc, LEFT)
    assert actions(gc, LEFT) == ["delete-intent"]
    if azure_finishes:
        gc.arm.disk_rp.settle(op.id)
        assert not exists(gc, LEFT)

    run = gc.cli("scan")
    assert run.code == 0, run.err
    _settled(gc)
    acts = actions(gc, LEFT)
    if azure_finishes:
        # Settled by looking at the disk: gone, so deleted by vhd-gc's intent; no second delete.
        assert acts == ["delete-intent", "deleted"]
        assert [m for m, p in gc.arm.requests if m == "DELETE" and "/disks/left-0" in p] == ["DELETE"]
        settled = audit(gc, LEFT)[-1]
        assert "settled" in (settled["reason"] or "")
        # Deleted while nobody watched, yet restorable: the settled row names its quarantine snapshot.
        run = gc.cli("restore", LEFT)
        assert run.code == 0, run.err
        assert exists(gc, LEFT) and report(gc)[LEFT.lower()]["hold"] == "operator"
    else:
        assert acts[:2] == ["delete-intent", "delete-failed"] and acts[-2:] == ["delete-intent", "deleted"]
    _audit_complete(gc)


def test_sigkill_while_the_quarantine_snapshot_is_being_made(gc, tmp_path):
    _estate(gc)
    gate = gc.arm.gate(r"/operations/", "GET")  # the first poll: the snapshot's operation
    d = _start(gc, tmp_path)
    try:
        assert gate.wait(HANG), f"the daemon never polled the snapshot:\n{d.log()[-3000:]}"
    finally:
        d.kill()
        gate.release(serve=False)
    (snap,) = quarantine_of(gc, LEFT)
    assert snap["properties"]["provisioningState"] == "Updating"
    assert actions(gc, snap["id"]) == ["quarantine-intent"]
    assert exists(gc, LEFT) and "delete-intent" not in actions(gc, LEFT)

    for _ in range(2):  # the snapshot's intent is settled by the pass after the one that finishes it
        run = gc.cli("scan")
        assert run.code == 0, run.err
    again = _settled(gc)
    assert again["id"] == snap["id"]
    assert actions(gc, LEFT) == ["delete-intent", "deleted"]
    assert "quarantined" in actions(gc, snap["id"])
    _audit_complete(gc)
