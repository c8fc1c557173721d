"""The benchmarks run the emulators below the process they measure (bench.common.set_emulator_priority).
Under autogroup a process's own nice counts only inside its session, so the session's is what is set."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bench.common import autogroup_enabled, lower_emulator_priority, set_emulator_priority

def _session_child() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "60"], start_new_session=True)


@pytest.mark.skipif(not autogroup_enabled(), reason="the kernel does not group by session (autogroup off)")
def test_sets_the_sessions_nice_and_back() -> None:
    ours = Path("/proc/self/autogroup").read_text()
    child = _session_child()
    try:
        assert set_emulator_priority(child.pid, 10) == "session (autogroup) nice 10"
        assert Path(f"/proc/{child.pid}/autogroup").read_text().split()[-1] == "10"
        assert Path("/proc/self/autogroup").read_text() == ours  # the measured process keeps its share
        set_emulator_priority(child.pid, 0)
        assert Path(f"/proc/{child.pid}/autogroup").read_text().split()[-1] == "0"
    finally:
        child.kill()
        child.wait()


@pytest.mark.skipif(autogroup_enabled(), reason="autogroup is on: the session's nice is set instead")
def test_renices_the_process_group() -> None:
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    child = _session_child()
    try:
        assert set_emulator_priority(child.pid, 10) == "process-group nice 10"
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == 10
        assert os.getpriority(os.PRIO_PROCESS, 0) == ours
    finally:
        child.kill()
        child.wait()


def test_a_refusal_leaves_equal_priority_and_says_so() -> None:
    child = _session_child()
    child.kill()
    child.wait()  # reaped: its pid names no process now
    how = lower_emulator_priority([child.pid])
    assert how.startswith("equal priority (could not lower it: ")
