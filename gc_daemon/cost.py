"""What orphaned storage costs a month, from the configuration's ``prices``: one computation for the
metrics (summed by account and state) and the report (per blob)."""

from __future__ import annotations

GIB = 1024**3
# Unmanaged premium disks bill the provisioned size rounded up to the next premium disk size (GiB).
PREMIUM_SIZES_GIB = (32, 64, 128, 256, 512, 1024, 2048, 4095, 8192, 16384, 32767)


def premium_billed_gib(size_bytes: int) -> int:
    gib = size_bytes / GIB
    for size in PREMIUM_SIZES_GIB:
        if gib <= size:
            return size
    return PREMIUM_SIZES_GIB[-1]


def is_premium(tier: str | None) -> bool:
    """Premium page blobs carry their disk size as their tier: P10, P20, ..."""
    return bool(tier) and tier.startswith("P")


def standard_monthly_cost(prices, billed_bytes: int) -> float:
    """Standard page blobs bill the pages written: billed bytes x price per GiB-month."""
    return billed_bytes / GIB * prices.standard_gb_month


def premium_monthly_cost(prices, size_bytes: int) -> float:
    """Premium page blobs bill the provisioned size, rounded up to a premium disk size."""
    return premium_billed_gib(size_bytes) * prices.premium_gb_month


def blob_monthly_cost(prices, size_bytes: int, billed_bytes: int | None, tier: str | None) -> float | None:
    """One blob's monthly cost (``prices``: gc_daemon.config.PricesConfig); None when it bills on
    written pages and those were not measured."""
    if is_premium(tier):
        return premium_monthly_cost(prices, size_bytes)
    if billed_bytes is None:
        return None
    return standard_monthly_cost(prices, billed_bytes)
