"""The deployment artefacts under deploy/: alert rules (checked and unit-tested by promtool), the
Grafana dashboard, the Azure roles, the systemd unit, the container health check, and the runbook
links into docs/operations.md.

promtool comes from Debian's `prometheus` package; CI (.ci/run) installs it. These tests fail rather
than skip without it: rules that were never checked must not pass as green.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "vhd-gc.json"
ROLES = [DEPLOY / "azure" / "vhd-gc-role.json", DEPLOY / "azure" / "vhd-gc-reader-role.json"]
UNIT = DEPLOY / "systemd" / "vhd-gc.service"
HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
OPERATIONS = ROOT / "docs" / "operations.md"

# Every metric the daemon exports: the contract of docs/contract.md plus the documented extras.
KNOWN_METRICS = {
    "vhdgc_orphan_blobs",
    "vhdgc_orphan_size_bytes",
    "vhdgc_orphan_billed_bytes",
    "vhdgc_deleted_blobs_total",
    "vhdgc_deleted_bytes_total",
    "vhdgc_passes_total",
    "vhdgc_pass_duration_seconds",
    "vhdgc_last_complete_pass_timestamp_seconds",
    "vhdgc_inventory_errors_total",
    "vhdgc_interval_seconds",
    "vhdgc_dry_run",
    "vhdgc_wasted_monthly_cost",
    "vhdgc_references_seen",
    "vhdgc_blobs_seen",
    "vhdgc_oldest_candidate_age_seconds",
    "vhdgc_delete_refused_total",
    "vhdgc_delete_failures_total",
    "vhdgc_leader",
    "vhdgc_blast_radius_blocked",
    "vhdgc_build_info",
    "vhdgc_orphan_disks",
    "vhdgc_orphan_disk_bytes",
    "vhdgc_deleted_disks_total",
    "vhdgc_orphan_disk_billed_bytes",
    "vhdgc_orphan_disk_monthly_cost",
    "vhdgc_orphan_disks_unpriced",
    "vhdgc_quarantine_snapshots",
    "vhdgc_quarantine_snapshot_bytes",
    "vhdgc_quarantine_snapshot_monthly_cost",
    "vhdgc_disk_mode_info",
    "vhdgc_arm_reads_remaining",
    "vhdgc_billed_bytes_pending",
}
METRIC_RE = re.compile(r"vhdgc_[a-z_]+")
HISTOGRAM_SUFFIX_RE = re.compile(r"_(bucket|sum|count)$")

EXPECTED_ALERTS = {
    "VhdGcWastedStorageHigh",
    "VhdGcNoCompletePass",
    "VhdGcIncompletePasses",
    "VhdGcDeletionFailures",
    "VhdGcDueWhileDryRun",
    "VhdGcBlastRadiusBlocked",
    "VhdGcNoLeader",
    "VhdGcWastedDiskSpendHigh",
    "VhdGcDisksPilingUp",
}


def metric_names(expr: str) -> set[str]:
    return {HISTOGRAM_SUFFIX_RE.sub("", m) for m in METRIC_RE.findall(expr)}


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail(
            "promtool is not installed: it comes with Debian's `prometheus` package "
            "(apt-get install -y --no-install-recommends prometheus), which CI (.ci/run) installs"
        )
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def load_rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs(node) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets and template variable queries."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                found.append(value)
            elif key == "definition" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(dashboard_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(dashboard_exprs(item))
    return found


def github_slug(heading: str) -> str:
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


# -- Prometheus ---------------------------------------------------------------------------------


def test_rules_pass_promtool_check():
    result = promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_pass_their_unit_tests():
    result = promtool("test", "rules", str(RULES_TEST.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_example_prometheus_config_is_valid():
    result = promtool("check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_have_the_expected_alerts_severities_and_runbooks():
    rules = {r["alert"]: r for r in load_rules() if "alert" in r}
    assert EXPECTED_ALERTS <= set(rules), EXPECTED_ALERTS - set(rules)
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        for key in ("summary", "description", "runbook_url"):
            assert rule["annotations"].get(key), f"{name}: annotation {key} missing"


def test_rules_reference_only_exported_metrics():
    for rule in load_rules():
        unknown = metric_names(rule["expr"]) - KNOWN_METRICS
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: unknown metrics {sorted(unknown)}"


def test_every_alert_is_unit_tested_firing_and_quiet():
    doc = yaml.safe_load(RULES_TEST.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {r["alert"] for r in load_rules() if "alert" in r}
    assert alerts <= firing, f"never shown firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"never shown quiet: {sorted(alerts - quiet)}"


def test_runbook_links_point_at_sections_of_operations_guide():
    text = OPERATIONS.read_text()
    anchors = {github_slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)}
    for rule in load_rules():
        if "alert" not in rule:
            continue
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path.endswith("docs/operations.md"), url
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/operations.md"


def test_operations_guide_internal_links_resolve():
    text = OPERATIONS.read_text()
    anchors = {github_slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", text, flags=re.MULTILINE)}
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors, f"docs/operations.md links to a missing section #{anchor}"


# -- Grafana ------------------------------------------------------------------------------------


def test_dashboard_is_valid_json_with_datasource_and_account_variables():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["account"]["definition"] == "label_values(vhdgc_orphan_blobs, account)"
    assert variables["subscription"]["definition"] == "label_values(vhdgc_orphan_disks, subscription)"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_references_only_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exprs = dashboard_exprs(dash)
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        unknown = metric_names(expr) - KNOWN_METRICS
        assert not unknown, f"unknown metrics {sorted(unknown)} in {expr}"
        used |= metric_names(expr)
    # The panels the operators asked for are there.
    for needed in (
        "vhdgc_orphan_billed_bytes",
        "vhdgc_wasted_monthly_cost",
        "vhdgc_orphan_blobs",
        "vhdgc_deleted_blobs_total",
        "vhdgc_deleted_bytes_total",
        "vhdgc_passes_total",
        "vhdgc_pass_duration_seconds",
        "vhdgc_last_complete_pass_timestamp_seconds",
        "vhdgc_inventory_errors_total",
        "vhdgc_delete_refused_total",
        "vhdgc_oldest_candidate_age_seconds",
        "vhdgc_leader",
        # The "Managed disks" row.
        "vhdgc_orphan_disks",
        "vhdgc_orphan_disk_bytes",
        "vhdgc_orphan_disk_billed_bytes",
        "vhdgc_orphan_disk_monthly_cost",
        "vhdgc_orphan_disks_unpriced",
        "vhdgc_deleted_disks_total",
        "vhdgc_quarantine_snapshots",
        "vhdgc_quarantine_snapshot_monthly_cost",
        "vhdgc_disk_mode_info",
    ):
        assert needed in used, needed
    assert any("histogram_quantile" in e and "vhdgc_pass_duration_seconds_bucket" in e for e in exprs)


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses the panel queries, with the template variables replaced by values."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [
        e.replace("$account", ".*").replace("$job", ".*").replace("$subscription", ".*")
        for e in dashboard_exprs(dash)
        if not e.startswith("label_values(")
    ]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]}
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- Azure roles --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ROLES, ids=lambda p: p.name)
def test_azure_role_is_least_privilege(path):
    role = json.loads(path.read_text())
    for key in ("Name", "Description", "Actions", "NotActions", "DataActions", "NotDataActions", "AssignableScopes"):
        assert key in role, key
    assert role["IsCustom"] is True
    assert role["NotActions"] == [] and role["NotDataActions"] == []
    assert role["AssignableScopes"] == ["/subscriptions/00000000-0000-0000-0000-000000000001"]
    everything = role["Actions"] + role["DataActions"]
    for action in everything:
        assert "*" not in action, action
        assert "listkeys" not in action.lower(), action
    from gc_daemon.sources.roles import DISK_WRITE_ACTIONS

    # The only control-plane writes are the managed-disk ones, and only the full role has them.
    writes = set(DISK_WRITE_ACTIONS) if path.name == "vhd-gc-role.json" else set()
    assert writes <= set(role["Actions"])
    for action in set(role["Actions"]) - writes:
        assert action.endswith("/read"), f"control-plane action that is not a read: {action}"
        assert "/write" not in action and "/delete" not in action, action
    for action in role["DataActions"]:
        assert not action.endswith("/write"), action
    assert "Microsoft.Compute/virtualMachines/read" in role["Actions"]
    assert "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read" in role["DataActions"]


@pytest.mark.parametrize("path", ROLES, ids=lambda p: p.name)
def test_azure_roles_are_what_the_reference_sources_declare(path):
    """Each source declares the permission of each read (gc_daemon/sources/); the roles are generated
    from those declarations (`python -m gc_daemon.sources.roles`), so a new source cannot ship
    without its permission, nor a role keep one no source needs."""
    from gc_daemon.sources import permissions
    from gc_daemon.sources.roles import render

    role = json.loads(path.read_text())
    assert path.read_text() == render(path.name, role["AssignableScopes"]), (
        "deploy/azure is out of date: run python -m gc_daemon.sources.roles"
    )
    assert set(permissions()) <= set(role["Actions"])


def test_full_role_deletes_blobs_and_reader_role_cannot():
    full, reader = (json.loads(p.read_text()) for p in ROLES)
    delete = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/delete"
    assert delete in full["DataActions"]
    assert not any(a.endswith("/delete") for a in reader["DataActions"])
    assert set(reader["DataActions"]) == set(full["DataActions"]) - {delete}


# Issue 13, permissions: deleting a disk after its quarantine snapshot, expiring that snapshot,
# deleting orphaned snapshots, and `vhd-gc restore` (which recreates the disk: disks/write).
DISK_WRITES = {
    "Microsoft.Compute/disks/delete",
    "Microsoft.Compute/disks/write",
    "Microsoft.Compute/snapshots/write",
    "Microsoft.Compute/snapshots/delete",
}
DISK_READS = {"Microsoft.Compute/disks/read", "Microsoft.Compute/snapshots/read"}
# Read by the inventory's resource_groups and locks sources (their permissions are generated from them).
GROUP_AND_LOCK_READS = {"Microsoft.Authorization/locks/read", "Microsoft.Resources/subscriptions/resourceGroups/read"}


def test_full_role_gains_exactly_the_disk_writes_and_reader_role_none_of_them():
    full, reader = (json.loads(p.read_text()) for p in ROLES)
    assert set(full["Actions"]) - set(reader["Actions"]) == DISK_WRITES
    assert set(reader["Actions"]) <= set(full["Actions"])
    assert DISK_READS <= set(reader["Actions"])
    assert not [a for a in reader["Actions"] if not a.endswith("/read")]


def test_both_roles_read_resource_groups_and_locks():
    from gc_daemon.sources import permissions

    missing = GROUP_AND_LOCK_READS - set(permissions())
    if missing:
        pytest.skip(f"no registered source declares {sorted(missing)} yet (the resource_groups and locks sources)")
    for path in ROLES:
        assert GROUP_AND_LOCK_READS <= set(json.loads(path.read_text())["Actions"]), path.name


# -- systemd ------------------------------------------------------------------------------------


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit file line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_systemd_unit_runs_the_daemon_as_its_own_user_with_state_directory():
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["Type"] == ["simple"]
    assert service["User"] == ["vhd-gc"] and service["Group"] == ["vhd-gc"]
    assert service["ExecStart"] == ["/opt/vhd-gc/venv/bin/vhd-gc -c /etc/vhd-gc/vhd-gc.yaml run"]
    assert service["EnvironmentFile"] == ["-/etc/vhd-gc/vhd-gc.env"]
    assert service["StateDirectory"] == ["vhd-gc"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartSec"] == ["10"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert service["TimeoutStopSec"] == ["60"]


def test_systemd_unit_is_hardened():
    service = parse_unit(UNIT.read_text())["Service"]
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallFilter": "@system-service",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert key in service, f"{key}= missing"
        assert service[key][0] == value, f"{key}={service[key][0]!r}, expected {value!r}"
    assert "DynamicUser" not in service or service["DynamicUser"] == ["no"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_verifies(tmp_path):
    # The installed binary does not exist here: point ExecStart at one that does.
    unit = tmp_path / "vhd-gc.service"
    unit.write_text(UNIT.read_text().replace("/opt/vhd-gc/venv/bin/vhd-gc", "/bin/true"))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vhd-gc.service" not in result.stderr, result.stderr


# -- container ----------------------------------------------------------------------------------


def test_dockerfile_runs_unprivileged_and_installs_the_wheel_not_the_tree():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert 'ENTRYPOINT ["vhd-gc"]' in text
    assert 'CMD ["-c", "/etc/vhd-gc/vhd-gc.yaml", "run"]' in text
    assert re.search(r"^EXPOSE 9465$", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "healthcheck.py" in text
    # Stage 1 builds the wheel from the tree, stage 2 installs it, the runtime gets the venv only.
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    assert [s.splitlines()[0] for s in stages] == ["${PYTHON_IMAGE} AS wheel", "${PYTHON_IMAGE} AS install", "${PYTHON_IMAGE}"]
    wheel, install, runtime = stages
    for source in ("pyproject.toml", "MANIFEST.in", "migrations/", "gc_daemon/"):
        assert re.search(rf"^COPY .*{re.escape(source)}", wheel, re.MULTILINE), source
    assert "python -m build --wheel --outdir /dist" in wheel
    assert "COPY --from=wheel /dist/ /dist/" in install
    assert "/opt/vhd-gc/venv/bin/pip install /dist/vhd_gc-*.whl" in install
    assert "migrations_dir() == PACKAGED_MIGRATIONS" in install
    assert "pip install -e" not in text and "/app" not in text
    assert re.findall(r"^COPY .*", runtime, re.MULTILINE) == [
        "COPY --from=install /opt/vhd-gc/venv /opt/vhd-gc/venv",
        "COPY deploy/container/healthcheck.py /usr/local/lib/vhd-gc/healthcheck.py",
    ]


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):  # noqa: N802 - http.server's name
        body = b'{"healthy": true}' if self.status == 200 else b'{"healthy": false}'
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def health_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        _Health.status = 200


def run_healthcheck(url: str) -> subprocess.CompletedProcess:
    env = {"VHD_GC_HEALTH_URL": url, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=120)


def test_container_healthcheck_follows_healthz(health_server):
    url = f"http://127.0.0.1:{health_server.server_port}/healthz"
    ok = run_healthcheck(url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    _Health.status = 503
    stale = run_healthcheck(url)
    assert stale.returncode == 1 and "503" in stale.stdout, stale.stdout + stale.stderr


def test_container_healthcheck_fails_when_nothing_listens():
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as probe:
        port = probe.server_port  # bound, then closed: nothing listens there any more
    result = run_healthcheck(f"http://127.0.0.1:{port}/healthz")
    assert result.returncode == 1
    assert "unhealthy" in result.stdout


def test_operations_guide_documents_every_registered_reference_source():
    """docs/operations.md's "Where references come from" names every source and every label its
    failures carry (what an operator sees in `scan` and in vhdgc_inventory_errors_total)."""
    from gc_daemon.sources import REGISTRY

    guide = (Path(__file__).resolve().parent.parent / "docs" / "operations.md").read_text()
    section = guide.split("## Where references come from", 1)[1].split("\n## ", 1)[0]
    for source in REGISTRY:
        assert f"`{source.name}`" in section, source.name
        for label in source.labels:
            assert f"`{label}`" in section, label
    # The guide ends with what vhd-gc can and cannot see.
    assert guide.split("\n## ")[-1].startswith("What vhd-gc can and cannot see")
