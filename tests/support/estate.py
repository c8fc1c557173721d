"""The end-to-end harness: vhd-gc driven through its CLI and its pass, against Azurite and the ARM
stand-in, with ground truth read back from Azurite. A pytest plugin (fixture ``gc``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from gc_daemon.cli import cli
from gc_daemon.config import load_config
from gc_daemon.passes import PassResult
from gc_daemon.urls import blob_url
from gc_daemon.domain import BlobKey
from sandbox import arm as armlib
from sandbox import seed

SUB = "00000000-0000-0000-0000-000000000001"
SUB2 = "00000000-0000-0000-0000-000000000002"
ACCOUNTS = ("gcacct1", "gcacct2")


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Harness:
    arm: Any
    azurite: Any
    tmp: Path
    db_url: str
    settings: dict[str, Any] = field(default_factory=dict)
    resources: list[dict] = field(default_factory=list)
    placed: bool | None = None  # whether compute() registers the collected accounts (None: not yet called)
    estate_subscriptions: list[str] = field(default_factory=list)
    clock_offset: timedelta = timedelta(0)

    # -- the estate ------------------------------------------------------------------------

    def svc(self, account: str = "gcacct1"):
        return self.azurite.service_client(account)

    def url(self, container: str, blob: str, account: str = "gcacct1") -> str:
        return blob_url(self.azurite.blob_endpoint(account), BlobKey(account, container, blob))

    def page(self, container: str, blob: str, account: str = "gcacct1", **kw) -> str:
        kw.setdefault("written", [(0, 4096)])
        seed.page_blob(self.svc(account), container, blob, **kw)
        return self.url(container, blob, account)

    def exists(self, container: str, blob: str, account: str = "gcacct1") -> bool:
        return seed.exists(self.svc(account), container, blob)

    def service_time(self, account: str = "gcacct1") -> datetime:
        """Azurite's clock, as vhd-gc hears it: the Date header of one of its answers."""
        dates: list[str] = []
        self.svc(account).get_service_properties(
            raw_response_hook=lambda response: dates.append(response.http_response.headers["Date"]))
        return parsedate_to_datetime(dates[-1])

    def wait_for_service_time(self, instant: datetime, account: str = "gcacct1", timeout: float = 180) -> None:
        """Until Azurite's clock has reached ``instant`` (a blob's age is counted on it)."""
        import time

        deadline = time.monotonic() + timeout
        while self.service_time(account) < instant:
            assert time.monotonic() < deadline, f"Azurite's clock did not reach {instant.isoformat()}"
            time.sleep(0.1)

    def compute(self, *resources: dict, place_accounts: bool = True, subscriptions: list[str] | None = None) -> None:
        """Replace what Azure Resource Manager holds. The collected accounts are registered in ``SUB``
        (their own subscription, as vhd-gc checks at every pass) unless ``resources`` registers them
        elsewhere or ``place_accounts`` is False."""
        self.resources = list(resources)
        self.placed = place_accounts
        listed = self.settings["azure"].get("storage_accounts") or []
        registered = {r["name"] for r in resources if r.get("type", "").lower() == "microsoft.storage/storageaccounts"}
        if place_accounts:
            resources = resources + tuple(
                armlib.storage_account(SUB, "storage-rg", a["name"], blob_endpoint=a.get("blob_endpoint"))
                for a in listed
                if a["name"] not in registered
            )
        # The subscriptions ARM knows: the configured ones when the estate is first set (a test that
        # configures an unknown subscription afterwards must find it unknown).
        if subscriptions is None:
            subscriptions = list(self.settings["azure"]["subscriptions"])
        self.estate_subscriptions = subscriptions
        self.arm.set_estate(armlib.build_estate(*resources, subscriptions=subscriptions))

    # -- configuration ---------------------------------------------------------------------

    def configure(self, **overrides: Any) -> Path:
        azure = overrides.pop("azure", {})
        base = {
            "database_url": self.db_url,
            "mode": "dry-run",
            "grace_period": "0s",
            "min_sightings": 1,
            "min_age": "0s",
            "import_hold": "7d",
            "interval": "1h",
            "max_deletes_per_pass": 100,
            "log_format": "json",
            # Test estates are small and mostly leftovers: the guard has its own tests.
            "blast_radius": {"max_new_share": 1.0},
            "azure": {
                "credential": "emulator",
                "arm_endpoint": self.arm.url,
                "subscriptions": [SUB],
                "storage_accounts": [
                    {"name": a, "blob_endpoint": self.azurite.blob_endpoint(a), "key_env": f"{a.upper()}_KEY"}
                    for a in ACCOUNTS
                ],
                "retry_total": 1,
                "timeout": "10s",
                # Tests move the collector's clock by days (scan(advance=...), scan(at=...)) to let
                # grace periods pass; Azurite's clock does not move. The clock check has its own
                # tests, with a strict limit; here it would refuse every such pass.
                "max_clock_skew": "3650d",
            },
        }
        base.update(overrides)
        base["azure"].update(azure)
        self.settings = base
        path = self.tmp / "vhd-gc.yaml"
        path.write_text(yaml.safe_dump(base))
        if self.placed is not None:  # keep the collected accounts registered in ARM, as configured
            self.compute(*self.resources, place_accounts=self.placed, subscriptions=self.estate_subscriptions)
        return path

    @property
    def config_path(self) -> Path:
        return self.tmp / "vhd-gc.yaml"

    # -- driving vhd-gc --------------------------------------------------------------------

    def cli(self, *args: str) -> Run:
        result = CliRunner().invoke(cli, ["-c", str(self.config_path), *args], obj={}, catch_exceptions=False)
        return Run(result.exit_code, result.stdout, result.stderr)

    def scan(self, *, at: datetime | None = None, advance: timedelta | None = None) -> PassResult:
        """One pass through the library, with the clock where the test wants it."""
        from gc_daemon.wiring import build_collector

        if advance is not None:
            self.clock_offset += advance
        config = load_config(self.config_path)
        collector = build_collector(config)
        fixed = at
        offset = self.clock_offset
        collector.clock = (lambda: fixed) if fixed else (lambda: datetime.now(UTC) + offset)
        return collector.run_pass()

    def report(self) -> dict[str, dict]:
        """The blobs' rows (``--kind vhd``): the harness's tests are about VHDs; a pass now tracks the
        estate's unattached managed disks too (tests/support/disks.py reads those)."""
        run = self.cli("report", "--kind", "vhd", "--format", "json")
        assert run.code == 0, run.err
        return {r["url"]: r for r in run.json()}

    def state(self, url: str) -> str | None:
        rec = self.report().get(url)
        return rec["state"] if rec else None


@pytest.fixture
def gc(arm, azurite, tmp_path, monkeypatch, request) -> Iterator[Harness]:
    db_url = getattr(request, "param", None) or f"sqlite:///{tmp_path / 'state.db'}"
    if db_url == "postgres":
        server = request.getfixturevalue("postgres_server")
        import uuid

        db_url = server.create_database(f"gc_{uuid.uuid4().hex[:12]}")
    for a in ACCOUNTS:
        monkeypatch.setenv(f"{a.upper()}_KEY", azurite.key(a))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(arm.cert_path))
    h = Harness(arm, azurite, tmp_path, db_url)
    h.configure()
    h.compute()
    yield h
