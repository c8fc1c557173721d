"""`make report-screenshot`: docs/report.png, the page `vhd-gc report --format html` writes, for the
demo's estate (sandbox/demo.py: Azurite, the ARM stand-in, real vhd-gc processes) after its first
dry-run pass, rendered by headless Chromium (sandbox/chromium.py).

    python -m sandbox.screenshot [PNG] [--html FILE] [--grace 7d] [--height 1380]

Nothing is left running, and the demo's temporary directory is removed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sandbox import chromium
from sandbox.demo import Demo, header, parse_seconds, say


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("png", nargs="?", default="docs/report.png", type=Path, help="where the PNG goes")
    parser.add_argument("--html", type=Path, default=None, help="keep the page there too")
    parser.add_argument("--grace", type=parse_seconds, default=7 * 86400.0, metavar="DURATION",
                        help="grace_period of the estate (default 7d: the due list shows a week ahead)")
    parser.add_argument("--min-age", type=parse_seconds, default=5.0, metavar="DURATION", help="min_age (default 5s)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1380)
    args = parser.parse_args(argv)
    if chromium.find() is None:
        say("chromium is not installed (Debian: apt-get install chromium)")
        return 2
    demo = Demo(argparse.Namespace(keep=False, min_age=args.min_age, grace=args.grace))
    try:
        demo.start()
        demo.seed_estate()
        demo.wait_for_min_age()
        header("4. One dry-run pass, then the page")
        demo.vhd_gc("scan")
        proc = demo.vhd_gc("report", "--format", "html", show=False)
        if demo.failures:
            for f in demo.failures:
                say(f"   - {f}")
            return 1
        page = args.html or demo.tmp / "report.html"
        page.write_text(proc.stdout, encoding="ascii")
        _, requests = chromium.render(page, screenshot=args.png, size=(args.width, args.height))
        if requests:
            say(f"   the page requested {requests}: it must fetch nothing")
            return 1
        say(f"   {args.png}: {args.width}x{args.height}" + (f"; the page is {page}" if args.html else ""))
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
