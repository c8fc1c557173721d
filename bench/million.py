"""``python -m bench million``: one million blobs and 500,000 references through Collector.run_pass
with in-process sources (no HTTP), each pass in a fresh subprocess so its peak RSS is its own.

The worker (``python -m bench.million --worker ...``) builds the references before the clock starts
(a real pass would have them from ARM); the blobs are generated lazily inside ``list_blobs``, so the
pass time includes making 1M BlobSeen objects (reported separately as the "source-only" time).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, Section, note

CONTAINER = "vhds"
SIZE = 128 * 1024**3
BILLED = 4096
LAST_MODIFIED = datetime(2024, 1, 1, tzinfo=UTC)
THROUGHPUT_LIMIT = 200_000
RSS_LIMIT_MIB = 512


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blobs", type=int, default=1_000_000, help="blobs in all (default 1000000)")
    p.add_argument("--refs", type=int, default=500_000, help="references (default 500000)")
    p.add_argument("--accounts", type=int, default=10, help="accounts the blobs are spread over (default 10)")
    p.add_argument("--changed", type=int, default=1000,
                   help="orphans whose ETag changes in the last pass, to show rows written == what changed (default 1000)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile run of the steady-state pass")
    p.add_argument("--profile-first", action="store_true", help="also cProfile a first pass (slow)")
    p.add_argument("--tracemalloc", action="store_true", help="also report tracemalloc peaks (slows the passes)")


# --------------------------------------------------------------------------------------------------
# In-process sources
# --------------------------------------------------------------------------------------------------


def account_name(i: int) -> str:
    return f"acct{i}"


def blob_name(j: int) -> str:
    return f"disk{j:07d}.vhd"


class MemReferences:
    def __init__(self, read: Any) -> None:
        self._read = read

    def read(self):
        return self._read


def build_references(n_refs: int, n_accounts: int, per_account: int):
    """``n_refs`` VM OS-disk references, to the even-numbered blobs of each account in turn."""
    from gc_daemon.sources.base import ReferenceRead
    from gc_daemon.domain import RawReference, RefKind

    refs = []
    kind = RefKind.VM_OS_DISK
    for k in range(n_refs):
        i, j = k % n_accounts, 2 * (k // n_accounts)
        if j >= per_account:
            break
        acct = account_name(i)
        refs.append(RawReference(
            kind=kind,
            holder=f"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg{i}/providers/"
                   f"Microsoft.Compute/virtualMachines/vm-{i}-{j}",
            uri=f"https://{acct}.blob.core.windows.net/{CONTAINER}/{blob_name(j)}",
        ))  # fmt: skip
    return ReferenceRead(references=refs, counts={"sub/virtualMachines": len(refs)})


class MemAccount:
    """One account's blobs, generated lazily; ETag and last-modified fixed per blob."""

    def __init__(self, index: int, n: int, changed: int = 0) -> None:
        self.index = index
        self.name = account_name(index)
        self.n = n
        self.changed = changed  # the first `changed` orphans (odd j) of this account get a new ETag

    def list_blobs(self):
        """One new BlobSeen (and BlobKey, name, URL and ETag strings) per blob, made as it is listed;
        what every blob shares (account, container, type, size, instant, lease) is made once."""
        from gc_daemon.domain import BlobKey, BlobSeen

        acct, i, changed = self.name, self.index, self.changed
        base = f"https://{acct}.blob.core.windows.net/{CONTAINER}/"
        etag_head, changed_head = f'"0x8D{i:02X}', f'"0x9E{i:02X}'
        new_key = tuple.__new__  # BlobKey(acct, CONTAINER, name) without the NamedTuple's Python frame
        for j in range(self.n):
            name = f"disk{j:07d}.vhd"  # blob_name(j)
            head = changed_head if changed and j % 2 == 1 and j // 2 < changed else etag_head
            yield BlobSeen(new_key(BlobKey, (acct, CONTAINER, name)), base + name, "PageBlob", SIZE,
                           f"{head}{j:010X}\"", LAST_MODIFIED, "available", "unlocked")

    def billed_bytes(self, key) -> int:
        return BILLED

    def read_blob(self, key):
        raise AssertionError("dry-run never re-reads a blob")

    def delete_if_match(self, key, etag):
        raise AssertionError("dry-run never deletes")


def make_config(db_path: Path, n_accounts: int, overrides: dict[str, Any] | None = None):
    from gc_daemon.config import parse_config

    from bench.estate import _merge, bench_policy_keys

    data: dict[str, Any] = {
        "database_url": f"sqlite:///{db_path}",
        "mode": "dry-run",
        "min_age": "0s",
        "log_level": "warning",
        "azure": {
            "credential": "default",  # never built: the sources are in-process
            "subscriptions": ["00000000-0000-0000-0000-000000000001"],
            "storage_accounts": [{"name": account_name(i)} for i in range(n_accounts)],
        },
    }
    _merge(data, bench_policy_keys())
    _merge(data, overrides or {})
    return parse_config(data)


