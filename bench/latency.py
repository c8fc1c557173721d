"""``python -m bench latency``: the floor, steady, first and delete passes behind a loopback proxy that
adds Azure's round trip to every request, at delay 0 and at the delay, side by side in alternating rounds.

Every emulator (Azurite's blob endpoint, the ARM stand-in over HTTPS) is reached through one proxy
process (bench/latency_proxy.py) that holds each chunk of data ``rtt / 2`` in each direction: every
request/response exchange pays the round trip, kept-alive connections included. Requests are counted
per kind: storage by the proxy (plain HTTP, read from the request lines), ARM by the stand-in's own
request log (the proxy sees only ciphertext). The emulators and the proxy run at session nice 10.

The floor is a process listing everything with the SDKs, every independent page chain in its own
thread (each subscription's lists, each scale set's instances, each gallery's images and versions,
each container's blobs): what a pass cannot be faster than, and its requests the minimum a pass makes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import estate as E
from bench.common import Section, configure_vhdgc_logging, fmt_ratio, lower_emulator_priority, median, note
from bench.latency_proxy import ProxyProcess

SUBSCRIPTIONS = tuple(f"00000000-0000-0000-0000-0000000014a{i}" for i in range(1, 10))
ACCOUNT_PREFIX = "latacct"

# Issue 14's acceptance, at 50 ms RTT.
STEADY_LIMIT = 1.0  # x the floor
FIRST_LIMIT = 1.5  # x the floor
DELETE_LIMIT = 2.0  # x a steady pass, for a delete pass of 100 deletions
DELETE_TARGET_AT = 100

PHASES = ("floor", "steady", "first", "delete")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtt-ms", type=float, default=50.0, help="round trip the proxy adds, in ms (default 50: 25 each way)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds, each at delay 0 and at the delay (default 3)")
    p.add_argument("--accounts", type=int, default=6, help="storage accounts (default 6)")
    p.add_argument("--containers", type=int, default=3, help="containers per account (default 3)")
    p.add_argument("--blobs", type=int, default=12_000, help="VHD page blobs in all (default 12000: 667 a container)")
    p.add_argument("--big-container", type=int, default=5500,
                   help="blobs in the first container of the first account, the rest spread evenly (default 5500: "
                        "a listing of two pages; 0: all spread evenly)")
    p.add_argument("--orphan-share", type=float, default=0.47, help="share of the blobs nothing references (default 0.47)")
    p.add_argument("--subscriptions", type=int, default=2, help="subscriptions, resources spread over them (default 2)")
    p.add_argument("--vms", type=int, default=3746, help="VMs; they hold the referenced blobs not held otherwise (default 3746)")
    p.add_argument("--scale-sets", type=int, default=20, help="scale sets (default 20)")
    p.add_argument("--scale-set-vms", type=int, default=4, help="instances per scale set (default 4)")
    p.add_argument("--galleries", type=int, default=3, help="galleries, 2 images each, 2 versions each made from VHDs (default 3)")
    p.add_argument("--images", type=int, default=10, help="managed images made from VHDs (default 10)")
    p.add_argument("--disks", type=int, default=40, help="managed disks, half attached to VMs (default 40)")
    p.add_argument("--snapshots", type=int, default=10, help="managed snapshots (default 10)")
    p.add_argument("--deletes", type=int, default=20,
                   help=f"deletions in the delete pass (max_deletes_per_pass; default 20; the target is for {DELETE_TARGET_AT})")
    p.add_argument("--arm-page-size", type=int, default=50, help="items per ARM list page (default 50)")


# --------------------------------------------------------------------------------------------------
# The estate
# --------------------------------------------------------------------------------------------------


def plan_blobs(accounts: list[E.Account], total: int, containers: int, big: int) -> list[E.SeededBlob]:
    """``big`` blobs in the first container of the first account, the others spread evenly over every
    other container (E.plan_blobs' names: ``disk-NNNNNNN.vhd``)."""
    big = max(0, min(big, total))
    slots = [(a, f"vhds{c}") for a in accounts for c in range(containers)]
    rest = slots[1:] if big and len(slots) > 1 else slots
    blobs = [E.SeededBlob(accounts[0], "vhds0", f"disk-{i:07d}.vhd") for i in range(big)]
    for j, i in enumerate(range(big, total)):
        account, container = rest[j % len(rest)]
        blobs.append(E.SeededBlob(account, container, f"disk-{i:07d}.vhd"))
    return blobs


def is_orphan(i: int, share: float) -> bool:
    """Blob ``i`` is an orphan: a low-discrepancy spread (golden ratio), so every account and container
    holds about ``share`` orphans."""
    return (i * 0.6180339887498949) % 1.0 < share


def build_arm_estate(args: argparse.Namespace, subs: list[str], referenced: list[str],
                     accounts: list[E.Account]) -> tuple[dict[str, Any], dict[str, int]]:
    """Accounts, images, gallery versions and VMs holding ``referenced``, scale sets, disks and snapshots,
    spread over ``subs`` with sandbox.arm's builders; and what it holds, counted."""
    from sandbox import arm as armlib
    from sandbox import arm_disks

    def sub_of(i: int) -> str:
        return subs[i % len(subs)]

    refs = list(referenced)
    resources = [armlib.storage_account(sub_of(k), "storage-rg", a.name, blob_endpoint=a.endpoint)
                 for k, a in enumerate(accounts)]
    n = Counter()
    for i in range(args.images):
        if refs:
            resources.append(armlib.image(sub_of(i), "images-rg", f"image{i:03d}", os_blob=refs.pop()))
            n["images"] += 1
    for g in range(args.galleries):
        sub, gname = sub_of(g), f"gallery{g:02d}"
        resources.append(armlib.gallery(sub, "gallery-rg", gname))
        n["galleries"] += 1
        for im in range(2):
            iname = f"image{im}"
            resources.append(armlib.gallery_image(sub, "gallery-rg", gname, iname))
            for v in range(2):
                if refs:
                    resources.append(armlib.gallery_image_version(sub, "gallery-rg", gname, iname, f"1.0.{v}",
                                                                  os_source=refs.pop()))
                    n["gallery image versions"] += 1
    for s in range(args.scale_sets):
        sub, rg, name = sub_of(s), f"ss-rg{s % 5}", f"ss{s:03d}"
        resources.append(armlib.vmss(sub, rg, name, capacity=args.scale_set_vms))
        resources.extend(armlib.vmss_vm(sub, rg, name, k) for k in range(args.scale_set_vms))
        n["scale sets"] += 1
        n["scale-set instances"] += args.scale_set_vms
    vms = max(args.vms, 1)
    vm_ids = []
    for v in range(vms):
        held = refs[v::vms]
        sub, rg, name = sub_of(v), f"rg{v % 20}", f"vm{v:06d}"
        resources.append(armlib.vm(sub, rg, name, os_vhd=held[0] if held else None, data_vhds=held[1:]))
        vm_ids.append(armlib.compute_id(sub, rg, "virtualMachines", name))
        n["VMs"] += 1
        n["VM references"] += len(held)
    for d in range(args.disks):
        sub, rg = sub_of(d), f"disks-rg{d % 4}"
        if d % 2 == 0:
            owner = vm_ids[d % len(vm_ids)]
            resources.append(arm_disks.managed_disk(owner.split("/")[2], rg, f"disk{d:04d}", disk_state="Attached",
                                                    managed_by=owner))
        else:
            resources.append(arm_disks.managed_disk(sub, rg, f"disk{d:04d}"))
        n["managed disks"] += 1
    for k in range(args.snapshots):
        resources.append(armlib.snapshot(sub_of(k), f"disks-rg{k % 4}", f"snap{k:04d}"))
        n["snapshots"] += 1
    return armlib.build_estate(*resources, subscriptions=subs), dict(n)


class ArmControl:
    """The ARM stand-in's control surface (its estate, its request log), reached directly, not through
    the proxy."""

    def __init__(self, url: str, cert_path: str) -> None:
        import requests

        self.url = url
        self.session = requests.Session()
        self.session.verify = cert_path

    def set_estate(self, estate: dict[str, Any]) -> None:
        self.session.put(f"{self.url}/_control/estate", json=estate, timeout=120).raise_for_status()

    def clear_requests(self) -> None:
        self.session.delete(f"{self.url}/_control/requests", timeout=30).raise_for_status()

    def requests(self) -> list[tuple[str, str]]:
        r = self.session.get(f"{self.url}/_control/requests", timeout=30)
        r.raise_for_status()
        return [tuple(x) for x in r.json()]

    def close(self) -> None:
        self.session.close()


def arm_kind(method: str, path_and_query: str) -> str:
    """``GET Microsoft.Compute/virtualMachines list``: the resource type (after the last ``providers``)
    and whether the request names a collection (a list page) or one resource."""
    segs = [s for s in urlsplit(path_and_query).path.split("/") if s]
    lower = [s.lower() for s in segs]
    if "providers" in lower:
        i = len(lower) - 1 - lower[::-1].index("providers")
        rest = segs[i + 1 :]
        if not rest:
            return f"{method} providers"
        namespace, tail = rest[0], rest[1:]
        types = tail[0::2]
        what = "list" if len(tail) % 2 == 1 else "get"
        return f"{method} {namespace}/{'/'.join(types)} {what}"
    if len(lower) >= 3 and lower[2] == "resourcegroups":
        return f"{method} resourceGroups {'list' if len(segs) == 3 else 'get'}"
    return f"{method} {'/'.join(lower[:1] + lower[2:3]) or '/'}"


# --------------------------------------------------------------------------------------------------
# The floor: every independent page chain in its own thread
# --------------------------------------------------------------------------------------------------

Chain = Callable[[], list]  # a step: reads its pages, returns the steps it makes possible


def run_chains(first: list[Chain], workers: int = 64) -> None:
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="floor") as pool:
        pending = {pool.submit(step) for step in first}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                pending.update(pool.submit(step) for step in fut.result())


