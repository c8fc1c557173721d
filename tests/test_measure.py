"""The adaptive concurrency of billed-bytes measuring (gc_daemon.measure), as pure units: the AIMD
controller, the per-account rate limit, and what counts as the service pushing back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gc_daemon.azure.storage import StorageError
from gc_daemon.config import BilledBytesConfig
from gc_daemon.measure import AZURE_ACCOUNT_REQUESTS_PER_SECOND, Aimd, RateLimit, is_throttle

# One event fed to the controller: a success with a latency (seconds), or a throttle.
events = st.lists(
    st.one_of(
        st.tuples(st.just("ok"), st.floats(min_value=0.001, max_value=5.0)),
        st.tuples(st.just("throttle"), st.just(0.0)),
    ),
    max_size=300,
)


def feed(c: Aimd, evs) -> None:
    for kind, latency in evs:
        ticket = c.start()
        if kind == "ok":
            c.success(ticket, latency)
        else:
            c.throttled(ticket)


@settings(max_examples=300, deadline=None)
@given(initial=st.integers(1, 300), maximum=st.integers(1, 256), evs=events)
def test_the_limit_never_leaves_its_bounds(initial, maximum, evs):
    c = Aimd(initial=initial, maximum=maximum)
    assert 1 <= c.allowed <= maximum
    for kind, latency in evs:
        feed(c, [(kind, latency)])
        assert 1 <= c.allowed <= maximum
        assert 1.0 <= c.limit <= maximum


@settings(max_examples=200, deadline=None)
@given(initial=st.integers(2, 64), evs=events, latency=st.floats(0.001, 1.0))
def test_a_throttle_halves_the_limit(initial, evs, latency):
    c = Aimd(initial=initial, maximum=64)
    feed(c, evs)
    before = c.limit
    c.throttled(c.start())  # a call sent after every earlier decrease
    assert c.limit == max(1.0, before * 0.5)
    assert not c.slow_start


@pytest.mark.parametrize("code", ["ServerBusy", "TooManyRequests", "HTTP 429", "HTTP 503", "OperationTimedOut",
                                  "ServiceResponseTimeoutError", "ServiceRequestTimeoutError", "ReadTimeoutError"])
def test_503_429_and_timeouts_are_throttles_and_back_the_limit_off(code):
    exc = StorageError(code, "busy")
    assert is_throttle(exc)
    c = Aimd(initial=32, maximum=64)
    c.throttled(c.start())
    assert c.allowed == 16


@pytest.mark.parametrize("code", ["BlobNotFound", "ConditionNotMet", "AuthorizationFailure", "MalformedResponse"])
def test_other_failures_are_not_throttles(code):
    assert not is_throttle(StorageError(code, "no"))


def test_calls_in_flight_at_a_decrease_do_not_decrease_it_again():
    c = Aimd(initial=32, maximum=64)
    tickets = [c.start() for _ in range(32)]  # a whole window in flight, all answered 503
    for t in tickets:
        c.throttled(t)
    assert c.allowed == 16  # one decrease for the window, not 32 of them
    c.throttled(c.start())  # sent at the new limit: it counts
    assert c.allowed == 8


@settings(max_examples=200, deadline=None)
@given(initial=st.integers(1, 32), latency=st.floats(0.001, 1.0), jitter=st.lists(st.floats(1.0, 1.9), min_size=1,
                                                                                      max_size=400))
def test_flat_latency_grows_the_limit_to_its_maximum(initial, latency, jitter):
    c = Aimd(initial=initial, maximum=64)
    last = c.limit
    for j in jitter:
        c.success(c.start(), latency * j)  # within the tolerance of the lowest latency seen: flat
        assert c.limit >= last
        last = c.limit
    # Slow start: one more per success until the maximum.
    assert c.limit == min(64.0, initial + len(jitter))


def test_growth_after_a_back_off_is_one_per_window():
    c = Aimd(initial=16, maximum=64)
    c.throttled(c.start())
    assert c.allowed == 8
    for _ in range(8):  # one window of successes at flat latency
        c.success(c.start(), 0.05)
    assert c.allowed == 8 or c.allowed == 9
    for _ in range(20):
        c.success(c.start(), 0.05)
    assert 10 <= c.allowed <= 12  # about one per window of limit successes, not one per success


@settings(max_examples=100, deadline=None)
@given(initial=st.integers(1, 64), rises=st.lists(st.floats(2.5, 50.0), min_size=1, max_size=100))
def test_rising_latency_holds_the_limit(initial, rises):
    c = Aimd(initial=initial, maximum=64)
    c.success(c.start(), 0.05)  # the lowest latency seen
    held = c.limit
    for r in rises:
        c.success(c.start(), 0.05 * r)  # over twice the lowest: the service is queueing
        assert c.limit == held


def test_the_rate_limit_holds_calls_under_the_rate():
    now = [0.0]
    rate = RateLimit(100, burst=10, clock=lambda: now[0])
    waits = [rate.take() for _ in range(10)]
    assert waits == [0.0] * 10  # the burst
    assert rate.take() == pytest.approx(0.01)  # then one each 1/rate
    now[0] += 1.0  # a second later the bucket is full again, not fuller
    assert [rate.take() for _ in range(10)][-1] == 0.0
    assert rate.take() > 0


@settings(max_examples=100, deadline=None)
@given(rps=st.floats(1, 20_000), n=st.integers(1, 2000))
def test_calls_sent_as_the_limit_says_keep_to_the_rate(rps, n):
    """Sent at the times take() says, n calls span at least (n - burst) / rate seconds."""
    now = [0.0]
    rate = RateLimit(rps, clock=lambda: now[0])
    sent = []
    for _ in range(n):
        wait = rate.take()
        sent.append(now[0] + wait)
        now[0] += wait
    assert sent[-1] - sent[0] >= (n - rate.burst) / rps - 1e-6


def test_the_default_rate_stays_under_azures_per_account_target():
    defaults = BilledBytesConfig()
    assert defaults.max_requests_per_second <= AZURE_ACCOUNT_REQUESTS_PER_SECOND / 10
    assert defaults.concurrency_initial <= defaults.max_concurrency
    with pytest.raises(ValueError):
        BilledBytesConfig(max_requests_per_second=AZURE_ACCOUNT_REQUESTS_PER_SECOND + 1)
    with pytest.raises(ValueError):
        BilledBytesConfig(concurrency_initial=65, max_concurrency=64)


# -- the Measurer's budget, on an in-process source (events, no timing) --------------------------


class GatedSource:
    """billed_bytes() of blobs in ``held`` waits until ``release`` is set; every call is recorded."""

    def __init__(self, held: set[str]) -> None:
        import threading

        self.held = held
        self.release = threading.Event()
        self.calls: list[tuple[str, str | None]] = []

    def billed_bytes(self, key, etag=None):
        self.calls.append((key.blob, etag))
        if key.blob in self.held:
            assert self.release.wait(30)
        return 100 + int(key.blob.split(".")[0])


def change(i: int, etag: str = '"e"'):
    from gc_daemon.domain import BlobKey, Change, State, Tracked

    key = BlobKey("acct", "c", f"{i}.vhd")
    row = Tracked(key, f"https://acct/c/{i}.vhd", State.CANDIDATE, "PageBlob", 1 << 20, etag, None, None, None, 1)
    return Change(row, measure=True, event="marked")


def test_past_its_deadline_a_batch_is_written_with_its_unmeasured_rows_pending():
    import time

    from gc_daemon.measure import Measurer

    source = GatedSource(held={"1.vhd"})
    m = Measurer(8, BilledBytesConfig(concurrency_initial=4, max_concurrency=4))
    batch = [change(0), change(1), change(2)]
    m.submit(source, batch)
    while m.measured < 2:  # the two that are not held answer
        time.sleep(0.01)
    (written,) = list(m.drain(deadline=time.monotonic() - 1))  # the budget is spent
    assert [c.row.billed_bytes for c in written] == [100, None, 102]
    assert (m.pending, m.pending_by_account) == (1, {"acct": 1})
    assert sorted(source.calls) == [("0.vhd", '"e"'), ("1.vhd", '"e"'), ("2.vhd", '"e"')]  # bound to the ETag
    source.release.set()
    m.close()


def test_carried_over_measurements_are_waited_for_and_a_changed_etag_is_measured_again():
    import threading
    import time

    from gc_daemon.measure import Measurer

    source = GatedSource(held={"0.vhd"})
    m = Measurer(8, BilledBytesConfig())
    m.prefetch(source, [(change(0).row.key, '"e"'), (change(1).row.key, '"old"')])  # left pending earlier
    m.submit(source, [change(0), change(1)])  # 1.vhd changed since: its ETag is '"e"' now
    threading.Timer(0.2, source.release.set).start()
    (written,) = list(m.drain(deadline=time.monotonic() - 1))  # past the deadline, yet 0.vhd is waited for
    assert [c.row.billed_bytes for c in written] == [100, 101]
    assert ("1.vhd", '"e"') in source.calls  # measured again, for the ETag it has now
    assert m.pending == 0
    m.close()


def test_max_per_pass_bounds_the_calls_and_leaves_the_rest_pending():
    from gc_daemon.measure import Measurer

    source = GatedSource(held=set())
    m = Measurer(8, BilledBytesConfig(max_per_pass=2))
    m.submit(source, [change(i) for i in range(5)])
    (written,) = list(m.drain(deadline=None))
    assert [c.row.billed_bytes is not None for c in written] == [True, True, False, False, False]
    assert len(source.calls) == 2 and m.pending == 3
    m.close()


def test_an_account_at_its_limit_does_not_hold_back_another_accounts_calls():
    import threading

    from gc_daemon.domain import BlobKey, Change, State, Tracked
    from gc_daemon.measure import Measurer

    class Source:
        def __init__(self):
            self.release = threading.Event()
            self.done: list[str] = []

        def billed_bytes(self, key, etag=None):
            if key.account == "slow":
                assert self.release.wait(30)
            self.done.append(key.account)
            return 1

    def row(account: str, i: int) -> Change:
        key = BlobKey(account, "c", f"{i}.vhd")
        return Change(Tracked(key, f"https://{account}/c/{i}.vhd", State.CANDIDATE, "PageBlob", 1, '"e"', None, None,
                              None, 1), measure=True)

    source = Source()
    m = Measurer(8, BilledBytesConfig(concurrency_initial=2, max_concurrency=4))
    m.submit(source, [row("slow", i) for i in range(10)])  # queued first, and stuck at its limit of 2
    m.submit(source, [row("fast", i) for i in range(6)])
    fast_done = threading.Event()
    fast = [f for _, f in m._pending[1][1]]  # noqa: SLF001 - the futures of the "fast" batch
    threading.Thread(target=lambda: ([f.result(30) for f in fast], fast_done.set()), daemon=True).start()
    assert fast_done.wait(30)  # every call of "fast" ran while "slow" held two calls in flight
    assert source.done.count("fast") == 6 and "slow" not in source.done
    source.release.set()
    assert [sum(c.row.billed_bytes for c in b) for b in m.drain(None)] == [10, 6]
    m.close()


def test_a_rate_bound_success_never_grows_the_limit_and_lowers_it_towards_the_minimum():
    a = Aimd(initial=8, maximum=64)
    for ticket in range(1, 200):
        a.success(ticket, 0.001, rate_bound=True)
        assert a.allowed <= 8
    assert a.allowed == 1  # one call at a time is all a rate-bound account with instant calls needs
    a.success(200, 0.001)  # a call that did not wait for a token grows it again
    assert a.limit > 1


def test_new_measurements_queue_at_most_a_quarter_second_of_the_accounts_rate_and_the_rest_stay_pending():
    from gc_daemon.measure import Measurer

    source = GatedSource(held={f"{i}.vhd" for i in range(200)})  # every call waits for `release`
    m = Measurer(8, BilledBytesConfig(concurrency_initial=1, max_concurrency=1, max_requests_per_second=64))
    assert m.queue_cap == 64  # never fewer than 64 (a quarter second at 64 calls/s is 16)
    m.submit(source, [change(i) for i in range(200)])
    # Queued: the cap; in flight: at most the one the single thread may have taken already.
    assert 200 - 65 <= m.capped <= 200 - 64
    assert m.requests == 200 - m.capped
    source.release.set()
    (written,) = list(m.drain(deadline=None))
    assert sum(c.row.billed_bytes is not None for c in written) == m.requests
    assert m.pending == m.capped and len(source.calls) == m.requests
    m.close()
