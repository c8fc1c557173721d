"""Billed bytes off the critical path, end to end (Azurite, the ARM stand-in, the real SDKs): a pass
that runs out of its measuring budget marks its candidates anyway, their billed bytes pending (null in
JSON, empty in CSV, "pending" in the table, counted in vhdgc_billed_bytes_pending and at nominal size
in the wasted-bytes metrics); the next pass measures them, bound to their ETag. The budget is forced
with ``billed_bytes.max_per_pass`` (a count, not a time: deterministic)."""

from __future__ import annotations

import csv
import io

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from sandbox import arm as a
from sandbox import seed
from tests.support.estate import SUB
from tests.test_blobrest import storages

from gc_daemon.azure.storage import StorageError
from gc_daemon.domain import BlobKey

PAGE = 512
MIB = 1 << 20
NAMES = [f"left-{i}.vhd" for i in range(5)]


def written(i: int) -> int:
    return 4096 * (i + 1)


def scrape(gc) -> dict[tuple[str, tuple], float]:
    from gc_daemon.config import load_config
    from gc_daemon.metrics import Metrics
    from gc_daemon.wiring import open_store

    config = load_config(gc.config_path)
    text = generate_latest(Metrics(open_store(config), config).registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def seed_estate(gc) -> dict[str, str]:
    urls = {name: gc.page("vhds", name, written=[(0, written(i))]) for i, name in enumerate(NAMES)}
    in_use = gc.page("vhds", "web-os.vhd")
    gc.compute(a.vm(SUB, "rg1", "web", os_vhd=in_use))
    return urls


def test_a_pass_out_of_budget_marks_now_and_the_next_pass_measures_bound_to_the_etag(gc):
    urls = seed_estate(gc)
    gc.configure(billed_bytes={"max_per_pass": 2})

    first = gc.scan()

    assert first.outcome == "complete"
    assert (first.stats.billed_measured, first.stats.billed_pending) == (2, 3)
    report = gc.report()
    assert sorted(report) == sorted(urls.values())  # every orphan marked, measured or not
    assert {r["state"] for r in report.values()} == {"due"}
    billed = {name: report[url]["billed_bytes"] for name, url in urls.items()}
    measured = {n: b for n, b in billed.items() if b is not None}
    assert len(measured) == 2 and all(b == written(NAMES.index(n)) for n, b in measured.items())
    pending = sorted(n for n, b in billed.items() if b is None)
    assert len(pending) == 3

    # The table marks them, its totals say how many and how they count; CSV leaves the cell empty.
    table = gc.cli("report", "--kind", "vhd", "--format", "table").out
    rows = [line for line in table.splitlines() if "gcacct1/vhds/left-" in line]
    assert sorted(line.split()[-1].rsplit("/", 1)[-1] for line in rows if " pending " in line) == pending
    assert "(3 billed pending, counted at nominal size)" in table
    as_csv = {r["url"]: r for r in csv.DictReader(io.StringIO(gc.cli("report", "--kind", "vhd", "--format", "csv").out))}
    assert sorted(n for n, url in urls.items() if as_csv[url]["billed_bytes"] == "") == pending

    # The metrics: how many are pending, and the wasted bytes count them at nominal size (not as 0).
    m = scrape(gc)
    assert m[("vhdgc_billed_bytes_pending", (("account", "gcacct1"),))] == 3
    assert m[("vhdgc_orphan_billed_bytes", (("account", "gcacct1"), ("state", "due")))] == \
        sum(measured.values()) + 3 * MIB

    # One pending blob changes before the next pass: its recorded ETag no longer holds.
    changed = pending[0]
    seed.page_blob(gc.svc(), "vhds", changed, written=[(0, 3 * 4096), (8 * 4096, 4096)])
    gc.configure()  # no budget by count: the default time budget

    second = gc.scan()

    assert second.outcome == "complete"
    assert second.stats.billed_pending == 0
    report = gc.report()
    for i, name in enumerate(NAMES):
        assert report[urls[name]]["billed_bytes"] == (4 * 4096 if name == changed else written(i)), name
    m = scrape(gc)
    assert m[("vhdgc_billed_bytes_pending", (("account", "gcacct1"),))] == 0
    assert m[("vhdgc_orphan_billed_bytes", (("account", "gcacct1"), ("state", "due")))] == \
        sum(written(i) for i, n in enumerate(NAMES) if n != changed) + 4 * 4096
    assert "billed pending" not in gc.cli("report", "--kind", "vhd", "--format", "table").out


def test_a_pass_that_measures_nothing_still_marks_and_deletes_what_is_due(gc):
    """Deleting never waits for billed bytes: a due blob with none measured is deleted, re-verified as
    always, and its audit entry says its billed bytes were unknown."""
    urls = seed_estate(gc)
    gc.configure(mode="delete", billed_bytes={"max_per_pass": 0})

    result = gc.scan()

    assert result.outcome == "complete"
    assert (result.stats.billed_measured, result.stats.billed_pending) == (0, 5)
    assert result.stats.deleted == 5
    assert not any(gc.exists("vhds", n) for n in NAMES) and gc.exists("vhds", "web-os.vhd")
    audit = [r for r in gc.cli("audit", "--format", "json").json() if r["action"] == "deleted"]
    assert sorted(r["url"] for r in audit) == sorted(urls.values())
    assert all(r["billed_bytes"] is None and r["size_bytes"] == MIB for r in audit)
    assert scrape(gc).get(("vhdgc_billed_bytes_pending", (("account", "gcacct1"),))) == 0  # deleted: not pending


@pytest.mark.parametrize("reader", ["lean", "sdk"])
def test_a_measurement_is_bound_to_the_etag_it_was_made_for(azurite, reader):
    with azurite.service_client("gcacct1") as service:
        seed.page_blob(service, "vhds", "d.vhd", size=16 * PAGE, written=[(0, 2 * PAGE)])
        etag = service.get_blob_client("vhds", "d.vhd").get_blob_properties().etag
    storage = dict(zip(["lean", "sdk"], storages(azurite)))[reader]
    key = BlobKey("gcacct1", "vhds", "d.vhd")
    with storage:
        assert storage.billed_bytes(key, etag=etag) == 2 * PAGE
        with pytest.raises(StorageError) as err:
            storage.billed_bytes(key, etag='"0x8DEADBEEF000000"')
    assert err.value.code == "ConditionNotMet"
