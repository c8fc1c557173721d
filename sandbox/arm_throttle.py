"""ARM's subscription read limit, as the ARM stand-in (sandbox/arm.py) applies it.

What ARM does (https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling,
"Remaining requests" and "Regional throttling and token bucket algorithm"): every read scoped to a
subscription takes a token from that subscription's bucket (per security principal and region: 250
tokens, refilled at 25 a second since 2024; 12,000 an hour before), and its answer carries
``x-ms-ratelimit-remaining-subscription-reads``, the reads left. A read with no token left is
answered 429 ``SubscriptionRequestsThrottled`` with a ``Retry-After`` in seconds. Writes and deletes
have buckets of their own, not modelled here.

The stand-in's bucket is generous by default (12,000 reads, refilled at ARM's 25 a second), so that
no test or bench run meets it unless it asks: :meth:`ReadBudget.configure` sets the size and the
refill (0: a plain countdown, for tests that assert the exact counts).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable

READS_HEADER = "x-ms-ratelimit-remaining-subscription-reads"
DEFAULT_SIZE = 12_000
DEFAULT_REFILL = 25.0  # tokens a second

_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)


def subscription_of(path: str) -> str | None:
    """The subscription a request path is scoped to, lower-cased (None: tenant-level)."""
    match = _SUBSCRIPTION.match(path)
    return match.group(1).lower() if match else None


class ReadBudget:
    """A token bucket of reads per subscription. Thread-safe."""

    def __init__(self, size: int = DEFAULT_SIZE, refill: float = DEFAULT_REFILL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._defaults = (size, refill)
        self.size, self.refill = size, refill
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # subscription -> (tokens, when counted)
        self.throttled: list[str] = []  # the subscriptions of the reads answered 429, in order

    def configure(self, size: int | None = None, refill: float | None = None) -> None:
        """A new bucket size and refill rate; every subscription's bucket starts full again."""
        with self._lock:
            if size is not None:
                self.size = size
            if refill is not None:
                self.refill = refill
            self._buckets.clear()

    def reset(self) -> None:
        """The sizes the stand-in was made with, every bucket full, nothing throttled."""
        with self._lock:
            self.size, self.refill = self._defaults
            self._buckets.clear()
            self.throttled.clear()

    def _tokens(self, subscription: str, now: float) -> float:
        tokens, then = self._buckets.get(subscription, (float(self.size), now))
        return min(float(self.size), tokens + (now - then) * self.refill)

    def take(self, subscription: str) -> tuple[int, int | None]:
        """One read: ``(remaining, None)`` when it may go on, ``(0, retry_after_seconds)`` when ARM
        would throttle it."""
        with self._lock:
            now = self.clock()
            tokens = self._tokens(subscription, now)
            if tokens < 1:
                self._buckets[subscription] = (tokens, now)
                self.throttled.append(subscription)
                wait = math.ceil((1 - tokens) / self.refill) if self.refill > 0 else 3600
                return 0, max(1, wait)
            self._buckets[subscription] = (tokens - 1, now)
            return int(tokens - 1), None

    def remaining(self, subscription: str) -> int:
        """The reads ``subscription`` has left now."""
        with self._lock:
            return int(self._tokens(subscription.lower(), self.clock()))
