"""Prometheus metrics. What describes the estate is read from the state database at scrape time, so
it is right after a restart and the same on every replica; only what belongs to this process (pass
durations, inventory errors seen here, leadership) is kept in memory."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .config import Config
from .disk_cost import DiskPricesConfig, billed_bytes, disk_monthly_cost, snapshot_monthly_cost
from .cost import GIB, PREMIUM_SIZES_GIB, premium_billed_gib, premium_monthly_cost, standard_monthly_cost  # noqa: F401
from .domain import State

log = structlog.get_logger("vhd-gc.metrics")

ORPHAN_STATES = (State.CANDIDATE, State.DUE, State.KEPT)
ORPHAN_STATE_NAMES = frozenset(s.value for s in ORPHAN_STATES)


# -- managed disks and snapshots: a pure function over the stored rows -----------------------------


@dataclass(slots=True)
class DiskTotals:
    """The tracked disks (or snapshots) of one subscription, kind and state."""

    disks: int = 0
    size_bytes: int = 0  # provisioned bytes (a snapshot: its source disk's size)
    billed_bytes: int = 0  # what Azure bills: rounded up to the tier; rows whose bill is unknown add nothing
    monthly_cost: float = 0.0  # orphan states only (candidate, due, kept); unpriced rows add nothing
    unpriced: int = 0  # orphan rows whose SKU (or size) has no price


@dataclass(slots=True)
class QuarantineTotals:
    """The quarantine snapshots vhd-gc holds in one subscription (made before deleting a disk, kept
    until their quarantine has passed). Their bill is at most the deleted disk's provisioned size at
    the snapshot rate (an incremental snapshot bills the bytes it holds, which no listing reports)."""

    snapshots: int = 0
    size_bytes: int = 0
    monthly_cost: float = 0.0


def _value(v) -> str:
    return getattr(v, "value", v) or ""


def _row_bill(row, prices: DiskPricesConfig) -> tuple[int | None, float | None]:
    """(billed bytes, monthly cost) of one tracked row; None where unknown."""
    size, sku = row.size_bytes, row.sku
    if size is None:
        return None, None
    if _value(row.kind) == "snapshot":
        # An orphaned snapshot bills the bytes it holds; the listing gives only its source's size:
        # that is the bill's upper bound, and what a full snapshot of a full disk bills.
        zrs = bool(sku) and sku.upper().endswith("_ZRS")
        return size, snapshot_monthly_cost(prices, size, zrs=zrs)
    return (billed_bytes(sku, size) if sku else None), disk_monthly_cost(prices, sku, size)


def disk_totals(
    rows: Iterable, prices: DiskPricesConfig, now: datetime
) -> tuple[dict[tuple[str, str, str], DiskTotals], dict[str, QuarantineTotals]]:
    """Sum the stored disk and snapshot rows (:class:`gc_daemon.disks.DiskRow`, or anything with its
    attributes) into what the disk metrics export: per (subscription, kind, state), and the quarantine
    snapshots held per subscription (a row's ``quarantine_snapshot`` while ``quarantine_until`` is
    after ``now``; one without an end is held too). No I/O, no clock."""
    totals: dict[tuple[str, str, str], DiskTotals] = {}
    quarantine: dict[str, QuarantineTotals] = {}
    for row in rows:
        subscription, kind, state = (row.subscription or "").lower(), _value(row.kind), _value(row.state)
        t = totals.setdefault((subscription, kind, state), DiskTotals())
        t.disks += 1
        t.size_bytes += row.size_bytes or 0
        billed, cost = _row_bill(row, prices)
        t.billed_bytes += billed or 0
        if state in ORPHAN_STATE_NAMES:
            if cost is None:
                t.unpriced += 1
            else:
                t.monthly_cost += cost
        until = getattr(row, "quarantine_until", None)
        if getattr(row, "quarantine_snapshot", None) and (until is None or until > now):
            q = quarantine.setdefault(subscription, QuarantineTotals())
            q.snapshots += 1
            q.size_bytes += row.size_bytes or 0
            # Made without a SKU of its own: the standard snapshot rate, whatever the disk's SKU.
            q.monthly_cost += snapshot_monthly_cost(prices, row.size_bytes or 0) or 0.0
    return totals, quarantine


def disk_families(
    totals: dict[tuple[str, str, str], DiskTotals],
    quarantine: dict[str, QuarantineTotals],
    deleted: Iterable[tuple],
    currency: str,
) -> list:
    """The metric families of managed disks and snapshots, from :func:`disk_totals` and the store's
    ``disk_audit_totals("deleted")`` rows ((subscription, kind, entries, ...))."""
    labels = ["subscription", "kind", "state"]
    disks = GaugeMetricFamily(
        "vhdgc_orphan_disks", "Tracked managed disks and snapshots by subscription, kind and state", labels=labels
    )
    size = GaugeMetricFamily(
        "vhdgc_orphan_disk_bytes", "Provisioned bytes of tracked managed disks and snapshots", labels=labels
    )
    billed = GaugeMetricFamily(
        "vhdgc_orphan_disk_billed_bytes",
        "Bytes Azure bills for tracked disks (provisioned size rounded up to the tier) and snapshots (at most "
        "their source's size); rows of unknown SKU add nothing",
        labels=labels,
    )
    cost = GaugeMetricFamily(
        "vhdgc_orphan_disk_monthly_cost",
        f"Estimated monthly cost of orphaned managed disks and snapshots (candidate, due, kept), in {currency}",
        labels=labels,
    )
    unpriced = GaugeMetricFamily(
        "vhdgc_orphan_disks_unpriced",
        "Orphaned disks and snapshots (candidate, due, kept) whose SKU or size has no price: not in the cost",
        labels=labels,
    )
    for (subscription, kind, state), t in sorted(totals.items()):
        key = [subscription, kind, state]
        disks.add_metric(key, t.disks)
        size.add_metric(key, t.size_bytes)
        billed.add_metric(key, t.billed_bytes)
        if state in ORPHAN_STATE_NAMES:
            cost.add_metric(key, round(t.monthly_cost, 4))
            unpriced.add_metric(key, t.unpriced)
    q_count = GaugeMetricFamily(
        "vhdgc_quarantine_snapshots", "Quarantine snapshots vhd-gc holds (made before deleting a disk)",
        labels=["subscription"],
    )
    q_bytes = GaugeMetricFamily(
        "vhdgc_quarantine_snapshot_bytes", "Provisioned bytes of the disks the held quarantine snapshots were taken of",
        labels=["subscription"],
    )
    q_cost = GaugeMetricFamily(
        "vhdgc_quarantine_snapshot_monthly_cost",
        f"Upper bound of the monthly cost of the held quarantine snapshots, in {currency}",
        labels=["subscription"],
    )
    for subscription, q in sorted(quarantine.items()):
        q_count.add_metric([subscription], q.snapshots)
        q_bytes.add_metric([subscription], q.size_bytes)
        q_cost.add_metric([subscription], round(q.monthly_cost, 4))
    removed = CounterMetricFamily(
        "vhdgc_deleted_disks", "Managed disks and snapshots deleted by vhd-gc", labels=["subscription", "kind"]
    )
    counts: dict[tuple[str, str], int] = {}
    for subscription, kind, n, *_ in deleted:
        key = ((subscription or "").lower(), _value(kind))
        counts[key] = counts.get(key, 0) + n
    for key, n in sorted(counts.items()):
        removed.add_metric(list(key), n)
    return [disks, size, billed, cost, unpriced, q_count, q_bytes, q_cost, removed]


class StateCollector(Collector):
    """Gauges and counters derived from the stored state, computed at each scrape."""

    def __init__(self, store, config: Config, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.config = config
        self.clock = clock

    def describe(self):
        return []  # computed at scrape time; no fixed description needed for registration

    def collect(self):
        try:
            yield from self._collect()
        except Exception as exc:  # noqa: BLE001 - a scrape must never take the daemon down
            log.warning("metrics_state_unreadable", error=str(exc)[:200])
            g = GaugeMetricFamily("vhdgc_state_readable", "1 when the state database answered this scrape")
            g.add_metric([], 0)
            yield g
            return
        g = GaugeMetricFamily("vhdgc_state_readable", "1 when the state database answered this scrape")
        g.add_metric([], 1)
        yield g

    @staticmethod
    def _billed_pending(store, accounts: set[str]):
        """Orphaned page blobs marked before their billed bytes were measured (the next pass measures
        them); vhdgc_orphan_billed_bytes and vhdgc_wasted_monthly_cost count them at nominal size."""
        pending = GaugeMetricFamily(
            "vhdgc_billed_bytes_pending",
            "Orphaned page blobs whose billed bytes are not measured yet (counted at nominal size meanwhile)",
            labels=["account"],
        )
        found = {account: n for account, n, _ in store.billed_pending()} if hasattr(store, "billed_pending") else {}
        for account in sorted(accounts | set(found)):
            pending.add_metric([account], found.get(account, 0))
        return pending

    def _collect(self):
        store, config = self.store, self.config
        blobs = GaugeMetricFamily("vhdgc_orphan_blobs", "Tracked blobs by account and state", labels=["account", "state"])
        size = GaugeMetricFamily("vhdgc_orphan_size_bytes", "Nominal size of tracked blobs", labels=["account", "state"])
        billed = GaugeMetricFamily(
            "vhdgc_orphan_billed_bytes", "Bytes actually stored (written pages) of tracked blobs", labels=["account", "state"]
        )
        cost = GaugeMetricFamily(
            "vhdgc_wasted_monthly_cost",
            f"Estimated monthly cost of orphaned storage, in {config.prices.currency}",
            labels=["account", "state"],
        )
        premium: dict[tuple[str, str], list[tuple[int, int]]] = {}
        for account, state, size_bytes, billed_bytes in store.premium_rows(ORPHAN_STATES):
            premium.setdefault((account, state), []).append((size_bytes, billed_bytes))
        for account, state, n, size_sum, billed_sum in store.counts():
            blobs.add_metric([account, state], n)
            size.add_metric([account, state], size_sum)
            billed.add_metric([account, state], billed_sum)
            if state in {s.value for s in ORPHAN_STATES}:
                prem = premium.get((account, state), [])
                # Premium rows are priced on provisioned size; everything else on billed bytes.
                monthly = standard_monthly_cost(config.prices, billed_sum - sum(b for _, b in prem)) + sum(
                    premium_monthly_cost(config.prices, s) for s, _ in prem
                )
                cost.add_metric([account, state], round(monthly, 4))
        yield from (blobs, size, billed, cost)
        yield self._billed_pending(store, {account for account, *_ in store.counts()})

        deleted = CounterMetricFamily("vhdgc_deleted_blobs", "Blobs deleted by vhd-gc", labels=["account"])
        deleted_bytes = CounterMetricFamily("vhdgc_deleted_bytes", "Nominal bytes deleted by vhd-gc", labels=["account"])
        for account, n, size_sum in store.audit_totals("deleted"):
            deleted.add_metric([account], n)
            deleted_bytes.add_metric([account], size_sum)
        yield from (deleted, deleted_bytes)

        refused = CounterMetricFamily(
            "vhdgc_delete_refused", "Deletions refused at re-verification, by reason", labels=["reason"]
        )
        for reason, n, _ in store.audit_totals("delete-refused", by="error_code"):
            refused.add_metric([reason or "unknown"], n)
        yield refused
        failures = CounterMetricFamily("vhdgc_delete_failures", "Deletions that failed with an error", labels=["account"])
        for account, n, _ in store.audit_totals("delete-failed"):
            failures.add_metric([account], n)
        yield failures

        outcomes = store.pass_outcomes()
        passes_total = CounterMetricFamily("vhdgc_passes", "Passes by outcome", labels=["outcome"])
        for outcome in ("complete", "incomplete", "failed", "stopped"):
            passes_total.add_metric([outcome], outcomes.get(outcome, 0))
        yield passes_total

        last = store.last_complete_pass()
        ts = GaugeMetricFamily(
            "vhdgc_last_complete_pass_timestamp_seconds", "When the last complete pass finished (Unix time)"
        )
        ts.add_metric([], last.finished_at.timestamp() if last and last.finished_at else 0)
        yield ts

        refs = GaugeMetricFamily("vhdgc_references_seen", "References read by the last complete pass", labels=["kind"])
        seen = GaugeMetricFamily("vhdgc_blobs_seen", "Blobs listed by the last complete pass", labels=["account"])
        stats = (last.stats or {}) if last else {}
        for kind, n in sorted((stats.get("references_by_kind") or {}).items()):
            refs.add_metric([kind], n)
        for account, n in sorted((stats.get("blobs_by_account") or {}).items()):
            seen.add_metric([account], n)
        yield from (refs, seen)

        blocked = GaugeMetricFamily(
            "vhdgc_blast_radius_blocked", "1 while passes are held back by the blast-radius guard"
        )
        blocked.add_metric([], 1 if store.last_blocked_pass() is not None else 0)
        yield blocked

        oldest = store.oldest_orphaned((State.CANDIDATE, State.DUE))
        age = GaugeMetricFamily("vhdgc_oldest_candidate_age_seconds", "Age of the oldest candidate or due blob")
        age.add_metric([], max(0.0, (self.clock() - oldest).total_seconds()) if oldest else 0)
        yield age

        yield from self._disks()

    def _disks(self):
        """Managed disks and snapshots. Their cost needs the configured prices, which the store does
        not have, so the rows are read and summed here (:func:`disk_totals`). A store without the disk
        tables' queries (before their migration is wired) exports no disk series."""
        store = self.store
        if not hasattr(store, "disk_rows"):
            return
        totals, quarantine = disk_totals(store.disk_rows(), self.config.prices.disks, self.clock())
        deleted = store.disk_audit_totals("deleted") if hasattr(store, "disk_audit_totals") else []
        yield from disk_families(totals, quarantine, deleted, self.config.prices.currency)


