"""A measurable estate: Azurite accounts full of VHD page blobs, an ARM stand-in holding VMs that
reference half of them, a vhd-gc configuration for both, and the SDK-only floor.

Nothing here uses vhd-gc's own Azure code: seeding and the floor go through the raw SDK clients.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO_ROOT, Progress, note

SUB = "00000000-0000-0000-0000-00000000beef"
PAGE = 512
BLOB_SIZE = 1024 * 1024  # nominal size of every seeded VHD
WRITTEN = 4096  # one written range, so list_page_ranges has something to sum
LIST_INCLUDE = ["metadata", "snapshots", "tags"]  # what AccountStorage.list_blobs asks for
SEED_WORKERS = 16
POOL_SIZE = 32


# --------------------------------------------------------------------------------------------------
# SDK clients with a connection pool wide enough for the seeding threads
# --------------------------------------------------------------------------------------------------


def blob_service(endpoint: str, account: str, key: str, pool: int = POOL_SIZE):
    import requests
    from azure.core.pipeline.transport import RequestsTransport
    from azure.storage.blob import BlobServiceClient

    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return BlobServiceClient(
        account_url=endpoint,
        credential={"account_name": account, "account_key": key},
        transport=RequestsTransport(session=session, session_owner=True),
        retry_total=3,
    )


# --------------------------------------------------------------------------------------------------
# Blobs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    endpoint: str  # http://127.0.0.1:PORT/<name>
    key: str

    @property
    def key_env(self) -> str:
        return f"BENCH_{self.name.upper()}_KEY"


@dataclass(frozen=True)
class SeededBlob:
    account: Account
    container: str
    name: str

    @property
    def url(self) -> str:
        return f"{self.account.endpoint}/{self.container}/{self.name}"


def plan_blobs(accounts: list[Account], total: int, containers_per_account: int = 4) -> list[SeededBlob]:
    """``total`` VHD names spread evenly over the accounts and their containers."""
    blobs: list[SeededBlob] = []
    for i in range(total):
        acct = accounts[i % len(accounts)]
        j = i // len(accounts)
        blobs.append(SeededBlob(acct, f"vhds{j % containers_per_account}", f"disk-{i:07d}.vhd"))
    return blobs


_DATA = bytes((i % 251) + 1 for i in range(WRITTEN))


def seed_blobs(blobs: list[SeededBlob], workers: int = SEED_WORKERS, desc: str = "seeding VHD page blobs") -> float:
    """Create every blob (page blob of BLOB_SIZE, WRITTEN bytes at offset 0) concurrently; seconds taken."""
    services = {}
    for b in blobs:
        if b.account.name not in services:
            services[b.account.name] = blob_service(b.account.endpoint, b.account.name, b.account.key)
    containers: dict[tuple[str, str], Any] = {}
    for b in blobs:
        ck = (b.account.name, b.container)
        if ck not in containers:
            cc = services[b.account.name].get_container_client(b.container)
            try:
                cc.create_container()
            except Exception as exc:  # noqa: BLE001 - exists already is fine
                if "ContainerAlreadyExists" not in str(exc):
                    raise
            containers[ck] = cc
    progress = Progress(len(blobs), desc)
    t0 = time.perf_counter()

    def one(b: SeededBlob) -> None:
        client = containers[(b.account.name, b.container)].get_blob_client(b.name)
        client.create_page_blob(BLOB_SIZE)
        client.upload_page(_DATA, offset=0, length=WRITTEN)
        progress.update()

    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seed") as pool:
            for _ in pool.map(one, blobs):
                pass
    finally:
        progress.close()
        for s in services.values():
            s.close()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# References: VMs whose OS and data disks are the referenced blobs
# --------------------------------------------------------------------------------------------------


def build_compute_estate(referenced: list[str], refs_per_vm: int = 2, accounts: list["Account"] = ()) -> dict[str, Any]:
    """One subscription, VMs holding ``referenced`` as OS disk + (refs_per_vm - 1) data disks each,
    and the collected ``accounts`` registered there (vhd-gc places them at every pass)."""
    from sandbox import arm as armlib

    resources = [armlib.storage_account(SUB, "storage-rg", a.name, blob_endpoint=a.endpoint) for a in accounts]
    for n, start in enumerate(range(0, len(referenced), refs_per_vm)):
        chunk = referenced[start : start + refs_per_vm]
        resources.append(
            armlib.vm(SUB, f"rg{n % 20}", f"vm{n:06d}", os_vhd=chunk[0], data_vhds=chunk[1:])
        )
    return armlib.build_estate(*resources, subscriptions=[SUB])


class ArmProcess:
    """``python -m sandbox.arm`` in its own process (so its JSON work does not share our GIL)."""

    def __init__(self, estate: dict[str, Any], page_size: int, workdir: Path, module: str = "sandbox.arm",
                 extra_args: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.page_size = page_size
        self.module, self.extra_args = module, tuple(extra_args)  # another launcher of the stand-in
        self.estate_path = workdir / "estate.json"
        self.estate_path.write_text(json.dumps(estate))
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.cert_path = ""

    def start(self) -> "ArmProcess":
        cert_dir = self.workdir / "arm-cert"
        cert_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--port", "0", "--cert-dir", str(cert_dir),
             "--estate", str(self.estate_path), "--page-size", str(self.page_size), *self.extra_args],
            cwd=str(REPO_ROOT), stdout=subprocess.PIPE, stderr=open(self.workdir / "arm.stderr", "w"),
            text=True, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY "):
                    _, self.url, self.cert_path = line.split()
                    return self
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"the ARM stand-in did not start: {(self.workdir / 'arm.stderr').read_text()[-2000:]}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


class ArmInProcess:
    """sandbox.arm.ArmStandIn in this process (shares the GIL with the code being measured)."""

    def __init__(self, estate: dict[str, Any], page_size: int, workdir: Path) -> None:
        from sandbox.arm import ArmStandIn

        self.standin = ArmStandIn(estate, page_size=page_size, cert_dir=str(workdir / "arm-cert"))
        self.url = ""
        self.cert_path = ""

    def start(self) -> "ArmInProcess":
        (Path(self.standin._cert_dir)).mkdir(parents=True, exist_ok=True)  # noqa: SLF001
        self.standin.start()
        self.url, self.cert_path = self.standin.url, str(self.standin.cert_path)
        return self

    def stop(self) -> None:
        self.standin.stop()


# --------------------------------------------------------------------------------------------------
# vhd-gc configuration
# --------------------------------------------------------------------------------------------------


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["azure.max_concurrency=4", "min_sightings=1"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        path, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE")
        node = out
        parts = path.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def bench_policy_keys() -> dict[str, Any]:
    """Keys the bench sets when this vhd-gc knows them: half the estate is leftovers by design, so the
    blast-radius guard (which would hold back a first pass marking 50%) is opened fully."""
    from gc_daemon.config import Config

    keys: dict[str, Any] = {}
    if "blast_radius" in Config.model_fields:
        keys["blast_radius"] = {"max_new_share": 1.0}
    return keys


def write_config(
    path: Path, db_path: Path, arm_url: str, accounts: list[Account], overrides: dict[str, Any] | None = None
) -> Path:
    data: dict[str, Any] = {
        "database_url": f"sqlite:///{db_path}",
        "mode": "dry-run",
        "min_age": "0s",
        "log_format": "json",
        "log_level": "warning",
        "azure": {
            "credential": "emulator",
            "arm_endpoint": arm_url,
            "subscriptions": [SUB],
            "storage_accounts": [
                {"name": a.name, "blob_endpoint": a.endpoint, "key_env": a.key_env} for a in accounts
            ],
            "retry_total": 2,
            "timeout": "60s",
        },
    }
    _merge(data, bench_policy_keys())
    _merge(data, json.loads(json.dumps(overrides or {})))
    path.write_text(yaml.safe_dump(data))
    for a in accounts:
        os.environ[a.key_env] = a.key
    return path


def remove_db(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(f"{db_path}{suffix}")
        except FileNotFoundError:
            pass


def run_pass(config_path: Path, wrap: Callable[[Any], Any] | None = None):
    """Build a collector from the file and run one pass; returns (seconds of run_pass, result)."""
    from gc_daemon.config import load_config
    from gc_daemon.wiring import build_collector

    config = load_config(config_path)
    collector = build_collector(config)
    if wrap is not None:
        wrap(collector)
    try:
        t0 = time.perf_counter()
        result = collector.run_pass()
        elapsed = time.perf_counter() - t0
    finally:
        _close_collector(collector)
    if result.outcome != "complete":
        raise RuntimeError(f"the pass was {result.outcome}: {result.errors}")
    return elapsed, result


def _close_collector(collector: Any) -> None:
    for obj in (collector.references, *(collector.accounts.values() if isinstance(collector.accounts, dict) else ())):
        close = getattr(obj, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                pass
    engine = getattr(collector.store, "engine", None)
    if engine is not None:
        engine.dispose()


# --------------------------------------------------------------------------------------------------
# The floor: the SDKs alone
# --------------------------------------------------------------------------------------------------


def sdk_list_account(account: Account) -> int:
    """list_containers + list_blobs(include=metadata,snapshots,tags) consumed fully; blob count."""
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient(
        account_url=account.endpoint, credential={"account_name": account.name, "account_key": account.key}
    )
    try:
        n = 0
        for container in svc.list_containers():
            for _ in svc.get_container_client(container.name).list_blobs(include=LIST_INCLUDE):
                n += 1
        return n
    finally:
        svc.close()


def sdk_list_references(arm_url: str, cert_path: str, max_workers: int = 8) -> int:
    """The Compute list calls the reference inventory makes for one subscription, consumed fully; item count."""
    from azure.mgmt.compute import ComputeManagementClient

    from gc_daemon.azure.credentials import EmulatorCredential  # a fixed token, no vhd-gc logic

    client = ComputeManagementClient(
        EmulatorCredential(), SUB, base_url=arm_url, credential_scopes=[arm_url + "/.default"],
        connection_verify=cert_path,
    )  # fmt: skip

    def count(pager) -> int:
        return sum(1 for _ in pager)

    def scale_sets() -> int:
        n = 0
        for ss in client.virtual_machine_scale_sets.list_all():
            n += 1
            rg = ss.id.split("/")[4]
            n += count(client.virtual_machine_scale_set_vms.list(rg, ss.name))
        return n

    def galleries() -> int:
        n = 0
        for g in client.galleries.list():
            n += 1
            rg = g.id.split("/")[4]
            for img in client.gallery_images.list_by_gallery(rg, g.name):
                n += 1 + count(client.gallery_image_versions.list_by_gallery_image(rg, g.name, img.name))
            for app in client.gallery_applications.list_by_gallery(rg, g.name):
                n += 1 + count(client.gallery_application_versions.list_by_gallery_application(rg, g.name, app.name))
        return n

    def rest(path: str, api_version: str) -> int:
        """A list of another service, as its source reads it: GETs through the same pipeline, every page."""
        from azure.core.rest import HttpRequest

        n, url = 0, f"{arm_url}{path}?api-version={api_version}"
        while url:
            body = client.send_request(HttpRequest("GET", url)).json()
            n += len(body["value"])
            url = body.get("nextLink")
        return n

    calls = [
        lambda: count(client.virtual_machines.list_all()),
        scale_sets,
        lambda: count(client.images.list()),
        lambda: count(client.disks.list()),
        lambda: count(client.snapshots.list()),
        galleries,
        # The other services' first lists (their estates are empty here), and the accounts' placement.
        lambda: rest(f"/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/vaults", "2025-02-01"),
        lambda: rest(f"/subscriptions/{SUB}/providers/Microsoft.VirtualMachineImages/imageTemplates", "2024-02-01"),
        lambda: rest(f"/subscriptions/{SUB}/providers/Microsoft.DevTestLab/labs", "2018-09-15"),
        lambda: rest(f"/subscriptions/{SUB}/providers/Microsoft.Storage/storageAccounts", "2025-06-01"),
    ]
    try:
        with ThreadPoolExecutor(max_workers=max_workers) as pool:
            return sum(pool.map(lambda f: f(), calls))
    finally:
        client.close()


def sdk_measure(blobs: list[SeededBlob], workers: int = 8) -> float:
    """list_page_ranges of each blob, ``workers`` at a time (what measuring billed bytes costs
    the SDK alone); seconds."""
    services = {}
    for b in blobs:
        if b.account.name not in services:
            services[b.account.name] = blob_service(b.account.endpoint, b.account.name, b.account.key)

    def one(b: SeededBlob) -> int:
        client = services[b.account.name].get_blob_client(b.container, b.name)
        return sum(r.end - r.start + 1 for r in client.list_page_ranges() if not r.cleared)

    return _timed_in_pool(one, blobs, workers, services.values())


def _timed_in_pool(one: Callable[[Any], Any], items: list[Any], workers: int, clients: Iterable[Any]) -> float:
    """Seconds to run ``one`` over ``items``, ``workers`` at a time; the clients are closed after."""
    t0 = time.perf_counter()
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, items))
        return time.perf_counter() - t0
    finally:
        for client in clients:
            client.close()


def lean_storage(account: Account):
    from gc_daemon.azure.storage import AccountStorage

    return AccountStorage(account.name, account.endpoint, account.key, retry_total=0, reader="lean")


def lean_list_accounts(accounts: list[Account]) -> float:
    """vhd-gc's own reader (gc_daemon.azure.blobrest) listing every account in turn, no decision;
    seconds. For information: what the pass's listing costs by itself."""
    t0 = time.perf_counter()
    for a in accounts:
        with lean_storage(a) as storage:
            for _ in storage.list_blobs():
                pass
    return time.perf_counter() - t0


