"""The fault matrix on the managed-disk path, end to end against the ARM stand-in.

Reads: a failing (5xx), throttled (429), malformed, truncated or short (a nextLink page failing, an
item without an id) list of disks, snapshots, locks or resource groups, or a failing GET of one disk
(its ownership time), fails the pass closed: outcome incomplete, no disk deleted, no record changed
(tracked disks, operator holds, audit log and sequence identical before and after), and the next
healthy pass converges. A fault the client retries away (once) lets the pass complete correctly.

Writes: the quarantine snapshot or the delete failing, stuck, refused or losing its reply is
recorded as what happened: nothing deleted without its quarantine snapshot, no deletion missing
from the records, no deletion of a disk in use or held.

Every case is counted in the session's fault tally (tests/support/tally.py), disks included.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import MetaData, select

from gc_daemon.state.db import make_engine
from sandbox import arm as a
from sandbox import arm_disks as ad
from tests.support import tally
from tests.support.disks import (
    RG,
    VM,
    actions,
    audit,
    configure,
    disk,
    disk_id,
    exists,
    quarantine_of,
    report,
    scan,
    seed,
    snapshot,
    unresolved_intents,
    writes,
)
from tests.support.estate import SUB

AKS = f"/subscriptions/{SUB}/resourceGroups/rg-aks/providers/Microsoft.ContainerService/managedClusters/k1"
MC = "MC_rg-aks_k1_westeurope"
LEFTOVERS = [disk_id(f"left-{i}") for i in range(3)]
# Must survive everything; each is protected by what one of the lists says (a list read short would
# make it look like an orphan).
PROTECTED = {
    disk_id("grp-kept", "rg-keep"): "the group's vhdgc-keep tag (resource groups list)",
    disk_id("aks-disk", MC): "the group's managedBy (resource groups list)",
    disk_id("locked-disk"): "a lock (locks list)",
    disk_id("image-src"): "an image names it (images list)",
    disk_id("attached-0"): "attached (disks list)",
    disk_id("attached-1"): "attached (disks list)",
}


@pytest.fixture(scope="module", autouse=True)
def _tally_plugin(request):
    tally.ensure_registered(request.config)


def _estate() -> list[dict[str, Any]]:
    image = a.image(SUB, RG, "golden")
    image["properties"]["storageProfile"]["osDisk"]["managedDisk"] = {"id": disk_id("image-src")}
    return [
        *(disk(f"left-{i}") for i in range(3)),
        ad.resource_group(SUB, "rg-keep", tags={"vhdgc-keep": "team-b"}),
        disk("grp-kept", rg="rg-keep"),
        ad.resource_group(SUB, MC, managed_by=AKS),
        disk("aks-disk", rg=MC),
        disk("locked-disk"),
        ad.management_lock(disk_id("locked-disk"), "nodelete", "CanNotDelete"),
        ad.management_lock(a.rg_id(SUB, "rg-empty-1"), "ro-1", "ReadOnly"),
        ad.management_lock(a.rg_id(SUB, "rg-empty-2"), "ro-2", "CanNotDelete"),
        disk("image-src"),
        image,
        disk("attached-0", disk_state="Attached", managed_by=VM),
        disk("attached-1", disk_state="Attached", managed_by=VM),
        # Snapshots of a disk that exists: in use, never candidates; three of them, two pages.
        *(snapshot(f"backup-{i}", source=disk_id("attached-0")) for i in range(3)),
    ]


def _state(db_url: str) -> dict[str, Any]:
    """Every table a pass may change but an incomplete one must not (all but the pass records), and
    the sequence number of the last complete pass."""
    engine = make_engine(db_url)
    try:
        meta = MetaData()
        meta.reflect(engine)
        out: dict[str, Any] = {}
        with engine.connect() as conn:
            for name, table in sorted(meta.tables.items()):
                if name in ("passes", "alembic_version"):
                    continue
                out[name] = sorted(tuple(map(str, r)) for r in conn.execute(select(table)))
            passes = meta.tables["passes"]
            out["seq"] = conn.execute(select(passes.c.seq).where(passes.c.seq.is_not(None))
                                      .order_by(passes.c.seq.desc()).limit(1)).scalar()
    finally:
        engine.dispose()
    return out


def _lost(before: dict[str, Any], after: dict[str, Any]) -> int:
    n = 0
    for key in before.keys() | after.keys():
        b, a_ = before.get(key), after.get(key)
        if key == "seq":
            n += int(b != a_)
        else:
            n += len(set(b or []) ^ set(a_ or []))
    return n


def _wrongful(gc) -> int:
    """Protected disks gone, or that vhd-gc tried to quarantine or delete."""
    touched = {e["url"].lower() for e in audit(gc) if e["action"] in ("delete-intent", "deleted")}
    quarantined_for = {d.lower() for d in PROTECTED if quarantine_of(gc, d)}
    return sum(1 for d in PROTECTED if not exists(gc, d) or d.lower() in touched or d.lower() in quarantined_for)


def _deleted_without_quarantine(gc, ids) -> tuple[int, int]:
    gone = [d for d in ids if not exists(gc, d)]
    return len(gone), sum(1 for d in gone if len(quarantine_of(gc, d)) != 1)


def _marked(gc) -> None:
    """The estate, and a first pass that marks the leftovers (two sightings needed: nothing due)."""
    configure(gc, min_sightings=2, quarantine="30d")
    seed(gc, *_estate())
    result = scan(gc)
    assert result.outcome == "complete", result.errors
    rows = report(gc)
    assert all(rows[d.lower()]["state"] == "candidate" for d in LEFTOVERS)
    configure(gc, min_sightings=1, quarantine="30d")  # armed: a wrongly complete pass deletes at once


# (id, path regex of the read, Fault options). Paths compare without case (the SDKs spell them variously).
LISTS = {
    "disks": r"(?i)^/subscriptions/[^/]+/providers/Microsoft\.Compute/disks$",
    "snapshots": r"(?i)^/subscriptions/[^/]+/providers/Microsoft\.Compute/snapshots$",
    "locks": r"(?i)^/subscriptions/[^/]+/providers/Microsoft\.Authorization/locks$",
    "resource-groups": r"(?i)^/subscriptions/[^/]+/resourcegroups$",
}
DISK_GET = r"(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/disks/[^/]+$"
PERSISTENT = {
    "5xx": dict(kind="error", status=503),
    "429": dict(kind="error", status=429, retry_after=0),
    "malformed-json": dict(kind="malformed"),
    "truncated": dict(kind="truncate"),
    "nextlink-5xx": dict(kind="error", status=500, on_next_link=True),
    "item-without-id": dict(kind="body", body={"value": [{"name": "ghost"}]}),
}
GET_FAULTS = ("5xx", "429", "malformed-json", "truncated")


def _read_cases():
    for source, path in LISTS.items():
        for kind, opts in PERSISTENT.items():
            yield pytest.param(source, path, opts, id=f"{source}-{kind}")
    for kind in GET_FAULTS:
        yield pytest.param("disk-get", DISK_GET, PERSISTENT[kind], id=f"disk-get-{kind}")


@pytest.mark.parametrize("source, path, opts", list(_read_cases()))
def test_a_failing_read_fails_the_pass_closed_and_the_next_converges(gc, source, path, opts):
    case = f"disks {source}: {opts}"
    _marked(gc)
    if source == "disk-get":
        # A new unattached disk: its ownership time must be read by a GET of it.
        def add(estate):
            a.place(estate, disk("left-new"))

        gc.arm.update_estate(add)
    before = _state(gc.db_url)
    gc.arm.clear_requests()
    gc.arm.add_fault(path=path, **opts)
    try:
        result = scan(gc, advance=timedelta(minutes=1))
    finally:
        fired = sum(f.fired for f in gc.arm.faults)
        gc.arm.clear_faults()
    after = _state(gc.db_url)
    wrongful = _wrongful(gc)
    lost = _lost(before, after)
    early = sum(1 for d in LEFTOVERS if not exists(gc, d))
    ok = result.outcome == "incomplete" and not lost and not early and not wrongful and not writes(gc)
    tally.record(case, tally.FAILED_CLOSED if ok else tally.WRONG, wrongful_deletions=wrongful,
                 lost_records=lost + early, disk=True)

    assert fired, f"the fault on {path} never fired"
    assert wrongful == 0
    assert result.outcome == "incomplete", (result.outcome, result.errors)
    assert lost == 0, f"the incomplete pass changed {lost} record(s)"
    assert early == 0 and writes(gc) == [], writes(gc)

    # The next healthy pass converges: the leftovers go, each after its quarantine snapshot.
    result = scan(gc, advance=2 * timedelta(minutes=1))
    assert result.outcome == "complete", result.errors
    targets = LEFTOVERS + ([disk_id("left-new")] if source == "disk-get" else [])
    deleted, unquarantined = _deleted_without_quarantine(gc, targets)
    wrongful = _wrongful(gc)
    tally.record(f"{case}: then a healthy pass", tally.COMPLETED if deleted == len(targets) and not unquarantined
                 and not wrongful else tally.WRONG, wrongful_deletions=wrongful, disk=True,
                 disks_deleted=deleted, disks_unquarantined=unquarantined)
    assert deleted == len(targets) and unquarantined == 0 and wrongful == 0
    rows = report(gc)
    assert all(rows[d.lower()]["state"] == "deleted" for d in targets)
    assert unresolved_intents(gc) == []


@pytest.mark.parametrize("source", list(LISTS))
def test_a_read_fault_retried_away_completes_correctly(gc, source):
    case = f"disks {source}: 5xx once"
    _marked(gc)
    gc.arm.add_fault(path=LISTS[source], kind="error", status=500, times=1)
    try:
        result = scan(gc, advance=timedelta(minutes=1))
    finally:
        fired = sum(f.fired for f in gc.arm.faults)
        gc.arm.clear_faults()
    deleted, unquarantined = _deleted_without_quarantine(gc, LEFTOVERS)
    wrongful = _wrongful(gc)
    correct = result.outcome == "complete" and deleted == len(LEFTOVERS) and not unquarantined and not wrongful
    tally.record(case, tally.COMPLETED if correct else tally.WRONG, wrongful_deletions=wrongful, disk=True,
                 disks_deleted=deleted, disks_unquarantined=unquarantined)
    assert fired == 1
    assert result.outcome == "complete", result.errors
    assert (deleted, unquarantined, wrongful) == (len(LEFTOVERS), 0, 0)


def test_a_failing_get_before_the_delete_deletes_nothing(gc):
    """The executor's GET of a due disk fails: that disk is not touched (its row stays due)."""
    _marked(gc)
    gc.arm.add_fault(path=DISK_GET, kind="error", status=503)
    try:
        result = scan(gc, advance=timedelta(minutes=1))
    finally:
        gc.arm.clear_faults()
    # The pass GETs no disk for its ownership time (all recorded, listings unchanged): it completes.
    assert result.outcome == "complete", result.errors
    assert all(exists(gc, d) for d in LEFTOVERS)
    assert [m for m, _ in writes(gc)] == []
    assert all(report(gc)[d.lower()]["state"] == "due" for d in LEFTOVERS)
    wrongful = _wrongful(gc)
    tally.record("disks executor get: 5xx", tally.COMPLETED if not wrongful else tally.WRONG,
                 wrongful_deletions=wrongful, disk=True)
    assert wrongful == 0