def _rg(resource_id: str) -> str:
    return resource_id.split("/")[4]


def reference_chains(arm_url: str, cert_path: str, sub: str, clients: list) -> list[Chain]:
    """The lists the reference read makes in one subscription, with the SDK clients."""
    from azure.core.rest import HttpRequest
    from azure.mgmt.compute import ComputeManagementClient
    from azure.mgmt.resource.locks import ManagementLockClient
    from azure.mgmt.resource.resources import ResourceManagementClient
    from azure.mgmt.storage import StorageManagementClient

    from gc_daemon.azure.credentials import EmulatorCredential  # a fixed token, no vhd-gc logic

    kw = {"base_url": arm_url, "credential_scopes": [arm_url + "/.default"], "connection_verify": cert_path}
    cred = EmulatorCredential()
    compute = ComputeManagementClient(cred, sub, **kw)
    storage = StorageManagementClient(cred, sub, **kw)
    resources = ResourceManagementClient(cred, sub, **kw)
    locks = ManagementLockClient(cred, sub, **kw)
    clients.extend([compute, storage, resources, locks])

    def drain(pager) -> list:
        for _ in pager:
            pass
        return []

    def rest(path: str, api_version: str) -> Chain:
        def step() -> list:
            url = f"{arm_url}/subscriptions/{sub}/providers/{path}?api-version={api_version}"
            while url:
                body = compute.send_request(HttpRequest("GET", url)).json()
                url = body.get("nextLink")
            return []
        return step

    def scale_sets() -> list:
        return [lambda ss=ss: drain(compute.virtual_machine_scale_set_vms.list(_rg(ss.id), ss.name))
                for ss in compute.virtual_machine_scale_sets.list_all()]

    def gallery_images(rg: str, g: str) -> list:
        return [lambda i=i: drain(compute.gallery_image_versions.list_by_gallery_image(rg, g, i.name))
                for i in compute.gallery_images.list_by_gallery(rg, g)]

    def gallery_apps(rg: str, g: str) -> list:
        return [lambda a=a: drain(compute.gallery_application_versions.list_by_gallery_application(rg, g, a.name))
                for a in compute.gallery_applications.list_by_gallery(rg, g)]

    def galleries() -> list:
        steps: list = []
        for g in compute.galleries.list():
            rg = _rg(g.id)
            steps.append(lambda rg=rg, g=g.name: gallery_images(rg, g))
            steps.append(lambda rg=rg, g=g.name: gallery_apps(rg, g))
        return steps

    return [
        lambda: drain(compute.virtual_machines.list_all()),
        scale_sets,
        lambda: drain(compute.images.list()),
        lambda: drain(compute.disks.list()),
        lambda: drain(compute.snapshots.list()),
        galleries,
        rest("Microsoft.RecoveryServices/vaults", "2025-02-01"),
        rest("Microsoft.VirtualMachineImages/imageTemplates", "2024-02-01"),
        rest("Microsoft.DevTestLab/labs", "2018-09-15"),
        lambda: drain(resources.resource_groups.list()),
        lambda: drain(locks.management_locks.list_at_subscription_level()),
        lambda: drain(storage.storage_accounts.list()),
    ]