def lean_measure(blobs: list[SeededBlob], workers: int = 8) -> float:
    """Billed bytes of each blob through vhd-gc's reader, ``workers`` at a time; seconds."""
    from gc_daemon.domain import BlobKey

    storages = {}
    for b in blobs:
        if b.account.name not in storages:
            storages[b.account.name] = lean_storage(b.account)

    def one(b: SeededBlob) -> int:
        return storages[b.account.name].billed_bytes(BlobKey(b.account.name, b.container, b.name))

    return _timed_in_pool(one, blobs, workers, storages.values())


@dataclass
class FloorTimes:
    refs: float
    blobs: float  # accounts one after the other
    total: float
    blob_count: int
    per_account: dict[str, float] = field(default_factory=dict)


def floor_sequential(arm_url: str, cert_path: str, accounts: list[Account]) -> FloorTimes:
    """References, then every account one after the other: what a pass must at least wait for."""
    t0 = time.perf_counter()
    sdk_list_references(arm_url, cert_path)
    t1 = time.perf_counter()
    n = 0
    per: dict[str, float] = {}
    for a in accounts:
        ta = time.perf_counter()
        n += sdk_list_account(a)
        per[a.name] = time.perf_counter() - ta
    t2 = time.perf_counter()
    return FloorTimes(t1 - t0, t2 - t1, t2 - t0, n, per)


