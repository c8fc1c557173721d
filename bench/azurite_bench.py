"""``python -m bench azurite``: steady-state and first passes against Azurite + the ARM stand-in,
side by side with the SDK-only floor, in alternating rounds."""

from __future__ import annotations

import argparse
import os

from bench import estate as E
from bench.common import (Section, configure_vhdgc_logging, fmt_ratio, fmt_s, lower_emulator_priority, median,
                          note)
from bench.profiling import profile_call, top

ACCOUNTS = ("benchacct1", "benchacct2")

STEADY_LIMIT = 1.15
FIRST_LIMIT = 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--blobs", type=int, default=20_000, help="VHD page blobs in Azurite (default 20000)")
    p.add_argument("--refs", type=int, default=10_000, help="references held by VMs (default 10000)")
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds of floor/steady/first (default 5)")
    p.add_argument("--containers", type=int, default=4, help="containers per account (default 4)")
    p.add_argument("--arm-page-size", type=int, default=50,
                   help="items per ARM list page (default 50: what VM list_all pages at in Azure)")
    p.add_argument("--arm-in-process", action="store_true",
                   help="run the ARM stand-in in this process (default: its own process, so it does not share our GIL)")
    p.add_argument("--no-profile", action="store_true", help="skip the cProfile runs")


