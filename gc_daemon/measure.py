"""Measuring billed bytes (Get Page Ranges, one call a page blob) off the critical path of a pass.

A candidate is marked before its bytes are known: its ``billed_bytes`` stays null ("pending") until
a measurement lands. A pass measures on a pool of its own while it lists and decides, waits for what
is still running only up to its budget (``billed_bytes.max_wait_share`` of the time the pass took so
far), and writes the rest as pending; the next pass measures every pending row from its very start,
overlapping its reference read, and waits for those in full. A measurement is bound to the ETag it
was made for (the request carries ``If-Match``; a result for another ETag is never used), so a blob
that changed is measured again.

How many calls run at once adapts to the service, per account (:class:`Aimd`): it grows while the
latency stays flat, halves on 503 ``ServerBusy``, 429 and timeouts, and each account's calls are
held under a request rate (:class:`RateLimit`) well below Azure Storage's target for a standard
account: "Maximum request rate per storage account: 20,000 requests per second" (Microsoft Learn,
"Scalability and performance targets for standard storage accounts",
https://learn.microsoft.com/azure/storage/common/scalability-targets-standard-account). The default,
``billed_bytes.max_requests_per_second: 2000``, leaves 90% of it to the account's own workloads.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import structlog

from .domain import BlobKey, Change, Forget

log = structlog.get_logger("vhd-gc.measure")

# Azure Storage's target for a standard account (see the module's docstring): the per-account rate
# limit is validated against it.
AZURE_ACCOUNT_REQUESTS_PER_SECOND = 20_000


class PassStopped(Exception):
    """Raised by :meth:`Measurer.drain` when a stop is asked for (passes.py maps it onto its own)."""


# -- the adaptive controller (pure: no clock, no threads) -----------------------------------------

THROTTLE_CODES = frozenset({
    "ServerBusy", "OperationTimedOut", "TooManyRequests", "HTTP 429", "HTTP 503", "HTTP 500",
    "InternalError",  # 500 Operation Timeout is how a partition at its limit also answers
})


def is_throttle(exc: BaseException) -> bool:
    """Whether a failed call says the service (or the path to it) is overloaded: 503 ServerBusy, 429,
    500 OperationTimedOut, or a timeout of the transport."""
    code = str(getattr(exc, "code", "") or type(exc).__name__)
    return code in THROTTLE_CODES or "timeout" in code.lower() or "timedout" in code.lower()


@dataclass
class Aimd:
    """Additive-increase, multiplicative-decrease concurrency limit, fed one outcome at a time.

    - it starts at ``initial`` and never leaves ``[minimum, maximum]``;
    - a success whose latency is within ``tolerance`` times the lowest latency seen ("flat") grows
      the limit: by one per success until the first back-off (slow start: it doubles per round
      trip), then by one per ``limit`` successes (one per round trip);
    - a success slower than that holds the limit (the service is queueing: growing would only add
      latency);
    - a throttle (503, 429, a timeout) multiplies it by ``decrease``, once per round trip: calls that
      started before the last decrease cannot decrease it again (they were sent at the old limit).
    """

    initial: int = 8
    maximum: int = 64
    minimum: int = 1
    decrease: float = 0.5
    tolerance: float = 2.0
    limit: float = field(init=False)
    base_latency: float | None = field(default=None, init=False)
    slow_start: bool = field(default=True, init=False)
    started: int = field(default=0, init=False)  # tickets handed out
    _fence: int = field(default=0, init=False)  # tickets below this were sent before the last decrease

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError("need 1 <= minimum <= maximum")
        self.limit = float(min(max(self.initial, self.minimum), self.maximum))

    @property
    def allowed(self) -> int:
        """Calls that may be in flight now."""
        return max(self.minimum, min(self.maximum, int(self.limit)))

    def start(self) -> int:
        """A ticket for a call about to be sent (hand it back with its outcome)."""
        self.started += 1
        return self.started

    def success(self, ticket: int, latency: float, rate_bound: bool = False) -> None:
        """``rate_bound``: the call waited for its account's rate limit. Calls beyond what the rate
        needs (rate × latency) only wait for tokens, so such a success never grows the limit; it
        lowers it by one per ``limit`` of them (one per round trip), towards what the rate needs."""
        if self.base_latency is None or latency < self.base_latency:
            self.base_latency = latency
        if rate_bound:
            self.limit = max(float(self.minimum), self.limit - 1.0 / max(self.limit, 1.0))
            return
        if latency > self.base_latency * self.tolerance:
            return  # latency rising: hold
        step = 1.0 if self.slow_start else 1.0 / max(self.limit, 1.0)
        self.limit = min(float(self.maximum), self.limit + step)

    def throttled(self, ticket: int) -> None:
        self.slow_start = False
        if ticket <= self._fence:
            return  # sent before the last decrease: that decrease already answered it
        self.limit = max(float(self.minimum), self.limit * self.decrease)
        self._fence = self.started


class RateLimit:
    """A token bucket: at most ``rate`` calls a second, bursts of ``burst``. ``take()`` returns how
    long to wait before the call may be sent (0: now); the clock is injected for tests."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate / 10)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    def take(self) -> float:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