def floor_parallel(arm_url: str, cert_path: str, accounts: list[Account]) -> float:
    """References and every account at once, in threads: the best any overlap could do."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(accounts) + 1) as pool:
        futs = [pool.submit(sdk_list_references, arm_url, cert_path)]
        futs += [pool.submit(sdk_list_account, a) for a in accounts]
        for f in futs:
            f.result()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------------
# Phase breakdown of one pass (timing proxies around the sources)
# --------------------------------------------------------------------------------------------------


class _TimedReferences:
    def __init__(self, inner: Any, sink: dict[str, float]) -> None:
        self.inner, self.sink = inner, sink

    def read(self):
        t0 = time.perf_counter()
        try:
            return self.inner.read()
        finally:
            self.sink["references.read()"] = self.sink.get("references.read()", 0.0) + time.perf_counter() - t0

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()


class _TimedAccount:
    def __init__(self, inner: Any, sink: dict[str, float], lock: threading.Lock) -> None:
        self.inner, self.sink, self.lock = inner, sink, lock

    def _add(self, k: str, v: float) -> None:
        with self.lock:
            self.sink[k] = self.sink.get(k, 0.0) + v

    def list_blobs(self) -> Iterator[Any]:
        it = iter(self.inner.list_blobs())
        t_first = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self._add("list_blobs (time inside the listing generator)", time.perf_counter() - t0)
                self._add("list_blobs (wall, first to last item)", time.perf_counter() - t_first)
                return
            self._add("list_blobs (time inside the listing generator)", time.perf_counter() - t0)
            yield item

    def billed_bytes(self, key):
        t0 = time.perf_counter()
        try:
            return self.inner.billed_bytes(key)
        finally:
            self._add("billed_bytes (summed over threads)", time.perf_counter() - t0)
            self._add("billed_bytes calls", 1)

    def read_blob(self, key):
        return self.inner.read_blob(key)

    def delete_if_match(self, key, etag):
        return self.inner.delete_if_match(key, etag)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()


def instrument(sink: dict[str, float]) -> Callable[[Any], None]:
    lock = threading.Lock()

    def wrap(collector: Any) -> None:
        collector.references = _TimedReferences(collector.references, sink)
        if isinstance(collector.accounts, dict):
            collector.accounts = {k: _TimedAccount(v, sink, lock) for k, v in collector.accounts.items()}

    return wrap


class _EndMarked:
    """A source proxy that records when its read ended (perf_counter), and nothing per item."""

    def __init__(self, inner: Any, sink: dict[str, float], name: str) -> None:
        self.inner, self.sink, self.name = inner, sink, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def read(self, *args: Any, **kwargs: Any):
        self.sink.setdefault("start", time.perf_counter())
        try:
            return self.inner.read(*args, **kwargs)
        finally:
            self.sink[self.name] = time.perf_counter()

    def list_blobs(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        # The pass passes keywords (on_service_time=...): forward whatever it passes.
        self.sink.setdefault("start", time.perf_counter())
        yield from self.inner.list_blobs(*args, **kwargs)
        self.sink[self.name] = time.perf_counter()


def mark_ends(sink: dict[str, float]) -> Callable[[Any], None]:
    """Wrap a collector's sources so ``sink`` gets the instant each one ended: "references" and each
    account by name, and "start", the first of them to begin (the listings start with the pass)."""

    def wrap(collector: Any) -> None:
        collector.references = _EndMarked(collector.references, sink, "references")
        if isinstance(collector.accounts, dict):
            collector.accounts = {k: _EndMarked(v, sink, k) for k, v in collector.accounts.items()}

    return wrap


def breakdown_lines(sink: dict[str, float], total: float) -> list[str]:
    lines = [f"  pass wall time: {total:.3f} s"]
    for k, v in sink.items():
        if k.endswith("calls"):
            lines.append(f"    {k}: {int(v)}")
        else:
            lines.append(f"    {k}: {v:.3f} s ({100 * v / total:.0f}% of the pass)")
    inside = sink.get("references.read()", 0.0) + sink.get("list_blobs (time inside the listing generator)", 0.0)
    lines.append(
        f"    rest (decide + state DB + measuring wait + bookkeeping, main thread): {total - inside:.3f} s "
        f"({100 * (total - inside) / total:.0f}%)"
    )
    return lines


@contextmanager
def tempdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        if keep:
            note(f"kept {d}")
        else:
            import shutil

            shutil.rmtree(d, ignore_errors=True)
