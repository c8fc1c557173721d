"""`make demo` is also a smoke test: run it with short waits and check it passes and cleans up."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sandbox import demo


def test_demo_runs_green_and_leaves_nothing_behind(capsys) -> None:
    # min_age must stay longer than the time from the fresh upload to the second scan (~4s here),
    # or the fresh upload stops being "too young" and the demo (rightly) fails.
    code = demo.main(["--min-age", "8s", "--grace", "1s"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "every expectation held" in out
    assert out.count("\u2718") == 0, out
    assert "pass 2 complete" in out and "deleted 3" in out, out

    workdir = re.search(r"working directory (\S+)", out)
    assert workdir and not Path(workdir.group(1)).exists(), "the temporary directory was not removed"
    pid = re.search(r"Azurite \(pid (\d+)\)", out)
    assert pid
    try:
        os.kill(int(pid.group(1)), 0)
    except ProcessLookupError:
        pass
    else:
        raise AssertionError(f"Azurite (pid {pid.group(1)}) is still running")
