"""``python -m bench concurrency``: two Azurite processes (one account each). Does a pass over both
accounts cost about the slowest one (accounts listed concurrently), or their sum (one after the other)?

The emulators run below the measured process (``EMULATOR_NICE``), as remote services' CPU would be:
with two cores, both Azurites busy at once and the pass's own thread want three. The passes are also
timed with the emulators at equal priority, side by side in every round, and printed for information."""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

from bench import estate as E
from bench.common import (Section, configure_vhdgc_logging, fmt_ratio, lower_emulator_priority, median, note,
                          set_emulator_priority)

LIMIT = 1.25  # both accounts / the slowest single account


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blobs-per-account", type=int, default=10_000, help="VHD page blobs per account (default 10000)")
    p.add_argument("--rounds", type=int, default=5, help="rounds (default 5: per-round ratios spread by 0.1-0.2)")
    p.add_argument("--arm-page-size", type=int, default=50)


def run(args: argparse.Namespace) -> Section:
    from sandbox.azurite import Azurite

    n = args.blobs_per_account
    section = Section(f"concurrency: 2 Azurite processes, 1 account each, {n} VHDs per account")
    with E.tempdir("vhdgc-bench-conc-", keep=getattr(args, "keep", False)) as tmp:
        configure_vhdgc_logging(tmp / "vhd-gc.log")
        servers = [Azurite(["concacct1"], tmp / "azurite1"), Azurite(["concacct2"], tmp / "azurite2")]
        arm = None
        try:
            for s in servers:
                s.start()
            accounts = [E.Account(s.accounts[0], s.blob_endpoint(s.accounts[0]), s.key(s.accounts[0])) for s in servers]
            plans = [E.plan_blobs([a], n, 4) for a in accounts]
            # Both servers are seeded at once (each is one node process).
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(lambda p: E.seed_blobs(p, desc=f"seeding {p[0].account.name}"), plans))
            section.add("seeding", f"{2 * n} blobs in {time.perf_counter() - t0:.1f} s")
            referenced = [b.url for p in plans for b in p[::2]]
            arm = E.ArmProcess(E.build_compute_estate(referenced, accounts=accounts), args.arm_page_size, tmp).start()
            os.environ["REQUESTS_CA_BUNDLE"] = arm.cert_path
            emulators = [s.pid for s in servers] + [arm.proc.pid]
            how = lower_emulator_priority(emulators)
            lowered = not how.startswith("equal")
            section.add("emulators (2 Azurites, ARM stand-in)",
                        how + (" (equal priority: 0, in the info rows)" if lowered else ""))
            overrides = E.parse_overrides(getattr(args, "set", []))
            cfgs = {
                "concacct1": E.write_config(tmp / "a1.yaml", tmp / "a1.db", arm.url, accounts[:1], overrides),
                "concacct2": E.write_config(tmp / "a2.yaml", tmp / "a2.db", arm.url, accounts[1:], overrides),
                "both": E.write_config(tmp / "both.yaml", tmp / "both.db", arm.url, accounts, overrides),
            }
            for name, cfg in cfgs.items():  # first passes: what follows is steady state
                s, r = E.run_pass(cfg)
                note(f"first pass over {name}: {s:.2f} s ({r.stats.blobs} blobs, {r.stats.marked} marked)")
            E.sdk_list_account(accounts[0])

            keys = ("refs", "sdk1", "sdk2", "sdk_both_seq", "sdk_both_par", "pass1", "pass2", "pass_both",
                    "eq1", "eq2", "eq_both")
            t: dict[str, list[float]] = {k: [] for k in keys}
            # Also at equal priority, side by side, while the emulators can be given it back (without
            # autogroup, raising a process's priority needs root).
            equal = lowered
            for r in range(args.rounds):
                if equal:
                    try:
                        for pid in emulators:
                            set_emulator_priority(pid, 0)
                    except OSError:
                        equal = False
                if equal:
                    for key, cfg in (("eq1", "concacct1"), ("eq2", "concacct2"), ("eq_both", "both")):
                        t[key].append(E.run_pass(cfgs[cfg])[0])
                    lower_emulator_priority(emulators)
                t0 = time.perf_counter()
                E.sdk_list_references(arm.url, arm.cert_path)
                t["refs"].append(time.perf_counter() - t0)
                for i, a in enumerate(accounts, 1):
                    t0 = time.perf_counter()
                    E.sdk_list_account(a)
                    t[f"sdk{i}"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for a in accounts:
                    E.sdk_list_account(a)
                t["sdk_both_seq"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                with ThreadPoolExecutor(max_workers=2) as pool:
                    list(pool.map(E.sdk_list_account, accounts))
                t["sdk_both_par"].append(time.perf_counter() - t0)
                t["pass1"].append(E.run_pass(cfgs["concacct1"])[0])
                t["pass2"].append(E.run_pass(cfgs["concacct2"])[0])
                t["pass_both"].append(E.run_pass(cfgs["both"])[0])
                note(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in t.items() if v))
            m = {k: median(v) for k, v in t.items()}
            section.add("SDK listing, account 1 alone", f"{m['sdk1']:.3f} s")
            section.add("SDK listing, account 2 alone", f"{m['sdk2']:.3f} s")
            section.add("SDK listing, both one after the other", f"{m['sdk_both_seq']:.3f} s")
            section.add("SDK listing, both in 2 threads", f"{m['sdk_both_par']:.3f} s  "
                        f"({fmt_ratio(m['sdk_both_par'] / max(m['sdk1'], m['sdk2']))} the slowest alone)")
            section.add("steady pass, account 1 only", f"{m['pass1']:.3f} s")
            section.add("steady pass, account 2 only", f"{m['pass2']:.3f} s")
            section.add("steady pass, both accounts", f"{m['pass_both']:.3f} s")
            section.add("SDK reference read (in every pass above)", f"{m['refs']:.3f} s")
            for cfg, label in (("concacct1", "account 1"), ("both", "both accounts")):
                ends: dict[str, float] = {}
                total, _ = E.run_pass(cfgs[cfg], wrap=E.mark_ends(ends))
                start = ends.pop("start")
                refs_end = ends.pop("references") - start
                listed = ", ".join(f"{name} {end - start:.2f} s" for name, end in sorted(ends.items()))
                section.add(f"one more steady pass, {label} (info)",
                            f"listed: {listed}; references read: {refs_end:.2f} s; pass: {total:.2f} s "
                            f"(ends, from the start of the first source)")
            if t["eq_both"]:
                eq_ratio = m["eq_both"] / max(m["eq1"], m["eq2"])
                section.add("steady passes, emulators at equal priority (info)",
                            f"account 1 {m['eq1']:.3f} s, account 2 {m['eq2']:.3f} s, both {m['eq_both']:.3f} s "
                            f"= {fmt_ratio(eq_ratio)} the slowest")
            else:
                section.add("steady passes, emulators at equal priority (info)",
                            "the rows above" if not lowered else
                            "not measured: without autogroup only root can raise the emulators' priority again")
            slowest = max(m["pass1"], m["pass2"])
            ratio = m["pass_both"] / slowest
            section.target("pass(both) / slowest single-account pass", fmt_ratio(ratio), f"<= {LIMIT}x (2.0x = sequential)",
                           ratio <= LIMIT)
        finally:
            if arm is not None:
                arm.stop()
            for s in servers:
                s.stop()
    return section