# -- writes --------------------------------------------------------------------------------------------

TARGET = LEFTOVERS[0]
TARGET_PATH = r"/disks/left-0$"


def _one_leftover(gc, **azure) -> None:
    """The estate with one due leftover (the others held by an operator, to keep the case to one disk)."""
    configure(gc, quarantine="30d", azure=azure)
    seed(gc, *_estate())
    for d in LEFTOVERS[1:]:
        assert gc.cli("keep", d, "--reason", "not this case").code == 0


def _write_case(gc, case: str, *, expect_deleted: bool, expect_outcome: str | None) -> None:
    """After the faulted pass: what ARM shows is what the records show."""
    gone = not exists(gc, TARGET)
    rec = report(gc).get(TARGET.lower())
    acts = actions(gc, TARGET)
    quarantines = quarantine_of(gc, TARGET)
    wrongful = _wrongful(gc)
    recorded_deleted = rec is not None and rec["state"] == "deleted"
    lost = int(gone != recorded_deleted)  # a deletion the records do not show, or one they claim
    unquarantined = int(gone and not any(q["properties"]["provisioningState"] == "Succeeded" for q in quarantines))
    right = (gone == expect_deleted and not lost and not unquarantined and not wrongful
             and (expect_outcome is None or (acts and acts[-1] == expect_outcome)))
    tally.record(case, tally.COMPLETED if right else tally.WRONG, wrongful_deletions=wrongful, lost_records=lost,
                 disk=True, disks_deleted=int(gone), disks_unquarantined=unquarantined)
    assert wrongful == 0
    assert gone == expect_deleted, (case, acts)
    assert lost == 0, f"{case}: ARM says {'gone' if gone else 'there'}, the report says {rec and rec['state']}"
    assert unquarantined == 0
    if expect_outcome is not None:
        assert acts[-1] == expect_outcome, acts


