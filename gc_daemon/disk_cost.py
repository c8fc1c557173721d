"""What an unattached managed disk and a snapshot cost a month: pure arithmetic over a price table.

Azure bills a Premium SSD (P), Standard SSD (E) or Standard HDD (S) managed disk by its provisioned
size rounded up to the next disk tier, whatever was written (AZURE-NOTES, "Managed disks left
behind"). Premium SSD v2 bills the provisioned GiB; Ultra Disk the provisioned size rounded up to
its next size (4, 8, 16, ... 512 GiB, then whole TiB). Both also bill provisioned IOPS and throughput,
which this model leaves out (an estimate from below). An incremental snapshot bills the bytes it
holds at the snapshot rate.

:class:`DiskPricesConfig` is the proposed ``prices.disks`` section of the configuration, kept here,
apart from gc_daemon/config.py, until the wiring adds it there (existing ``prices`` keys unchanged).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

GIB = 1024**3

# Tier number -> size in GiB (Azure's managed disk sizes; the largest is 32,767 GiB, not 32,768).
TIER_SIZES_GIB: dict[int, int] = {
    1: 4, 2: 8, 3: 16, 4: 32, 6: 64, 10: 128, 15: 256, 20: 512, 30: 1024, 40: 2048, 50: 4096,
    60: 8192, 70: 16384, 80: 32767,
}
MAX_TIERED_GIB = TIER_SIZES_GIB[80]
# Standard HDD has no S1, S2, S3: its smallest size is S4 (32 GiB), so a 4 GiB HDD bills as S4.
FAMILY_TIERS: dict[str, tuple[int, ...]] = {
    "P": tuple(TIER_SIZES_GIB),
    "E": tuple(TIER_SIZES_GIB),
    "S": tuple(t for t in TIER_SIZES_GIB if t >= 4),
}
# The SKU of a disk (its sku.name) -> the tier family it bills in.
TIERED_SKUS: dict[str, str] = {
    "Premium_LRS": "P",
    "Premium_ZRS": "P",
    "StandardSSD_LRS": "E",
    "StandardSSD_ZRS": "E",
    "Standard_LRS": "S",
}
PER_GIB_SKUS = ("PremiumV2_LRS", "UltraSSD_LRS")
ULTRA_SMALL_SIZES_GIB = (4, 8, 16, 32, 64, 128, 256, 512)
ULTRA_MAX_GIB = 65536


def tier_names(family: str) -> tuple[str, ...]:
    return tuple(f"{family}{n}" for n in FAMILY_TIERS[family])


def billed_tier(sku: str, size_bytes: int) -> tuple[str, int] | None:
    """The tier Azure bills a disk of this SKU and provisioned size in, and that tier's GiB: the
    smallest tier at least as large. None for a SKU that is not tiered, or a size above 32,767 GiB."""
    family = TIERED_SKUS.get(sku)
    if family is None or size_bytes < 0:
        return None
    for n in FAMILY_TIERS[family]:
        gib = TIER_SIZES_GIB[n]
        if size_bytes <= gib * GIB:
            return f"{family}{n}", gib
    return None


def ultra_billed_gib(size_bytes: int) -> int | None:
    """Ultra Disk: the next of 4, 8, ... 512 GiB, then the next whole TiB, up to 64 TiB."""
    if size_bytes < 0:
        return None
    for gib in ULTRA_SMALL_SIZES_GIB:
        if size_bytes <= gib * GIB:
            return gib
    tib = -(-size_bytes // (1024 * GIB))  # ceil
    gib = tib * 1024
    return gib if gib <= ULTRA_MAX_GIB else None


def billed_bytes(sku: str, size_bytes: int) -> int | None:
    """The provisioned bytes Azure bills (rounded up as it rounds), None when unknown."""
    tier = billed_tier(sku, size_bytes)
    if tier is not None:
        return tier[1] * GIB
    if sku == "UltraSSD_LRS":
        gib = ultra_billed_gib(size_bytes)
        return None if gib is None else gib * GIB
    if sku == "PremiumV2_LRS":
        return -(-size_bytes // GIB) * GIB if size_bytes >= 0 else None
    return None


def disk_monthly_cost(prices: "DiskPricesConfig", sku: str | None, size_bytes: int) -> float | None:
    """One managed disk's monthly cost by SKU and provisioned size; None for an unknown SKU or size
    (the report says unknown rather than guess). IOPS/throughput of v2 and Ultra are not modelled."""
    if sku is None:
        return None
    tier = billed_tier(sku, size_bytes)
    if tier is not None:
        table = prices.table(sku)
        return None if table is None else table.get(tier[0])
    if sku in PER_GIB_SKUS:
        gib_bytes = billed_bytes(sku, size_bytes)
        if gib_bytes is None:
            return None
        rate = prices.premium_v2_gb_month if sku == "PremiumV2_LRS" else prices.ultra_gb_month
        return gib_bytes / GIB * rate
    return None


def snapshot_monthly_cost(prices: "DiskPricesConfig", used_bytes: int | None, zrs: bool = False) -> float | None:
    """An (incremental) snapshot bills the bytes it holds at the snapshot rate; None if not measured."""
    if used_bytes is None or used_bytes < 0:
        return None
    return used_bytes / GIB * (prices.snapshot_zrs_gb_month if zrs else prices.snapshot_gb_month)


# --- the proposed `prices.disks` configuration ---------------------------------------------------

# Defaults: pay-as-you-go list prices in USD per month, region East US, as the author recalled them
# for mid-2024 (Azure's managed-disks pricing page). They are an illustration, not a quote: prices
# differ by region, currency, agreement and date, and MUST be configured for a real estimate.
_PREMIUM_LRS = {
    "P1": 0.77, "P2": 1.54, "P3": 3.01, "P4": 5.28, "P6": 10.21, "P10": 19.71, "P15": 38.01, "P20": 73.22,
    "P30": 135.17, "P40": 259.05, "P50": 495.57, "P60": 946.08, "P70": 1802.06, "P80": 3604.11,
}
_STANDARD_SSD_LRS = {
    "E1": 0.30, "E2": 0.60, "E3": 1.20, "E4": 2.40, "E6": 4.80, "E10": 9.60, "E15": 19.20, "E20": 38.40,
    "E30": 76.80, "E40": 153.60, "E50": 307.20, "E60": 614.40, "E70": 1228.80, "E80": 2457.60,
}
_STANDARD_HDD_LRS = {
    "S4": 1.54, "S6": 3.01, "S10": 5.89, "S15": 11.33, "S20": 21.76, "S30": 40.96, "S40": 77.83,
    "S50": 148.68, "S60": 284.57, "S70": 545.28, "S80": 1090.56,
}
# ZRS lists at about 1.5 times LRS; configure the real figures.
_ZRS_FACTOR = 1.5


def _zrs(table: dict[str, float]) -> dict[str, float]:
    return {k: round(v * _ZRS_FACTOR, 2) for k, v in table.items()}


TierPrices = dict[str, Annotated[float, Field(ge=0)]]


class DiskPricesConfig(BaseModel):
    """Prices of managed disks and snapshots, for the cost estimate only (proposed ``prices.disks``).

    The defaults are approximate USD list prices of East US (mid-2024): configure your own."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)

    premium_lrs: TierPrices = Field(default_factory=lambda: dict(_PREMIUM_LRS))
    """Monthly price of each Premium SSD tier (P1 ... P80), SKU Premium_LRS."""
    premium_zrs: TierPrices = Field(default_factory=lambda: _zrs(_PREMIUM_LRS))
    """Monthly price of each Premium SSD tier, SKU Premium_ZRS."""
    standard_ssd_lrs: TierPrices = Field(default_factory=lambda: dict(_STANDARD_SSD_LRS))
    """Monthly price of each Standard SSD tier (E1 ... E80), SKU StandardSSD_LRS."""
    standard_ssd_zrs: TierPrices = Field(default_factory=lambda: _zrs(_STANDARD_SSD_LRS))
    """Monthly price of each Standard SSD tier, SKU StandardSSD_ZRS."""
    standard_hdd_lrs: TierPrices = Field(default_factory=lambda: dict(_STANDARD_HDD_LRS))
    """Monthly price of each Standard HDD tier (S4 ... S80), SKU Standard_LRS."""
    premium_v2_gb_month: Annotated[float, Field(ge=0)] = 0.081
    """Premium SSD v2 (PremiumV2_LRS): price per provisioned GiB-month (IOPS and throughput not modelled)."""
    ultra_gb_month: Annotated[float, Field(ge=0)] = 0.12
    """Ultra Disk (UltraSSD_LRS): price per provisioned GiB-month (IOPS and throughput not modelled)."""
    snapshot_gb_month: Annotated[float, Field(ge=0)] = 0.05
    """Snapshots (incremental, standard LRS): price per GiB-month of the bytes they hold."""
    snapshot_zrs_gb_month: Annotated[float, Field(ge=0)] = 0.0625
    """Snapshots stored zone-redundant: price per GiB-month of the bytes they hold."""

    @model_validator(mode="after")
    def _every_tier_priced(self) -> "DiskPricesConfig":
        for attr, family in _TABLES.values():
            table = getattr(self, attr)
            expected = set(tier_names(family))
            missing = sorted(expected - set(table), key=_tier_order)
            unknown = sorted(set(table) - expected)
            if missing:
                raise ValueError(f"prices.disks.{attr}: no price for {', '.join(missing)}")
            if unknown:
                raise ValueError(f"prices.disks.{attr}: unknown tier {', '.join(unknown)}")
        return self

    def table(self, sku: str) -> dict[str, float] | None:
        entry = _TABLES.get(sku)
        return None if entry is None else getattr(self, entry[0])


_TABLES: dict[str, tuple[str, str]] = {
    "Premium_LRS": ("premium_lrs", "P"),
    "Premium_ZRS": ("premium_zrs", "P"),
    "StandardSSD_LRS": ("standard_ssd_lrs", "E"),
    "StandardSSD_ZRS": ("standard_ssd_zrs", "E"),
    "Standard_LRS": ("standard_hdd_lrs", "S"),
}


def _tier_order(name: str) -> int:
    return int(name[1:]) if name[1:].isdigit() else 10**6