def run(args: argparse.Namespace) -> Section:
    section = Section(f"azurite: {args.blobs} VHD page blobs in {len(ACCOUNTS)} accounts, {args.refs} references")
    refs = min(args.refs, args.blobs)
    from sandbox.azurite import Azurite

    with E.tempdir("vhdgc-bench-azurite-", keep=getattr(args, "keep", False)) as tmp:
        configure_vhdgc_logging(tmp / "vhd-gc.log")
        azurite = Azurite(list(ACCOUNTS), tmp / "azurite")
        arm = None
        try:
            azurite.start()
            accounts = [E.Account(a, azurite.blob_endpoint(a), azurite.key(a)) for a in ACCOUNTS]
            blobs = E.plan_blobs(accounts, args.blobs, args.containers)
            seed_s = E.seed_blobs(blobs)
            section.add("seeding", f"{args.blobs} blobs in {seed_s:.1f} s ({args.blobs / seed_s:,.0f} blobs/s, 2 requests each)")
            # Every other blob is referenced (by VMs, OS disk + one data disk each): the rest are orphans.
            referenced = [b.url for b in blobs[::2]][:refs]
            estate = E.build_compute_estate(referenced, refs_per_vm=2, accounts=accounts)
            vms = len(estate["subscriptions"][E.SUB]["virtualMachines"])
            arm_cls = E.ArmInProcess if args.arm_in_process else E.ArmProcess
            arm = arm_cls(estate, args.arm_page_size, tmp).start()
            os.environ["REQUESTS_CA_BUNDLE"] = arm.cert_path
            how = lower_emulator_priority([azurite.pid] + ([] if args.arm_in_process else [arm.proc.pid]))
            section.add("emulators", f"Azurite{'' if args.arm_in_process else ' and the ARM stand-in'}: {how}")
            section.add("estate", f"{vms} VMs holding {len(referenced)} references; ARM page size {args.arm_page_size}; "
                        f"ARM stand-in {'in-process' if args.arm_in_process else 'own process'}")
            overrides = E.parse_overrides(getattr(args, "set", []))
            steady_db, first_db = tmp / "steady.db", tmp / "first.db"
            steady_cfg = E.write_config(tmp / "steady.yaml", steady_db, arm.url, accounts, overrides)
            first_cfg = E.write_config(tmp / "first.yaml", first_db, arm.url, accounts, overrides)

            # Warm-up (imports, connections, schema) and the first pass the steady database needs.
            E.floor_sequential(arm.url, arm.cert_path, accounts)
            warm_s, warm = E.run_pass(steady_cfg)
            expected_orphans = args.blobs - len(referenced)
            note(f"warm-up first pass: {warm_s:.2f} s, stats blobs={warm.stats.blobs} marked={warm.stats.marked} "
                 f"changes={warm.stats.changes}")
            if warm.stats.blobs != args.blobs or warm.stats.marked != expected_orphans:
                note(f"WARNING: expected {args.blobs} blobs and {expected_orphans} marked")
            # The first pass leaves billed bytes pending (measured off its critical path); the next
            # pass measures them. The steady state is an estate where nothing changed or is pending.
            for _ in range(3):
                if not warm.stats.billed_pending:
                    break
                settle_s, warm = E.run_pass(steady_cfg)
                note(f"settling pass: {settle_s:.2f} s, measured {warm.stats.billed_measured}, "
                     f"changes {warm.stats.changes}, still pending {warm.stats.billed_pending}")

            floors, pfloors, steadies, firsts = [], [], [], []
            floor_refs, floor_blobs, steady_changes, first_marked = [], [], [], []
            for r in range(args.rounds):
                f = E.floor_sequential(arm.url, arm.cert_path, accounts)
                floors.append(f.total)
                floor_refs.append(f.refs)
                floor_blobs.append(f.blobs)
                pfloors.append(E.floor_parallel(arm.url, arm.cert_path, accounts))
                s, sres = E.run_pass(steady_cfg)
                steadies.append(s)
                steady_changes.append(sres.stats.changes)
                E.remove_db(first_db)
                t, fres = E.run_pass(first_cfg)
                firsts.append(t)
                first_marked.append(fres.stats.marked)
                note(f"round {r + 1}/{args.rounds}: floor {f.total:.3f} s (refs {f.refs:.3f} + blobs {f.blobs:.3f}), "
                     f"parallel floor {pfloors[-1]:.3f} s, steady {s:.3f} s ({sres.stats.changes} rows), "
                     f"first {t:.3f} s ({fres.stats.marked} marked)")

            fl, st, fi = median(floors), median(steadies), median(firsts)
            section.add("floor (SDK only: refs, then accounts in turn)",
                        f"{fmt_s(fl)} median  [refs {median(floor_refs):.3f} s + blobs {median(floor_blobs):.3f} s]  "
                        f"{args.blobs / fl:,.0f} blobs/s")
            section.add("floor, everything in parallel threads (info)", f"{fmt_s(median(pfloors))} median")
            section.add("steady-state pass", f"{fmt_s(st)} median  {args.blobs / st:,.0f} blobs/s  "
                        f"rows written {sorted(set(steady_changes))}")
            section.add("first pass (fresh DB, measures billed bytes)", f"{fmt_s(fi)} median  {args.blobs / fi:,.0f} blobs/s  "
                        f"marked {sorted(set(first_marked))}")
            section.add("all rounds (s)", f"floor {_fmt_list(floors)}; steady {_fmt_list(steadies)}; first {_fmt_list(firsts)}")
            ref_set = set(referenced)
            orphans = [b for b in blobs if b.url not in ref_set]
            measure_s = E.sdk_measure(orphans)
            section.add("SDK only: list_page_ranges of the orphans, 8 threads (info)",
                        f"{measure_s:.3f} s for {len(orphans)} blobs ({len(orphans) / measure_s:,.0f}/s); "
                        f"floor + this = {fl + measure_s:.3f} s = {fmt_ratio((fl + measure_s) / fl)} floor")
            lean_list_s = E.lean_list_accounts(accounts)
            lean_measure_s = E.lean_measure(orphans)
            section.add("vhd-gc's reader alone (info): listing every account in turn",
                        f"{lean_list_s:.3f} s ({args.blobs / lean_list_s:,.0f} blobs/s; the SDK floor's listing: "
                        f"{median(floor_blobs):.3f} s)")
            section.add("vhd-gc's reader alone (info): billed bytes of the orphans, 8 threads",
                        f"{lean_measure_s:.3f} s ({len(orphans) / lean_measure_s:,.0f}/s; the SDK: "
                        f"{len(orphans) / measure_s:,.0f}/s)")
            section.target("steady / floor", fmt_ratio(st / fl), f"<= {STEADY_LIMIT}x", st / fl <= STEADY_LIMIT)
            section.target("first / floor", fmt_ratio(fi / fl), f"<= {FIRST_LIMIT}x", fi / fl <= FIRST_LIMIT)
            section.target("steady-state pass writes no rows", str(max(steady_changes)), "0", max(steady_changes) == 0)

            # Where the time goes: timing proxies around the sources, then cProfile (main thread).
            sink: dict[str, float] = {}
            s, _ = E.run_pass(steady_cfg, wrap=E.instrument(sink))
            section.extra.append("-- azurite steady-state pass, phase breakdown (timing proxies around the sources) --")
            section.extra.extend(E.breakdown_lines(sink, s))
            sink = {}
            E.remove_db(first_db)
            s, _ = E.run_pass(first_cfg, wrap=E.instrument(sink))
            section.extra.append("-- azurite first pass, phase breakdown --")
            section.extra.extend(E.breakdown_lines(sink, s))
            if not args.no_profile:
                (_, _), prof = profile_call(lambda: E.run_pass(steady_cfg))
                section.extra.append(
                    "-- cProfile, azurite steady-state pass (in the main thread, reference reads and billed-bytes "
                    "measuring in pool threads show up as lock waits; see the merged table for them) --"
                )
                section.extra.append(top(prof))
                E.remove_db(first_db)
                (_, _), prof = profile_call(lambda: E.run_pass(first_cfg))
                section.extra.append("-- cProfile, azurite first pass --")
                section.extra.append(top(prof))
        finally:
            if arm is not None:
                arm.stop()
            azurite.stop()
    return section


def _fmt_list(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)
