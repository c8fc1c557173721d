"""The configuration model: loading, durations, validation that names the bad key, redaction."""

from __future__ import annotations

import ipaddress
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from .disk_cost import DiskPricesConfig
from .owners import OwnersConfig
from .domain import Policy
from .urls import default_blob_endpoint, redact_text, redact_url

ENV_CONFIG = "VHD_GC_CONFIG"
# Where the configuration is when neither -c/--config nor VHD_GC_CONFIG names one.
DEFAULT_CONFIG_PATH = "/etc/vhd-gc/vhd-gc.yaml"
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_DURATION = timedelta(days=3650)  # ten years: anything longer is a typo, and overflows dates


class ConfigError(Exception):
    """A configuration that cannot be used; the message names the key. Exit status 2."""


def parse_duration(value: Any) -> timedelta:
    td = _parse_duration(value)
    if td > MAX_DURATION:
        raise ValueError("a duration longer than 3650d is not supported")
    return td


def _parse_duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):  # bool is an int: refuse `grace_period: true`
        raise ValueError("a duration is an integer with a unit s, m, h or d (e.g. 90s, 15m, 12h, 7d)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if value > MAX_DURATION.total_seconds():
            raise ValueError("a duration longer than 3650d is not supported")
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            seconds = int(m.group(1)) * _UNITS[m.group(2)]
            if seconds > MAX_DURATION.total_seconds():
                raise ValueError("a duration longer than 3650d is not supported")
            return timedelta(seconds=seconds)
    raise ValueError("a duration is an integer with a unit s, m, h or d (e.g. 90s, 15m, 12h, 7d)")


def format_duration(td: timedelta) -> str:
    seconds = int(td.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


Duration = Annotated[timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration)]


def is_loopback_url(url: str) -> bool:
    try:
        host = (urlsplit(url).hostname or "").lower()
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


class _Strict(BaseModel):
    # strict: `min_sightings: true` or `delete_block_blob_vhds: "yes"` is a mistake, not a 1 or a True.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True)


class StorageAccountConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9]{3,24}$")]
    """The storage account's name (3-24 lower-case letters and digits)."""
    blob_endpoint: str | None = None
    """Its blob endpoint, when not the default https://NAME.blob.core.windows.net (a sovereign cloud, a private
    endpoint, Azurite)."""
    key_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """An environment variable holding the account key; when absent, the credential (Entra ID) reaches the
    blobs."""

    _check_endpoint = field_validator("blob_endpoint")(lambda v: None if v is None else _http_url(v))

    @property
    def endpoint(self) -> str:
        return self.blob_endpoint or default_blob_endpoint(self.name)


class DiscoveryConfig(_Strict):
    """When ``storage_accounts`` is absent: collect every account of the subscriptions that matches."""

    include: list[str] = ["*"]  # fnmatch patterns on the account name
    """fnmatch patterns: an account is collected when its name matches one of them."""
    exclude: list[str] = []
    """fnmatch patterns: an account whose name matches one of them is not collected."""
    resource_groups_include: list[str] = ["*"]
    """fnmatch patterns on the account's resource group: collected when one matches."""
    resource_groups_exclude: list[str] = []
    """fnmatch patterns on the account's resource group: not collected when one matches."""
    # Account keys for discovered accounts: environment variable <prefix><NAME IN CAPITALS>, when set;
    # otherwise the credential (Entra ID) reaches the blobs.
    key_env_prefix: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """Account keys of discovered accounts come from the environment variable PREFIX + the account name in
    capitals, when set; otherwise the credential (Entra ID) reaches the blobs."""