def listing_chain(account: E.Account, clients: list) -> Chain:
    """list_containers, then each container's list_blobs (include metadata, snapshots, tags) in a step of its own."""
    svc = E.blob_service(account.endpoint, account.name, account.key)
    clients.append(svc)

    def containers() -> list:
        def blobs(name: str) -> list:
            for _ in svc.get_container_client(name).list_blobs(include=E.LIST_INCLUDE):
                pass
            return []
        return [lambda n=c.name: blobs(n) for c in svc.list_containers()]

    return containers


def floor(arm_url: str, cert_path: str, subs: list[str], accounts: list[E.Account]) -> float:
    """Seconds to read every reference and list every account with the SDKs, every chain in its own
    thread; fresh clients each time (as a pass makes its clients)."""
    clients: list = []
    t0 = time.perf_counter()
    try:
        chains = [c for sub in subs for c in reference_chains(arm_url, cert_path, sub, clients)]
        chains += [listing_chain(a, clients) for a in accounts]
        run_chains(chains)
        return time.perf_counter() - t0
    finally:
        for c in clients:
            c.close()


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def _copy_db(src: Path, dst: Path) -> None:
    E.remove_db(dst)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{src}{suffix}"):
            shutil.copyfile(f"{src}{suffix}", f"{dst}{suffix}")


