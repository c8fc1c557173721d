"""`make demo`: vhd-gc doing its job on a small local estate, in well under a minute.

Everything is real: a real Azurite holds the blobs, the ARM stand-in (HTTPS, paging) plays Azure
Compute, and vhd-gc runs as its own command-line processes against them, on the real clock. At the
end the demo reads back what is left in Azurite and checks it, so it doubles as a smoke test: the
exit status is non-zero when any expectation fails.

    python -m sandbox.demo [--keep] [--min-age 10s] [--grace 5s]

Nothing is left running: Azurite is SIGKILLed, the stand-in stopped, and the temporary directory
removed (unless ``--keep``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from sandbox import arm as armlib
from sandbox import seed
from sandbox.arm import ArmStandIn
from sandbox.azurite import Azurite

SUB = "00000000-0000-0000-0000-00000000de70"
RG = "demo-rg"
ACCOUNTS = ("demovhds1", "demovhds2")
MiB = 1024 * 1024

OK, FAIL = "\u2714", "\u2718"


# -- output ------------------------------------------------------------------------------------


def say(text: str = "") -> None:
    print(text, flush=True)


def header(title: str) -> None:
    say()
    say(f"== {title} " + "=" * max(0, 76 - len(title)))


def countdown(until: float, what: str) -> None:
    """Sleep until ``until`` (time.monotonic()), showing the seconds left on one line."""
    tty = sys.stdout.isatty()
    left = until - time.monotonic()
    if left <= 0:
        return
    if not tty:
        say(f"   waiting {left:.1f}s {what} ...")
    while True:
        left = until - time.monotonic()
        if left <= 0:
            break
        if tty:
            print(f"\r   waiting {left:4.1f}s {what} ... ", end="", flush=True)
        time.sleep(min(left, 1.0 if tty else left))
    if tty:
        print(f"\r   waited {what}: done{' ' * 20}", flush=True)


def parse_seconds(text: str) -> float:
    from gc_daemon.config import parse_duration

    try:
        return parse_duration(text).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- the estate --------------------------------------------------------------------------------


@dataclass
class Item:
    n: int
    account: str
    container: str
    blob: str
    story: str
    expect: str  # "deleted" | "kept" | "in use" | "too young" | "candidate"
    hold: str | None = None  # for "kept": the hold the report must show
    owner: str | None = None  # for "deleted": a substring of the last owner the report must show
    size: int = 0
    written: int = 0

    @property
    def present_after(self) -> bool:
        return self.expect != "deleted"


@dataclass
class DiskItem:
    """A managed disk of the estate and what vhd-gc must do with it."""

    name: str
    story: str
    expect: str  # "deleted" (after its quarantine snapshot) | "restored" | "kept" | "in use"
    hold: str | None = None  # for "kept": the hold the report must show
    size_gb: int = 32

    @property
    def id(self) -> str:
        return armlib.compute_id(SUB, RG, "disks", self.name)


class Demo:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.min_age: float = args.min_age
        self.grace: float = args.grace
        self.tmp = Path(tempfile.mkdtemp(prefix="vhd-gc-demo-"))
        self.azurite = Azurite(list(ACCOUNTS), self.tmp / "azurite")
        self.arm = ArmStandIn(page_size=2, cert_dir=str(self.tmp / "arm-cert"))
        self.cfg = self.tmp / "vhd-gc.yaml"
        self.items: list[Item] = []
        self.disks: list[DiskItem] = []
        self.failures: list[str] = []
        self.settings: dict = {}

    # -- stand-ins and configuration -----------------------------------------------------------

    def start(self) -> None:
        header("1. Local stand-ins for Azure")
        t = time.monotonic()
        self.azurite.start()
        self.arm.start()
        for a in ACCOUNTS:
            say(f"   Azurite (pid {self.azurite.pid})  account {a:<10} {self.azurite.blob_endpoint(a)}")
        say(f"   ARM stand-in (HTTPS, 2 per page)       {self.arm.url}")
        say(f"   started in {time.monotonic() - t:.1f}s; working directory {self.tmp}")
        self.env = dict(os.environ)
        for a in ACCOUNTS:
            self.env[f"{a.upper()}_KEY"] = self.azurite.key(a)
        self.env["REQUESTS_CA_BUNDLE"] = str(self.arm.cert_path)
        self.env.pop("VHD_GC_CONFIG", None)
        self.settings = {
            "database_url": f"sqlite:///{self.tmp / 'vhd-gc.db'}",
            "mode": "dry-run",
            "min_age": f"{self.min_age:g}s",
            "grace_period": f"{self.grace:g}s",
            "min_sightings": 2,
            "import_hold": "7d",
            "log_format": "console",
            "log_level": "warning",
            "azure": {
                "credential": "emulator",
                "arm_endpoint": self.arm.url,
                "subscriptions": [SUB],
                "storage_accounts": [
                    {"name": a, "blob_endpoint": self.azurite.blob_endpoint(a), "key_env": f"{a.upper()}_KEY"}
                    for a in ACCOUNTS
                ],
            },
        }
        # Unattached managed disks too: deleted after an incremental quarantine snapshot kept 30 days
        # (`vhd-gc restore` brings a disk back from it). Their operations are polled every second.
        self.settings["managed_disks"] = {"mode": "delete", "quarantine": "30d"}
        self.settings["azure"]["lro_poll_interval"] = "1s"
        self.write_config()

    def write_config(self) -> None:
        self.cfg.write_text(yaml.safe_dump(self.settings, sort_keys=False))

    def url(self, account: str, container: str, blob: str = "") -> str:
        from urllib.parse import quote

        base = f"{self.azurite.blob_endpoint(account)}/{container}"
        return f"{base}/{quote(blob, safe='/')}" if blob else base

    # -- seeding ---------------------------------------------------------------------------------

    def add(self, account: str, container: str, blob: str, story: str, expect: str, **kw) -> Item:
        item = Item(len(self.items) + 1, account, container, blob, story, expect, **kw)
        self.items.append(item)
        return item

    def page(self, item: Item, size_mib: int, written: list[tuple[int, int]], **kw) -> None:
        ranges = [(o * MiB, n * MiB) for o, n in written]
        with self.azurite.service_client(item.account) as svc:
            seed.page_blob(svc, item.container, item.blob, size=size_mib * MiB, written=ranges, **kw)
        item.size = size_mib * MiB
        item.written = sum(n for _, n in ranges)

    def seed_estate(self) -> None:
        header("2. The estate")
        t = time.monotonic()
        a1, a2 = ACCOUNTS
        golden_blob = f"Microsoft.Compute/Images/vhds/golden-osDisk.{uuid.uuid4()}.vhd"

        web_os = self.add(a1, "vhds", "web-01-osdisk.vhd", "VM web-01 (running): OS disk, leased and referenced", "in use")
        web_data = self.add(a1, "vhds", "web-01-data0.vhd", "VM web-01 (running): data disk, leased and referenced", "in use")
        old_os = self.add(a1, "vhds", "old-app-osdisk.vhd", "VM old-app was deleted: its OS disk was left behind", "deleted", owner="old-app")
        old_data = self.add(a1, "vhds", "old-app-data0.vhd", "VM old-app was deleted: its data disk was left behind", "deleted", owner="old-app")
        db = self.add(a1, "vhds", "db-01-osdisk.vhd", "VM db-01 converted to managed disk db-01-osdisk 30 days ago", "deleted", owner="db-01-osdisk")
        golden = self.add(a1, "system", golden_blob, "captured image: managed image 'golden' reads this VHD (no lease!)", "in use")
        ss0 = self.add(a2, "webss", "web-ss-0-osdisk.vhd", "scale set web-ss: vhdContainers = webss (instance 0)", "in use")
        ss1 = self.add(a2, "webss", "web-ss-1-osdisk.vhd", "scale set web-ss: vhdContainers = webss (instance 1)", "in use")
        broken = self.add(a2, "uploads", "broken-upload.vhd", "a .vhd uploaded as a BLOCK blob (Azure cannot boot it)", "kept", hold="block_blob")
        snap = self.add(a2, "backups", "legacy-ftp-osdisk.vhd", "leftover VHD with a blob snapshot (someone's backup)", "kept", hold="snapshots")
        inc = self.add(a2, "vhds", "breached-vm-osdisk.vhd", "leftover VHD with metadata vhdgc_keep=INC-1234", "kept", hold="metadata")
        replica = self.add(a2, "asrreplica", "web-01-osdisk-ASRReplica.vhd",
                           "Site Recovery replica of web-01 (no lease, no Compute reference: only the vault names it)", "in use")
        k8s = self.add(a1, "vhds", f"kubernetes-dynamic-pvc-{uuid.uuid4()}.vhd",
                       "Kubernetes in-tree volume whose pod is not scheduled (no lease)", "kept", hold="kubernetes")
        self.fresh = self.add(a2, "uploads", "new-upload.vhd", "uploaded right before the delete pass", "too young")

        vm_meta = lambda name: {"MicrosoftAzureCompute_VMName": name}  # noqa: E731
        self.page(web_os, 512, [(0, 24), (256, 8)], metadata=vm_meta("web-01"), lease=True)
        self.page(web_data, 256, [(0, 16)], metadata=vm_meta("web-01"), lease=True)
        self.page(old_os, 512, [(0, 20), (480, 4)], metadata=vm_meta("old-app"))
        self.page(old_data, 384, [(0, 12), (128, 4)], metadata=vm_meta("old-app"))
        self.page(db, 512, [(0, 28)], metadata=vm_meta("db-01"))
        self.page(golden, 256, [(0, 16)])
        self.page(ss0, 128, [(0, 8)])
        self.page(ss1, 128, [(0, 6)])
        with self.azurite.service_client(a2) as svc:
            data = os.urandom(3 * MiB)
            seed.block_blob(svc, broken.container, broken.blob, data=data)
        broken.size = broken.written = len(data)
        self.page(snap, 256, [(0, 10)], snapshots=1)
        self.page(inc, 128, [(0, 6)], metadata={"vhdgc_keep": "INC-1234"})
        self.page(replica, 512, [(0, 24)])
        self.page(k8s, 64, [(0, 4)], metadata={"createdby": "k8sAzureDataDisk"})

        self.arm.set_estate(
            armlib.build_estate(
                armlib.vm(SUB, RG, "web-01", os_vhd=self.url(a1, "vhds", web_os.blob), data_vhds=[self.url(a1, "vhds", web_data.blob)]),
                self.converted_disk(armlib.disk(
                    SUB, RG, "db-01-osdisk",
                    source_uri=self.url(a1, "vhds", db.blob),
                    time_created=datetime.now(UTC) - timedelta(days=30),
                )),
                armlib.image(SUB, RG, "golden", os_blob=self.url(a1, "system", golden_blob)),
                armlib.vmss(SUB, RG, "web-ss", vhd_containers=[self.url(a2, "webss")]),
                armlib.recovery_vault(SUB, RG, "dr-vault"),
                armlib.replication_protected_item(SUB, RG, "dr-vault", "web-01", armlib.a2a_details({
                    "diskUri": self.url(a1, "vhds", web_os.blob),
                    "recoveryDiskUri": self.url(a2, replica.container, replica.blob),
                })),
                *self.seed_disks(),
                # The collected accounts, where ARM places them: vhd-gc checks they are in a configured subscription.
                *(armlib.storage_account(SUB, "storage-rg", acct, blob_endpoint=self.azurite.blob_endpoint(acct))
                  for acct in ACCOUNTS),
                subscriptions=[SUB],
            )
        )  # fmt: skip
        self.arm.set_lro(polls=0)  # a disk's snapshot, delete or restore ends at its first poll
        self.seeded_at = time.monotonic()

        say("   Azure Compute (ARM stand-in, subscription " + SUB + "):")
        say("     VM web-01 (2 VHD disks), managed disk db-01-osdisk (imported 30 days ago, attached to VM db-01),")
        say("     managed image golden (from a VHD), scale set web-ss (unmanaged, container webss),")
        say("     Recovery Services vault dr-vault replicating web-01 (Site Recovery, Azure to Azure)")
        say("   Blobs (nominal size / written), and what vhd-gc should do with each:")
        for it in self.items:
            if it is self.fresh:
                continue
            say(self.legend_line(it))
        if self.disks:
            say("   Managed disks (ARM stand-in), and what vhd-gc should do with each:")
            for d in self.disks:
                expect = {"deleted": "leftover -> QUARANTINE SNAPSHOT, DELETE",
                          "restored": "leftover -> QUARANTINE SNAPSHOT, DELETE, then `vhd-gc restore`",
                          "kept": f"held ({d.hold}) -> KEEP"}.get(d.expect, d.expect)
                say(f"       {d.name:<40} {d.size_gb:>4} GiB\n         {d.story}  => {expect}")
        say(f"   seeded in {time.monotonic() - t:.1f}s")

    @staticmethod
    def converted_disk(disk: dict) -> dict:
        """VM db-01 runs on the managed disk it was converted to: attached (in use, never a leftover)."""
        disk["managedBy"] = armlib.compute_id(SUB, RG, "virtualMachines", "db-01")
        disk["properties"]["diskState"] = "Attached"
        return disk

    def seed_disks(self) -> list[dict]:
        """The managed disks: a deleted VM's two (detached three days ago: their age does not depend on
        how fast this machine is), a Kubernetes volume, a Site Recovery replica, and a running VM's two."""
        from sandbox import arm_disks

        detached = datetime.now(UTC) - timedelta(days=3)
        created = datetime.now(UTC) - timedelta(days=200)
        app02 = armlib.compute_id(SUB, RG, "virtualMachines", "app-02")
        self.disks = [
            DiskItem("old-app-osdisk", "VM old-app was deleted: its managed OS disk was left behind", "deleted", size_gb=64),
            DiskItem("old-app-data0", "VM old-app was deleted: its managed data disk was left behind", "restored", size_gb=128),
            DiskItem("pvc-3f0c9a52-5d1e-4f7b-9a61-0e8c2b7d4a10", "a Kubernetes persistent volume, its pod not scheduled",
                     "kept", hold="kubernetes"),
            DiskItem("web-01-osdisk-ASRReplica", "a Site Recovery replica disk of web-01 (unattached until failover)",
                     "kept", hold="site_recovery", size_gb=64),
            DiskItem("app-02-osdisk", "VM app-02 (running): OS disk, attached", "in use", size_gb=64),
            DiskItem("app-02-data0", "VM app-02 (running): data disk, attached", "in use"),
        ]
        extra = {
            "old-app-osdisk": dict(last_ownership_update_time=detached, tags={"app": "old-app"}),
            "old-app-data0": dict(last_ownership_update_time=detached, tags={"app": "old-app"}, sku="StandardSSD_LRS",
                                  zones=["1"]),
            "pvc-3f0c9a52-5d1e-4f7b-9a61-0e8c2b7d4a10": dict(
                last_ownership_update_time=detached,
                tags={"kubernetes.io-created-for-pvc-name": "data-db-0", "k8s-azure-created-by": "kubernetes-azure-dd"}),
            "web-01-osdisk-ASRReplica": dict(tags={"ASR-ReplicaDisk": "web-01"}),
            "app-02-osdisk": dict(disk_state="Attached", managed_by=app02, last_ownership_update_time=created),
            "app-02-data0": dict(disk_state="Attached", managed_by=app02, last_ownership_update_time=created),
        }
        return [arm_disks.managed_disk(SUB, RG, d.name, size_gb=d.size_gb, time_created=created, **extra[d.name])
                for d in self.disks]

    def legend_line(self, it: Item) -> str:
        size = f"{it.size // MiB} MiB / {it.written // MiB} MiB" if it.size else ""
        where = f"{it.account}/{it.container}/{it.blob}"
        if len(where) > 58:
            where = where[:40] + "..." + where[-15:]
        expect = {"deleted": "leftover -> DELETE", "kept": f"orphan, held ({it.hold}) -> KEEP"}.get(it.expect, it.expect)
        return f"   {it.n:>2}. {where:<58} {size:>17}\n       {it.story}  => {expect}"

    def wait_for_min_age(self) -> None:
        header("3. Waiting for the estate to age past min_age")
        countdown(self.seeded_at + self.min_age + 1.0, f"for the seeded blobs to be older than min_age ({self.min_age:g}s)")

    def upload_fresh(self) -> None:
        """A new VHD, uploaded right before the pass that must see it young."""
        self.page(self.fresh, 64, [(0, 2)])
        with self.azurite.service_client(self.fresh.account) as svc:
            props = svc.get_blob_client(self.fresh.container, self.fresh.blob).get_blob_properties()
        self.fresh_modified = props.last_modified
        say("   a new VHD arrives:")
        say(self.legend_line(self.fresh))

    def judge_fresh(self) -> None:
        """What the fresh upload must be after the pass that listed it: too young if that pass's
        listing (the storage service's clock, which vhd-gc ages blobs on) saw it younger than min_age,
        else a candidate. On a slow machine it can be either: the demo checks vhd-gc against what the
        pass saw, not against the wall clock."""
        from sqlalchemy import select

        from gc_daemon.state.db import make_engine
        from gc_daemon.state.models import passes

        engine = make_engine(self.settings["database_url"])
        try:
            with engine.connect() as conn:
                stats = conn.execute(select(passes.c.stats).where(passes.c.outcome == "complete")
                                     .order_by(passes.c.id.desc()).limit(1)).scalar()
        finally:
            engine.dispose()
        seen_at = ((stats or {}).get("service_time_by_account") or {}).get(self.fresh.account)
        if seen_at is None:
            self.failures.append("the delete pass recorded no service time for the fresh upload's account")
            return
        age = (datetime.fromisoformat(seen_at) - self.fresh_modified).total_seconds()
        if age >= self.min_age:
            self.fresh.expect = "candidate"
            say(f"   (the machine is slow: the pass listed the fresh upload {age:.0f}s after it was written, "
                f"past min_age {self.min_age:g}s, so it must be a candidate now)")
        else:
            say(f"   (the pass listed the fresh upload {age:.0f}s after it was written: younger than min_age "
                f"{self.min_age:g}s, so it must not be a candidate)")

    # -- vhd-gc ----------------------------------------------------------------------------------

    def vhd_gc(self, *args: str, show: bool = True, expect_code: int = 0) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "gc_daemon", "-c", str(self.cfg), *args]
        if show:
            say()
            say(f"$ vhd-gc -c {self.cfg.name} " + " ".join(shlex.quote(a) for a in args))
        t = time.monotonic()
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t
        if show:
            for line in (proc.stdout + proc.stderr).rstrip("\n").splitlines():
                say(f"  {line}")
            say(f"  [exit {proc.returncode}, {took:.1f}s]")
        if proc.returncode != expect_code:
            self.failures.append(f"`vhd-gc {' '.join(args)}` exited {proc.returncode} (expected {expect_code})")
            if not show:
                say((proc.stdout + proc.stderr).rstrip())
        return proc

    def report_json(self) -> dict[str, dict]:
        proc = self.vhd_gc("report", "--format", "json", show=False)
        try:
            return {(r["account"], r["container"], r["blob"]): r for r in json.loads(proc.stdout)}
        except ValueError:
            return {}

    def run_gc(self) -> None:
        header("4. vhd-gc, as an operator runs it (real processes, real clock)")
        say(f"   (config: {self.cfg}; account keys in DEMOVHDS1_KEY / DEMOVHDS2_KEY; REQUESTS_CA_BUNDLE = stand-in cert)")
        self.vhd_gc("config", "check")

        say()
        say("-- first pass, dry-run (the default): find orphans, delete nothing")
        self.vhd_gc("scan")
        self.vhd_gc("report", "--format", "table")

        rows = self.report_json()
        due = [r["delete_after"] for r in rows.values() if r.get("delete_after") and r["state"] in ("candidate", "due")]
        if due:
            latest = max(datetime.fromisoformat(d.replace("Z", "+00:00")) for d in due)
            wait = (latest - datetime.now(UTC)).total_seconds() + 0.5
        else:
            wait = self.grace
        say()
        say(f"-- grace period ({self.grace:g}s): candidates must stay orphaned that long, and be seen in 2 passes")
        countdown(time.monotonic() + max(0.0, wait), "for the grace period to pass")
        say()
        say("-- switch the configuration to mode: delete, and run a second pass")
        self.settings["mode"] = "delete"
        self.write_config()
        say(f"   {self.cfg.name}:  mode: dry-run  ->  mode: delete")
        self.upload_fresh()
        self.vhd_gc("scan")
        self.judge_fresh()
        self.vhd_gc("report", "--format", "table")

        a1 = ACCOUNTS[0]
        deleted = next(it for it in self.items if it.expect == "deleted" and it.blob.startswith("old-app-os"))
        golden = next(it for it in self.items if it.container == "system")
        say()
        say("-- why? ask vhd-gc about one deleted leftover and the captured image's VHD")
        self.vhd_gc("explain", self.url(a1, deleted.container, deleted.blob))
        self.vhd_gc("explain", self.url(a1, golden.container, golden.blob))
        if self.disks:
            self.disk_story()
        say()
        say("-- the audit log: every deletion intent and outcome, with ETag, size and who")
        self.vhd_gc("audit")

    def disk_story(self) -> None:
        say()
        say("-- managed disks: the deleted VM's two disks were snapshotted (quarantine), then deleted;")
        say("   the Kubernetes volume and the Site Recovery replica are kept with their holds; attached disks")
        say("   are in use and not even tracked")
        self.vhd_gc("report", "--kind", "managed_disk", "--format", "table")
        restored = next(d for d in self.disks if d.expect == "restored")
        say()
        say(f"-- oops, {restored.name} was still needed: bring it back from its quarantine snapshot")
        self.vhd_gc("restore", restored.id)
        self.vhd_gc("report", "--kind", "managed_disk", "--format", "table")

    # -- ground truth ----------------------------------------------------------------------------

    def check(self) -> None:
        header("5. Ground truth: what is left in Azurite")
        present: dict[str, set[tuple[str, str]]] = {}
        for a in ACCOUNTS:
            with self.azurite.service_client(a) as svc:
                present[a] = seed.names(svc)
            say(f"   {a}: {len(present[a])} blobs")
            for c, b in sorted(present[a]):
                say(f"     {c}/{b}")
        rows = self.report_json()

        say()
        say(f"   {'':2} {'#':>2}  {'EXPECTED':<10} {'IN AZURITE':<11} {'REPORT':<19} BLOB")
        for it in self.items:
            there = (it.container, it.blob) in present[it.account]
            row = rows.get((it.account, it.container, it.blob))
            state = row["state"] if row else "(not tracked)"
            shown = f"{state} ({row['hold']})" if row and row.get("hold") else state
            problems = []
            if there != it.present_after:
                problems.append("still there" if there else "GONE")
            if it.expect == "deleted":
                if state != "deleted":
                    problems.append(f"report says {state}")
                if it.owner and it.owner not in ((row or {}).get("last_owner") or ""):
                    problems.append(f"last owner {((row or {}).get('last_owner'))!r}, expected {it.owner!r}")
            elif it.expect == "kept":
                if state != "kept" or (row or {}).get("hold") != it.hold:
                    problems.append(f"report says {shown}, expected kept ({it.hold})")
            elif it.expect == "candidate":
                if state != "candidate":
                    problems.append(f"report says {state}, expected candidate")
            elif row is not None and state in ("candidate", "due", "deleted"):
                problems.append(f"report says {state}")
            mark = FAIL if problems else OK
            where = f"{it.account}/{it.container}/{it.blob}"
            if len(where) > 50:
                where = where[:32] + "..." + where[-15:]
            say(f"   {mark:2} {it.n:>2}  {it.expect:<10} {'present' if there else 'gone':<11} {shown:<19} {where}")
            for p in problems:
                self.failures.append(f"#{it.n} {it.account}/{it.container}/{it.blob}: {p}")
                say(f"          ^ {p}")
        if self.disks:
            self.check_disks()
        freed = sum(it.size for it in self.items if it.expect == "deleted")
        billed = sum(it.written for it in self.items if it.expect == "deleted")
        n = sum(1 for it in self.items if it.expect == "deleted")
        say()
        say(f"   vhd-gc deleted {n} leftovers ({freed // MiB} MiB nominal, {billed // MiB} MiB billed) and left the rest alone.")

    def check_disks(self) -> None:
        """Ground truth in the ARM stand-in: which disks exist, and their quarantine snapshots."""
        estate = self.arm.estate["subscriptions"][SUB]
        present = {d["id"].lower(): d for d in estate.get("disks", [])}
        quarantine: dict[str, list[dict]] = {}
        for snap in estate.get("snapshots", []):
            of = next((v for k, v in (snap.get("tags") or {}).items() if k.lower() == "vhdgc-quarantine-of"), None)
            if of:
                quarantine.setdefault(of.lower(), []).append(snap)
        proc = self.vhd_gc("report", "--kind", "managed_disk", "--format", "json", show=False)
        try:
            rows = {r["url"].lower(): r for r in json.loads(proc.stdout)}
        except ValueError:
            rows = {}
        say()
        say("   Managed disks, in the ARM stand-in:")
        say(f"   {'':2} {'EXPECTED':<10} {'IN ARM':<8} {'QUARANTINE':<11} {'REPORT':<24} DISK")
        for d in self.disks:
            key = d.id.lower()
            there = key in present
            snaps = [s for s in quarantine.get(key, []) if (s.get("properties") or {}).get("provisioningState") == "Succeeded"]
            row = rows.get(key)
            state = row["state"] if row else "(not tracked)"
            shown = f"{state} ({row['hold']})" if row and row.get("hold") else state
            problems = []
            if d.expect == "deleted":
                if there:
                    problems.append("still there")
                if state != "deleted":
                    problems.append(f"report says {shown}")
                if len(snaps) != 1:
                    problems.append(f"{len(snaps)} quarantine snapshots, expected 1")
                elif row and (row.get("quarantine_snapshot") or "").lower() != snaps[0]["id"].lower():
                    problems.append("the report does not name its quarantine snapshot")
            elif d.expect == "restored":
                if not there:
                    problems.append("not restored")
                if len(snaps) != 1:
                    problems.append(f"{len(snaps)} quarantine snapshots, expected 1")
                if (state, (row or {}).get("hold")) != ("kept", "operator"):
                    problems.append(f"report says {shown}, expected kept (operator)")
                was = present.get(key) or {}
                if there and ((was.get("sku") or {}).get("name"), was.get("zones"), (was.get("properties") or {}).get("diskSizeGB")) \
                        != ("StandardSSD_LRS", ["1"], d.size_gb):
                    problems.append("restored with another SKU, zone or size")
            elif d.expect == "kept":
                if not there:
                    problems.append("GONE")
                if (state, (row or {}).get("hold")) != ("kept", d.hold):
                    problems.append(f"report says {shown}, expected kept ({d.hold})")
            else:  # in use
                if not there:
                    problems.append("GONE")
                if row is not None and state in ("candidate", "due", "deleted"):
                    problems.append(f"report says {state}")
            if d.expect in ("kept", "in use") and snaps:
                problems.append("a quarantine snapshot was made of it")
            mark = FAIL if problems else OK
            say(f"   {mark:2} {d.expect:<10} {'present' if there else 'gone':<8} {len(snaps):<11} {shown:<24} {d.name}")
            for p in problems:
                self.failures.append(f"disk {d.name}: {p}")
                say(f"          ^ {p}")
        gone = [d for d in self.disks if d.expect in ("deleted", "restored")]
        say(f"   vhd-gc deleted {len(gone)} unattached disks ({sum(d.size_gb for d in gone)} GiB) after snapshotting "
            f"each, restored one, and left the rest alone.")

    # -- lifecycle -------------------------------------------------------------------------------

    def stop(self) -> None:
        self.arm.stop()
        self.azurite.stop()  # SIGKILL to its process group, reaped
        if self.args.keep:
            say(f"   kept {self.tmp} (config, state database, Azurite data); nothing is running")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (config, database, blobs)")
    parser.add_argument("--min-age", type=parse_seconds, default=10.0, metavar="DURATION", help="min_age (default 10s)")
    parser.add_argument("--grace", type=parse_seconds, default=5.0, metavar="DURATION", help="grace_period (default 5s)")
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # clean up exactly as after Ctrl-C

    previous = signal.signal(signal.SIGTERM, on_sigterm) if threading.current_thread() is threading.main_thread() else None
    started = time.monotonic()
    say("vhd-gc demo: a garbage collector for orphaned VHD page blobs, on a local Azure estate")
    demo = Demo(args)
    try:
        demo.start()
        demo.seed_estate()
        demo.wait_for_min_age()
        demo.run_gc()
        demo.check()
    except KeyboardInterrupt:
        say("\n   interrupted")
        demo.failures.append("interrupted")
    finally:
        header("Cleaning up")
        demo.stop()
        say("   Azurite killed, ARM stand-in stopped" + ("" if args.keep else ", temporary directory removed"))
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

    took = time.monotonic() - started
    say()
    if demo.failures:
        say(f"{FAIL} demo FAILED in {took:.0f}s:")
        for f in demo.failures:
            say(f"   - {f}")
        return 1
    say(f"{OK} every expectation held; the demo took {took:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