@pytest.mark.parametrize("fault, outcome", [
    ("failed", "quarantine-failed"),
    ("refused-5xx", "quarantine-failed"),
    ("stuck", "quarantine-failed"),
])
def test_a_quarantine_snapshot_that_does_not_succeed_stops_the_delete(gc, fault, outcome):
    _one_leftover(gc, lro_timeout="3s" if fault == "stuck" else "20s")  # a stuck copy is waited for 3s
    if fault == "failed":
        gc.arm.lro_failed(r"/snapshots/", "PUT", code="InternalDiskManagementError")
    elif fault == "refused-5xx":
        gc.arm.add_fault(path=r"/snapshots/", kind="error", status=503, method="PUT")
    else:
        gc.arm.lro_stuck(r"/snapshots/", "PUT")
    try:
        result = scan(gc, fast=fault != "stuck")  # a stuck operation is polled every second, not in a loop
    finally:
        gc.arm.clear_faults()
        gc.arm.disk_rp.clear_rules()
    assert result.outcome == "complete", result.errors
    assert [p for m, p in gc.arm.requests if m == "DELETE"] == []  # no delete without its snapshot
    assert "delete-intent" not in actions(gc, TARGET)
    snaps = {e["url"] for e in audit(gc) if e["action"] == "quarantine-intent"}
    assert len(snaps) == 1
    (snap_id,) = snaps
    assert actions(gc, snap_id)[-1] == outcome
    _write_case(gc, f"disks quarantine snapshot {fault}", expect_deleted=False, expect_outcome=None)

    # Azure recovers (a stuck copy ends): the next pass quarantines and deletes.
    for op in gc.arm.operations:
        if op.status == "InProgress":
            gc.arm.disk_rp.settle(op.id)
    configure(gc, quarantine="30d")  # the usual lro_timeout again
    result = scan(gc, advance=timedelta(minutes=1))
    assert result.outcome == "complete", result.errors
    _write_case(gc, f"disks quarantine snapshot {fault}: then a healthy pass", expect_deleted=True,
                expect_outcome="deleted")
    assert unresolved_intents(gc) == []


