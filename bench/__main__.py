"""python -m bench [azurite|million|concurrency|latency|all] [options] [--no-fail]

    python -m bench azurite [--blobs 20000 --refs 10000 --rounds 5]
    python -m bench million [--blobs 1000000 --refs 500000 --accounts 10]
    python -m bench concurrency [--blobs-per-account 10000]
    python -m bench latency [--rtt-ms 50 --rounds 3 --blobs 12000 --deletes 20]   (not in `all`: minutes)
    python -m bench all            (the default: what `make bench` runs: azurite, million, concurrency)

Prints a results table per part (ratios, throughput, peak MiB) and the targets of issue "Scale";
exits 1 if a target is missed, unless --no-fail. Progress and notes go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import azurite_bench, concurrency, latency, million
from bench.common import machine_info, render

PARTS = {"azurite": azurite_bench, "million": million, "concurrency": concurrency, "latency": latency}
# Run only when named: `all` stays what it was (the latency bench alone takes 10-15 minutes at its defaults).
NOT_IN_ALL = ("latency",)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-fail", action="store_true", help="report only: exit 0 even if a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the temporary directories (logs, databases)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a vhd-gc configuration key, e.g. --set azure.max_concurrency=4 (repeatable)")
    p.add_argument("--output", help="also write the printed report to this file")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part")
    for name, mod in PARTS.items():
        p = sub.add_parser(name, help=(mod.__doc__ or "").strip().split("\n")[0])
        mod.add_arguments(p)
        _common(p)
    p_all = sub.add_parser("all", help="every part with its defaults")
    p_all.add_argument("--rounds", type=int, default=None, help="rounds for azurite and concurrency")
    _common(p_all)
    if not argv:
        argv = ["all"]
    return parser.parse_args(argv)


def _defaults(name: str, base: argparse.Namespace) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    PARTS[name].add_arguments(p)
    ns = p.parse_args([])
    for k in ("no_fail", "keep", "set"):
        setattr(ns, k, getattr(base, k))
    if getattr(base, "rounds", None) and hasattr(ns, "rounds"):
        ns.rounds = base.rounds
    return ns


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    names = [n for n in PARTS if n not in NOT_IN_ALL] if args.part == "all" else [args.part]
    out: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        out.append(text)

    emit("== machine ==")
    for k, v in machine_info().items():
        emit(f"  {k}: {v}")
    emit(f"  command: python -m bench {' '.join(sys.argv[1:] if argv is None else argv)}")
    sections = []
    for name in names:
        ns = args if args.part != "all" else _defaults(name, args)
        t0 = time.perf_counter()
        section = PARTS[name].run(ns)
        section.add("(bench part wall time)", f"{time.perf_counter() - t0:.0f} s")
        sections.append(section)
        emit("")
        emit(render(section))
        for text in section.extra:
            emit(text)
    missed = [t for s in sections for t in s.targets if t.ok is False]
    emit("")
    emit("== summary ==")
    for s in sections:
        for t in s.targets:
            verdict = "info" if t.ok is None else ("PASS" if t.ok else "MISS")
            emit(f"  [{verdict}] {s.title.split(':')[0]}: {t.name}: {t.measured} (target {t.limit})")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write("\n".join(out) + "\n")
    if missed and not args.no_fail:
        emit(f"{len(missed)} target(s) missed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
