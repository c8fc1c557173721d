"""A real Prometheus (Debian's package) scrapes a real daemon and evaluates deploy/'s rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.test_daemon import daemon_env, free_port, wait_for  # noqa: F401 - fixture

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules.yml"
WASTED_THRESHOLD = 4096  # bytes, for the test; the shipped rule says 1 TiB
# alert -> (the shipped threshold, the test's): each is lowered and its `for` removed.
LOWERED = {
    "VhdGcWastedStorageHigh": ("> 1099511627776", f"> {WASTED_THRESHOLD}"),
    "VhdGcWastedDiskSpendHigh": ("> 500", "> 100"),  # a month, in prices.currency
    "VhdGcDisksPilingUp": ("> 10", "> 2"),  # due disks
}


def _rules_for_test(tmp_path: Path) -> Path:
    """The shipped rules with the thresholds of LOWERED lowered and their `for` removed."""
    data = yaml.safe_load(RULES.read_text())
    found = set()
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") in LOWERED:
                shipped, lowered = LOWERED[rule["alert"]]
                assert rule["expr"].count(shipped) == 1, rule["alert"]
                rule["expr"] = rule["expr"].replace(shipped, lowered)
                rule["for"] = "0s"
                found.add(rule["alert"])
    assert found == set(LOWERED)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def _api(port: int, path: str, **params) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return {}


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("the prometheus server is missing: `apt-get install prometheus` (.ci/run does it)")
    procs = []

    def start(target_port: int) -> int:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(_rules_for_test(tmp_path))],
            "scrape_configs": [{"job_name": "vhd-gc", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, log))
        return port

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_prometheus_scrapes_wasted_bytes_and_fires_the_wasted_storage_alert(gc, daemon_env, prometheus):  # noqa: F811
    gc.page("vhds", "leftover-1.vhd", written=[(0, 4096), (8192, 4096)])
    gc.page("vhds", "leftover-2.vhd", written=[(0, 4096)])
    d = daemon_env(mode="dry-run", min_sightings=1, grace_period="0s")
    port = prometheus(d.port)

    def wasted():
        res = _api(port, "query", query='sum(vhdgc_orphan_billed_bytes{state=~"candidate|due|kept"})')
        result = (res.get("data") or {}).get("result") or []
        return float(result[0]["value"][1]) if result else None

    wait_for(lambda: wasted() == 12288, "Prometheus to hold the wasted-bytes series (8192 + 4096 written bytes)")

    def firing():
        res = _api(port, "alerts")
        alerts = (res.get("data") or {}).get("alerts") or []
        return [a for a in alerts if a["labels"].get("alertname") == "VhdGcWastedStorageHigh" and a["state"] == "firing"]

    alerts = wait_for(firing, "VhdGcWastedStorageHigh to fire")
    assert alerts[0]["labels"]["severity"] == "warning"
    assert float(alerts[0]["value"]) == 12288
    # The healthy daemon does not page anyone about passes.
    names = {a["labels"]["alertname"] for a in (_api(port, "alerts").get("data") or {}).get("alerts", [])}
    assert "VhdGcNoCompletePass" not in names and "VhdGcIncompletePasses" not in names
    assert d.stop() == 0


def _firing(port: int, name: str) -> list[dict]:
    alerts = (_api(port, "alerts").get("data") or {}).get("alerts") or []
    return [a for a in alerts if a["labels"].get("alertname") == name and a["state"] == "firing"]


@pytest.fixture
def metrics_server():
    """/metrics of a Metrics registry over a real state store, on a real HTTP port."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    from prometheus_client import make_wsgi_app

    from gc_daemon.metrics import Metrics

    servers = []

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    def start(store, config) -> int:
        port = free_port()
        server = make_server("127.0.0.1", port, make_wsgi_app(Metrics(store, config).registry), handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_prometheus_fires_the_disk_alerts_on_what_the_store_holds(tmp_path, prometheus, metrics_server):
    """Disks in the state store -> the scrape -> the shipped disk rules (thresholds lowered): both fire
    with the values the store implies, and the blob alerts stay quiet."""
    from gc_daemon.config import Config
    from gc_daemon.disk_cost import GIB, DiskPricesConfig
    from gc_daemon.disks import DiskChange, DiskRow, Kind
    from gc_daemon.domain import State
    from gc_daemon.wiring import open_store

    sub = "00000000-0000-0000-0000-000000000001"
    config = Config.model_validate({
        "database_url": f"sqlite:///{tmp_path / 'state.db'}",
        "azure": {"subscriptions": [sub], "storage_accounts": [{"name": "gcacct1"}]},
        "managed_disks": {"mode": "report"},
    })
    store = open_store(config)
    if not hasattr(store, "disk_rows"):
        pytest.skip("the store has no managed-disk queries yet (branch i13-state)")
    now = datetime.now(UTC)

    def disk(name: str, state: State, gib: int) -> DiskRow:
        return DiskRow(id=f"/subscriptions/{sub}/resourceGroups/rg/providers/Microsoft.Compute/disks/{name}",
                       kind=Kind.MANAGED_DISK, state=state, first_orphaned_at=now - timedelta(days=9),
                       delete_after=now - timedelta(days=2), streak_start=1, subscription=sub, resource_group="rg",
                       name=name, sku="Premium_LRS", size_bytes=gib * GIB)

    # Three 1 TiB Premium SSDs due (P30 each) and a 64 GiB candidate (P6).
    rows = [disk(f"due-{i}", State.DUE, 1024) for i in range(3)] + [disk("young", State.CANDIDATE, 64)]
    with store.transaction() as tx:
        tx.apply_disks([DiskChange(r, "marked") for r in rows])
    prices = DiskPricesConfig()
    cost = round(3 * prices.premium_lrs["P30"], 4) + round(prices.premium_lrs["P6"], 4)

    port = prometheus(metrics_server(store, config))
    spend = wait_for(lambda: _firing(port, "VhdGcWastedDiskSpendHigh"), "VhdGcWastedDiskSpendHigh to fire")
    assert spend[0]["labels"]["severity"] == "warning" and spend[0]["labels"]["job"] == "vhd-gc"
    assert float(spend[0]["value"]) == pytest.approx(cost)
    piling = wait_for(lambda: _firing(port, "VhdGcDisksPilingUp"), "VhdGcDisksPilingUp to fire")
    assert piling[0]["labels"]["severity"] == "info"
    assert float(piling[0]["value"]) == 3
    names = {a["labels"]["alertname"] for a in (_api(port, "alerts").get("data") or {}).get("alerts", [])}
    assert "VhdGcWastedStorageHigh" not in names and "VhdGcDueWhileDryRun" not in names
