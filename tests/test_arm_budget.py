"""ARM's read budget: the real azure-mgmt clients against the ARM stand-in, which counts reads per
subscription and says what is left in ``x-ms-ratelimit-remaining-subscription-reads`` as ARM does.
The budget policy records it (the ``vhdgc_arm_reads_remaining`` gauge) and paces reads under the
reserve; the waiter is injected, so nothing sleeps."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gc_daemon.azure.arm_budget import ArmReadBudget, subscription_of
from gc_daemon.config import Config
from gc_daemon.metrics import Metrics
from gc_daemon.sources.inventory import arm_client_kwargs
from sandbox import arm as sb
from sandbox.arm_throttle import READS_HEADER
from tests.test_compute_inventory import S1, S2, full_estate, vm_estate

RESERVE = 100


class Waits(list):
    """The injected waiter: remembers each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def waits() -> Waits:
    return Waits()


@pytest.fixture
def budget(waits: Waits) -> ArmReadBudget:
    return ArmReadBudget(RESERVE, wait=waits)


def two_subscriptions(arm) -> None:
    estate1, _ = full_estate(S1)
    estate2, _ = vm_estate(S2, 3)
    arm.set_estate({"subscriptions": {**estate1["subscriptions"], **estate2["subscriptions"]}})


def reads_of(arm, sub: str) -> int:
    return sum(1 for method, path in arm.requests if method == "GET" and path.lower().startswith(f"/subscriptions/{sub}"))


def gauge(tmp_path, budget: ArmReadBudget) -> dict[str, float]:
    from gc_daemon.wiring import open_store

    config = Config.model_validate({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"subscriptions": [S1], "storage_accounts": [{"name": "gcacct1"}]},
    })
    text = generate_latest(Metrics(open_store(config), config, arm_budget=budget).registry).decode()
    return {s.labels["subscription"]: s.value for fam in text_string_to_metric_families(text)
            if fam.name == "vhdgc_arm_reads_remaining" for s in fam.samples}


# -- against the stand-in --------------------------------------------------------------------------


def test_the_stand_in_counts_reads_per_subscription_in_arms_header(arm):
    arm.read_budget.configure(size=50, refill=0)
    arm.set_estate(sb.build_estate(sb.vm(S1, "rg", "vm1"), sb.vm(S1, "rg", "vm2"), subscriptions=[S2]))
    from azure.mgmt.compute import ComputeManagementClient
    from gc_daemon.azure.credentials import EmulatorCredential

    kwargs = arm_client_kwargs(arm.url, arm.cert_path, 0, 10, budget=ArmReadBudget(reserve=0))
    seen: list[str | None] = []
    with ComputeManagementClient(EmulatorCredential(), S1, **kwargs) as client:
        hook = {"raw_response_hook": lambda r: seen.append(r.http_response.headers.get(READS_HEADER))}
        assert sorted(v.name for v in client.virtual_machines.list_all(**hook)) == ["vm1", "vm2"]  # 1 page of 2
        assert [v.name for v in client.virtual_machines.list_all(**hook)] == ["vm1", "vm2"]
    with ComputeManagementClient(EmulatorCredential(), S2, **kwargs) as client:
        assert list(client.virtual_machines.list_all(**hook)) == []
    assert seen == ["49", "48", "49"]  # each subscription counts its own
    assert (arm.read_budget.remaining(S1), arm.read_budget.remaining(S2)) == (48, 49)


def test_a_read_past_the_budget_is_throttled_as_arm_does(arm):
    arm.read_budget.configure(size=1, refill=0)
    arm.set_estate(sb.empty_estate(S1))
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.compute import ComputeManagementClient
    from gc_daemon.azure.credentials import EmulatorCredential

    kwargs = arm_client_kwargs(arm.url, arm.cert_path, 0, 10, budget=ArmReadBudget(reserve=0))
    with ComputeManagementClient(EmulatorCredential(), S1, **kwargs) as client:
        assert list(client.virtual_machines.list_all()) == []
        with pytest.raises(HttpResponseError) as err:
            list(client.virtual_machines.list_all())
    assert err.value.status_code == 429 and err.value.error.code == "SubscriptionRequestsThrottled"
    assert err.value.response.headers["Retry-After"] == "3600"
    assert err.value.response.headers[READS_HEADER] == "0"
    assert arm.read_budget.throttled == [S1]


def test_after_a_pass_the_gauge_shows_what_arm_said_last_per_subscription(arm, compute_inventory, budget, waits,
                                                                          tmp_path):
    arm.read_budget.configure(size=5000, refill=0)
    two_subscriptions(arm)

    # One read at a time: with several in flight, the answer recorded last need not be the one sent last.
    read = compute_inventory([S1, S2], arm_budget=budget, max_workers=1).read()

    assert read.errors == []
    expected = {S1: 5000 - reads_of(arm, S1), S2: 5000 - reads_of(arm, S2)}
    assert reads_of(arm, S1) > 10 and reads_of(arm, S2) > 5  # every source of the estate, paged by 2
    assert expected == {S1: arm.read_budget.remaining(S1), S2: arm.read_budget.remaining(S2)}
    assert budget.remaining() == expected
    assert gauge(tmp_path, budget) == expected
    assert waits == []  # far above the reserve: nothing waited


def test_with_a_high_budget_a_pass_never_waits(arm, compute_inventory, budget, waits):
    two_subscriptions(arm)  # the stand-in's default: 12,000 reads
    read = compute_inventory([S1, S2], arm_budget=budget).read()
    assert read.errors == []
    assert waits == [] and budget.waits == 0
    assert set(budget.remaining()) == {S1, S2} and min(budget.remaining().values()) > 11_000
    assert arm.read_budget.throttled == []


