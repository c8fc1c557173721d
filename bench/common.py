"""Small helpers shared by the benchmarks: timing, progress, tables, targets, machine facts."""

from __future__ import annotations

import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Progress:
    """A progress line: tqdm when the venv has it, else an in-place line on stderr. Thread-safe."""

    def __init__(self, total: int, desc: str) -> None:
        self.total = total
        self.desc = desc
        self.n = 0
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._last = 0.0
        self._tty = sys.stderr.isatty()
        try:
            from tqdm import tqdm  # type: ignore[import-not-found]

            self._bar = tqdm(total=total, desc=desc, unit="blob", file=sys.stderr)
        except ImportError:
            self._bar = None

    def update(self, k: int = 1) -> None:
        with self._lock:
            self.n += k
            if self._bar is not None:
                self._bar.update(k)
                return
            now = time.perf_counter()
            if now - self._last < (0.2 if self._tty else 5.0) and self.n < self.total:
                return
            self._last = now
            rate = self.n / max(now - self._t0, 1e-9)
            line = f"{self.desc}: {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%, {rate:,.0f}/s)"
            sys.stderr.write(("\r" + line) if self._tty else (line + "\n"))
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            return
        elapsed = time.perf_counter() - self._t0
        line = f"{self.desc}: {self.n}/{self.total} done in {elapsed:.1f}s ({self.n / max(elapsed, 1e-9):,.0f}/s)"
        sys.stderr.write(("\r" + line + "\n") if self._tty else (line + "\n"))
        sys.stderr.flush()


# The emulators (Azurite, the ARM stand-in) stand in for services whose CPU is not on the collector's
# machine. Here they share its two cores, so every bench runs them below the process it measures.
EMULATOR_NICE = 10
_AUTOGROUP_SWITCH = Path("/proc/sys/kernel/sched_autogroup_enabled")


def autogroup_enabled() -> bool:
    try:
        return _AUTOGROUP_SWITCH.read_text().strip() == "1"
    except OSError:
        return False


def set_emulator_priority(pid: int, nice: int) -> str:
    """CPU priority of an emulator, which runs in a session of its own; returns how it was set.

    With autogroup (the Linux default) the scheduler shares CPU between sessions first, weighed by the
    session's nice in /proc/<pid>/autogroup; a process's own nice counts only inside its session. So
    ``renice`` alone does nothing here, and the session's nice is what to set; it can go back to 0
    unprivileged. Without autogroup the process group is reniced instead, which only root can undo."""
    if autogroup_enabled():
        with open(f"/proc/{pid}/autogroup", "w") as fh:
            fh.write(str(nice))
        return f"session (autogroup) nice {nice}"
    os.setpriority(os.PRIO_PGRP, os.getpgid(pid), nice)
    return f"process-group nice {nice}"


def lower_emulator_priority(pids: Iterable[int]) -> str:
    """``set_emulator_priority(pid, EMULATOR_NICE)`` for each; where the system refuses, the bench
    goes on at equal priority and the report says so."""
    how = ""
    for pid in pids:
        try:
            how = set_emulator_priority(pid, EMULATOR_NICE)
        except OSError as exc:
            return f"equal priority (could not lower it: {exc})"
    return how


def note(msg: str) -> None:
    sys.stderr.write(f"[bench] {msg}\n")
    sys.stderr.flush()


@dataclass
class Target:
    name: str
    measured: str
    limit: str
    ok: bool | None  # None: informational


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # (metric, value)
    targets: list[Target] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # free text printed after the table (profiles)

    def add(self, metric: str, value: str) -> None:
        self.rows.append((metric, value))

    def target(self, name: str, measured: str, limit: str, ok: bool | None) -> None:
        self.targets.append(Target(name, measured, limit, ok))


def render(section: Section) -> str:
    out = [f"== {section.title} =="]
    if section.rows:
        w = max(len(m) for m, _ in section.rows)
        for metric, value in section.rows:
            out.append(f"  {metric.ljust(w)}  {value}")
    if section.targets:
        out.append("")
        out.append("  targets:")
        w1 = max(len(t.name) for t in section.targets)
        w2 = max(len(t.measured) for t in section.targets)
        for t in section.targets:
            verdict = "info" if t.ok is None else ("PASS" if t.ok else "MISS")
            out.append(f"    [{verdict}] {t.name.ljust(w1)}  {t.measured.rjust(w2)}  (target {t.limit})")
    return "\n".join(out)


def machine_info() -> dict[str, str]:
    info = {
        "cpus (nproc)": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    info["memory"] = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    azurite = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"
    if azurite.exists():
        try:
            info["azurite"] = subprocess.run(
                [str(azurite), "--version"], capture_output=True, text=True, timeout=30
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    node = shutil.which("node")
    if node:
        try:
            info["node"] = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gc_daemon"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
        dirty = [ln[3:] for ln in dirty if ln.strip()]
        info["code (gc_daemon)"] = head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        from importlib.metadata import version

        for pkg in ("azure-storage-blob", "azure-mgmt-compute", "azure-core", "SQLAlchemy"):
            info[pkg] = version(pkg)
    except Exception:  # noqa: BLE001 - informational only
        pass
    return info


def quiet_sdk_logging() -> None:
    import logging

    for noisy in ("azure", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_vhdgc_logging(log_path: Path) -> None:
    """vhd-gc's structlog output into a file, so it neither clutters the table nor costs a terminal."""
    from gc_daemon.wiring import configure_logging

    fh = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    configure_logging(None, stream=fh)
    quiet_sdk_logging()


def fmt_s(seconds: float) -> str:
    return f"{seconds:.3f} s"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"
