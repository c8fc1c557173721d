"""The storage side, hardened (issue 11): a blob's age is counted on the storage service's clock, a
pass whose clock disagrees with the service's fails closed, and a listing that never ends fails
closed instead of stalling the pass. End to end, through the CLI where the local clock can stay
the real one: Azurite behind a proxy that moves its Date header (tests/support/dateshift.py) stands
for a service whose clock is not ours, and a canned account (tests/support/canned.py) for a service
whose listing never ends. Every incomplete pass must change nothing: tracked rows, audit log and
sequence are compared before and after (tests/support/faults.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from structlog.testing import capture_logs

from sandbox import arm as a
from sandbox.azurite import random_key
from tests.support.canned import Canned, containers, endless_listing
from tests.support.dateshift import DateShift
from tests.support.estate import SUB, Harness
from tests.support.faults import lost_records, snapshot_state

READERS = ["lean", "sdk"]
RG = "rg1"


@pytest.fixture
def dateshift(azurite) -> Iterator[DateShift]:
    """A DateShift in front of the session's Azurite."""
    proxy = DateShift(azurite.blob_endpoint("gcacct1").rsplit("/", 1)[0])
    yield proxy
    proxy.close()


def accounts(gc: Harness, gcacct1: str | None = None, *extra: dict) -> list[dict]:
    """gcacct1 at ``gcacct1`` (default: Azurite itself), gcacct2 at Azurite, and ``extra``."""
    return [
        {"name": "gcacct1", "blob_endpoint": gcacct1 or gc.azurite.blob_endpoint("gcacct1"), "key_env": "GCACCT1_KEY"},
        {"name": "gcacct2", "blob_endpoint": gc.azurite.blob_endpoint("gcacct2"), "key_env": "GCACCT2_KEY"},
        *extra,
    ]


def estate(gc: Harness) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """A referenced VHD and a leftover in each account: (account, container, blob) lists."""
    in_use = [("gcacct1", "vhds", "vm1-os.vhd"), ("gcacct2", "vhds", "vm2-os.vhd")]
    left = [("gcacct1", "vhds", "left1.vhd"), ("gcacct2", "vhds", "left2.vhd")]
    for account, container, blob in in_use + left:
        gc.page(container, blob, account=account)
    gc.compute(*(a.vm(SUB, RG, f"vm{i}", os_vhd=gc.url(c, b, account=acct)) for i, (acct, c, b) in enumerate(in_use, 1)))
    return in_use, left


