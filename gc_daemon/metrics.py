"""Prometheus metrics. What describes the estate is read from the state database at scrape time, so
it is right after a restart and the same on every replica; only what belongs to this process (pass
durations, inventory errors seen here, leadership) is kept in memory."""

from __future__ import annotations

import platform
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import __version__
from .config import Config
from .cost import GIB, PREMIUM_SIZES_GIB, premium_billed_gib, premium_monthly_cost, standard_monthly_cost  # noqa: F401
from .domain import State

log = structlog.get_logger("vhd-gc.metrics")

ORPHAN_STATES = (State.CANDIDATE, State.DUE, State.KEPT)


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


class Metrics:
    """The registry of one process: state-derived families plus this process's own."""

    def __init__(self, store, config: Config) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(store, config))
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
