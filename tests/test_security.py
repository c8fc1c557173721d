"""Secrets never leave vhd-gc; the metrics server is local and answers two paths; the emulator
credential never leaves loopback.

Secrets: the account keys (environment variables), a database password (PostgreSQL with trust
authentication accepts any, so the URL can carry one), the emulator bearer token, and a SAS
signature inside a reference URI. Places: the JSON logs of `scan` at debug level, `report` (json,
csv, table), the errors of failing passes (wrong key: 403; an unplaceable reference), `passes`,
`config check`, `explain`, `audit`, and /metrics.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from gc_daemon.azure.credentials import EMULATOR_TOKEN
from gc_daemon.config import parse_config
from sandbox import arm as a
from sandbox.azurite import random_key
from tests.support.estate import SUB
from tests.support.faults import env_with_keys

SAS_SIG = "SASsig0SECRET0value%2Babc%3D"
DB_PASSWORD = "pg-Pa55word-SECRET"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(config: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(config), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _inproc(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI in this process (faster than a subprocess), shaped like a subprocess result."""
    from click.testing import CliRunner

    from gc_daemon.cli import cli

    result = CliRunner().invoke(cli, ["-c", str(config), *args], obj={}, env=env, catch_exceptions=False)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def _secrets(gc) -> dict[str, str]:
    from urllib.parse import unquote

    return {
        "gcacct1 key": gc.azurite.key("gcacct1"),
        "gcacct2 key": gc.azurite.key("gcacct2"),
        "emulator token": EMULATOR_TOKEN,
        "SAS signature": SAS_SIG,
        "SAS signature (decoded)": unquote(SAS_SIG),
        "database password": DB_PASSWORD,
    }


def _leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


@pytest.fixture
def pg_url_with_password(postgres_server) -> str:
    url = make_url(postgres_server.create_database(f"sec_{uuid.uuid4().hex[:12]}"))
    return url.set(password=DB_PASSWORD).render_as_string(hide_password=False)


@pytest.mark.postgres
def test_no_secret_in_logs_reports_errors_explain_audit_or_config_check(gc, tmp_path, pg_url_with_password):
    secrets = _secrets(gc)
    # Referenced with a SAS token on the URI, leased, and two leftovers.
    ref = gc.page("vhds", "web-os.vhd")
    gc.page("vhds", "leased.vhd", lease=True)
    left = gc.page("vhds", "left.vhd")
    gc.page("vhds", "left2.vhd")
    sas_ref = f"{ref}?sv=2024-08-04&sr=b&sp=r&sig={SAS_SIG}"
    gc.compute(a.vm(SUB, "rg1", "web", os_vhd=sas_ref))
    cfg = gc.configure(mode="delete", log_level="debug", log_format="json", database_url=pg_url_with_password)
    env = env_with_keys(gc)
    outputs: dict[str, str] = {}

    def record(name: str, run: subprocess.CompletedProcess, codes=(0,)) -> subprocess.CompletedProcess:
        outputs[name] = run.stdout + run.stderr
        assert run.returncode in codes, f"{name}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
        return run

    scan = record("scan (debug, json logs)", _cli(cfg, "scan", env=env))
    assert '"event": "pass_complete"' in scan.stderr or '"event":"pass_complete"' in scan.stderr.replace(" ", "")
    for fmt in ("json", "csv", "table"):
        record(f"report --format {fmt}", _inproc(cfg, "report", "--format", fmt))
    record("explain (the SAS-referenced blob)", _inproc(cfg, "explain", ref))
    # (explain --format json prints the reference's raw URI: test_explain_never_prints_the_sas_signature_of_a_reference)
    record("explain (a URL pasted with a SAS token)", _inproc(cfg, "explain", f"{left}?sig={SAS_SIG}"))
    record("explain --format json (a URL pasted with a SAS token)",
           _inproc(cfg, "explain", f"{left}?sig={SAS_SIG}", "--format", "json"))
    record("keep (a URL pasted with a SAS token)",
           _inproc(cfg, "keep", f"{gc.url('vhds', 'left2.vhd')}?sig={SAS_SIG}", "--reason", "test"))
    record("audit", _inproc(cfg, "audit"))
    record("audit --format json", _inproc(cfg, "audit", "--format", "json"))
    record("config check", _inproc(cfg, "config", "check"))
    record("passes", _inproc(cfg, "passes"))

    # A failing pass: a wrong key (403), logs at debug level.
    bad = dict(env, GCACCT2_KEY=random_key())
    secrets["wrong gcacct2 key"] = bad["GCACCT2_KEY"]
    record("scan with a wrong account key (403)", _cli(cfg, "scan", env=bad), codes=(3,))
    record("passes (after a failed pass)", _inproc(cfg, "passes"))
    # (an unplaceable reference quotes its SAS token: test_an_unplaceable_reference_error_never_carries_its_sas_signature)
    # A failing pass: the database down (its URL holds the password).
    down = make_url(pg_url_with_password).set(port=_free_port()).render_as_string(hide_password=False)
    cfg_down = tmp_path / "down.yaml"
    cfg_down.write_text(yaml.safe_dump({**gc.settings, "database_url": down}))
    record("scan with the database unreachable", _inproc(cfg_down, "scan"), codes=(1,))
    record("report with the database unreachable", _inproc(cfg_down, "report"), codes=(1,))
    record("config check (database unreachable)", _inproc(cfg_down, "config", "check"))

    leaks = {name: _leaks(text, secrets) for name, text in outputs.items()}
    leaks = {k: v for k, v in leaks.items() if v}
    assert not leaks, f"secrets printed: {leaks}"


