"""Shared helpers of the fault, crash and security tests: a module-scoped estate over the session's
Azurite and ARM stand-in, ground truth read back from Azurite and the state database, and a private
Azurite that a test may SIGKILL.

The estate gives every reference source more than one page (the stand-in's page size is 2) and
puts in-use blobs behind every page: a source that is silently shorter than ARM holds would make an
in-use blob look orphaned, and the blob would be deleted. The in-use blobs hold no lease (except
the one that stands for leases), so nothing but the references protects them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from gc_daemon.state.db import make_engine
from gc_daemon.state.models import audit_log, passes as passes_table, tracked_blobs
from sandbox import arm as a
from sandbox import arm_disks as ad
from sandbox import seed
from sandbox.azurite import Azurite, random_key
from gc_daemon.sources import reads
from tests.support.estate import SUB, Harness

RG = "rg1"

# (source label, fault path regex): every list call of every registered reference source, as its
# module declares it (gc_daemon/sources/): a new source joins the matrix by being registered, and
# test_the_matrix_estate_covers_every_registered_read fails until build_estate gives it in-use blobs.
SOURCES: list[tuple[str, str]] = [(read.label, read.path_regex()) for read in reads()]


@dataclass
class InUse:
    """A blob that must survive everything: (container, blob), and what protects it."""

    container: str
    blob: str
    why: str
    account: str = "gcacct1"
    lease: bool = False


@dataclass
class Estate:
    """What was built: the in-use blobs (ground truth) and the ARM resources referencing them."""

    in_use: list[InUse] = field(default_factory=list)
    resources: list[dict] = field(default_factory=list)
    covered: set[str] = field(default_factory=set)  # source labels with in-use blobs behind their pages

    def missing(self, gc: Harness) -> list[InUse]:
        return [b for b in self.in_use if not gc.exists(b.container, b.blob, b.account)]

    def restore(self, gc: Harness, missing: list[InUse]) -> None:
        """Re-create wrongly deleted blobs so later cases start from the same estate."""
        for b in missing:
            seed.page_blob(gc.svc(b.account), b.container, b.blob, written=[(0, 4096)], lease=b.lease)


def build_estate(gc: Harness, *, now: datetime | None = None) -> Estate:
    """In-use blobs behind every page of every reference source, plus one leased blob."""
    now = now or datetime.now(UTC)
    e = Estate()

    def use(container: str, blob: str, why: str, lease: bool = False) -> str:
        e.in_use.append(InUse(container, blob, why, lease=lease))
        return gc.page(container, blob, lease=lease)

    # Virtual machines: 3 (2 pages); the last one has a data disk and an image too.
    for i in range(3):
        extra: dict[str, Any] = {}
        if i == 2:
            extra = {"data_vhds": [{"vhd": use("vhds", "vm2-data.vhd", "vm data disk"),
                                    "image": use("userimages", "vm2-data-image.vhd", "vm data image")}]}
        e.resources.append(a.vm(SUB, RG, f"vm{i}", os_vhd=use("vhds", f"vm{i}-os.vhd", "vm os disk"), **extra))
    e.covered.add("virtualMachines")
    # Scale sets: 3 (2 pages), each protecting a container; ss1 has an image too.
    for i in range(3):
        container = f"ss{i}disks"
        use(container, f"ss{i}-0-os.vhd", "scale-set vhdContainers")
        extra = {"os_image": use("userimages", "ss1-image.vhd", "scale-set image")} if i == 1 else {}
        e.resources.append(a.vmss(SUB, RG, f"ss{i}", vhd_containers=[gc.url(container, "x").rsplit("/", 1)[0]], **extra))
    e.covered.add("virtualMachineScaleSets")
    # Scale-set instances: 3 in ss0 (2 pages), 1 in ss2.
    for i in range(3):
        e.resources.append(a.vmss_vm(SUB, RG, "ss0", i, os_vhd=use("ssinst", f"ss0-inst{i}.vhd", "scale-set instance")))
    e.resources.append(a.vmss_vm(SUB, RG, "ss2", 0, os_vhd=use("ssinst", "ss2-inst0.vhd", "scale-set instance")))
    e.covered.add("virtualMachineScaleSetVMs")
    # Managed images: 3 (2 pages).
    for i in range(3):
        e.resources.append(a.image(SUB, RG, f"img{i}", os_blob=use("images", f"img{i}.vhd", "managed image")))
    e.covered.add("images")
    # Disks and snapshots imported from VHDs, within import_hold: 3 each.
    for i in range(3):
        e.resources.append(a.disk(SUB, RG, f"disk{i}", source_uri=use("imports", f"disk{i}-src.vhd", "disk import"),
                                  time_created=now))
        e.resources.append(a.snapshot(SUB, RG, f"snap{i}", source_uri=use("imports", f"snap{i}-src.vhd", "snapshot import"),
                                      time_created=now))
    e.covered |= {"disks", "snapshots"}
    # Galleries: 3 (2 pages); gal0 holds 3 image definitions (2 pages), gi0 holds 3 versions (2 pages);
    # gal0/gi2 (second page of images) and gal2 (second page of galleries) hold a version each.
    for g in range(3):
        e.resources.append(a.gallery(SUB, RG, f"gal{g}"))
    for i in range(3):
        e.resources.append(a.gallery_image(SUB, RG, "gal0", f"gi{i}"))
    for v in range(3):
        e.resources.append(a.gallery_image_version(
            SUB, RG, "gal0", "gi0", f"1.0.{v}", os_source=use("galsrc", f"gal0-gi0-v{v}.vhd", "gallery version")))
    e.resources.append(a.gallery_image_version(
        SUB, RG, "gal0", "gi2", "1.0.0", os_source=use("galsrc", "gal0-gi2.vhd", "gallery version")))
    e.resources.append(a.gallery_image(SUB, RG, "gal2", "only"))
    e.resources.append(a.gallery_image_version(
        SUB, RG, "gal2", "only", "1.0.0", os_source=use("galsrc", "gal2-only.vhd", "gallery version")))
    e.covered |= {"galleries", "galleryImages", "galleryImageVersions"}
    # Gallery applications: gal0 holds 3 (2 pages), app0 holds 3 versions (2 pages); gal0/app2 (second
    # page of applications) and gal2/only (second page of galleries) hold a version each.
    for i in range(3):
        e.resources.append(a.gallery_application(SUB, RG, "gal0", f"app{i}"))
    for v in range(3):
        e.resources.append(a.gallery_application_version(
            SUB, RG, "gal0", "app0", f"1.0.{v}", media_link=use("apps", f"app0-v{v}.vhd", "gallery application")))
    e.resources.append(a.gallery_application_version(
        SUB, RG, "gal0", "app2", "1.0.0", media_link=use("apps", "app2.vhd", "gallery application"),
        config_link=use("apps", "app2-config.vhd", "gallery application configuration")))
    e.resources.append(a.gallery_application(SUB, RG, "gal2", "only"))
    e.resources.append(a.gallery_application_version(
        SUB, RG, "gal2", "only", "1.0.0", media_link=use("apps", "gal2-only.vhd", "gallery application")))
    e.covered |= {"galleryApplications", "galleryApplicationVersions"}
    # Recovery Services vaults: 3 (2 pages); vault0 holds 3 protected items and 3 migration items
    # (2 pages each); vault2 (second page) holds one of each.
    for v in range(3):
        e.resources.append(a.recovery_vault(SUB, RG, f"vault{v}"))
    for v, count in ((0, 3), (2, 1)):
        for i in range(count):
            e.resources.append(a.replication_protected_item(SUB, RG, f"vault{v}", f"item{i}", a.a2a_details(
                {"diskUri": use("asr", f"vault{v}-item{i}.vhd", "site recovery disk"),
                 "recoveryDiskUri": use("asr", f"vault{v}-item{i}-ASRReplica.vhd", "site recovery replica")})))
            e.resources.append(a.replication_migration_item(SUB, RG, f"vault{v}", f"mig{i}", a.vmware_cbt_details(
                {"seedBlobUri": use("migrate", f"vault{v}-mig{i}-seed.vhd", "azure migrate seed")})))
    e.covered |= {"recoveryServicesVaults", "replicationProtectedItems", "replicationMigrationItems"}
    # Image Builder: 3 templates (2 pages); tpl0 holds 3 VHD outputs (2 pages), tpl2 one.
    for t in range(3):
        e.resources.append(a.image_template(SUB, RG, f"tpl{t}"))
    for t, count in ((0, 3), (2, 1)):
        for i in range(count):
            e.resources.append(a.image_run_output(SUB, RG, f"tpl{t}", f"out{i}",
                                                  artifact_uri=use("aib", f"tpl{t}-out{i}.vhd", "image builder output")))
    e.covered |= {"imageTemplates", "imageTemplateRunOutputs"}
    # DevTest Labs: 3 labs (2 pages) on gcacct1; lab0 holds 3 VHD custom images (2 pages), lab2 one.
    for lab in range(3):
        e.resources.append(a.devtest_lab(SUB, RG, f"lab{lab}", default_account="gcacct1"))
    for lab, count in ((0, 3), (2, 1)):
        for i in range(count):
            use("uploads", f"lab{lab}-img{i}.vhd", "devtest lab custom image")
            e.resources.append(a.devtest_custom_image(SUB, RG, f"lab{lab}", f"img{i}", vhd_name=f"lab{lab}-img{i}.vhd"))
    e.covered |= {"labs", "customImages"}
    # Storage accounts: gcacct1 and gcacct2 (the harness registers them) and a third: 2 pages. A
    # page lost would leave a collected account unplaced, which fails the pass on its own.
    e.resources.append(a.storage_account(SUB, "storage-rg", "spareacct"))
    e.covered.add("storageAccounts")
    # Resource groups and management locks: no blob behind them (they hold disks and snapshots), but a
    # list of either that fails, or is cut short, must fail the pass closed like any source's. 3 groups
    # of their own beside rg1 and storage-rg, and 3 locks (on VMs): 2 pages and more each.
    for i in range(3):
        e.resources.append(ad.resource_group(SUB, f"spare-rg{i}", tags={"team": "matrix"}))
        e.resources.append(ad.management_lock(a.compute_id(SUB, RG, "virtualMachines", f"vm{i}"), f"lock{i}"))
    e.covered |= {"resourceGroups", "locks"}
    # A lease alone.
    use("vhds", "leased.vhd", "lease", lease=True)
    gc.compute(*e.resources)
    return e


# -- state ---------------------------------------------------------------------------------------


def snapshot_state(db_url: str) -> dict[str, Any]:
    """Everything a pass may change but an incomplete one must not: tracked rows and the audit log.

    The report of ``report --format json`` is derived from the tracked rows (plus the sequence
    number, which only a complete pass moves), so equal rows mean an identical report."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(select(tracked_blobs).order_by(tracked_blobs.c.id))]
            audit = [tuple(r) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]
            seq = conn.execute(select(passes_table.c.seq).where(passes_table.c.seq.is_not(None))
                               .order_by(passes_table.c.seq.desc()).limit(1)).scalar()
    finally:
        engine.dispose()
    return {"tracked": rows, "audit": audit, "seq": seq}