class Measured:
    """Times and request counts of one phase, at each delay."""

    def __init__(self) -> None:
        self.times: dict[float, list[float]] = {}
        self.storage: dict[float, list[Counter]] = {}
        self.arm: dict[float, list[Counter]] = {}

    def add(self, delay: float, seconds: float, storage: Counter, arm: Counter) -> None:
        self.times.setdefault(delay, []).append(seconds)
        self.storage.setdefault(delay, []).append(storage)
        self.arm.setdefault(delay, []).append(arm)

    def t(self, delay: float) -> float:
        return median(self.times.get(delay, []))

    def counts(self, delay: float) -> tuple[Counter, Counter]:
        """The last round's counts at this delay."""
        return self.storage[delay][-1], self.arm[delay][-1]

    def varying(self, delay: float) -> str:
        """The kinds whose counts differ between rounds at this delay: ``kind a/b/c``, one per round."""
        out = []
        for rounds in (self.storage[delay], self.arm[delay]):
            for kind in sorted({k for c in rounds for k in c}):
                values = [c.get(kind, 0) for c in rounds]
                if len(set(values)) > 1:
                    out.append(f"{kind} {'/'.join(map(str, values))}")
        return "; ".join(out)


def run(args: argparse.Namespace) -> Section:
    from sandbox import arm as armlib
    from sandbox.azurite import Azurite, free_port

    rtt = args.rtt_ms / 1000.0
    one_way = rtt / 2
    subs = list(SUBSCRIPTIONS[: max(1, min(args.subscriptions, len(SUBSCRIPTIONS)))])
    names = [f"{ACCOUNT_PREFIX}{i + 1}" for i in range(args.accounts)]
    orphans_n = sum(1 for i in range(args.blobs) if is_orphan(i, args.orphan_share))
    section = Section(
        f"latency: {args.rtt_ms:g} ms RTT, {args.accounts} accounts x {args.containers} containers, {args.blobs} VHDs "
        f"({orphans_n} orphaned), {len(subs)} subscriptions"
    )
    with E.tempdir("vhdgc-bench-latency-", keep=getattr(args, "keep", False)) as tmp:
        configure_vhdgc_logging(tmp / "vhd-gc.log")
        azurite = Azurite(names, tmp / "azurite")
        arm = proxy = control = None
        try:
            azurite.start()
            # The stand-in's links (nextLink, operations) name the proxy's address, as real ARM's name the
            # host it was called on: the proxy's port is chosen first, the stand-in told it.
            arm_port = free_port()
            arm_url = f"https://127.0.0.1:{arm_port}"
            arm = E.ArmProcess(armlib.empty_estate(*subs), args.arm_page_size, tmp, module="bench.latency_arm",
                               extra_args=("--advertise", arm_url)).start()
            control = ArmControl(arm.url, arm.cert_path)  # directly, not through the proxy
            proxy = ProxyProcess({"storage": ("127.0.0.1", azurite.port), "arm": ("127.0.0.1", urlsplit(arm.url).port)},
                                 http=["storage"], log_path=str(tmp / "proxy.stderr"), listen={"arm": arm_port}).start()
            os.environ["REQUESTS_CA_BUNDLE"] = arm.cert_path
            how = lower_emulator_priority([azurite.pid, arm.proc.pid, proxy.pid])
            section.add("emulators and the proxy", f"Azurite, the ARM stand-in, the latency proxy: {how}")
            proxy_vars = sorted(k for k in os.environ if k.lower() in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"))
            section.add("proxy variables in the environment", ", ".join(proxy_vars) or "none")

            direct = [E.Account(n, azurite.blob_endpoint(n), azurite.key(n)) for n in names]
            proxied = [E.Account(n, f"http://127.0.0.1:{proxy.ports['storage']}/{n}", azurite.key(n)) for n in names]
            seeded = plan_blobs(direct, args.blobs, args.containers, args.big_container)
            seen_as = plan_blobs(proxied, args.blobs, args.containers, args.big_container)  # the same, by the proxy's URL
            seed_s = E.seed_blobs(seeded)
            section.add("seeding (direct, not through the proxy)", f"{args.blobs} blobs in {seed_s:.1f} s")
            referenced = [b.url for i, b in enumerate(seen_as) if not is_orphan(i, args.orphan_share)]
            estate, held = build_arm_estate(args, subs, referenced, proxied)
            control.set_estate(estate)
            per = Counter((b.account.name, b.container) for b in seeded)
            section.add("estate", f"{args.accounts} accounts x {args.containers} containers, {args.blobs} VHDs "
                        f"(largest container {max(per.values())}, smallest {min(per.values())}; "
                        f"{orphans_n} orphaned, {len(referenced)} referenced); "
                        + ", ".join(f"{v} {k}" for k, v in held.items())
                        + f"; {len(subs)} subscriptions; ARM page size {args.arm_page_size}")
            by_name = {a.name: a for a in direct}

            overrides = E.parse_overrides(getattr(args, "set", []))
            base = {"azure": {"subscriptions": subs}}
            due_keys = {"grace_period": "0s", "min_sightings": 2}
            delete_keys = {**due_keys, "mode": "delete", "max_deletes_per_pass": args.deletes}

            def config(name: str, extra: dict[str, Any]) -> Path:
                merged = E._merge(E._merge({}, base), extra)  # noqa: SLF001 - the bench's own helper
                return E.write_config(tmp / f"{name}.yaml", tmp / f"{name}.db", arm_url, proxied,
                                      E._merge(merged, overrides))  # noqa: SLF001

            steady_cfg, first_cfg = config("steady", {}), config("first", {})
            template_cfg, delete_cfg = config("template", due_keys), config("delete", delete_keys)

            # Warm-up at delay 0: imports, connections, the steady database, and a template database in
            # which every orphan has been seen min_sightings times (each delete pass starts from a copy).
            proxy.set_delay(0.0)
            floor(arm_url, arm.cert_path, subs, proxied)
            warm_s, warm = E.run_pass(steady_cfg)
            note(f"warm-up first pass: {warm_s:.2f} s, blobs={warm.stats.blobs} marked={warm.stats.marked}")
            if warm.stats.blobs != args.blobs or warm.stats.marked != orphans_n:
                note(f"WARNING: expected {args.blobs} blobs and {orphans_n} marked")
            E.run_pass(steady_cfg)  # measures what the first left pending: the steady pass measures nothing
            for _ in range(2):
                E.run_pass(template_cfg)

            m = {p: Measured() for p in PHASES}
            deleted_counts: list[int] = []
            second_pending: list[int] = []
            due_counts: list[int] = []

            def measured(phase: str, delay: float, fn: Callable[[], Any]) -> Any:
                proxy.set_delay(delay)
                proxy.reset()
                control.clear_requests()
                t0 = time.perf_counter()
                out = fn()
                seconds = time.perf_counter() - t0
                if isinstance(out, tuple):  # run_pass: its own clock (run_pass only)
                    seconds, out = out
                storage = Counter(proxy.counts().get("storage", {}))
                arm_counts = Counter(arm_kind(meth, path) for meth, path in control.requests())
                m[phase].add(delay, seconds, storage, arm_counts)
                return seconds, out

            def restore(result: Any) -> None:
                """The blobs the delete pass deleted, made again (directly), and the steady and template
                databases brought up to date with them (new ETags: measured there, not in the next timed
                pass), at delay 0, outside every clock."""
                execution = result.execution
                gone = [E.SeededBlob(by_name[t.key.account], t.key.container, t.key.blob)
                        for t in (execution.deleted if execution else [])]
                if gone:
                    E.seed_blobs(gone, desc="re-seeding the deleted blobs")
                proxy.set_delay(0.0)
                E.run_pass(steady_cfg)
                E.run_pass(template_cfg)

            for r in range(args.rounds):
                order = (0.0, one_way) if r % 2 == 0 else (one_way, 0.0)
                for delay in order:
                    f_s, _ = measured("floor", delay, lambda: floor(arm_url, arm.cert_path, subs, proxied))
                    s_s, sres = measured("steady", delay, lambda: E.run_pass(steady_cfg))
                    E.remove_db(tmp / "first.db")
                    t_s, fres = measured("first", delay, lambda: E.run_pass(first_cfg))
                    # The pass after it (untimed as a phase: information) measures what the first left pending.
                    t2_s, sec = E.run_pass(first_cfg)
                    note(f"  {2000 * delay:g} ms RTT: first pass measured {fres.stats.billed_measured} billed bytes, "
                         f"left {fres.stats.billed_pending} pending; the second pass took {t2_s:.2f} s, "
                         f"measured {sec.stats.billed_measured}, left {sec.stats.billed_pending} pending")
                    second_pending.append(sec.stats.billed_pending)
                    _copy_db(tmp / "template.db", tmp / "delete.db")
                    d_s, dres = measured("delete", delay, lambda: E.run_pass(delete_cfg))
                    deleted_counts.append(dres.stats.deleted)
                    due_counts.append(dres.stats.due)
                    restore(dres)
                    note(f"round {r + 1}/{args.rounds}, {2000 * delay:g} ms RTT: floor {f_s:.2f} s, steady {s_s:.2f} s "
                         f"({sres.stats.changes} rows), first {t_s:.2f} s ({fres.stats.marked} marked), delete {d_s:.2f} s "
                         f"({dres.stats.deleted} deleted of {dres.stats.due} due)")

            _report(section, m, args, one_way, orphans_n, deleted_counts, due_counts)
            section.add("billed bytes pending after the second pass (each run)",
                        " / ".join(map(str, second_pending)) + (" (all measured)" if not any(second_pending) else ""))
        finally:
            for stop in (proxy, arm):
                if stop is not None:
                    stop.stop()
            if control is not None:
                control.close()
            azurite.stop()
    return section


def _total(c: Counter) -> int:
    return sum(c.values())


def _report(section: Section, m: dict[str, Measured], args: argparse.Namespace, one_way: float, orphans: int,
            deleted: list[int], due: list[int]) -> None:
    d = one_way
    label = f"{args.rtt_ms:g} ms"
    fl = m["floor"]
    for phase, title in (("floor", "floor (SDKs, every page chain in its own thread)"), ("steady", "steady pass"),
                         ("first", "first pass (fresh DB, measures billed bytes)"),
                         ("delete", f"delete pass ({args.deletes} deletions)")):
        x = m[phase]
        storage, arm = x.counts(d)
        section.add(title, f"0 ms {x.t(0.0):.2f} s | {label} {x.t(d):.2f} s | the delay adds {x.t(d) - x.t(0.0):.2f} s | "
                    f"requests: ARM {_total(arm)}, storage {_total(storage)}"
                    + (f" (the last round's; by round: {x.varying(d)})" if x.varying(d) else ""))
    for phase in PHASES:
        section.add(f"  all rounds, {phase} (s)",
                    f"0 ms {' '.join(f'{t:.2f}' for t in m[phase].times[0.0])}; "
                    f"{label} {' '.join(f'{t:.2f}' for t in m[phase].times[d])}")
    section.add("  delete passes: deleted / due", " ".join(f"{a}/{b}" for a, b in zip(deleted, due)))
    for delay, name in ((0.0, "0 ms"), (d, label)):
        f = fl.t(delay)
        st = m["steady"].t(delay)
        section.add(f"ratios at {name}", f"steady {fmt_ratio(st / f)} floor, first {fmt_ratio(m['first'].t(delay) / f)} floor, "
                    f"delete {fmt_ratio(m['delete'].t(delay) / st)} steady")
    section.extra.append(_requests_table(m, d, orphans, args.deletes))

    f, st, fi, de = fl.t(d), m["steady"].t(d), m["first"].t(d), m["delete"].t(d)
    section.target(f"steady / floor at {label}", fmt_ratio(st / f), f"<= {STEADY_LIMIT}x", st / f <= STEADY_LIMIT)
    section.target(f"first / floor at {label}", fmt_ratio(fi / f), f"<= {FIRST_LIMIT}x", fi / f <= FIRST_LIMIT)
    target_applies = args.deletes >= DELETE_TARGET_AT
    section.target(f"delete pass ({args.deletes} deletions) / steady at {label}", fmt_ratio(de / st),
                   f"< {DELETE_LIMIT}x" + ("" if target_applies else f" for {DELETE_TARGET_AT} deletions: info"),
                   (de / st < DELETE_LIMIT) if target_applies else None)
    for phase in ("steady", "first", "delete"):
        _, arm = m[phase].counts(d)
        section.target(f"ARM requests, {phase} pass", str(_total(arm)), f"floor: {_total(fl.counts(d)[1])}", None)


def _requests_table(m: dict[str, Measured], d: float, orphans: int, deletes: int) -> str:
    """Requests per kind and pass (the last round at the delay); the floor's are the minimum."""
    lines = [f"-- latency: requests per kind (the last round at the delay; the floor's count is the minimum; "
             f"a first pass must also measure {orphans} orphans, a delete pass delete {deletes}) --"]
    for system, idx in (("storage", 0), ("ARM", 1)):
        kinds = sorted({k for p in PHASES for k in m[p].counts(d)[idx]})
        w = max([len(k) for k in kinds] + [10])
        lines.append(f"  {system}:")
        lines.append(f"    {'kind'.ljust(w)}  " + "  ".join(p.rjust(7) for p in PHASES))
        for k in kinds:
            lines.append(f"    {k.ljust(w)}  " + "  ".join(str(m[p].counts(d)[idx].get(k, 0)).rjust(7) for p in PHASES))
        lines.append(f"    {'total'.ljust(w)}  " + "  ".join(str(_total(m[p].counts(d)[idx])).rjust(7) for p in PHASES))
    return "\n".join(lines)

