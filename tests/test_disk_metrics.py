"""The managed-disk metrics: what the stored disk and snapshot rows add up to (a pure function, priced
with the configured table), the families a scrape exports, and the same over a real state store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gc_daemon.config import Config
from gc_daemon.disk_cost import GIB, DiskPricesConfig
from gc_daemon.disks import DiskChange, DiskHold, DiskRow, Kind
from gc_daemon.domain import State
from gc_daemon.metrics import DiskTotals, Metrics, QuarantineTotals, disk_families, disk_totals

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SUB_A = "00000000-0000-0000-0000-00000000000a"
SUB_B = "00000000-0000-0000-0000-00000000000b"
PRICES = DiskPricesConfig()


def row(name: str, state: State, sku: str | None, size_gib: float | None, sub: str = SUB_A,
        kind: Kind = Kind.MANAGED_DISK, **kw) -> DiskRow:
    provider = "disks" if kind is Kind.MANAGED_DISK else "snapshots"
    return DiskRow(
        id=f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/{provider}/{name}",
        kind=kind, state=state, first_orphaned_at=NOW - timedelta(days=10), delete_after=NOW - timedelta(days=3),
        streak_start=1, subscription=sub, resource_group="rg", name=name, sku=sku,
        size_bytes=None if size_gib is None else int(size_gib * GIB), **kw,
    )


def estate(now: datetime) -> list[DiskRow]:
    return [
        # Premium 100 GiB bills as P10 (128 GiB); 200 GiB as P15 (256 GiB).
        row("p100", State.CANDIDATE, "Premium_LRS", 100),
        row("p200", State.CANDIDATE, "Premium_LRS", 200),
        # Standard SSD 4 GiB bills as E1; Standard HDD 4 GiB as S4 (32 GiB: HDD has no smaller size).
        row("e4", State.DUE, "StandardSSD_LRS", 4),
        row("s4", State.KEPT, "Standard_LRS", 4, hold=DiskHold.KUBERNETES),
        # A SKU without a price: counted, its provisioned bytes too, but neither billed nor priced.
        row("odd", State.CANDIDATE, "Future_LRS", 50),
        # An orphaned snapshot: at most its source's size, at the zone-redundant snapshot rate.
        row("snap", State.DUE, "Standard_ZRS", 64, kind=Kind.SNAPSHOT),
        # Deleted disks: one whose quarantine snapshot is still held, one whose quarantine has passed.
        row("gone", State.DELETED, "Premium_LRS", 32, quarantine_snapshot="/subscriptions/x/snapshots/q1",
            quarantine_until=now + timedelta(days=20)),
        row("long-gone", State.DELETED, "Premium_LRS", 32, quarantine_snapshot="/subscriptions/x/snapshots/q0",
            quarantine_until=now - timedelta(seconds=1)),
        # Released (10 GiB bills as P3, 16 GiB), in another subscription spelled in capitals: labels are
        # lower-cased.
        row("back", State.RELEASED, "Premium_LRS", 10, sub=SUB_B.upper()),
    ]


ESTATE = estate(NOW)


def test_disk_totals_price_each_row_as_azure_bills_it():
    totals, quarantine = disk_totals(ESTATE, PRICES, NOW)
    assert totals == {
        (SUB_A, "managed_disk", "candidate"): DiskTotals(
            disks=3, size_bytes=350 * GIB, billed_bytes=(128 + 256) * GIB,
            monthly_cost=PRICES.premium_lrs["P10"] + PRICES.premium_lrs["P15"], unpriced=1,
        ),
        (SUB_A, "managed_disk", "due"): DiskTotals(
            disks=1, size_bytes=4 * GIB, billed_bytes=4 * GIB, monthly_cost=PRICES.standard_ssd_lrs["E1"],
        ),
        (SUB_A, "managed_disk", "kept"): DiskTotals(
            disks=1, size_bytes=4 * GIB, billed_bytes=32 * GIB, monthly_cost=PRICES.standard_hdd_lrs["S4"],
        ),
        (SUB_A, "snapshot", "due"): DiskTotals(
            disks=1, size_bytes=64 * GIB, billed_bytes=64 * GIB, monthly_cost=64 * PRICES.snapshot_zrs_gb_month,
        ),
        # Deleted and released rows are counted, never priced.
        (SUB_A, "managed_disk", "deleted"): DiskTotals(disks=2, size_bytes=64 * GIB, billed_bytes=64 * GIB),
        (SUB_B, "managed_disk", "released"): DiskTotals(disks=1, size_bytes=10 * GIB, billed_bytes=16 * GIB),
    }
    assert quarantine == {
        SUB_A: QuarantineTotals(snapshots=1, size_bytes=32 * GIB, monthly_cost=32 * PRICES.snapshot_gb_month),
    }


def test_a_row_without_size_or_sku_is_unpriced_and_adds_no_bytes():
    totals, quarantine = disk_totals(
        [row("nosize", State.CANDIDATE, "Premium_LRS", None), row("nosku", State.KEPT, None, 8)], PRICES, NOW
    )
    assert totals == {
        (SUB_A, "managed_disk", "candidate"): DiskTotals(disks=1, unpriced=1),
        (SUB_A, "managed_disk", "kept"): DiskTotals(disks=1, size_bytes=8 * GIB, unpriced=1),
    }
    assert quarantine == {}


def test_the_configured_prices_are_the_ones_used():
    prices = DiskPricesConfig(premium_lrs={**PRICES.premium_lrs, "P10": 100.0}, snapshot_gb_month=1.0)
    totals, quarantine = disk_totals([ESTATE[0], ESTATE[6]], prices, NOW)
    assert totals[(SUB_A, "managed_disk", "candidate")].monthly_cost == 100.0
    assert quarantine[SUB_A].monthly_cost == 32.0


def samples(families) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for fam in families for s in fam.samples}


def labels(sub: str, kind: str, state: str | None = None) -> tuple:
    found = {"subscription": sub, "kind": kind} | ({"state": state} if state else {})
    return tuple(sorted(found.items()))


def test_disk_families_export_the_contract_and_the_cost_series():
    totals, quarantine = disk_totals(ESTATE, PRICES, NOW)
    deleted = [(SUB_A, "managed_disk", 2, 64 * GIB), (SUB_A.upper(), "managed_disk", 1, 0), (SUB_B, "snapshot", 1, 0)]
    m = samples(disk_families(totals, quarantine, deleted, "EUR"))
    cand = labels(SUB_A, "managed_disk", "candidate")
    assert m[("vhdgc_orphan_disks", cand)] == 3
    assert m[("vhdgc_orphan_disk_bytes", cand)] == 350 * GIB
    assert m[("vhdgc_orphan_disk_billed_bytes", cand)] == 384 * GIB
    assert m[("vhdgc_orphan_disk_monthly_cost", cand)] == round(PRICES.premium_lrs["P10"] + PRICES.premium_lrs["P15"], 4)
    assert m[("vhdgc_orphan_disks_unpriced", cand)] == 1
    assert m[("vhdgc_orphan_disks_unpriced", labels(SUB_A, "snapshot", "due"))] == 0
    gone = labels(SUB_A, "managed_disk", "deleted")
    assert m[("vhdgc_orphan_disks", gone)] == 2
    assert ("vhdgc_orphan_disk_monthly_cost", gone) not in m and ("vhdgc_orphan_disks_unpriced", gone) not in m
    assert m[("vhdgc_orphan_disks", labels(SUB_B, "managed_disk", "released"))] == 1
    sub_a = (("subscription", SUB_A),)
    assert m[("vhdgc_quarantine_snapshots", sub_a)] == 1
    assert m[("vhdgc_quarantine_snapshot_bytes", sub_a)] == 32 * GIB
    assert m[("vhdgc_quarantine_snapshot_monthly_cost", sub_a)] == round(32 * PRICES.snapshot_gb_month, 4)
    # The counter's rows of one subscription in two spellings are one series.
    assert m[("vhdgc_deleted_disks_total", labels(SUB_A, "managed_disk"))] == 3
    assert m[("vhdgc_deleted_disks_total", labels(SUB_B, "snapshot"))] == 1
    assert {name for name, _ in m} == {
        "vhdgc_orphan_disks", "vhdgc_orphan_disk_bytes", "vhdgc_orphan_disk_billed_bytes",
        "vhdgc_orphan_disk_monthly_cost", "vhdgc_orphan_disks_unpriced", "vhdgc_quarantine_snapshots",
        "vhdgc_quarantine_snapshot_bytes", "vhdgc_quarantine_snapshot_monthly_cost", "vhdgc_deleted_disks_total",
    }
    cost_help = [f.documentation for f in disk_families(totals, quarantine, deleted, "EUR")
                 if f.name == "vhdgc_orphan_disk_monthly_cost"]
    assert cost_help and "EUR" in cost_help[0]


# -- over the real state store ------------------------------------------------------------------


def config_for(tmp_path, **overrides) -> Config:
    return Config.model_validate({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"subscriptions": [SUB_A], "storage_accounts": [{"name": "gcacct1"}]},
        **overrides,
    })


def scrape(config: Config, store) -> dict[tuple[str, tuple], float]:
    text = generate_latest(Metrics(store, config).registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@pytest.mark.parametrize("mode", ["report", "delete"])
def test_the_disk_mode_is_exported_and_a_scrape_reads_the_store(tmp_path, mode):
    from gc_daemon.wiring import open_store

    config = config_for(tmp_path, managed_disks={"mode": mode})
    m = scrape(config, open_store(config))
    assert m[("vhdgc_disk_mode_info", (("mode", mode),))] == 1
    assert [k for k in m if k[0] == "vhdgc_disk_mode_info"] == [("vhdgc_disk_mode_info", (("mode", mode),))]
    assert m[("vhdgc_state_readable", ())] == 1
    # Nothing tracked yet (or a store without the disk tables): no disk series.
    assert not [k for k in m if k[0].startswith(("vhdgc_orphan_disk", "vhdgc_quarantine", "vhdgc_deleted_disks"))]


def test_the_disk_metrics_read_what_the_store_holds(tmp_path):
    from gc_daemon.wiring import open_store

    config = config_for(tmp_path, prices={"currency": "EUR"})
    store = open_store(config)
    needed = ("disk_rows", "disk_audit_totals", "audit_disk")
    if not all(hasattr(store, name) for name in needed):
        pytest.skip("the store has no managed-disk queries yet (branch i13-state)")
    rows = estate(datetime.now(UTC))
    with store.transaction() as tx:
        tx.apply_disks([DiskChange(r, "marked") for r in rows])
    for r in rows:
        if r.state is State.DELETED:
            store.audit_disk(action="deleted", resource_id=r.id, kind=r.kind.value, subscription=r.subscription,
                             at=NOW, actor="test", size_bytes=r.size_bytes)
    m = scrape(config, store)
    assert m[("vhdgc_state_readable", ())] == 1
    # The store's rows as they are read back: the pure function over them is what is exported.
    totals, quarantine = disk_totals(list(store.disk_rows()), PRICES, datetime.now(UTC))
    expected = samples(disk_families(totals, quarantine, store.disk_audit_totals("deleted"), "EUR"))
    assert {k: v for k, v in m.items() if k in expected} == expected
    assert m[("vhdgc_orphan_disks", labels(SUB_A, "managed_disk", "candidate"))] == 3
    assert m[("vhdgc_orphan_disk_billed_bytes", labels(SUB_A, "managed_disk", "candidate"))] == 384 * GIB
    assert m[("vhdgc_orphan_disks_unpriced", labels(SUB_A, "managed_disk", "candidate"))] == 1
    assert m[("vhdgc_orphan_disks", labels(SUB_B, "managed_disk", "released"))] == 1
    assert m[("vhdgc_deleted_disks_total", labels(SUB_A, "managed_disk"))] == 2
    assert m[("vhdgc_quarantine_snapshots", (("subscription", SUB_A),))] == 1  # "gone"; "long-gone" is over


def test_every_disk_metric_is_documented_and_known_to_the_deploy_checks():
    from pathlib import Path

    from tests.test_deploy import KNOWN_METRICS

    root = Path(__file__).resolve().parents[1]
    contract = (root / "docs" / "contract.md").read_text()
    operations = (root / "docs" / "operations.md").read_text()
    totals, quarantine = disk_totals(ESTATE, PRICES, NOW)
    names = {s.name for f in disk_families(totals, quarantine, [(SUB_A, "managed_disk", 1)], "USD") for s in f.samples}
    names.add("vhdgc_disk_mode_info")
    assert len(names) == 10
    for name in names:
        assert name in KNOWN_METRICS, name
        assert f"`{name}`" in contract, f"{name} missing from docs/contract.md"
        assert name in operations, f"{name} missing from docs/operations.md"


def test_a_quarantine_snapshot_is_priced_at_the_standard_snapshot_rate_whatever_the_disk_sku():
    zrs = row("zrs-gone", State.DELETED, "Premium_ZRS", 100, quarantine_snapshot="/subscriptions/x/snapshots/q2",
              quarantine_until=None)
    _, quarantine = disk_totals([zrs], PRICES, NOW)
    assert quarantine == {SUB_A: QuarantineTotals(snapshots=1, size_bytes=100 * GIB,
                                                  monthly_cost=100 * PRICES.snapshot_gb_month)}