# --------------------------------------------------------------------------------------------------
# Worker: one pass in this (fresh) process
# --------------------------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set of this process image. Not ru_maxrss: Linux carries that across execve
    from the forked parent, so a worker started by a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.million --worker")
    p.add_argument("--db", required=True)
    p.add_argument("--blobs", type=int, required=True)
    p.add_argument("--refs", type=int, required=True)
    p.add_argument("--accounts", type=int, required=True)
    p.add_argument("--changed", type=int, default=0)
    p.add_argument("--phase", choices=["pass", "source"], default="pass")
    p.add_argument("--profile", help="write cProfile top entries to this file")
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--overrides", default="{}")
    p.add_argument("--log", default=os.devnull)
    args = p.parse_args(argv)

    from bench.common import configure_vhdgc_logging

    configure_vhdgc_logging(Path(args.log))
    per = args.blobs // args.accounts
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    read = build_references(args.refs, args.accounts, per)
    out["refs_build_s"] = time.perf_counter() - t0
    accounts = {account_name(i): MemAccount(i, per, args.changed if i == 0 else 0) for i in range(args.accounts)}
    out["rss_before_mib"] = peak_rss_mib()

    if args.phase == "source":
        t0 = time.perf_counter()
        n = sum(1 for a in accounts.values() for _ in a.list_blobs())
        out["source_s"] = time.perf_counter() - t0
        out["blobs"] = n
        t0 = time.perf_counter()
        from gc_daemon.decide import ReferenceIndex

        index, errors = ReferenceIndex.build(read.references)
        out["index_build_s"] = time.perf_counter() - t0
        out["index_len"] = len(index)
        print("RESULT " + json.dumps(out), flush=True)
        return 0

    from gc_daemon.passes import Collector
    from gc_daemon.wiring import open_store

    config = make_config(Path(args.db), args.accounts, json.loads(args.overrides))
    # The configuration's own log level (warning): at info, a first pass writes one JSON line per
    # newly marked blob, 500,000 here, which is the logging's cost, not the decision's.
    from gc_daemon.wiring import configure_logging

    configure_logging(config, stream=open(args.log, "a", encoding="utf-8"))  # noqa: SIM115
    t0 = time.perf_counter()
    store = open_store(config)
    out["open_store_s"] = time.perf_counter() - t0
    collector = Collector(config=config, store=store, references=MemReferences(read), accounts=accounts)

    gc_time = [0.0, 0]
    gc_start = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_time[0] += time.perf_counter() - gc_start[0]
            gc_time[1] += 1

    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    gc.callbacks.append(on_gc)
    profiles = None
    t0 = time.perf_counter()
    if args.profile:
        from bench.profiling import profile_call

        result, profiles = profile_call(collector.run_pass)
    else:
        result = collector.run_pass()
    elapsed = time.perf_counter() - t0
    gc.callbacks.remove(on_gc)
    if args.tracemalloc:
        import tracemalloc

        out["tracemalloc_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    out["pass_s"] = elapsed
    # The WAL checkpoint that follows a pass's commit runs on its own thread after run_pass
    # returned (gc_daemon.state.store.Store.transaction): waited for here, outside the clock, and
    # reported, so that nothing of the pass's database work goes unseen.
    t0 = time.perf_counter()
    store.settle()
    out["checkpoint_s"] = time.perf_counter() - t0
    out["gc_s"], out["gc_collections"] = gc_time
    out["outcome"] = result.outcome
    out["errors"] = result.errors
    s = result.stats
    out["stats"] = {k: getattr(s, k) for k in ("blobs", "vhds", "references", "changes", "marked", "due", "released", "kept", "vanished",
                                                   "billed_measured", "billed_pending")}
    out["peak_rss_mib"] = peak_rss_mib()
    with store.engine.connect() as conn:
        out["tracked_rows"] = conn.exec_driver_sql("select count(*) from tracked_blobs").scalar_one()
    store.engine.dispose()
    if profiles is not None:
        from bench.profiling import top

        Path(args.profile).write_text(top(profiles))
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------------------------------
# Parent
# --------------------------------------------------------------------------------------------------


def _spawn(args: argparse.Namespace, db: Path, tmp: Path, *, changed: int = 0, phase: str = "pass",
           profile: Path | None = None) -> dict[str, Any]:  # fmt: skip
    from bench.estate import parse_overrides

    cmd = [sys.executable, "-m", "bench.million", "--worker", "--db", str(db), "--blobs", str(args.blobs),
           "--refs", str(args.refs), "--accounts", str(args.accounts), "--changed", str(changed),
           "--phase", phase, "--overrides", json.dumps(parse_overrides(getattr(args, "set", []))),
           "--log", str(tmp / "vhd-gc.log")]  # fmt: skip
    if profile is not None:
        cmd += ["--profile", str(profile)]
    if args.tracemalloc:
        cmd.append("--tracemalloc")
    proc = subprocess.run(cmd, cwd=str(REPO_ROOT), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"million worker failed ({proc.returncode}): {proc.stderr[-3000:]}")


def run(args: argparse.Namespace) -> Section:
    from bench.estate import remove_db, tempdir

    n = args.blobs
    section = Section(f"million: {n} blobs in {args.accounts} accounts, {args.refs} references, in-process sources")
    with tempdir("vhdgc-bench-million-", keep=getattr(args, "keep", False)) as tmp:
        db = tmp / "state.db"
        src = _spawn(args, db, tmp, phase="source")
        note(f"source only: {src}")
        section.add(f"source only (generate {n:,} BlobSeen)", f"{src['source_s']:.3f} s  ({n / src['source_s']:,.0f} blobs/s)")
        section.add(f"ReferenceIndex.build ({args.refs:,} refs, inside the pass)", f"{src['index_build_s']:.3f} s")
        section.add("building the RawReferences (before the clock)", f"{src['refs_build_s']:.3f} s; "
                    f"RSS after: {src['rss_before_mib']:.0f} MiB")

        runs: list[tuple[str, dict[str, Any]]] = []
        settles: list[tuple[str, dict[str, Any]]] = []
        remove_db(db)
        first = _spawn(args, db, tmp)
        note(f"first pass: {_brief(first)}")
        runs.append(("first pass (fresh DB)", first))
        # A first pass writes most candidates with their billed bytes pending (gc_daemon/measure.py:
        # measuring is off the critical path, at most billed_bytes.max_requests_per_second per
        # account); the next pass measures them from its start and waits for them in full. The
        # steady state is what follows: an estate where nothing changed and nothing is pending.
        settle = first
        for i in range(3):
            if not settle["stats"].get("billed_pending"):
                break
            settle = _spawn(args, db, tmp)
            note(f"pass {i + 2} (measures the pending billed bytes): {_brief(settle)}, "
                 f"still pending {settle['stats'].get('billed_pending')}")
            settles.append((f"pass {i + 2}: measures what was pending (info)", settle))
        steady = _spawn(args, db, tmp)
        note(f"steady-state pass: {_brief(steady)}")
        runs.append(("steady-state pass", steady))
        prof_text = None
        if not args.no_profile:
            pfile = tmp / "steady.prof.txt"
            profiled = _spawn(args, db, tmp, profile=pfile)
            note(f"steady-state pass under cProfile: {_brief(profiled)}")
            prof_text = pfile.read_text()
        changed = None
        if args.changed:
            changed = _spawn(args, db, tmp, changed=args.changed)
            note(f"pass with {args.changed} changed orphans: {_brief(changed)}")
            runs.append((f"pass with {args.changed} orphans changed (new ETag)", changed))

        for label, r in runs[:1] + settles + runs[1:]:
            extra = f"  tracemalloc peak {r['tracemalloc_peak_mib']:.0f} MiB" if "tracemalloc_peak_mib" in r else ""
            section.add(label, f"{r['pass_s']:.3f} s  {n / r['pass_s']:,.0f} blobs/s  rows written {r['stats']['changes']}  "
                        f"peak RSS {r['peak_rss_mib']:.0f} MiB (before pass {r['rss_before_mib']:.0f}){extra}  "
                        f"GC {r['gc_s']:.2f} s/{r['gc_collections']}  marked {r['stats']['marked']}  "
                        f"billed bytes measured {r['stats'].get('billed_measured', 0)}, pending {r['stats'].get('billed_pending', 0)}  "
                        f"tracked rows {r['tracked_rows']}  then WAL checkpoint {r['checkpoint_s']:.2f} s (background)")
        for label, r in runs[:2]:
            rate = n / r["pass_s"]
            section.target(f"{label}: blobs/s", f"{rate:,.0f}", f">= {THROUGHPUT_LIMIT:,}", rate >= THROUGHPUT_LIMIT)
            section.target(f"{label}: peak RSS", f"{r['peak_rss_mib']:.0f} MiB", f"< {RSS_LIMIT_MIB} MiB",
                           r["peak_rss_mib"] < RSS_LIMIT_MIB)
        section.target("steady-state pass: rows written", str(steady["stats"]["changes"]), "0",
                       steady["stats"]["changes"] == 0)
        if changed is not None:
            section.target(f"pass with {args.changed} changed: rows written", str(changed["stats"]["changes"]),
                           f"== {args.changed}", changed["stats"]["changes"] == args.changed)
        if prof_text:
            section.extra.append(f"-- cProfile, {n:,}-blob in-process steady-state pass --")
            section.extra.append(prof_text)
        if args.profile_first:
            remove_db(db)
            pfile = tmp / "first.prof.txt"
            profiled = _spawn(args, db, tmp, profile=pfile)
            note(f"first pass under cProfile: {_brief(profiled)}")
            section.extra.append(f"-- cProfile, {n:,}-blob in-process first pass --")
            section.extra.append(pfile.read_text())
    return section


def _brief(r: dict[str, Any]) -> str:
    return (f"{r['pass_s']:.2f} s, outcome {r['outcome']}, changes {r['stats']['changes']}, "
            f"peak RSS {r['peak_rss_mib']:.0f} MiB, GC {r['gc_s']:.2f} s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2:]))
    sys.exit("use: python -m bench million")
