"""cProfile helpers: top entries by cumulative and by own time, paths stripped for reading.

cProfile sees only the thread that enabled it; :func:`profile_call` also profiles every thread
started during the call (the pass reads references and measures billed bytes in pool threads) by
wrapping ``threading.Thread.run``, and :func:`top` prints the main thread and all threads merged.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import threading
from collections.abc import Callable
from typing import Any


def profile_call(fn: Callable[[], Any]) -> tuple[Any, list[cProfile.Profile]]:
    """Run ``fn`` under cProfile; returns (its result, [main-thread profile, thread profiles...])."""
    thread_profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        with lock:
            thread_profiles.append(prof)
        prof.enable()
        try:
            original_run(self)
        finally:
            prof.disable()

    main = cProfile.Profile()
    threading.Thread.run = run  # type: ignore[method-assign]
    main.enable()
    try:
        out = fn()
    finally:
        main.disable()
        threading.Thread.run = original_run  # type: ignore[method-assign]
    return out, [main, *thread_profiles]


def _stats_text(stats: pstats.Stats, key: str, n: int) -> list[str]:
    buf = io.StringIO()
    stats.stream = buf  # type: ignore[attr-defined]
    stats.sort_stats(key).print_stats(n)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    return [ln for ln in lines if not ln.lstrip().startswith(("Ordered by", "List reduced"))]


def top(profiles: cProfile.Profile | list[cProfile.Profile], n: int = 25) -> str:
    if not isinstance(profiles, list):
        profiles = [profiles]
    out: list[str] = []
    main = pstats.Stats(profiles[0]).strip_dirs()
    out.append(f"--- main thread: top {n} by cumulative time ---")
    out += _stats_text(main, "cumulative", n)
    out.append(f"--- main thread: top {n} by own time (tottime) ---")
    out += _stats_text(main, "tottime", n)
    if len(profiles) > 1:
        merged = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            try:
                merged.add(p)
            except TypeError:  # a thread that never ran anything
                continue
        merged.strip_dirs()
        out.append(f"--- all {len(profiles)} threads merged (times summed over threads): top {n} by own time ---")
        out += _stats_text(merged, "tottime", n)
    return "\n".join(out)