class AzureConfig(_Strict):
    credential: Literal["default", "managed_identity", "azure_cli", "emulator"] = "default"
    """How vhd-gc signs in: `default` (DefaultAzureCredential), `managed_identity`, `azure_cli`, or `emulator`
    (a fixed token, refused unless every endpoint is a loopback address)."""
    arm_endpoint: str = "https://management.azure.com"
    """Azure Resource Manager. Custom CA bundles come from REQUESTS_CA_BUNDLE."""
    subscriptions: Annotated[
        list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")]],
        Field(min_length=1),
    ]
    """Where VMs, scale sets, images, disks, snapshots, galleries and the other reference sources are read
    (and, without `storage_accounts`, where accounts are discovered)."""
    storage_accounts: Annotated[list[StorageAccountConfig], Field(min_length=1)] | None = None
    """The accounts whose VHDs are collected. When absent, the accounts of the subscriptions are discovered at
    every pass (see `discovery`)."""
    discovery: DiscoveryConfig | None = None
    """Which discovered accounts are collected; only when `storage_accounts` is absent."""
    # Beyond the contract: how hard to try before a source counts as failed, and how wide to read.
    retry_total: Annotated[int, Field(ge=0, le=20)] = 6
    """Retries of a failed Azure request (with backoff) before its source counts as failed and the pass is
    incomplete. Storage requests retry at most 5 times."""
    timeout: Duration = timedelta(seconds=60)
    """Per-request timeout of every Azure call (connection and read; a read timeout is the longest silence
    between bytes). It bounds how long a call in flight can last, so it also bounds how long a stopped pass
    leaves calls behind."""
    max_concurrency: Annotated[int, Field(ge=1, le=64)] = 8  # accounts listed at once
    """Accounts listed at once (page-range calls, for billed bytes, have their own bound: `billed_bytes`)."""
    listing_prefetch: Annotated[int, Field(ge=1000, le=10_000_000)] = 10_000  # blobs listed ahead, per account
    """Blobs the listing of one account may read ahead of the decision (memory stays bounded)."""
    # How blob listings and page ranges are read: "lean" sends the SDK's REST calls through its
    # credential policy and reads the XML itself (about 10x less CPU); "sdk" uses the SDK's models.
    storage_reader: Literal["lean", "sdk"] = "lean"
    """How listings and page ranges are read: `lean` sends the SDK's REST calls through its credential policy
    and reads the XML itself (about 10x less CPU); `sdk` uses the SDK's models."""
    # A pass is refused (incomplete) when the local clock and a storage service's (the Date of its
    # listing's first answer) disagree by more than this; min_age is measured on the service's time.
    max_clock_skew: Duration = timedelta(minutes=5)
    """A pass is refused (incomplete) when the local clock and a storage service's (the Date of its listing's
    first answer) disagree by more than this; min_age is measured on the service's time."""
    # Pages of ONE listing (a container's blobs, the containers, an ARM list's nextLinks) before it
    # fails closed as endless; a NextMarker repeating one already seen fails it at once.
    max_list_pages: Annotated[int, Field(ge=1)] = 10_000
    """Pages of one listing (a container's blobs, the containers, an ARM list's nextLinks) before it fails
    closed as endless; a NextMarker seen twice fails it at once."""
    lro_timeout: Duration = timedelta(minutes=30)
    """How long a long-running ARM operation (a disk's quarantine snapshot, its delete, a `restore`) is waited
    for; one that has not ended by then has an unknown outcome, settled by looking at the disk."""
    lro_poll_interval: Duration = timedelta(seconds=5)
    """How often a long-running ARM operation is polled when ARM's reply names no `Retry-After` (when it names
    one, ARM's wait wins)."""
    arm_reads_reserve: Annotated[int, Field(ge=0, le=12_000)] = 100
    """ARM's reads left in a subscription (its `x-ms-ratelimit-remaining-subscription-reads`, exported as
    `vhdgc_arm_reads_remaining`) under which reads slow down before ARM would throttle them: each waits in
    proportion to how far under, up to 1 s at none left. 0 never waits."""

    _check_arm = field_validator("arm_endpoint")(_http_url)

    @field_validator("lro_timeout", "lro_poll_interval")
    @classmethod
    def _positive_lro(cls, v: timedelta, info) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError(f"{info.field_name} must be longer than 0s")
        return v

    @field_validator("max_clock_skew")
    @classmethod
    def _positive_skew(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("max_clock_skew must be longer than 0s (the Date header counts whole seconds)")
        return v

    @model_validator(mode="after")
    def _discovery_xor_list(self) -> "AzureConfig":
        if self.storage_accounts is not None and self.discovery is not None:
            raise ValueError("azure.discovery: applies only when azure.storage_accounts is absent")
        if self.storage_accounts is None and self.discovery is None:
            object.__setattr__(self, "discovery", DiscoveryConfig())
        return self

    @field_validator("storage_accounts")
    @classmethod
    def _unique_accounts(cls, v: list[StorageAccountConfig] | None) -> list[StorageAccountConfig] | None:
        if v is None:
            return v
        names = [a.name for a in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"account listed twice: {', '.join(dupes)}")
        return v

    @field_validator("subscriptions")
    @classmethod
    def _lower_subs(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(s.lower() for s in v))


class PolicyConfig(_Strict):
    """Opt-ins beyond the contract's defaults (both off: such blobs are reported, never deleted)."""

    delete_block_blob_vhds: bool = False
    """Also delete orphaned block blobs named .vhd (a failed upload: Azure cannot boot them). Off: reported,
    never deleted."""
    delete_non_vhd_page_blobs: bool = False
    """Also delete orphaned page blobs not named .vhd. Off: reported, never deleted."""
    # Captured VM images (system/Microsoft.Compute/Images/...) are held: only the capture's template
    # names them. With a duration, one older than that (last modified) is no longer held.
    captured_image_max_age: Duration | None = None
    """Captured VM images (system/Microsoft.Compute/Images/...) are held, since only the capture's template
    names them; with a duration, one last modified longer ago than that is no longer held."""
    # Kubernetes in-tree azureDisk volumes (by their naming convention) are held.
    hold_kubernetes_volumes: bool = True
    """Hold Kubernetes in-tree azureDisk volumes (recognised by their naming convention)."""


class BlastRadiusConfig(_Strict):
    """A pass that would newly mark more than this holds back and waits for an operator: the classic
    disaster is a subscription missing from the configuration, making all its disks look orphaned."""

    max_new_share: Annotated[float, Field(gt=0, le=1)] = 0.2  # of the VHDs the pass saw
    """A pass that would newly mark more than this share of the VHDs it saw marks nothing and waits for `vhd-gc
    confirm-pass`."""
    max_new_bytes: Annotated[int, Field(gt=0)] | None = None  # nominal bytes newly marked
    """A pass that would newly mark more than this many nominal bytes marks nothing and waits for `vhd-gc
    confirm-pass`; absent: no byte limit."""
    min_new: Annotated[int, Field(ge=0)] = 10  # the share rule applies above this many new candidates
    """The share rule applies only above this many new candidates (small estates)."""


class PricesConfig(_Strict):
    """For the cost estimate only: prices per GiB-month of the storage that orphans occupy."""

    currency: Annotated[str, Field(min_length=1, max_length=8)] = "USD"
    """Currency of the cost estimate (vhdgc_wasted_monthly_cost, the report's cost column)."""
    standard_gb_month: Annotated[float, Field(ge=0)] = 0.045  # standard page blobs: billed on written pages
    """Price per GiB-month of standard page blobs, billed on written pages."""
    premium_gb_month: Annotated[float, Field(ge=0)] = 0.15  # premium: provisioned size, rounded up to a disk size
    """Price per GiB-month of premium page blobs, billed on the provisioned size rounded up to a premium disk
    size."""
    disks: DiskPricesConfig = Field(default_factory=DiskPricesConfig)
    """Managed disks (per SKU and tier, as Azure bills: the provisioned size rounded up to the tier) and
    snapshots (per GiB-month held)."""


class ManagedDisksConfig(_Strict):
    """Unattached managed disks and orphaned snapshots of the configured subscriptions (the second level
    of leftovers). Deleting a disk needs both `mode: delete` and `managed_disks.mode: delete`."""

    mode: Literal["report", "delete"] = "report"
    """`report` (the default: tracked, aged and reported, never deleted) or `delete` (with the top-level
    `mode: delete`)."""
    quarantine: Duration = timedelta(days=30)
    """Before deleting a disk, an incremental snapshot of it is made and kept this long (`vhd-gc restore`
    brings the disk back from it); `0s`: no snapshot, no undo."""
    snapshots: Literal["report", "delete"] = "report"
    """Orphaned snapshots (the disk they were taken from is gone, nothing names them): `report` (the default)
    or `delete`."""
    snapshot_min_age: Duration = timedelta(days=90)
    """A snapshot younger than this (since its creation) is never a candidate."""
    max_ownership_reads: Annotated[int, Field(ge=1)] = 200
    """At most this many GETs of single disks (for their LastOwnershipUpdateTime, which the list does not
    return) in one pass; the disks left over are read at the next pass."""


class BilledBytesConfig(_Strict):
    """Measuring billed bytes (Get Page Ranges, one call a page blob) off the critical path of a pass: a
    candidate is marked before its bytes are known (`billed_bytes` null, "pending") and measured while the
    pass lists and decides, or by the next pass."""

    concurrency_initial: Annotated[int, Field(ge=1, le=256)] = 8
    """Page-range calls in flight per account when a pass starts; it grows while the latency stays flat and
    halves on 503 ServerBusy, 429 and timeouts."""
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 64
    """Page-range calls in flight at most (per account, and the measuring threads of a pass)."""
    max_requests_per_second: Annotated[float, Field(gt=0, le=20_000)] = 2000.0
    """Page-range calls a second at most, per account; Azure Storage's target for a standard account is
    20,000 requests a second (for everything the account serves)."""
    max_wait_share: Annotated[float, Field(ge=0)] | None = 0.25
    """After its listing and decision, a pass waits for measurements still running at most this share of the
    time it took so far (or `min_wait`, if longer); the rest is written pending and measured from the start of
    the next pass, which waits for those in full. Absent (null): wait for every measurement."""
    min_wait: Duration = timedelta(seconds=1)
    """The least a pass waits for its measurements after its decision (see `max_wait_share`)."""
    max_per_pass: Annotated[int, Field(ge=0)] | None = None
    """At most this many page-range calls in one pass (the rest stay pending); absent: no limit."""

    @model_validator(mode="after")
    def _initial_under_max(self) -> "BilledBytesConfig":
        if self.concurrency_initial > self.max_concurrency:
            raise ValueError("billed_bytes.concurrency_initial must not exceed billed_bytes.max_concurrency")
        return self


class Config(_Strict):
    database_url: str = "sqlite:///vhd-gc.db"
    """The state database, any SQLAlchemy URL: sqlite:///PATH for one process, postgresql+psycopg://... for
    several replicas."""
    mode: Literal["dry-run", "delete"] = "dry-run"
    """`dry-run` (the default: decides and reports, never deletes) or `delete`."""
    grace_period: Duration = timedelta(days=7)
    """How long a blob must stay orphaned before it is due."""
    min_sightings: Annotated[int, Field(ge=1, le=1000)] = 3
    """Consecutive complete passes that must have seen it orphaned before it is due."""
    min_age: Duration = timedelta(hours=24)
    """Blobs modified more recently than this (on the storage service's clock) are never candidates."""
    import_hold: Duration = timedelta(days=7)
    """How long a disk or snapshot import keeps protecting its source VHD after the import was created."""
    interval: Duration = timedelta(hours=1)
    """Time between the passes of `vhd-gc run`."""
    max_deletes_per_pass: Annotated[int, Field(ge=0)] = 100
    """At most this many deletions in one pass; the rest stay due for the next."""
    max_concurrent_deletes: Annotated[int, Field(ge=1, le=64)] = 8
    """Blob deletions of one pass in flight at once (the re-read, the conditional delete and its audit
    entries); 1 deletes one after the other. Managed disks are deleted one at a time."""
    metrics_listen: str = "127.0.0.1:9465"
    """host:port of /metrics and /healthz for `vhd-gc run`."""
    shutdown_grace: Duration = timedelta(seconds=45)  # `run`: how long SIGTERM waits for a running pass
    """`vhd-gc run`: after SIGTERM/SIGINT, how long to wait for a pass inside a deletion call before exiting
    anyway (the next pass settles that deletion). Waits for references, listings and measurements end at
    once."""
    log_format: Literal["json", "console"] = "json"
    """`json` (one JSON object per line) or `console` (for people)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """The lowest level logged."""
    policy: PolicyConfig = PolicyConfig()
    """Opt-ins beyond the defaults for what may be deleted and what is held."""
    prices: PricesConfig = PricesConfig()
    """Prices for the cost estimate only."""
    blast_radius: BlastRadiusConfig = BlastRadiusConfig()
    """The guard against a pass that would mark an implausible share of the estate at once."""
    managed_disks: ManagedDisksConfig = ManagedDisksConfig()
    """Unattached managed disks and orphaned snapshots: reported by default, deleted only when asked."""
    owners: OwnersConfig = OwnersConfig()
    """Who owned a blob or a disk: which tags of its holder (and of the holder's resource group) name the owner."""
    billed_bytes: BilledBytesConfig = BilledBytesConfig()
    """How billed bytes are measured: concurrency that adapts to the service, a per-account request rate, and
    how long a pass waits for them."""
    azure: AzureConfig
    """Where to read references and collect VHDs, and how to talk to Azure."""

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, v: timedelta) -> timedelta:
        if v.total_seconds() <= 0:
            raise ValueError("interval must be longer than 0s")
        return v

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(v)
        except ArgumentError:
            raise ValueError("not an SQLAlchemy database URL") from None
        if url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("only sqlite and postgresql databases are supported")
        return v

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:9465")
        return v

    @model_validator(mode="after")
    def _emulator_only_on_loopback(self) -> "Config":
        if self.azure.credential != "emulator":
            return self
        if not is_loopback_url(self.azure.arm_endpoint):
            raise ValueError(
                "azure.arm_endpoint: the emulator credential is refused for a non-loopback endpoint"
            )
        for i, acct in enumerate(self.azure.storage_accounts or []):
            if not is_loopback_url(acct.endpoint):
                raise ValueError(
                    f"azure.storage_accounts[{i}].blob_endpoint: the emulator credential is refused "
                    f"for a non-loopback endpoint ({redact_url(acct.endpoint)})"
                )
        return self

    @property
    def policy_rules(self) -> Policy:
        return Policy(
            min_age=self.min_age,
            grace_period=self.grace_period,
            min_sightings=self.min_sightings,
            import_hold=self.import_hold,
            delete_block_blob_vhds=self.policy.delete_block_blob_vhds,
            delete_non_vhd_page_blobs=self.policy.delete_non_vhd_page_blobs,
            captured_image_max_age=self.policy.captured_image_max_age,
            hold_kubernetes_volumes=self.policy.hold_kubernetes_volumes,
        )

    @property
    def disk_policy(self):
        """The decision's view of the ``managed_disks`` keys and the shared lifecycle keys."""
        from .disks import DiskPolicy

        md = self.managed_disks
        deleting = self.mode == "delete" and md.mode == "delete"
        return DiskPolicy(
            min_age=self.min_age,
            grace_period=self.grace_period,
            min_sightings=self.min_sightings,
            snapshot_min_age=md.snapshot_min_age,
            mode="delete" if deleting else "report",
            snapshots=md.snapshots,
            quarantine=md.quarantine,
        )

    @property
    def listen_address(self) -> tuple[str, int]:
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


def _format_errors(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ""
        for part in err["loc"]:
            key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{key}: {msg}" if key else msg)
    return "; ".join(lines)


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("configuration must be a YAML mapping of keys to values")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        # Redacted: a message may quote a value, and an endpoint URL may carry a SAS or a password.
        raise ConfigError(redact_text(_format_errors(exc))) from None
    except RecursionError:
        raise ConfigError("configuration nested too deeply") from None


def resolve_path(path: str | os.PathLike | None) -> Path:
    """The file to read: ``-c/--config``, else ``$VHD_GC_CONFIG``, else :data:`DEFAULT_CONFIG_PATH`
    (which must then exist: the message names it)."""
    if path is None:
        path = os.environ.get(ENV_CONFIG)
    if not path:
        default = Path(DEFAULT_CONFIG_PATH)
        if not default.exists():
            raise ConfigError(
                f"--config: no configuration file at {default} (the default path): "
                f"pass -c/--config PATH or set {ENV_CONFIG}"
            )
        return default
    return Path(path)


def sqlite_path_problem(database_url: str) -> str | None:
    """Why the SQLite database file of ``database_url`` cannot be opened or created, naming the path;
    None when it can (or the URL is not a file-backed SQLite one)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    name = url.database
    if name.startswith("file:"):  # a SQLite URI filename (uri=true): file:PATH?mode=ro
        name = name[len("file:"):].split("?", 1)[0]
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    if path.exists():
        if path.is_dir():
            return f"the SQLite database {path} is a directory"
        if not os.access(path, os.R_OK | os.W_OK):
            return f"the SQLite database {path} is not readable and writable by this user"
        return None
    parent = path.parent
    missing = parent
    while not missing.exists() and missing != missing.parent:
        missing = missing.parent
    if missing != parent:
        return f"cannot create the SQLite database {path}: the directory {parent} does not exist"
    if not parent.is_dir():
        return f"cannot create the SQLite database {path}: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create the SQLite database {path}: the directory {parent} is not writable by this user"
    return None


def quick_delete_keys(config: "Config") -> list[str]:
    """The keys that make ``mode: delete`` delete quickly (a grace period under a day, fewer than two
    sightings), each as ``key: value (why)``; empty in dry-run or with safer values."""
    if config.mode != "delete":
        return []
    keys = []
    if config.grace_period < timedelta(days=1):
        keys.append(f"grace_period: {format_duration(config.grace_period)} (under 1d)")
    if config.min_sightings < 2:
        keys.append(f"min_sightings: {config.min_sightings} (under 2)")
    return keys


def load_config(path: str | os.PathLike | None) -> Config:
    from .configfile import ConfigFileError, read_config_file

    p = resolve_path(path)
    try:
        data = read_config_file(p)  # UTF-8, no duplicate key, bounded nesting and aliases
    except ConfigFileError as exc:
        raise ConfigError(f"--config: {redact_text(str(exc))}") from None
    return parse_config(data)


def redacted(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, with no secret in it.

    The file itself holds no secret (keys come from environment variables), except a password a
    database URL may carry, and userinfo or a query (a SAS) an endpoint URL may carry.
    """
    from sqlalchemy.engine import make_url

    data = config.model_dump(mode="json")
    url = make_url(config.database_url)
    secret_words = ("pass", "secret", "token", "key")
    query = {k: ("***" if any(w in k.lower() for w in secret_words) else v) for k, v in url.query.items()}
    if url.password or query != dict(url.query):
        data["database_url"] = url.set(query=query).render_as_string(hide_password=True)
    data["azure"]["arm_endpoint"] = redact_url(data["azure"]["arm_endpoint"])
    for acct in data["azure"]["storage_accounts"] or []:
        acct["blob_endpoint"] = redact_url(acct["blob_endpoint"] or default_blob_endpoint(acct["name"]))
        if acct.get("key_env"):
            present = bool(os.environ.get(acct["key_env"]))
            acct["key"] = "<redacted: set>" if present else "<redacted: NOT SET>"
    return data
