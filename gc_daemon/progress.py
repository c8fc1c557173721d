"""A live status line for long interactive passes (`vhd-gc scan` on a terminal).

The pass streams, so there is no total to show a percentage of: the line shows what has been read,
decided and measured so far, and where the pass is. The collector reports to a :class:`PassProgress`
(cheap: it keeps references to the pass's own counters, nothing per blob); a thread redraws the line
a few times a second. Nothing here is on the daemon's path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TextIO


class PassProgress:
    def __init__(self, stream: TextIO, *, interval: float = 0.5, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.tty = stream.isatty() if tty is None else tty
        self.clock = clock
        self._phase = "starting"
        self._stats: Any = None
        self._measurer: Any = None
        self._accounts = 0
        self._t0 = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._width = 0

    # -- what the collector calls --------------------------------------------------------------

    def phase(self, text: str) -> None:
        self._phase = text

    def attach(self, stats: Any, accounts: int) -> None:
        self._stats = stats
        self._accounts = accounts

    def measuring(self, measurer: Any) -> None:
        self._measurer = measurer

    # -- the line ----------------------------------------------------------------------------

    def line(self) -> str:
        parts = [self._phase]
        s = self._stats
        if s is not None:
            if s.references:
                parts.append(f"{s.references:,} references")
            if self._accounts:
                parts.append(f"account {len(s.blobs_by_account)}/{self._accounts}: "
                             f"{s.blobs:,} blobs listed ({s.vhds:,} VHDs)")
            if s.new_candidates or s.released or s.kept:
                parts.append(f"new candidates {s.new_candidates:,}, released {s.released:,}, kept {s.kept:,}")
            if s.due:
                parts.append(f"due {s.due:,}")
            m = self._measurer
            if m is not None and m.queued:
                parts.append(f"billed bytes {m.measured:,}/{m.queued:,}")
            if s.deleted or s.refused:
                parts.append(f"deleted {s.deleted:,}, refused {s.refused:,}")
        parts.append(f"{self.clock() - self._t0:.0f} s")
        return " · ".join(parts)

    def _draw(self, final: bool = False) -> None:
        text = self.line()
        if self.tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._width = len(text)
        else:  # a file or a pipe: whole lines
            self.stream.write(text + "\n")
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._draw()

    def __enter__(self) -> PassProgress:
        self._t0 = self.clock()
        if self.interval > 0:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._draw(final=True)