def test_explain_never_prints_the_sas_signature_of_a_reference(gc):
    ref = gc.page("vhds", "web-os.vhd")
    gc.compute(a.vm(SUB, "rg1", "web", os_vhd=f"{ref}?sv=2024-08-04&sr=b&sig={SAS_SIG}"))
    for fmt in ("text", "json"):
        run = gc.cli("explain", ref, "--format", fmt)
        assert run.code == 0, run.err
        assert SAS_SIG not in run.out + run.err, fmt


def test_an_unplaceable_reference_error_never_carries_its_sas_signature(gc):
    odd = gc.url("vhds", "x/../x.vhd").replace("%2E", ".") + f"?sv=1&sig={SAS_SIG}"  # on a collected account
    gc.compute(a.vm(SUB, "rg1", "odd", os_vhd=odd),
               a.vm(SUB, "rg1", "foreign", os_vhd=f"https://not-a-blob-host.example/vhds/x.vhd?sv=1&sig={SAS_SIG}"))
    run = gc.cli("scan")
    assert run.code == 3
    passes = gc.cli("passes")
    assert SAS_SIG not in run.out + run.err + passes.out + passes.err


def test_wrong_key_error_names_the_account_but_no_key(gc, monkeypatch):
    gc.page("vhds", "x.vhd")
    wrong = random_key()
    monkeypatch.setenv("GCACCT1_KEY", wrong)
    run = gc.cli("scan")
    assert run.code == 3
    assert "gcacct1" in run.err
    for secret in (wrong, gc.azurite.key("gcacct2"), gc.azurite.key("gcacct1"), EMULATOR_TOKEN):
        assert secret not in run.out + run.err


# --------------------------------------------------------------------------------------------------
# The metrics server
# --------------------------------------------------------------------------------------------------


def test_metrics_listen_defaults_to_loopback():
    config = parse_config({"azure": {"subscriptions": [SUB], "storage_accounts": [{"name": "acct1"}]}})
    assert config.metrics_listen.rsplit(":", 1)[0] == "127.0.0.1"
    assert config.listen_address[0] == "127.0.0.1"


def _request(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"x" if method in ("POST", "PUT") else None)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (IPv4 and IPv6), from /proc/net."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:
                if width == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(addr)[::-1]))
                else:
                    raw = bytes.fromhex(addr)
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return found


def test_metrics_server_is_local_and_answers_only_metrics_and_healthz(gc, tmp_path):
    gc.page("vhds", "left.vhd")
    port = _free_port()
    settings = {**gc.settings, "interval": "1h"}
    settings["metrics_listen"] = f"127.0.0.1:{port}"
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(settings))
    log = open(tmp_path / "d.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gc_daemon", "-c", str(path), "run"], env=env_with_keys(gc),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + 30
        while True:
            try:
                status, _ = _request(port, "/healthz")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < end, (tmp_path / "d.log").read_text()
                time.sleep(0.05)
        assert _listening_addresses(port) == {"127.0.0.1"}
        status, body = _request(port, "/metrics")
        assert status == 200 and "vhdgc_passes_total" in body
        assert not _leaks(body, _secrets(gc))
        assert _request(port, "/healthz")[0] in (200, 503)
        for other in ("/", "/metrics/", "/healthz/x", "/debug", "/admin", "/../metrics", "/METRICS", "/metrics%00"):
            assert _request(port, other)[0] == 404, other
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for p in ("/metrics", "/healthz", "/"):
                assert _request(port, p, method)[0] == 405, (method, p)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=180)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --------------------------------------------------------------------------------------------------
# The emulator credential stays on loopback
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arm_endpoint, blob_endpoint",
    [
        ("https://management.azure.com", "http://127.0.0.1:10000/acct1"),
        ("https://127.0.0.1:8443", "https://acct1.blob.core.windows.net"),
        ("https://127.0.0.1:8443", None),  # the default endpoint: https://acct1.blob.core.windows.net
        ("https://127.0.0.1.nip.io:8443", "http://127.0.0.1:10000/acct1"),
        ("https://localhost.example.com", "http://127.0.0.1:10000/acct1"),
        ("https://127.0.0.1@management.azure.com", "http://127.0.0.1:10000/acct1"),
        ("https://0.0.0.0:8443", "http://127.0.0.1:10000/acct1"),
        ("https://[::ffff:10.0.0.1]:8443", "http://127.0.0.1:10000/acct1"),
        ("https://127.0.0.1:8443", "http://10.0.0.5:10000/acct1"),
        ("https://127.0.0.1:8443", "http://192.168.1.10/acct1"),
    ],
)
def test_emulator_credential_is_refused_off_loopback(tmp_path, arm_endpoint, blob_endpoint):
    account = {"name": "acct1"}
    if blob_endpoint:
        account["blob_endpoint"] = blob_endpoint
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 's.db'}",
        "azure": {"credential": "emulator", "arm_endpoint": arm_endpoint, "subscriptions": [SUB],
                  "storage_accounts": [account]},
    }))
    run = _inproc(path, "config", "check")
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "emulator" in run.stderr
    assert "arm_endpoint" in run.stderr or "blob_endpoint" in run.stderr


@pytest.mark.parametrize("arm_endpoint", ["https://127.0.0.1:8443", "https://localhost:8443", "https://[::1]:8443"])
def test_emulator_credential_is_accepted_on_loopback(tmp_path, arm_endpoint):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "database_url": f"sqlite:///{tmp_path / 's.db'}",
        "azure": {"credential": "emulator", "arm_endpoint": arm_endpoint, "subscriptions": [SUB],
                  "storage_accounts": [{"name": "acct1", "blob_endpoint": "http://127.0.0.1:10000/acct1"}]},
    }))
    run = _inproc(path, "config", "check")
    assert run.returncode == 0, run.stderr
    assert EMULATOR_TOKEN not in run.stdout + run.stderr
