"""Headless Chromium (Debian's ``chromium`` package) for the HTML report: the DOM it renders, a
screenshot, and the network requests a page made.

Chromium runs with a fresh profile, no sandbox (containers, root) and every request sent to a proxy
on a closed loopback port, so nothing a page asks for can leave the machine. Its net log tells a
page's requests (initiated by the page's origin: ``null`` for a ``file://`` page) from Chromium's own
background ones (``not an origin``: time, sign-in, spelling dictionaries), which the proxy refuses too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

CLOSED_PROXY = "http://127.0.0.1:9"  # the discard port: nobody listens
TIMEOUT = 120


def find() -> str | None:
    """The chromium binary, or None when the package is not installed."""
    return shutil.which("chromium")


def _run(args: list[str], url: str, profile: Path) -> subprocess.CompletedProcess:
    binary = find()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    cmd = [binary, "--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--hide-scrollbars", "--force-device-scale-factor=1", f"--proxy-server={CLOSED_PROXY}", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


def render(page: Path, *, screenshot: Path | None = None, size: tuple[int, int] = (1280, 1600),
           pdf: Path | None = None) -> tuple[str, list[str]]:
    """Load ``page`` (a file) in headless Chromium: (the DOM it rendered, the URLs the page itself
    requested). With ``screenshot``, a PNG of the window (``size``: width, height) is written there too;
    with ``pdf``, the page as printed (print media)."""
    with tempfile.TemporaryDirectory(prefix="vhdgc-chromium-") as tmp:
        netlog = Path(tmp) / "net.json"
        args = [f"--log-net-log={netlog}", f"--window-size={size[0]},{size[1]}", "--dump-dom"]
        dom = _run(args, page.resolve().as_uri(), Path(tmp) / "profile").stdout
        requests = page_requests(netlog)
        if screenshot is not None:
            _run([f"--window-size={size[0]},{size[1]}", f"--screenshot={screenshot.resolve()}"],
                 page.resolve().as_uri(), Path(tmp) / "profile2")
            if not screenshot.exists():
                raise RuntimeError("chromium wrote no screenshot")
        if pdf is not None:
            _run(["--no-pdf-header-footer", f"--print-to-pdf={pdf.resolve()}"], page.resolve().as_uri(),
                 Path(tmp) / "profile3")
            if not pdf.exists():
                raise RuntimeError("chromium wrote no PDF")
    return dom, requests


def page_requests(netlog: Path) -> list[str]:
    """The URLs of the requests a page initiated (any initiator but ``not an origin``), in order."""
    text = netlog.read_text(encoding="utf-8", errors="replace").rstrip()
    if not text.endswith("}"):  # a log cut short at exit: close its event list
        text = text.rstrip(",") + "]}"
    data = json.loads(text)
    start_job = data["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for event in data.get("events", []):
        params = event.get("params") or {}
        if event.get("type") == start_job and "url" in params and params.get("initiator") != "not an origin":
            urls.append(params["url"])
    return urls
