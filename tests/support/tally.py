"""pytest plugin: the session-wide fault tally, printed as ONE line at the very end of the output.

Tests record each injected fault with :func:`record` (the reference sources, the blob listing, the
state database, the clock, and the delete whose reply is lost); ``pytest_terminal_summary`` prints::

    fault tally: 123 faults tried, 98 passes failed closed, 25 passes completed correctly, wrongful deletions = 0, lost records = 0

Register it in the root conftest (``pytest_plugins = [..., "tests.support.tally"]``). Until then a
test module that records faults registers it itself (:func:`ensure_registered`), under the same
name, so it is never registered twice.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest

PLUGIN_NAME = "tests.support.tally"

# A fault's pass ended in one of these.
FAILED_CLOSED = "failed closed"  # outcome incomplete / exit 3, or a database fault: exit 1, nothing changed
COMPLETED = "completed correctly"  # a retried fault: the pass completed, and its result is right
WRONG = "wrong"  # completed with a wrong result, or failed without staying closed


@dataclass
class Tally:
    tried: int = 0
    failed_closed: int = 0
    completed: int = 0
    wrong: int = 0
    wrongful_deletions: int = 0
    lost_records: int = 0
    # The disk path (tests/test_disk_faults.py): disks deleted under faults, and of them those with no
    # quarantine snapshot although managed_disks.quarantine was on (must stay 0).
    disk_cases: int = 0
    disks_deleted: int = 0
    disks_unquarantined: int = 0
    cases: list[tuple[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, case: str, result: str, *, wrongful_deletions: int = 0, lost_records: int = 0,
               disk: bool = False, disks_deleted: int = 0, disks_unquarantined: int = 0) -> None:
        """``lost_records``: state an incomplete pass changed, or a deletion vhd-gc made that its
        records (audit outcome, report) do not show. ``disk``: a case of the disk path, with the disks
        it deleted and, of them, those deleted without their quarantine snapshot."""
        if result not in (FAILED_CLOSED, COMPLETED, WRONG):
            raise ValueError(f"unknown fault result {result!r}")
        with self._lock:
            self.tried += 1
            if result == FAILED_CLOSED:
                self.failed_closed += 1
            elif result == COMPLETED:
                self.completed += 1
            else:
                self.wrong += 1
            self.wrongful_deletions += wrongful_deletions
            self.lost_records += lost_records
            self.disk_cases += int(disk)
            self.disks_deleted += disks_deleted
            self.disks_unquarantined += disks_unquarantined
            self.cases.append((case, result))

    def line(self) -> str:
        text = (
            f"fault tally: {self.tried} faults tried, {self.failed_closed} passes failed closed, "
            f"{self.completed} passes completed correctly, wrongful deletions = {self.wrongful_deletions}, "
            f"lost records = {self.lost_records}"
        )
        if self.disk_cases:
            text += (f"; disk path: {self.disk_cases} cases, {self.disks_deleted} disks deleted, "
                     f"deleted without a quarantine snapshot = {self.disks_unquarantined}")
        if self.wrong:
            text += f" (and {self.wrong} passes neither failed closed nor completed correctly)"
        return text


TALLY = Tally()


def record(case: str, result: str, *, wrongful_deletions: int = 0, lost_records: int = 0, **disk: int) -> None:
    TALLY.record(case, result, wrongful_deletions=wrongful_deletions, lost_records=lost_records, **disk)


def ensure_registered(config: pytest.Config) -> None:
    """Register this module as a plugin unless conftest already did (same name: never twice)."""
    import sys

    pm = config.pluginmanager
    if not pm.has_plugin(PLUGIN_NAME):
        pm.register(sys.modules[__name__], PLUGIN_NAME)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # The outermost wrapper: what follows the yield runs after every other summary section (the
    # short test summary included), so the tally is the last line before pytest's final count.
    result = yield
    if TALLY.tried:
        for case, outcome in TALLY.cases:
            if outcome == WRONG:
                terminalreporter.write_line(f"fault case neither failed closed nor completed correctly: {case}")
        terminalreporter.write_line(TALLY.line())
    return result