def test_under_the_reserve_every_read_waits_in_proportion_and_nothing_is_throttled(arm, compute_inventory, budget,
                                                                                   waits):
    size = 60  # under the reserve from the first answer; more than the pass reads: no 429 is due
    arm.read_budget.configure(size=size, refill=0)
    two_subscriptions(arm)

    # One read at a time, so each read sees the answer of the one before it.
    read = compute_inventory([S1, S2], arm_budget=budget, max_workers=1).read()

    assert read.errors == []
    assert arm.read_budget.throttled == [] and not any(" 429" in str(e) for e in read.errors)
    n1, n2 = reads_of(arm, S1), reads_of(arm, S2)
    assert 10 < n1 < size and 5 < n2 < size, (n1, n2)
    # A subscription's first read knows nothing yet; the k-th after it saw (size - k) reads left and
    # waited (reserve - left) / reserve seconds (max_wait is 1 s).
    expected = [(RESERVE - (size - k)) / RESERVE for n in (n1, n2) for k in range(1, n)]
    assert sorted(waits) == pytest.approx(sorted(expected))
    assert all(0 < w <= 1.0 for w in waits)
    assert budget.waits == len(waits) == n1 + n2 - 2
    assert budget.remaining() == {S1: size - n1, S2: size - n2}


def test_the_discovery_client_carries_the_policy(arm, budget, waits):
    from gc_daemon.azure.discovery import AccountDiscovery
    from gc_daemon.azure.credentials import EmulatorCredential

    arm.read_budget.configure(size=30, refill=0)
    arm.set_estate(sb.build_estate(sb.storage_account(S1, "rg", "acct1"), sb.storage_account(S1, "rg", "acct2")))
    discovery = AccountDiscovery(EmulatorCredential(), arm.url, [S1], connection_verify=arm.cert_path, retry_total=0,
                                 timeout=10, budget=budget)
    found = discovery.discover()
    assert found.errors == [] and sorted(a.name for a in found.accounts) == ["acct1", "acct2"]
    assert budget.remaining() == {S1: 30 - reads_of(arm, S1)}
    assert reads_of(arm, S1) == 1 and waits == []  # one page: nothing known before it
    found = discovery.discover()
    assert waits == [pytest.approx((RESERVE - 29) / RESERVE)]


# -- the pace, on its own ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_wait_grows_from_nothing_at_the_reserve_to_max_wait_at_zero_and_no_further():
    budget = ArmReadBudget(100)
    assert [budget.delay(n) for n in (250, 100, 99, 50, 1, 0, -3)] == pytest.approx([0, 0, 0.01, 0.5, 0.99, 1, 1])
    assert ArmReadBudget(0).delay(0) == 0  # a reserve of 0 never waits
    assert ArmReadBudget(100, max_wait=0.25).delay(0) == 0.25


def test_reads_in_flight_count_against_the_last_answer_until_the_next_one(waits):
    clock = Clock()
    budget = ArmReadBudget(100, wait=waits, clock=clock)
    assert budget.before_read("s") == 0  # nothing known
    budget.observe("s", 60)
    budget.before_read("s"), budget.before_read("s"), budget.before_read("s")  # three sent, no answer yet
    assert waits == pytest.approx([0.40, 0.41, 0.42])
    budget.observe("s", 90)
    assert budget.before_read("s") == pytest.approx(0.10)
    assert budget.remaining() == {"s": 90}


def test_a_count_older_than_stale_after_is_not_waited_on(waits):
    clock = Clock()
    budget = ArmReadBudget(100, wait=waits, clock=clock, stale_after=10)
    budget.observe("s", 0)
    clock.now += 10.5  # ARM's bucket has refilled by now
    assert budget.before_read("s") == 0 and waits == []
    assert budget.remaining() == {"s": 0}  # the gauge still shows what ARM said last


def test_only_subscription_scoped_requests_are_counted():
    assert subscription_of(f"https://management.azure.com/subscriptions/{S1.upper()}/providers/x?api-version=1") == S1
    assert subscription_of(f"https://management.azure.com/subscriptions/{S1}") == S1
    assert subscription_of("https://management.azure.com/subscriptions?api-version=2022-12-01") is None
    assert subscription_of("https://management.azure.com/providers/Microsoft.Compute?api-version=1") is None


def test_the_stand_in_as_a_process_takes_its_budget_from_flags_and_control(tmp_path):
    import json
    import os
    import signal
    import ssl
    import subprocess
    import sys
    import urllib.error
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.arm", "--port", "0", "--cert-dir", str(tmp_path / "cert"),
         "--read-budget", "2", "--read-refill", "0"],
        cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        line = proc.stdout.readline().split()
        assert line[0] == "READY", line
        url, ctx = line[1], ssl.create_default_context(cafile=line[2])

        def get(path: str, method: str = "GET", payload=None) -> tuple[int, str | None]:
            data = json.dumps(payload).encode() if payload is not None else None
            req = urllib.request.Request(url + path, data=data, method=method, headers={"Authorization": "Bearer t"})
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
                    return resp.status, resp.headers.get(READS_HEADER)
            except urllib.error.HTTPError as err:
                return err.code, err.headers.get(READS_HEADER)

        vms = f"/subscriptions/{S1}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01"
        get("/_control/estate", "PUT", sb.empty_estate(S1))
        assert [get(vms) for _ in range(3)] == [(200, "1"), (200, "0"), (429, "0")]
        get("/_control/read_budget", "PUT", {"size": 10})
        assert get(vms) == (200, "9")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