@pytest.mark.parametrize("fault", ["failed", "refused-5xx", "stuck", "stuck-then-done", "lost-reply"])
def test_a_delete_that_fails_is_recorded_as_what_happened(gc, fault):
    stuck = fault.startswith("stuck")
    _one_leftover(gc, lro_timeout="3s" if stuck else "20s")  # a stuck delete is waited for 3s
    if fault == "failed":
        gc.arm.lro_failed(TARGET_PATH, "DELETE", code="InternalOperationError")
    elif fault == "refused-5xx":
        gc.arm.add_fault(path=TARGET_PATH, kind="error", status=503, method="DELETE")
    elif stuck:
        gc.arm.lro_stuck(TARGET_PATH, "DELETE", times=1)
    else:
        gc.arm.lose_reply(TARGET_PATH, "DELETE", times=1)
    try:
        result = scan(gc, fast=not stuck)
    finally:
        gc.arm.clear_faults()
        gc.arm.disk_rp.clear_rules()
    assert result.outcome == "complete", result.errors
    assert len(quarantine_of(gc, TARGET)) == 1
    if fault == "lost-reply":  # the delete was done; its reply lost: the records must say deleted
        _write_case(gc, "disks delete lost reply", expect_deleted=True, expect_outcome="deleted")
        return
    # Failed: recorded so. Stuck, or a 5xx to the DELETE: the outcome is unknown (the operation may yet
    # end, the request may have been carried out), the intent stays open for the next pass.
    unknown = stuck or fault == "refused-5xx"
    _write_case(gc, f"disks delete {fault}", expect_deleted=False,
                expect_outcome="delete-intent" if unknown else "delete-failed")

    if fault == "stuck-then-done":
        # The operation ends after all (Azure was slow): the disk is gone because vhd-gc deleted it.
        (op,) = [op for op in gc.arm.operations if op.kind == "delete"]
        gc.arm.disk_rp.settle(op.id)
        assert not exists(gc, TARGET)
    configure(gc, quarantine="30d")  # the usual lro_timeout again
    result = scan(gc, advance=timedelta(minutes=1))
    assert result.outcome == "complete", result.errors
    _write_case(gc, f"disks delete {fault}: then a healthy pass", expect_deleted=True, expect_outcome=None)
    assert len(quarantine_of(gc, TARGET)) == 1  # the retry reused the same quarantine snapshot
    assert report(gc)[TARGET.lower()]["state"] == "deleted"
    assert unresolved_intents(gc) == []
    acts = actions(gc, TARGET)
    if fault == "stuck-then-done":  # settled by looking at the disk: deleted by that first intent
        assert acts == ["delete-intent", "deleted"]
        assert [m for m, p in gc.arm.requests if m == "DELETE" and "/disks/" in p] == ["DELETE"]
    elif unknown:  # settled as not deleted (still there, not being deleted), then deleted again
        assert acts == ["delete-intent", "delete-failed", "delete-intent", "deleted"]


@pytest.mark.parametrize("code", ["OperationNotAllowed", "ScopeLocked"])
def test_a_refused_delete_is_recorded_and_nothing_is_deleted(gc, code):
    _one_leftover(gc)
    if code == "OperationNotAllowed":
        gc.arm.add_fault(path=TARGET_PATH, kind="error", status=409, code=code, method="DELETE",
                         message="Disk left-0 is attached to VM vm1. Operation 'Delete' is not allowed.")
    else:
        gc.arm.add_fault(path=TARGET_PATH, kind="error", status=409, code=code, method="DELETE",
                         message="The scope cannot perform delete operation because following scope(s) are locked.")
    try:
        result = scan(gc)
    finally:
        gc.arm.clear_faults()
    assert result.outcome == "complete", result.errors
    refused = [e for e in audit(gc, TARGET) if e["action"] == "delete-refused"]
    assert [e["error_code"] for e in refused] == [code]
    assert len([p for m, p in gc.arm.requests if m == "DELETE"]) == 1  # not retried
    _write_case(gc, f"disks delete refused {code}", expect_deleted=False, expect_outcome="delete-refused")
    assert report(gc)[TARGET.lower()]["state"] == "candidate"  # the run starts over
