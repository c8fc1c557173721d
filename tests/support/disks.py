"""Managed disks end to end: builders over sandbox/arm_disks.py, the configuration of a disk pass,
and ground truth read back from the ARM stand-in's estate (does the disk exist? its quarantine
snapshot?), the report (``report --kind ... --format json``) and the audit log.

Used with the ``gc`` harness (tests/support/estate.py): :func:`configure` writes the configuration
WITHOUT re-seeding ARM (``Harness.configure`` would put back the disks a pass deleted), :func:`seed`
replaces what ARM holds and makes every long-running operation end at its first poll.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import MetaData, select

from gc_daemon.state.db import make_engine
from sandbox import arm as a
from sandbox import arm_disks as ad
from tests.support.estate import SUB, Harness

RG = "rg-disks"
VM = a.compute_id(SUB, RG, "virtualMachines", "vm1")
QUARANTINE_TAG = "vhdgc-quarantine-of"
DETACHED = timedelta(days=40)  # a leftover's last detach, before now
CREATED = timedelta(days=60)


def disk_id(name: str, rg: str = RG, sub: str = SUB) -> str:
    return a.compute_id(sub, rg, "disks", name)


def snapshot_id(name: str, rg: str = RG, sub: str = SUB) -> str:
    return a.compute_id(sub, rg, "snapshots", name)


def disk(name: str, *, rg: str = RG, sub: str = SUB, detached: timedelta | None = DETACHED,
         created: timedelta = CREATED, **kw: Any) -> dict[str, Any]:
    """An unattached managed disk, last detached ``detached`` ago (None: never attached), created
    ``created`` ago (both before the real clock: the tests move the collector's clock, never wait)."""
    now = datetime.now(UTC)
    return ad.managed_disk(sub, rg, name, time_created=now - created,
                           last_ownership_update_time=None if detached is None else now - detached, **kw)


def snapshot(name: str, *, source: str, rg: str = RG, sub: str = SUB, age: timedelta = timedelta(days=120),
             **kw: Any) -> dict[str, Any]:
    """A snapshot of the disk ``source`` (an id), taken ``age`` ago."""
    return ad.incremental_snapshot(sub, rg, name, source_disk_id=source, time_created=datetime.now(UTC) - age, **kw)


def fast_azure(**extra: Any) -> dict[str, Any]:
    """Long-running operations polled soon and bounded: ``azure.lro_poll_interval`` (its least, 1s:
    what `vhd-gc scan` and `run` use) where the configuration has it, and ``azure.lro_timeout``.
    :func:`scan` polls at once."""
    from gc_daemon.config import AzureConfig

    out: dict[str, Any] = {"lro_timeout": "20s"}
    if "lro_poll_interval" in AzureConfig.model_fields:
        out["lro_poll_interval"] = "1s"
    out.update(extra)
    return out


def scan(gc: Harness, *, advance: timedelta | None = None, fast: bool = True):
    """One pass through the library (as ``Harness.scan``: the clock moved by ``advance``), its disk
    gateway polling operations at once (``fast``; the stand-in ends them at their first poll) rather
    than after ``azure.lro_poll_interval``, whose least value is a second."""
    from gc_daemon.config import load_config
    from gc_daemon.wiring import build_collector

    if advance is not None:
        gc.clock_offset += advance
    collector = build_collector(load_config(gc.config_path))
    if fast and hasattr(collector.disks, "poll_interval"):
        collector.disks.poll_interval = 0.0
    offset = gc.clock_offset
    collector.clock = lambda: datetime.now(UTC) + offset
    return collector.run_pass()


def configure(gc: Harness, *, mode: str = "delete", disks: str = "delete", quarantine: str = "30d",
              snapshots: str = "report", snapshot_min_age: str = "90d", min_age: str = "1d", **kw: Any):
    """The configuration of a disk pass (delete mode, grace 0s and one sighting unless told),
    written without touching what ARM holds."""
    azure = fast_azure(**kw.pop("azure", {}))
    managed = {"mode": disks, "quarantine": quarantine, "snapshots": snapshots, "snapshot_min_age": snapshot_min_age}
    managed.update(kw.pop("managed_disks", {}))
    placed, gc.placed = gc.placed, None
    try:
        return gc.configure(mode=mode, min_age=min_age, managed_disks=managed, azure=azure, **kw)
    finally:
        gc.placed = placed


def seed(gc: Harness, *resources: dict[str, Any]) -> None:
    """What ARM holds (the collected storage accounts registered as the harness does); every
    operation ends Succeeded at its first poll."""
    gc.compute(*resources)
    gc.arm.set_lro(polls=0, retry_after=0)


# -- ground truth: the stand-in's estate ------------------------------------------------------------


def _bucket(gc: Harness, bucket: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for sub in gc.arm.estate.get("subscriptions", {}).values():
        out.extend(r for r in sub.get(bucket, []) if isinstance(r, dict))
    return out


def estate_disk(gc: Harness, rid: str) -> dict[str, Any] | None:
    return next((d for d in _bucket(gc, "disks") if d["id"].lower() == rid.lower()), None)


def estate_snapshot(gc: Harness, rid: str) -> dict[str, Any] | None:
    return next((s for s in _bucket(gc, "snapshots") if s["id"].lower() == rid.lower()), None)


def exists(gc: Harness, rid: str) -> bool:
    return (estate_disk(gc, rid) if "/disks/" in rid.lower() else estate_snapshot(gc, rid)) is not None


def tag(resource: dict[str, Any], name: str) -> str | None:
    return next((v for k, v in (resource.get("tags") or {}).items() if k.lower() == name.lower()), None)


def quarantine_of(gc: Harness, rid: str) -> list[dict[str, Any]]:
    """The snapshots in ARM tagged as the quarantine of disk ``rid``."""
    return [s for s in _bucket(gc, "snapshots") if (tag(s, QUARANTINE_TAG) or "").lower() == rid.lower()]


def attach(gc: Harness, rid: str, *, state: str = "Attached", owner: str | None = VM,
           ownership: datetime | None = None) -> None:
    """Attach the disk (or change its state) in ARM, as Azure does: LastOwnershipUpdateTime moves."""
    def change(estate: dict[str, Any]) -> None:
        for sub in estate["subscriptions"].values():
            for d in sub.get("disks", []):
                if d["id"].lower() == rid.lower():
                    d["properties"]["diskState"] = state
                    if owner:
                        d["managedBy"] = owner
                    d["properties"][ad.OWNERSHIP_KEY] = a._iso(ownership or datetime.now(UTC))
                    return
        raise AssertionError(f"no disk {rid}")

    gc.arm.update_estate(change)


def set_ownership_time(gc: Harness, rid: str, when: datetime) -> None:
    """Attached and detached again meanwhile: the disk is unattached with a new ownership time."""
    attach(gc, rid, state="Unattached", owner=None, ownership=when)


def add_resource(gc: Harness, resource: dict[str, Any]) -> None:
    """Add one resource (a lock, a group, a disk) to what ARM holds, leaving the rest as it is."""
    def change(estate: dict[str, Any]) -> None:
        a.place(estate, resource)

    gc.arm.update_estate(change)


def writes(gc: Harness) -> list[tuple[str, str]]:
    """Every request to ARM that is not a read."""
    return [(m, p) for m, p in gc.arm.requests if m != "GET"]


# -- the report and the audit log ---------------------------------------------------------------------


def report(gc: Harness, kind: str = "managed_disk") -> dict[str, dict[str, Any]]:
    """``report --kind KIND --format json``, by lower-cased ARM id."""
    run = gc.cli("report", "--kind", kind, "--format", "json")
    assert run.code == 0, run.err
    rows = run.json()
    assert all(r["kind"] == kind for r in rows), rows
    return {r["url"].lower(): r for r in rows}


def row(gc: Harness, rid: str, kind: str | None = None) -> dict[str, Any] | None:
    kind = kind or ("managed_disk" if "/disks/" in rid.lower() else "snapshot")
    return report(gc, kind).get(rid.lower())


def audit(gc: Harness, rid: str | None = None) -> list[dict[str, Any]]:
    """The audit log's entries (of resource ``rid``: its ARM id is the entry's url), oldest first."""
    engine = make_engine(gc.db_url)
    try:
        meta = MetaData()
        meta.reflect(engine, only=["audit_log"])
        table = meta.tables["audit_log"]
        with engine.connect() as conn:
            entries = [dict(r._mapping) for r in conn.execute(select(table).order_by(table.c.id))]
    finally:
        engine.dispose()
    if rid is None:
        return entries
    return [e for e in entries if (e.get("url") or "").lower() == rid.lower()]


def actions(gc: Harness, rid: str) -> list[str]:
    return [e["action"] for e in audit(gc, rid)]


def unresolved_intents(gc: Harness) -> list[dict[str, Any]]:
    """Intents (delete, quarantine) with no outcome tied to them."""
    entries = audit(gc)
    answered = {e.get("intent_id") for e in entries if e.get("intent_id") is not None}
    return [e for e in entries if e["action"].endswith("-intent") and e["id"] not in answered]