def existing(gc: Harness, names: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    return [n for n in names if gc.exists(n[1], n[2], account=n[0])]


def by_blob(gc: Harness) -> dict[str, dict]:
    return {r["blob"]: r for r in gc.report().values()}


# --------------------------------------------------------------------------------------------------
# The clock: min_age on the service's time; a pass whose clock disagrees with it fails closed
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
def test_a_collector_clock_ahead_of_the_service_fails_the_scan_closed_with_exit_3(gc, dateshift, reader):
    """The service's clock an hour behind ours (as heard through the proxy): `scan` exits 3, names the
    account, both times and the limit, and changes nothing; once the clocks agree it converges."""
    in_use, left = estate(gc)
    azure = {"storage_reader": reader, "max_clock_skew": "5m",
             "storage_accounts": accounts(gc, dateshift.endpoint("gcacct1"))}
    gc.configure(mode="delete", min_sightings=2, azure=azure)
    run = gc.cli("scan")
    assert run.code == 0, run.err  # the clocks agree: a complete pass, the leftovers marked
    assert {r["state"] for r in by_blob(gc).values()} == {"candidate"}

    gc.configure(mode="delete", min_sightings=1, azure=azure)  # armed: a complete pass would delete
    dateshift.offset = -timedelta(hours=1)
    before = snapshot_state(gc.db_url)
    run = gc.cli("scan")
    assert run.code == 3, (run.out, run.err)
    assert lost_records(before, snapshot_state(gc.db_url)) == 0
    assert existing(gc, in_use + left) == in_use + left
    found = re.search(r"storage/gcacct1: clock skew: the storage service's time was (\S+) \(.*\), the local "
                      r"clock said (\S+) when that answer arrived: \S+ ahead of the service, over "
                      r"azure.max_clock_skew 5m", run.err)
    assert found, run.err
    service, local = (datetime.fromisoformat(t) for t in found.groups())
    assert timedelta(minutes=59) < local - service < timedelta(minutes=61)

    dateshift.offset = timedelta(0)
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert existing(gc, in_use + left) == in_use


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("shift", [timedelta(minutes=10), timedelta(minutes=-10)], ids=["ahead", "behind"])
def test_a_pass_whose_clock_is_off_by_more_than_max_clock_skew_is_incomplete(gc, reader, shift):
    """The collector's own clock moved (Azurite's is the real one), ahead or behind: incomplete,
    nothing written, nothing deleted."""
    in_use, left = estate(gc)
    azure = {"storage_reader": reader, "max_clock_skew": "5m"}
    gc.configure(mode="delete", min_sightings=2, azure=azure)
    assert gc.scan().outcome == "complete"  # the clocks agree: the leftovers marked
    gc.configure(mode="delete", min_sightings=1, azure=azure)  # armed: a complete pass would delete
    before = snapshot_state(gc.db_url)
    result = gc.scan(advance=shift)
    assert result.outcome == "incomplete"
    assert result.sources_failed == ["storage/gcacct1"]
    (error,) = result.errors
    direction = "ahead of" if shift > timedelta(0) else "behind"
    assert error.startswith("storage/gcacct1: clock skew:") and f"{direction} the service" in error
    assert "over azure.max_clock_skew 5m" in error
    assert lost_records(before, snapshot_state(gc.db_url)) == 0
    assert existing(gc, in_use + left) == in_use + left


@pytest.mark.parametrize("reader", READERS)
def test_a_blob_young_on_the_services_clock_is_not_a_candidate_whatever_the_local_clock_says(gc, reader):
    """min_age 1h, the collector's clock 90 minutes ahead (within the 2h limit), a blob uploaded just
    now: on the service's clock it is minutes old, too young; the local clock would call it 90
    minutes old and delete it (armed: grace 0s, one sighting)."""
    url = gc.page("uploads", "fresh.vhd")
    gc.configure(mode="delete", min_age="1h", azure={"storage_reader": reader, "max_clock_skew": "2h"})
    result = gc.scan(advance=timedelta(minutes=90))
    assert result.outcome == "complete", result.errors
    assert gc.exists("uploads", "fresh.vhd")
    assert gc.state(url) is None  # too young: not even a candidate


@pytest.mark.parametrize("reader", READERS)
def test_a_blob_old_on_the_services_clock_is_a_candidate_though_the_local_clock_is_behind(gc, dateshift, reader):
    """The other way round: the service's clock 90 minutes ahead of ours (within the limit). On its
    clock the blob is 90 minutes old, past min_age 1h: a candidate, though our clock says minutes."""
    gc.page("uploads", "aged.vhd")
    gc.configure(min_age="1h", grace_period="7d", azure={
        "storage_reader": reader, "max_clock_skew": "2h", "storage_accounts": accounts(gc, dateshift.endpoint("gcacct1"))})
    dateshift.offset = timedelta(minutes=90)
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert by_blob(gc)["aged.vhd"]["state"] == "candidate"


@pytest.mark.parametrize("reader", READERS)
def test_a_listing_answer_without_a_date_falls_back_to_the_local_clock_with_a_warning(gc, dateshift, reader):
    """No Date header: no service time to count on, and no clock to check. The pass completes as
    before this check existed: ages on the local clock (here 90 minutes ahead: the fresh blob is
    old enough) and a warning naming the account."""
    gc.page("uploads", "fresh.vhd")
    gc.configure(min_age="1h", grace_period="7d", azure={  # gcacct1 alone: gcacct2's answers have a Date
        "storage_reader": reader, "max_clock_skew": "5m", "storage_accounts": accounts(gc, dateshift.endpoint("gcacct1"))[:1]})
    dateshift.date = None
    with capture_logs() as logs:
        result = gc.scan(advance=timedelta(minutes=90))
    assert result.outcome == "complete", result.errors
    warnings = [e for e in logs if e["event"] == "service_time_missing"]
    assert [w["account"] for w in warnings] == ["gcacct1"] and warnings[0]["log_level"] == "warning"
    assert by_blob(gc)["fresh.vhd"]["state"] == "candidate"


@pytest.mark.parametrize("reader", READERS)
def test_a_listing_answer_with_an_unparseable_date_fails_the_scan_closed(gc, dateshift, reader):
    in_use, left = estate(gc)
    azure = {"storage_reader": reader, "storage_accounts": accounts(gc, dateshift.endpoint("gcacct1"))}
    gc.configure(mode="delete", min_sightings=2, azure=azure)
    assert gc.cli("scan").code == 0  # the leftovers marked
    gc.configure(mode="delete", min_sightings=1, azure=azure)
    dateshift.date = "about teatime"
    before = snapshot_state(gc.db_url)
    run = gc.cli("scan")
    assert run.code == 3, (run.out, run.err)
    assert "storage/gcacct1: StorageError: MalformedResponse: Date header 'about teatime' is not an HTTP date" in run.err
    assert lost_records(before, snapshot_state(gc.db_url)) == 0
    assert existing(gc, in_use + left) == in_use + left


# --------------------------------------------------------------------------------------------------
# Listings that never end
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def loop_account(gc, monkeypatch) -> Iterator[tuple[Canned, dict]]:
    """A third account, gcloop, served by a canned storage service (its container list: vhds)."""
    server = Canned(account="gcloop")
    monkeypatch.setenv("GCLOOP_KEY", random_key())
    yield server, {"name": "gcloop", "blob_endpoint": server.endpoint, "key_env": "GCLOOP_KEY"}
    server.close()


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    "marker, code, limit, shown",
    [
        (lambda n: "2!B!MDAwMDA0IWQudmhk", "ListingLoop", 10_000, "'2!B!MDAwMDA0IWQudmhk'"),  # the same marker forever
        (lambda n: f"page-{n + 1}", "ListingTooLong", 5, "'page-6'"),  # ever-new markers, past the limit
    ],
    ids=["repeated-marker", "past-max-list-pages"],
)
def test_an_endless_blob_listing_fails_the_scan_closed_naming_the_account(gc, loop_account, reader, marker, code,
                                                                           limit, shown):
    server, gcloop = loop_account
    in_use, left = estate(gc)
    gc.configure(mode="delete", min_sightings=2, azure={"storage_reader": reader})
    assert gc.cli("scan").code == 0  # without gcloop: the leftovers marked

    server.respond = endless_listing(containers("vhds"), marker=marker)
    gc.configure(mode="delete", min_sightings=1, azure={
        "storage_reader": reader, "max_list_pages": limit, "storage_accounts": accounts(gc, None, gcloop)})
    before = snapshot_state(gc.db_url)
    run = gc.cli("scan")
    assert run.code == 3, (run.out, run.err)
    assert f"storage/gcloop: StorageError: {code}: container 'vhds':" in run.err and shown in run.err
    assert lost_records(before, snapshot_state(gc.db_url)) == 0
    assert existing(gc, in_use + left) == in_use + left
    assert len(server.requests) <= 1 + max(2, limit)  # it stopped at the repeat, or at the limit
