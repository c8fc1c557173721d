"""A live status line for long interactive passes (`vhd-gc scan` on a terminal).

The pass streams, so there is no total to show a percentage of: the line shows what has been read,
decided and measured so far, and where the pass is. The collector reports to a :class:`PassProgress`
(cheap: it keeps references to the pass's own counters, nothing per blob); a thread redraws the line
a few times a second. Nothing here is on the daemon's path.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO

ELLIPSIS = "…"


def terminal_columns(stream: TextIO) -> int:
    """The width of the terminal ``stream`` writes to: ``COLUMNS`` when set (as
    :func:`shutil.get_terminal_size` honours it), else the size of the stream's own terminal (stderr
    may be a terminal while stdout is a pipe), else :func:`shutil.get_terminal_size` (80 columns
    when nothing says)."""
    if not os.environ.get("COLUMNS", "").strip().isdigit():
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            pass
    return shutil.get_terminal_size().columns


def fit(parts: list[str], short: list[str], tail: str, width: int, sep: str = " · ") -> str:
    """The status line within ``width`` characters: the full ``parts``, else their ``short`` forms,
    else the short forms cut with an ellipsis; ``tail`` (the elapsed time) always ends it."""
    for candidate in (parts, short):
        text = sep.join([*candidate, tail])
        if len(text) <= width:
            return text
    end = sep + tail
    room = width - len(end) - len(ELLIPSIS)
    if room <= 0:  # a terminal narrower than the time itself
        return sep.join([*short, tail])[:width]
    return sep.join(short)[:room].rstrip() + ELLIPSIS + end


class PassProgress:
    def __init__(self, stream: TextIO, *, interval: float = 0.5, tty: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, columns: Callable[[], int] | None = None) -> None:
        self.stream = stream
        # On a terminal the line is never wider than it (less one column: a line that fills the last
        # column makes some terminals wrap); asked at each redraw, so a resize is followed.
        self.columns = columns if columns is not None else (lambda: terminal_columns(stream))
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

    def line(self, width: int | None = None) -> str:
        """The status line; with ``width``, abbreviated (then cut) to at most that many characters."""
        parts, short = [self._phase], [self._phase]
        s = self._stats
        if s is not None:
            if s.references:
                parts.append(f"{s.references:,} references")
                short.append(f"{s.references:,} refs")
            if self._accounts:
                parts.append(f"account {len(s.blobs_by_account)}/{self._accounts}: "
                             f"{s.blobs:,} blobs listed ({s.vhds:,} VHDs)")
                short.append(f"acct {len(s.blobs_by_account)}/{self._accounts} {s.blobs:,} blobs ({s.vhds:,} VHD)")
            if s.new_candidates or s.released or s.kept:
                parts.append(f"new candidates {s.new_candidates:,}, released {s.released:,}, kept {s.kept:,}")
                short.append(f"new {s.new_candidates:,} rel {s.released:,} kept {s.kept:,}")
            if s.due:
                parts.append(f"due {s.due:,}")
                short.append(f"due {s.due:,}")
            m = self._measurer
            if m is not None and m.queued:
                parts.append(f"billed bytes {m.measured:,}/{m.queued:,}")
                short.append(f"billed {m.measured:,}/{m.queued:,}")
            if s.deleted or s.refused:
                parts.append(f"deleted {s.deleted:,}, refused {s.refused:,}")
                short.append(f"del {s.deleted:,} ref {s.refused:,}")
        tail = f"{self.clock() - self._t0:.0f} s"
        if width is None:
            return " · ".join([*parts, tail])
        return fit(parts, short, tail, width)

    def _draw(self, final: bool = False) -> None:
        if self.tty:
            try:
                width = max(1, int(self.columns()) - 1)
            except Exception:  # noqa: BLE001 - a status line never fails a pass
                width = 79
            text = self.line(width)
            pad = max(0, min(self._width, width) - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._width = len(text)
        else:  # a file or a pipe: whole lines, in full
            self.stream.write(self.line() + "\n")
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