# -- one account's gate: the controller and the rate, for the pool's threads ----------------------


class _Scheduler:
    """Calls queued per account, run on a shared set of threads: a thread takes the next call of
    the next account (round robin) that has room under its controller's limit, so one account at
    its limit never holds back another's calls, and waits out that account's rate limit."""

    def __init__(self, threads: int, initial: int, rate: float, stopping: threading.Event,
                 run: Callable[["_Task"], int]) -> None:
        self.run = run
        self.max_threads = max(1, threads)
        self.initial, self.rate, self.stopping = initial, rate, stopping
        self.cond = threading.Condition()
        self.queues: dict[str, deque] = {}
        self.order: deque[str] = deque()
        self.inflight: dict[str, int] = {}
        self.controllers: dict[str, Aimd] = {}
        self.rates: dict[str, RateLimit] = {}
        self.threads: list[threading.Thread] = []
        self.closed = False
        self.queued = 0
        # Completions: the pass thread waits on this one, apart from the workers' `cond`.
        self.done_cond = threading.Condition(threading.Lock())
        self.waiters = 0

    def submit(self, name: str, task: "_Task") -> "_Task":
        with self.cond:
            if name not in self.queues:
                self.queues[name] = deque()
                self.order.append(name)
                self.inflight[name] = 0
                self.controllers[name] = Aimd(initial=min(self.initial, self.max_threads), maximum=self.max_threads)
                self.rates[name] = RateLimit(self.rate)
            self.queues[name].append(task)
            self.queued += 1
            if len(self.threads) < min(self.max_threads, self.queued):
                t = threading.Thread(target=self._work, name=f"measure-{len(self.threads)}", daemon=True)
                self.threads.append(t)
                t.start()
            self.cond.notify()
        return task

    def _take(self):
        """Under the lock: (name, task, ticket, delay) of the next call that may start, or None."""
        for _ in range(len(self.order)):
            name = self.order[0]
            self.order.rotate(-1)
            q = self.queues[name]
            while q and q[0].state == _CANCELLED:
                q.popleft()
                self.queued -= 1
            ctl = self.controllers[name]
            if q and self.inflight[name] < ctl.allowed:
                task = q.popleft()
                task.state = _RUNNING  # under `cond`, which cancel() takes too
                self.queued -= 1
                self.inflight[name] += 1
                return name, task, ctl.start(), self.rates[name].take()
        return None

    def _work(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.closed and not self.queued:
                        return
                    got = self._take()
                    if got is not None:
                        break
                    if self.closed and not any(self.inflight.values()) and self.stopping.is_set():
                        return
                    self.cond.wait(0.2)
            name, task, ticket, delay = got
            latency, throttled, value = None, False, None
            try:
                if delay > 0:
                    # Short waits (the usual: a token a few ms away) sleep; Event.wait allocates a
                    # lock per call. A stop is seen after at most 50 ms.
                    if delay < 0.05:
                        time.sleep(delay)
                    else:
                        self.stopping.wait(delay)
                if not self.stopping.is_set():
                    t0 = time.monotonic()
                    try:
                        value = self.run(task)
                        latency = time.monotonic() - t0
                    except _Failed as failed:
                        throttled = failed.throttled
            finally:
                self._finish(task, value)
                with self.cond:
                    self.inflight[name] -= 1
                    ctl = self.controllers[name]
                    before = ctl.allowed
                    if throttled:
                        ctl.throttled(ticket)
                    elif latency is not None:
                        ctl.success(ticket, latency, rate_bound=delay > 0)
                    # This thread takes the slot it freed itself (it loops to _take). Another is woken
                    # only for a slot the controller grew, or when the account was at its limit (a call
                    # of it may be waiting for this slot while this thread serves another account):
                    # a wake-up per call would cost a context switch per call; idle threads poll every
                    # 0.2 s anyway.
                    if ctl.allowed > before or (self.queued and self.inflight[name] + 1 >= before):
                        self.cond.notify(1)

    def _finish(self, task: "_Task", value: int | None) -> None:
        with self.done_cond:
            task.value, task.state = value, _DONE
            if self.waiters:
                self.done_cond.notify_all()

    def wait(self, task: "_Task", timeout: float | None) -> bool:
        """Wait until ``task`` is done or cancelled, at most ``timeout`` seconds; whether it is."""
        with self.done_cond:
            if task.state < _DONE:
                self.waiters += 1
                try:
                    self.done_cond.wait_for(lambda: task.state >= _DONE, timeout)
                finally:
                    self.waiters -= 1
            return task.state >= _DONE

    def cancel(self, task: "_Task") -> None:
        with self.cond:
            if task.state == _QUEUED:
                with self.done_cond:
                    task.state = _CANCELLED
                    if self.waiters:
                        self.done_cond.notify_all()

    def shutdown(self, wait: bool) -> None:
        with self.cond:
            self.closed = True
            for q in self.queues.values():  # calls not started are not made
                for task in q:
                    if task.state == _QUEUED:
                        task.state = _CANCELLED
                q.clear()
            self.queued = 0
            self.cond.notify_all()
        if wait:
            for t in self.threads:
                t.join()


_QUEUED, _RUNNING, _DONE, _CANCELLED = 0, 1, 2, 3


class _Task:
    """One page-range call and its result. Not a Future: a first pass over a large estate queues one
    per candidate (hundreds of thousands), and a Future (its own lock and condition) costs ten
    times the memory and a lock round per state change; completion is signalled on the scheduler's
    one ``done_cond``. ``value`` is None when the call failed or was not made."""

    __slots__ = ("account", "key", "etag", "value", "state", "sched")

    def __init__(self, account, key: BlobKey, etag: str | None) -> None:
        self.account, self.key, self.etag = account, key, etag
        self.value: int | None = None
        self.state = _QUEUED
        self.sched: _Scheduler | None = None

    def done(self) -> bool:
        return self.state >= _DONE

    def cancelled(self) -> bool:
        return self.state == _CANCELLED

    def cancel(self) -> None:
        """Not made if it has not started (a call in flight runs to its end; its result is unused)."""
        if self.sched is not None and self.state == _QUEUED:
            self.sched.cancel(self)

    def result(self, timeout: float | None = None) -> int | None:
        if self.sched is not None and not self.sched.wait(self, timeout):
            raise TimeoutError("billed-bytes measurement still running")
        return self.value


class _Failed(Exception):
    def __init__(self, throttled: bool) -> None:
        self.throttled = throttled


_TAKES_ETAG: dict[type, bool] = {}


def _takes_etag(account) -> bool:
    """Whether a source's billed_bytes() takes ``etag`` (AccountStorage does; the bench's in-process
    sources, whose blobs never change, do not)."""
    kind = type(account)
    known = _TAKES_ETAG.get(kind)
    if known is None:
        import inspect

        try:
            known = "etag" in inspect.signature(account.billed_bytes).parameters
        except (TypeError, ValueError):
            known = False
        _TAKES_ETAG[kind] = known
    return known


def _call(account, key: BlobKey, etag: str | None) -> int:
    if etag is not None and _takes_etag(account):
        return account.billed_bytes(key, etag=etag)
    return account.billed_bytes(key)


class Measurer:
    """Billed bytes of new candidates and changed blobs, measured on a pool while the listing goes
    on; batches come back for writing in the order they went in. A batch is ready once its
    measurements are done; :meth:`drain` waits for the rest up to a deadline (rows still unmeasured
    then are written pending), except for measurements carried over from an earlier pass, which it
    waits for in full."""

    def __init__(self, concurrency: int, settings=None, should_stop: Callable[[], bool] = lambda: False) -> None:
        # settings: gc_daemon.config.BilledBytesConfig, or None (the defaults, at `concurrency`)
        self.settings = settings
        self.initial = settings.concurrency_initial if settings is not None else max(1, concurrency)
        self.concurrency = settings.max_concurrency if settings is not None else max(1, concurrency)
        self.rate = settings.max_requests_per_second if settings is not None else 2000.0
        self.max_per_pass = settings.max_per_pass if settings is not None else None
        # New measurements queued and not started, per account, at most a quarter second of the
        # account's rate: enough that the calls never starve while the listing feeds them, and a
        # short tail for the pass to wait for at its end; without it a first pass over a large estate
        # would queue one task per candidate. A row over it is written pending and measured from the
        # start of the next pass (carried-over rows are not capped: the next pass waits for those in
        # full).
        self.queue_cap = max(64, int(self.rate / 4))
        self.capped = 0  # rows left pending by queue_cap
        self.should_stop = should_stop
        self._pool: _Scheduler | None = None
        self._stopping = threading.Event()
        self._pending: deque[tuple[list, list]] = deque()
        self._early: dict[BlobKey, tuple[str | None, _Task]] = {}
        self._carried: set[int] = set()  # id() of tasks carried over from an earlier pass
        self.requests = 0  # calls handed to the pool (max_per_pass counts these)
        self.queued = 0  # blobs handed over for measuring; `measured` of them done (for progress)
        self.measured = 0
        self.pending = 0  # rows written without their billed bytes (measured by a later pass)
        self.pending_by_account: dict[str, int] = {}
        self._count_lock = threading.Lock()

    # -- submitting --------------------------------------------------------------------------

    def prefetch(self, account, rows: list[tuple[BlobKey, str | None]]) -> None:
        """Start measuring rows an earlier pass left pending ((key, recorded ETag)), before the
        decision reaches them: the decision uses a result only for the same ETag."""
        for key, etag in rows:
            future = self._start(account, key, etag)
            if future is None:
                return
            self._early[key] = (etag, future)
            self._carried.add(id(future))

    def submit(self, account, batch: list[Change | Forget]) -> None:
        if not batch:
            return
        items = []
        for c in batch:
            if type(c) is not Change or not c.measure:
                continue
            row = c.row
            early = self._early.pop(row.key, None)
            if early is not None and early[0] == row.etag:
                items.append((c, early[1]))
                continue
            if early is not None:
                early[1].cancel()  # measured for an ETag the blob no longer has
            items.append((c, self._start(account, row.key, row.etag, capped=True)))
        self._pending.append((batch, items))

    def _start(self, account, key: BlobKey, etag: str | None, capped: bool = False) -> _Task | None:
        if self.max_per_pass is not None and self.requests >= self.max_per_pass:
            return None
        if capped and self._pool is not None and len(self._pool.queues.get(key.account, ())) >= self.queue_cap:
            self.capped += 1
            return None
        if self._pool is None:
            self._pool = _Scheduler(self.concurrency, self.initial, self.rate, self._stopping, self._measure)
        self.requests += 1
        self.queued += 1
        task = _Task(account, key, etag)
        task.sched = self._pool
        return self._pool.submit(key.account, task)

    def _measure(self, task: _Task) -> int:
        account, key, etag = task.account, task.key, task.etag
        try:
            return _call(account, key, etag)
        except Exception as exc:  # noqa: BLE001 - a missing measurement is retried next pass
            throttled = is_throttle(exc)
            log.warning("measure_failed", url=f"{key.account}/{key.container}/{key.blob}",
                        error=f"{type(exc).__name__}: {str(exc)[:300]}", throttled=throttled)
            raise _Failed(throttled) from None
        finally:
            with self._count_lock:
                self.measured += 1

    # -- collecting --------------------------------------------------------------------------

    def _apply(self, items: list) -> None:
        for change, future in items:
            value = None
            if future is not None and future.state == _DONE:
                value = future.value
            if value is not None:
                change.row.billed_bytes = value
            else:
                if future is not None and not future.done():
                    future.cancel()
                self.pending += 1
                name = change.row.key.account
                self.pending_by_account[name] = self.pending_by_account.get(name, 0) + 1

    def ready(self) -> Iterator[list[Change | Forget]]:
        while self._pending and all(f is None or f.done() for _, f in self._pending[0][1]):
            batch, items = self._pending.popleft()
            self._apply(items)
            yield batch

    def drain(self, deadline: float | None = None) -> Iterator[list[Change | Forget]]:
        """Every batch, in order: each waits for its own measurements until ``deadline``
        (time.monotonic(); None: no deadline), and for those carried over from an earlier pass
        in full; what is still unmeasured then is written pending."""
        while self._pending:
            batch, items = self._pending.popleft()
            for _, future in items:
                if future is None:
                    continue
                carried = id(future) in self._carried
                while not future.done():
                    if self.should_stop():  # a measurement in flight is not waited for
                        self._stopping.set()
                        raise PassStopped("while measuring billed bytes")
                    left = 0.5 if carried or deadline is None else min(0.5, deadline - time.monotonic())
                    if left <= 0:
                        break
                    future.sched.wait(future, left)
            self._apply(items)
            yield batch

    def close(self, wait: bool = True) -> None:
        for _, future in self._early.values():  # carried-over rows the decision never reached
            future.cancel()
        self._early.clear()
        if not wait:
            self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=wait)
