"""Container health check: exit 0 when vhd-gc's /healthz answers 200, 1 otherwise.

The slim image has no curl; this needs only the standard library. The URL comes from
VHD_GC_HEALTH_URL (default http://127.0.0.1:9465/healthz, which reaches a daemon whose
metrics_listen is 0.0.0.0:9465 or 127.0.0.1:9465).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9465/healthz"


def main() -> int:
    url = os.environ.get("VHD_GC_HEALTH_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - a fixed local URL
            body = response.read(2048).decode("utf-8", "replace").strip()
            status = response.status
    except urllib.error.HTTPError as exc:  # 503: no complete pass for three intervals
        body = exc.read(2048).decode("utf-8", "replace").strip()
        status = exc.code
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}")
        return 1
    print(f"{'healthy' if status == 200 else 'unhealthy'}: {status} {body}")
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