def lost_records(before: dict[str, Any], after: dict[str, Any]) -> int:
    """How many tracked rows or audit entries an incomplete pass changed, dropped or added."""
    b, a_ = set(before["tracked"]), set(after["tracked"])
    lost = len(b ^ a_)
    lost += len(set(before["audit"]) ^ set(after["audit"]))
    if before["seq"] != after["seq"]:
        lost += 1
    return lost


# -- a private Azurite -----------------------------------------------------------------------------


class PrivateAzurite:
    """An Azurite of one test's own, which it may SIGKILL and start again on the same port and data.

    Azurite persists its metadata every 5 s (LokiJS autosave): what was written less than 5 s before
    a SIGKILL is gone after a restart. :meth:`settle` waits for the autosave."""

    AUTOSAVE = 5.5

    def __init__(self, accounts: list[str], location: Path) -> None:
        self.keys = {name: random_key() for name in accounts}
        self.location = location
        self.server = Azurite(self.keys, location)
        self.port: int | None = None

    def start(self) -> "PrivateAzurite":
        if self.port is None:
            self.server.start()
            self.port = self.server.port
        else:
            self.server = Azurite(self.keys, self.location, port=self.port)
            self.server.start()
        return self

    def kill(self) -> None:
        self.server.stop()  # SIGKILL of its process group

    @property
    def running(self) -> bool:
        return self.server.running

    def settle(self) -> None:
        import time

        time.sleep(self.AUTOSAVE)

    def svc(self, account: str):
        return self.server.service_client(account)

    def endpoint(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def key(self, account: str) -> str:
        return self.keys[account]


# -- a database lock -------------------------------------------------------------------------------


@contextmanager
def sqlite_write_locked(db_url: str) -> Iterator[sqlite3.Connection]:
    """Another connection holding the SQLite database's write lock (``BEGIN EXCLUSIVE``)."""
    path = db_url.removeprefix("sqlite:///")
    conn = sqlite3.connect(path, isolation_level=None, timeout=5, check_same_thread=False)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield conn
    finally:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        conn.close()


def env_with_keys(gc: Harness, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for acct in gc.azurite.accounts:
        env[f"{acct.upper()}_KEY"] = gc.azurite.key(acct)
    env["REQUESTS_CA_BUNDLE"] = str(gc.arm.cert_path)
    env.update(extra)
    return env


def dump(obj: Any) -> str:
    return json.dumps(obj, default=str, indent=1)


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)
