"""A real Prometheus (Debian's package) scrapes a real daemon and evaluates deploy/'s rules."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.test_daemon import daemon_env, free_port, wait_for  # noqa: F401 - fixture

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules.yml"
WASTED_THRESHOLD = 4096  # bytes, for the test; the shipped rule says 1 TiB


def _rules_for_test(tmp_path: Path) -> Path:
    """The shipped rules with the wasted-storage threshold lowered and its `for` removed."""
    data = yaml.safe_load(RULES.read_text())
    found = False
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "VhdGcWastedStorageHigh":
                assert "1099511627776" in rule["expr"]
                rule["expr"] = rule["expr"].replace("1099511627776", str(WASTED_THRESHOLD))
                rule["for"] = "0s"
                found = True
    assert found
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
