"""The `scan` status line is never wider than the terminal: abbreviated, then cut, to its width less
one column; checked on the line itself and, as a person sees it, in tmux at 80 columns."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from gc_daemon.domain import PassStats
from gc_daemon.progress import PassProgress, fit

REPO = Path(__file__).parent.parent


class _Measurer:
    queued, measured = 12_345, 6_789


def _busy_progress(out: io.StringIO, columns: int) -> PassProgress:
    progress = PassProgress(out, interval=0, tty=True, clock=lambda: 1234.0, columns=lambda: columns)
    stats = PassStats()
    progress.attach(stats, 12)
    progress.measuring(_Measurer())
    progress.phase("pass 123456: listing and deciding")
    stats.references = 1_234_567
    stats.blobs_by_account.update({f"a{i}": 0 for i in range(11)})
    stats.blobs, stats.vhds = 9_876_543, 8_765_432
    stats.new_candidates, stats.released, stats.kept, stats.due = 123_456, 7_890, 4_567, 98_765
    stats.deleted, stats.refused = 1_000, 12
    return progress


@pytest.mark.parametrize("columns", [300, 200, 120, 100, 80, 60, 40, 20, 8, 2, 1])
def test_the_line_fits_any_terminal_width(columns):
    out = io.StringIO()
    progress = _busy_progress(out, columns)
    with progress:
        progress._draw()
    drawn = [chunk.rstrip("\n") for chunk in out.getvalue().split("\r") if chunk]
    assert len(drawn) == 2
    for text in drawn:
        assert len(text) <= max(1, columns - 1), (columns, text)
    full = progress.line()
    assert len(full) > 200  # this line needs every step below
    if columns >= 300:
        assert drawn[-1].rstrip() == full
    elif columns >= 60:
        assert drawn[-1].endswith(" · 0 s") and drawn[-1].startswith("pass 123456: listing and deciding")


def test_abbreviates_before_it_cuts():
    parts = ["pass 1: listing and deciding", "40 references", "account 1/3: 1,200 blobs listed (1,100 VHDs)"]
    short = ["pass 1: listing and deciding", "40 refs", "acct 1/3 1,200 blobs (1,100 VHD)"]
    assert fit(parts, short, "7 s", 200) == " · ".join([*parts, "7 s"])
    assert fit(parts, short, "7 s", 79) == "pass 1: listing and deciding · 40 refs · acct 1/3 1,200 blobs (1,100 VHD) · 7 s"
    cut = fit(parts, short, "7 s", 50)
    assert cut == "pass 1: listing and deciding · 40 refs · ac… · 7 s" and len(cut) == 50


def test_a_pipe_gets_the_whole_line():
    out = io.StringIO()
    progress = _busy_progress(out, 40)
    progress.tty = False
    with progress:
        pass
    assert out.getvalue() == progress.line() + "\n"


# -- under tmux, as an operator's terminal at 80 columns --------------------------------------


def _tmux(socket: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-L", socket, *args], capture_output=True, text=True, timeout=30, check=check)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_scan_status_line_under_tmux_at_80_columns_never_wraps(gc, tmp_path):
    for i in range(6):
        gc.page("vhds", f"left-{i}.vhd")
    gc.page("data", "other.vhd", account="gcacct2")
    gc.configure(log_level="warning")  # the pane shows the status line, not log lines
    done = tmp_path / "exit-status"
    out = tmp_path / "stdout.txt"
    script = tmp_path / "scan.sh"
    exports = {name: os.environ[name] for name in ("GCACCT1_KEY", "GCACCT2_KEY", "REQUESTS_CA_BUNDLE")}
    exports.update(PYTHONPATH=os.environ.get("PYTHONPATH", str(REPO)), LANG="C.UTF-8", LC_ALL="C.UTF-8",
                   PYTHONIOENCODING="utf-8")
    exports.pop("COLUMNS", None)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines += ["unset COLUMNS LINES VHD_GC_CONFIG", f"cd {shlex.quote(str(REPO))}",
              f"{shlex.quote(sys.executable)} -m gc_daemon -c {shlex.quote(str(gc.config_path))} scan --progress "
              f"> {shlex.quote(str(out))}",
              f"echo $? > {shlex.quote(str(done))}.tmp && mv {shlex.quote(str(done))}.tmp {shlex.quote(str(done))}",
              "sleep 600"]  # the pane stays until it is read (the session is killed below)
    script.write_text("\n".join(lines) + "\n")
    socket = f"vhdgc-test-{uuid.uuid4().hex[:8]}"  # a server of our own: our environment, our size
    _tmux(socket, "-f", "/dev/null", "new-session", "-d", "-x", "80", "-y", "24", "-s", "scan", f"bash {shlex.quote(str(script))}")
    try:
        deadline = time.monotonic() + 300  # only catches a hang
        while not done.exists():
            assert time.monotonic() < deadline, _tmux(socket, "capture-pane", "-p", "-J", "-t", "scan", check=False).stdout
            time.sleep(0.2)
        assert done.read_text().strip() == "0", out.read_text()
        assert _tmux(socket, "display-message", "-p", "-t", "scan", "#{pane_width}").stdout.strip() == "80"
        # -J joins lines the terminal wrapped: a status line wider than the pane shows as one long line
        pane = _tmux(socket, "capture-pane", "-p", "-J", "-S", "-", "-t", "scan").stdout
    finally:
        _tmux(socket, "kill-server", check=False)
    shown = [line.rstrip() for line in pane.splitlines() if line.strip()]
    assert shown, pane
    assert all(len(line) <= 80 for line in shown), pane
    assert len(shown) == 1, pane  # one line, redrawn in place
    assert shown[-1].startswith("pass 1 complete · ") and shown[-1].endswith(" s"), pane
    assert out.read_text().startswith("pass 1 complete: ")