class ArmBudgetCollector(Collector):
    """``vhdgc_arm_reads_remaining{subscription}``: what ARM's latest answer in each subscription said
    of the reads left (gc_daemon.azure.arm_budget). A subscription not read yet has no series."""

    def __init__(self, budget) -> None:
        self.budget = budget

    def describe(self):
        return []

    def collect(self):
        g = GaugeMetricFamily(
            "vhdgc_arm_reads_remaining",
            "Reads ARM allows before throttling, from its latest answer in the subscription "
            "(x-ms-ratelimit-remaining-subscription-reads)",
            labels=["subscription"],
        )
        for subscription, remaining in sorted(self.budget.remaining().items()):
            g.add_metric([subscription], remaining)
        yield g


class Metrics:
    """The registry of one process: state-derived families plus this process's own. ``arm_budget``:
    the ARM read budget whose counts are exported (the process's by default)."""

    def __init__(self, store, config: Config, arm_budget=None) -> None:
        from .azure.arm_budget import process_budget

        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(store, config))
        self.registry.register(ArmBudgetCollector(arm_budget if arm_budget is not None else process_budget()))
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.pass_duration = Histogram(
            "vhdgc_pass_duration_seconds",
            "Wall time of passes run by this process",
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
            registry=self.registry,
        )
        self.inventory_errors = Counter(
            "vhdgc_inventory_errors", "Inventory sources that failed in passes of this process", ["source"], registry=self.registry
        )
        self.interval = Gauge("vhdgc_interval_seconds", "Configured time between passes", registry=self.registry)
        self.interval.set(config.interval.total_seconds())
        self.dry_run = Gauge("vhdgc_dry_run", "1 in dry-run mode, 0 in delete mode", registry=self.registry)
        self.dry_run.set(1 if config.mode == "dry-run" else 0)
        self.disk_mode = Gauge(
            "vhdgc_disk_mode_info", "Always 1: managed_disks.mode (report: disks are never deleted)", ["mode"],
            registry=self.registry,
        )
        self.disk_mode.labels(mode=config.managed_disks.mode).set(1)
        self.leader = Gauge("vhdgc_leader", "1 on the replica that runs passes", registry=self.registry)
        self.build_info = Gauge(
            "vhdgc_build_info", "Always 1: the vhd-gc version and the Python that run this process",
            ["version", "python"], registry=self.registry,
        )
        self.build_info.labels(version=__version__, python=platform.python_version()).set(1)

    def observe(self, result) -> None:
        self.pass_duration.observe(result.duration)
        for source in getattr(result, "sources_failed", []) or []:
            self.inventory_errors.labels(source=source).inc()
