"""The ARM stand-in for ``python -m bench latency``: ``python -m sandbox.arm``, except that the links it
hands out (a list's ``nextLink``, a long-running operation's ``Azure-AsyncOperation`` and ``Location``)
name the address its clients use, the latency proxy's, as real ARM's name the host it was called on.

    python -m bench.latency_arm --port 0 --cert-dir DIR --estate FILE --page-size N --advertise https://127.0.0.1:PORT

prints ``READY <its own address> CERT_PATH`` (the control surface is reached there, not through the
proxy) and serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from sandbox.arm import ArmStandIn


class AdvertisedArmStandIn(ArmStandIn):
    """An ArmStandIn whose ``url`` (what its links are built on) is ``advertised``."""

    def __init__(self, *args, advertised: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.advertised = advertised.rstrip("/")

    @property
    def direct_url(self) -> str:
        return ArmStandIn.url.fget(self)  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return self.advertised


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_arm", description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cert-dir", required=True)
    parser.add_argument("--estate")
    parser.add_argument("--page-size", type=int, default=2)
    parser.add_argument("--advertise", required=True, help="the address the links name (the proxy's)")
    args = parser.parse_args(argv)
    estate = None
    if args.estate:
        with open(args.estate, encoding="utf-8") as fh:
            estate = json.load(fh)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    standin = AdvertisedArmStandIn(estate, page_size=args.page_size, cert_dir=args.cert_dir, port=args.port,
                                   advertised=args.advertise)
    standin.start()
    try:
        print(f"READY {standin.direct_url} {standin.cert_path}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
