"""ARM's read budget, seen and kept: every answer of Azure Resource Manager to a read carries
``x-ms-ratelimit-remaining-subscription-reads``, the reads the caller may still make in that
subscription before ARM answers 429. :class:`ArmBudgetPolicy` (an azure-core policy on every ARM
management client vhd-gc builds) records the latest value per subscription in an
:class:`ArmReadBudget`, which the ``vhdgc_arm_reads_remaining{subscription}`` gauge exports, and
slows the next read to a subscription down before it would be throttled.

ARM's limits (https://learn.microsoft.com/azure/azure-resource-manager/management/request-limits-and-throttling):
since 2024 a token bucket per subscription, security principal and region: 250 reads, refilled at
25 a second; before that 12,000 reads an hour. Either way the header counts what is left. The pace:
while the last known count is at or above ``reserve`` (``azure.arm_reads_reserve``) nothing waits;
under it, a read waits ``max_wait * (reserve - remaining) / reserve`` first, from nothing just under
the reserve to ``max_wait`` (1 s) at zero: at zero ARM refills 25 reads in that second, so the reads
in flight spread over what comes back instead of running into 429. Each read sent counts against the
last known value until its own answer says better (several reads in flight see the count fall).
A count older than ``stale_after`` (10 s: ARM's bucket is full again by then) is not waited on.
The wait is bounded and injectable (``wait``, ``clock``): tests never sleep.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from azure.core.pipeline.policies import SansIOHTTPPolicy

READS_HEADER = "x-ms-ratelimit-remaining-subscription-reads"
DEFAULT_RESERVE = 100
MAX_WAIT = 1.0  # seconds before one read, at most
STALE_AFTER = 10.0  # seconds after which a remaining count is no longer waited on

_SUBSCRIPTION = re.compile(r"^/subscriptions/([^/]+)", re.IGNORECASE)
_READS = frozenset({"GET", "HEAD"})


def subscription_of(url: str) -> str | None:
    """The subscription a request is scoped to (``/subscriptions/{id}...``), lower-cased; None for
    tenant-level requests (the subscriptions list, providers), which ARM counts apart."""
    match = _SUBSCRIPTION.search(urlsplit(url).path)
    return match.group(1).lower() if match else None


class ArmReadBudget:
    """The latest remaining-reads count per subscription, and the pace it asks for. Thread-safe."""

    def __init__(
        self,
        reserve: int = DEFAULT_RESERVE,
        *,
        max_wait: float = MAX_WAIT,
        stale_after: float = STALE_AFTER,
        wait: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reserve = reserve
        self.max_wait = max_wait
        self.stale_after = stale_after
        self.wait = wait
        self.clock = clock
        self._lock = threading.Lock()
        self._remaining: dict[str, int] = {}  # what ARM said last
        self._estimate: dict[str, tuple[int, float]] = {}  # that, less the reads sent since; and when said
        self.waits = 0  # reads that waited
        self.waited = 0.0  # seconds, in all

    def remaining(self) -> dict[str, int]:
        """Per subscription (lower-case), the count ARM's latest answer gave."""
        with self._lock:
            return dict(self._remaining)

    def observe(self, subscription: str, remaining: int) -> None:
        with self._lock:
            self._remaining[subscription] = remaining
            self._estimate[subscription] = (remaining, self.clock())

    def delay(self, remaining: int) -> float:
        """How long a read waits when ``remaining`` reads are left (0 at or above the reserve)."""
        if self.reserve <= 0 or remaining >= self.reserve:
            return 0.0
        return self.max_wait * min(1.0, (self.reserve - max(remaining, 0)) / self.reserve)

    def before_read(self, subscription: str) -> float:
        """Called before a read is sent to ``subscription``: waits as the last known count asks (through
        ``wait``), counts the read against it, and returns the seconds waited."""
        with self._lock:
            known = self._estimate.get(subscription)
            if known is None:
                return 0.0
            remaining, said = known
            if self.clock() - said > self.stale_after:
                del self._estimate[subscription]
                return 0.0
            self._estimate[subscription] = (remaining - 1, said)
            seconds = self.delay(remaining)
            if seconds > 0:
                self.waits += 1
                self.waited += seconds
        if seconds > 0:
            self.wait(seconds)
        return seconds


class ArmBudgetPolicy(SansIOHTTPPolicy):
    """Per try of a request (a per-retry policy: every try is a read ARM counts): paces reads by the
    budget, and records the remaining-reads header of every answer that carries one."""

    def __init__(self, budget: ArmReadBudget) -> None:
        self.budget = budget

    def on_request(self, request: Any) -> None:
        http_request = request.http_request
        if http_request.method.upper() not in _READS:
            return
        subscription = subscription_of(http_request.url)
        if subscription is not None:
            self.budget.before_read(subscription)

    def on_response(self, request: Any, response: Any) -> None:
        value = response.http_response.headers.get(READS_HEADER)
        if value is None:
            return
        subscription = subscription_of(request.http_request.url)
        if subscription is None:
            return
        try:
            remaining = int(value.strip())
        except ValueError:
            return  # not a count: nothing to learn from it
        self.budget.observe(subscription, remaining)


_PROCESS: ArmReadBudget | None = None
_PROCESS_LOCK = threading.Lock()


def process_budget(reserve: int | None = None) -> ArmReadBudget:
    """The budget of this process: the one the daemon's clients share and its metrics export.
    ``reserve`` (the configuration's ``azure.arm_reads_reserve``) updates its reserve when given."""
    global _PROCESS
    with _PROCESS_LOCK:
        if _PROCESS is None:
            _PROCESS = ArmReadBudget()
        if reserve is not None:
            _PROCESS.reserve = reserve
        return _PROCESS
