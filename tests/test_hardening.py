"""Issue 11, section 2 ("Hardening"), end to end through the real CLI: the configuration file is
read strictly (duplicate keys, encodings, nesting, aliases: exit 2 naming the file and the key),
secrets in endpoint URLs are never printed (config check, scan, logs, errors, reports), and names
are data (escaped on a terminal, exact in JSON, never a formula in CSV)."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import yaml
from click.testing import CliRunner

from gc_daemon.cli import cli
from sandbox import arm as a
from tests.support.estate import SUB
from tests.support.faults import env_with_keys

REPO = Path(__file__).parent.parent


def invoke(config: Path, *args: str) -> tuple[int, str, str]:
    """The CLI in this process: (exit status, stdout, stderr)."""
    result = CliRunner().invoke(cli, ["-c", str(config), *args], obj={}, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def run(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI as a separate process, as automation runs it."""
    environ = dict(os.environ if env is None else env)
    environ.pop("VHD_GC_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(config), *args], env=environ,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def offline_yaml(tmp_path: Path) -> str:
    """A valid configuration that talks to nothing (loopback ports nobody listens on), line by line."""
    return (
        f"database_url: sqlite:///{tmp_path / 'state.db'}\n"  # line 1
        "mode: dry-run\n"  # line 2
        "azure:\n"  # line 3
        "  credential: emulator\n"  # line 4
        "  arm_endpoint: https://127.0.0.1:9\n"  # line 5
        "  retry_total: 0\n"  # line 6
        "  timeout: 2s\n"  # line 7
        f"  subscriptions: [{SUB}]\n"  # line 8
        "  storage_accounts:\n"  # line 9
        "    - name: offacct1\n"  # line 10
        "      blob_endpoint: http://127.0.0.1:9/offacct1\n"  # line 11
        "blast_radius: {min_new: 5}\n"  # line 12
    )


def assert_refused(tmp_path: Path, config: Path, *phrases: str) -> None:
    """`scan` and `config check` exit 2 with one line naming the file and the phrases; nothing touched."""
    for args in (("scan",), ("config", "check", "--offline")):
        code, out, err = invoke(config, *args)
        assert code == 2, (args, code, out, err)
        assert out == "", (args, out)
        assert err.startswith("vhd-gc: config error: ") and err.count("\n") == 1, (args, err)
        assert str(config) in err, (args, err)
        for phrase in phrases:
            assert phrase in err, (args, phrase, err)
        assert "Traceback" not in err
    assert not (tmp_path / "state.db").exists()  # refused before the database is opened


# --------------------------------------------------------------------------------------------------
# 1. Duplicate keys are refused, naming the key's path and both lines
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "edit, key, first, second",
    [
        pytest.param(lambda t: t + "mode: delete\n", "mode", 2, 13, id="top-level"),
        pytest.param(lambda t: t + '"mode": delete\n', "mode", 2, 13, id="quoted"),
        pytest.param(lambda t: t.replace("  timeout: 2s\n", "  timeout: 2s\n  retry_total: 3\n"),
                     "azure.retry_total", 6, 8, id="nested"),
        pytest.param(lambda t: t.replace("/offacct1\n", "/offacct1\n      name: offacct2\n"),
                     "azure.storage_accounts[0].name", 10, 12, id="in-a-list"),
        pytest.param(lambda t: t.replace("{min_new: 5}", "{min_new: 5, min_new: 0}"),
                     "blast_radius.min_new", 12, 12, id="flow-mapping"),
        pytest.param(lambda t: t.replace("azure:\n", "azure:\n  subscriptions: []\n"),
                     "azure.subscriptions", 4, 9, id="before-the-first"),
    ],
)
def test_a_duplicate_key_exits_2_naming_its_path_and_both_lines(tmp_path, edit, key, first, second):
    config = tmp_path / "dup.yaml"
    config.write_text(edit(offline_yaml(tmp_path)))
    assert_refused(tmp_path, config, f"duplicate key {key} at line {second} (first at line {first})")


def test_a_second_mode_delete_never_silently_wins(tmp_path):
    config = tmp_path / "dup.yaml"
    config.write_text(offline_yaml(tmp_path) + "mode: delete\n")
    result = run(config, "scan")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "duplicate key mode at line 13 (first at line 2)" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "state.db").exists()


def test_keys_a_merge_brings_in_may_be_overridden(tmp_path):
    text = offline_yaml(tmp_path).replace(
        "    - name: offacct1\n      blob_endpoint: http://127.0.0.1:9/offacct1\n",
        "    - &first {name: offacct1, blob_endpoint: 'http://127.0.0.1:9/offacct1'}\n"
        "    - <<: *first\n"
        "      name: offacct2\n"
        "      blob_endpoint: http://127.0.0.1:9/offacct2\n",
    )
    config = tmp_path / "merge.yaml"
    config.write_text(text)
    code, out, err = invoke(config, "config", "check", "--offline")
    assert code == 0, err
    accounts = yaml.safe_load(out)["azure"]["storage_accounts"]
    assert [(x["name"], x["blob_endpoint"]) for x in accounts] == [
        ("offacct1", "http://127.0.0.1:9/offacct1"), ("offacct2", "http://127.0.0.1:9/offacct2")]


# --------------------------------------------------------------------------------------------------
# 2. Unreadable encodings, absurd nesting and alias bombs exit 2, naming the file
# --------------------------------------------------------------------------------------------------


def _laughs(levels: int = 9) -> str:
    """The "billion laughs": 10**levels strings from a few hundred bytes, under a real key."""
    lines = ['  discovery:', '    include:', '      - &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"      - &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


_NOT_UTF8 = "not UTF-8 text"
CASES = {
    "latin-1": (lambda t: ("# propriétaire: équipe stockage\n" + t).encode("latin-1"), [_NOT_UTF8, "byte 0xe9 at line 1"]),
    "utf-16-without-bom": (lambda t: t.encode("utf-16-le"), [_NOT_UTF8, "NUL byte"]),
    "utf-16-with-bom": (lambda t: t.encode("utf-16"), ["is UTF-16 text, not UTF-8"]),
    "utf-32-with-bom": (lambda t: t.encode("utf-32"), ["is UTF-32 text, not UTF-8"]),
    "binary": (lambda t: bytes(range(256)) * 16, [_NOT_UTF8]),
    "binary-without-nul": (lambda t: bytes(range(1, 256)) * 16, [_NOT_UTF8]),
    "100000-brackets": (lambda t: b"[" * 100_000, ["nested too deeply"]),
    "100000-nested-mappings": (lambda t: b"{a: " * 100_000, ["nested too deeply"]),
    "nested-beyond-32-levels": (lambda t: (t + "policy: " + "[" * 40 + "]" * 40 + "\n").encode(), ["nested deeper than 32 levels"]),
    "billion-laughs": (lambda t: t.replace("  storage_accounts:\n    - name: offacct1\n      blob_endpoint: http://127.0.0.1:9/offacct1\n",
                                           _laughs()).encode(), ["aliases", "alias bomb"]),
    # 100 kB written once, printed 60 times by `config check` (a 1 MB file of this kept it busy minutes)
    "one-big-string-many-aliases": (lambda t: t.replace(
        "  storage_accounts:\n    - name: offacct1\n      blob_endpoint: http://127.0.0.1:9/offacct1\n",
        "  discovery:\n    include: [&big '" + "x" * 100_000 + "'" + ", *big" * 60 + "]\n").encode(), ["aliases", "alias bomb"]),
    "recursive-alias": (lambda t: (t + "policy: &loop {delete_block_blob_vhds: *loop}\n").encode(), ["recursive alias"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_unreadable_or_absurd_file_exits_2_naming_it(tmp_path, case):
    make, phrases = CASES[case]
    config = tmp_path / "bad.yaml"
    config.write_bytes(make(offline_yaml(tmp_path)))
    assert_refused(tmp_path, config, *phrases)


@pytest.mark.parametrize("case", ["latin-1", "100000-brackets", "billion-laughs"])
def test_an_unreadable_or_absurd_file_exits_2_in_a_real_process(tmp_path, case):
    make, phrases = CASES[case]
    config = tmp_path / "bad.yaml"
    config.write_bytes(make(offline_yaml(tmp_path)))
    result = run(config, "scan")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and str(config) in result.stderr
    assert all(p in result.stderr for p in phrases), result.stderr


def test_a_utf8_file_with_a_bom_and_modest_aliases_is_accepted(tmp_path):
    text = offline_yaml(tmp_path).replace("blast_radius: {min_new: 5}", "policy: {delete_block_blob_vhds: &no false, delete_non_vhd_page_blobs: *no}")
    config = tmp_path / "ok.yaml"
    config.write_bytes(b"\xef\xbb\xbf" + ("# propriétaire: équipe stockage\n" + text).encode())
    code, out, err = invoke(config, "config", "check", "--offline")
    assert code == 0, err
    policy = yaml.safe_load(out)["policy"]
    assert (policy["delete_block_blob_vhds"], policy["delete_non_vhd_page_blobs"]) == (False, False)


# --------------------------------------------------------------------------------------------------
# 3. Secrets in endpoint URLs are never printed
# --------------------------------------------------------------------------------------------------

SIG = "SiGnAtUrE0SECRET0value%2Bxyz%3D"
PASSWORD = "Pa55w0rd-in-the-URL"
ARM_PASSWORD = "arm-Pa55w0rd-SECRET"


def _secrets() -> dict[str, str]:
    return {"SAS signature": SIG, "SAS signature (decoded)": unquote(SIG), "password": PASSWORD, "ARM password": ARM_PASSWORD}


def _leaks(text: str) -> list[str]:
    return [name for name, value in _secrets().items() if value in text]


def _host(url: str) -> str:
    return url.split("://", 1)[1].rstrip("/")


def _secret_endpoints(gc, *, arm_userinfo: bool = True, sas_account: bool = True) -> Path:
    """gcacct1 behind userinfo (Azurite ignores it: listing works), gcacct2 with a SAS query
    (it breaks the listing: the account fails), the ARM endpoint with a SAS query, and userinfo."""
    arm = f"https://{'armuser:' + ARM_PASSWORD + '@' if arm_userinfo else ''}{_host(gc.arm.url)}/?sv=2024-08-04&ss=b&sig={SIG}"
    accounts = [{"name": "gcacct1", "blob_endpoint": f"http://vhdgc:{PASSWORD}@{_host(gc.azurite.blob_endpoint('gcacct1'))}",
                 "key_env": "GCACCT1_KEY"}]
    if sas_account:
        accounts.append({"name": "gcacct2", "blob_endpoint": f"{gc.azurite.blob_endpoint('gcacct2')}?sv=2024-08-04&sp=rl&sig={SIG}",
                         "key_env": "GCACCT2_KEY"})
    return gc.configure(log_level="debug", log_format="json", azure={"arm_endpoint": arm, "storage_accounts": accounts})


@pytest.mark.parametrize("offline", [True, False], ids=["offline", "online"])
def test_config_check_never_prints_the_userinfo_or_sas_of_an_endpoint(gc, offline):
    config = _secret_endpoints(gc)
    code, out, err = invoke(config, "config", "check", *(["--offline"] if offline else []))
    assert code == 0, err
    assert not _leaks(out + err), out + err
    effective = yaml.safe_load(out)["azure"]
    # Host and path kept, so that the operator recognises it; the secret parts replaced by markers.
    assert effective["arm_endpoint"] == f"https://<redacted>@{_host(gc.arm.url)}/?<query redacted>"
    assert [x["blob_endpoint"] for x in effective["storage_accounts"]] == [
        f"http://<redacted>@{_host(gc.azurite.blob_endpoint('gcacct1'))}",
        f"{gc.azurite.blob_endpoint('gcacct2')}?<query redacted>",
    ]
    if not offline:
        assert "# warning: gcacct1: " in err and "gcacct2: blob soft delete" in err  # it did ask both


def test_a_config_error_never_echoes_the_secret_of_an_endpoint(gc):
    endpoint = f"https://vhdgc:{PASSWORD}@gcacct1.blob.core.windows.net/?sv=1&sig={SIG}"
    config = gc.configure(azure={"storage_accounts": [{"name": "gcacct1", "blob_endpoint": endpoint}]})
    result = run(config, "config", "check", "--offline")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (
        "vhd-gc: config error: azure.storage_accounts[0].blob_endpoint: the emulator credential is refused for a "
        "non-loopback endpoint (https://<redacted>@gcacct1.blob.core.windows.net/?<query redacted>)\n"
    )


def test_scan_logs_and_errors_never_print_the_userinfo_or_sas_of_an_endpoint(gc):
    gc.page("vhds", "left.vhd")
    gc.page("vhds", "other.vhd", account="gcacct2")
    outputs = {}
    # ARM behind userinfo: every reference source fails (401), the pass is incomplete.
    config = _secret_endpoints(gc)
    scan = run(config, "scan", env=env_with_keys(gc))
    assert scan.returncode == 3, scan.stderr
    outputs["scan (ARM fails)"] = scan.stdout + scan.stderr
    # ARM reachable (its SAS query is harmless to it): gcacct1 is listed, gcacct2 fails on its query.
    config = _secret_endpoints(gc, arm_userinfo=False)
    scan = run(config, "scan", env=env_with_keys(gc))
    assert scan.returncode == 3, scan.stderr
    assert "storage/gcacct2" in scan.stderr
    outputs["scan (gcacct2 fails)"] = scan.stdout + scan.stderr
    # Only gcacct1: a complete pass, whose canonical URLs carry no userinfo.
    config = _secret_endpoints(gc, arm_userinfo=False, sas_account=False)
    scan = run(config, "scan", env=env_with_keys(gc))
    assert scan.returncode == 0, scan.stderr
    outputs["scan (complete)"] = scan.stdout + scan.stderr
    url = f"{gc.azurite.blob_endpoint('gcacct1')}/vhds/left.vhd"
    assert f'"url": "{url}"' in scan.stderr
    for args in (("passes",), ("report", "--format", "json"), ("report", "--format", "csv"), ("report", "--format", "table"),
                 ("audit",)):
        code, out, err = invoke(config, *args)
        assert code == 0, (args, err)
        outputs[" ".join(args)] = out + err
    # explain reads the blob through the SDK, whose HTTP library (requests) turns the endpoint's
    # userinfo into a Basic Authorization header in place of the account key's signature: Azurite
    # refuses it, and the error line (the CLI's guard) is what must not leak.
    for args in (("explain", url), ("explain", url, "--format", "json")):
        code, out, err = invoke(config, *args)
        assert (code, out) == (1, ""), (args, err)
        assert err.startswith("vhd-gc: StorageError: AuthorizationFailure: ") and err.count("\n") == 1, err
        outputs[" ".join(args)] = out + err
    assert [r["url"] for r in json.loads(outputs["report --format json"])] == [url]
    leaks = {name: _leaks(text) for name, text in outputs.items() if _leaks(text)}
    assert not leaks, leaks


def test_error_lines_never_print_the_secret_of_an_endpoint_an_exception_quotes(gc):
    # An out-of-range port: the HTTP library's error quotes the whole URL, userinfo and SAS included.
    bad = f"http://vhdgc:{PASSWORD}@127.0.0.1:99999/gcacct1?sv=2024-08-04&sig={SIG}"
    config = gc.configure(log_level="debug", azure={"retry_total": 0, "storage_accounts": [  # the SDK waits 15 s to retry
        {"name": "gcacct1", "blob_endpoint": bad, "key_env": "GCACCT1_KEY"}]})
    url = "http://127.0.0.1/gcacct1/vhds/left.vhd"  # any spelling names the blob of gcacct1
    outputs = {}
    check = run(config, "config", "check")
    assert check.returncode == 0, check.stderr
    assert "# warning: gcacct1: could not read blob soft delete settings (" in check.stderr
    outputs["config check"] = check.stdout + check.stderr
    scan = run(config, "scan")
    assert scan.returncode == 3, scan.stderr
    assert "  - storage/gcacct1: " in scan.stderr
    outputs["scan"] = scan.stdout + scan.stderr
    for args, expected in ((("passes",), 0), (("explain", url), 1), (("restore", url), 1)):
        code, out, err = invoke(config, *args)
        assert code == expected, (args, out, err)
        outputs[" ".join(args)] = out + err
    assert outputs["explain " + url].startswith("vhd-gc: StorageError: ServiceResponseError: Failed to parse: "
                                                "http://<redacted>@127.0.0.1:99999/gcacct1/vhds/left.vhd?<query redacted>")
    leaks = {name: _leaks(text) for name, text in outputs.items() if _leaks(text)}
    assert not leaks, (leaks, outputs)


def test_a_discovered_endpoint_never_prints_its_userinfo_or_sas(gc, monkeypatch):
    monkeypatch.setenv("TESTKEY_GCACCT1", gc.azurite.key("gcacct1"))
    gc.page("vhds", "left.vhd")
    host = _host(gc.azurite.blob_endpoint("gcacct1"))
    gc.compute(
        a.storage_account(SUB, "vhd-rg", "gcacct1", blob_endpoint=f"http://vhdgc:{PASSWORD}@{host}/"),
        # not loopback: the emulator credential refuses it, and the refusal names it
        a.storage_account(SUB, "vhd-rg", "faracct", blob_endpoint=f"https://faracct.blob.core.windows.net/?sv=1&sig={SIG}"),
        place_accounts=False,  # discovery finds exactly these
    )
    config = gc.configure(log_level="debug")
    data = yaml.safe_load(config.read_text())
    del data["azure"]["storage_accounts"]
    data["azure"]["discovery"] = {"key_env_prefix": "TESTKEY_"}
    config.write_text(yaml.safe_dump(data))
    scan = run(config, "scan")
    assert scan.returncode == 3, scan.stderr
    assert "storageAccounts: faracct: the emulator credential is refused for https://faracct.blob.core.windows.net/?<query redacted>" in scan.stderr
    code, passes, err = invoke(config, "passes")
    assert code == 0 and "faracct" in passes
    assert not _leaks(scan.stdout + scan.stderr + passes + err)
    # without the refused account the pass completes; gcacct1's URLs carry no userinfo
    gc.compute(a.storage_account(SUB, "vhd-rg", "gcacct1", blob_endpoint=f"http://vhdgc:{PASSWORD}@{host}/"),
               place_accounts=False)
    scan = run(config, "scan")
    assert scan.returncode == 0, scan.stderr
    code, report, err = invoke(config, "report", "--format", "json")
    assert [r["url"] for r in json.loads(report)] == [f"{gc.azurite.blob_endpoint('gcacct1')}/vhds/left.vhd"]
    assert not _leaks(scan.stdout + scan.stderr + report + err)


def test_log_events_of_any_module_are_redacted(tmp_path):
    import structlog

    from gc_daemon.config import parse_config
    from gc_daemon.wiring import configure_logging

    config = parse_config({"log_format": "json", "azure": {"subscriptions": [SUB], "storage_accounts": [{"name": "acct1"}]}})
    for fmt in ("json", "console"):
        stream = io.StringIO()
        configure_logging(config.model_copy(update={"log_format": fmt}), stream=stream)
        log = structlog.get_logger("anything")
        try:
            raise RuntimeError(f"cannot reach https://u:{PASSWORD}@h.example/acct?sv=1&sig={SIG}")
        except RuntimeError:
            log.exception(f"failed at https://u:{PASSWORD}@h.example/x",
                          url=f"https://h.example/acct/c/b.vhd?sv=1&sig={SIG}",
                          errors=[f"storage/acct: ServiceRequestError: url: /acct?restype=container&sig={SIG}&comp=list"],
                          nested={"endpoint": (f"http://user:{PASSWORD}@127.0.0.1:1/acct",)})
        out = stream.getvalue()
        assert not _leaks(out), (fmt, out)
        assert "https://h.example/acct/c/b.vhd?<query redacted>" in out and "<redacted>@127.0.0.1:1/acct" in out
        assert "sig=<redacted>" in out
    configure_logging(None)


def test_account_storage_repr_never_shows_the_secret_of_its_endpoint():
    from gc_daemon.azure.storage import AccountStorage

    storage = AccountStorage("acct1", f"https://u:{PASSWORD}@acct1.blob.core.windows.net/?sv=1&sig={SIG}", None)
    assert repr(storage) == "AccountStorage(account='acct1', blob_endpoint='https://<redacted>@acct1.blob.core.windows.net/?<query redacted>')"


# --------------------------------------------------------------------------------------------------
# 4. Names are data
# --------------------------------------------------------------------------------------------------

# Azurite accepts all of these names; it also stores names with C0 controls (ESC, BEL, BS, NUL), but
# then answers every listing of the container with a 500 (it writes them raw into XML 1.0, where they
# are illegal): an ESC reaches the outputs through a holder's name, a reason and an ARM message.
NAMES = {
    "csi": "csi\x9b31mRED.vhd",  # C1 CSI: what ESC [ is in 8 bits
    "bidi": "evil\u202egpj.vhd",  # right-to-left override: shows as "evilvhd.jpg"
    "del": "del\x7f.vhd",
    "newline": "two\nlines.vhd",
    "tab": "tab\there.vhd",
    "formula": "=cmd|' /C calc'!A0.vhd",
    "at": "@SUM(1+1)*cmd.vhd",
    "plus": "+1.vhd",
    "minus": "-2.vhd",
}
ESCAPED = {
    "csi": "csi\\x9b31mRED.vhd",
    "bidi": "evil\\u202egpj.vhd",
    "del": "del\\x7f.vhd",
    "newline": "two\\nlines.vhd",
    "tab": "tab\\there.vhd",
}
HOLDER_VM = "web\x1b[31mRED\x1b[0m"
REASON = "INC-9 \x1b[2J\x1b[1;1Hlegal\u202e hold\x85"
ARM_MESSAGE = "boom \x1b]0;pwned\x07 \u202eevil"


def _terminal_safe(text: str) -> bool:
    return all(ch.isprintable() or ch == "\n" for ch in text)


@pytest.fixture
def odd_estate(gc):
    urls = {k: gc.page("vhds", name) for k, name in NAMES.items()}
    urls["web"] = gc.page("vhds", "web-os.vhd")
    gc.compute(a.vm(SUB, "rg1", HOLDER_VM, os_vhd=urls["web"]))
    code, out, err = invoke(gc.config_path, "keep", urls["bidi"], "--reason", REASON)
    assert code == 0, err
    urls["keep output"] = out
    result = gc.scan()
    assert result.outcome == "complete", result.errors
    return urls


def test_report_table_escapes_every_control_and_format_character(gc, odd_estate):
    code, out, err = invoke(gc.config_path, "report", "--format", "table")
    assert code == 0, err
    assert _terminal_safe(out), out
    lines = out.splitlines()
    rows = lines[1:lines.index("")]
    assert len(rows) == len(NAMES)  # the newline in a name made no line of its own
    for key, escaped in ESCAPED.items():
        [row] = [r for r in rows if r.endswith(f"gcacct1/vhds/{escaped}")]
        assert row.split()[0] == ("kept" if key == "bidi" else "due"), row
    assert any(r.endswith("  gcacct1/vhds/=cmd|' /C calc'!A0.vhd") for r in rows)  # a table is not a spreadsheet


def test_report_csv_never_starts_a_cell_with_a_formula_character(gc, odd_estate):
    code, out, err = invoke(gc.config_path, "report", "--format", "csv")
    assert code == 0, err
    rows = list(csv.DictReader(io.StringIO(out)))
    by_url = {r["url"]: r for r in rows}
    assert set(by_url) == {odd_estate[k] for k in NAMES}
    assert out.count("\n") == 1 + len(NAMES) + 1  # the header, a row each, one newline inside a quoted name
    for key, name in NAMES.items():
        cell = by_url[odd_estate[key]]["blob"]
        assert cell == ("'" + name if name[0] in "=+-@" else name), (key, cell)
    for row in rows:
        for value in row.values():
            assert not value.startswith(("=", "+", "-", "@", "\t", "\r")), row


def test_report_json_keeps_the_exact_names_and_prints_no_raw_control_character(gc, odd_estate):
    code, out, err = invoke(gc.config_path, "report", "--format", "json")
    assert code == 0, err
    assert _terminal_safe(out), out  # DEL, C1 and bidi characters as \\u escapes
    assert {r["url"]: r["blob"] for r in json.loads(out)} == {odd_estate[k]: name for k, name in NAMES.items()}


def test_explain_text_escapes_holders_reasons_and_names(gc, odd_estate):
    code, out, err = invoke(gc.config_path, "explain", odd_estate["web"])
    assert code == 0, err
    assert _terminal_safe(out), out
    vm_id = f"/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/web\\x1b[31mRED\\x1b[0m"
    assert f"  - vm_os_disk of {vm_id}\n" in out
    code, out, err = invoke(gc.config_path, "explain", odd_estate["bidi"])
    assert code == 0, err
    assert _terminal_safe(out), out
    assert "operator hold: INC-9 \\x1b[2J\\x1b[1;1Hlegal\\u202e hold\\x85\n" in out
    assert " keep by " in out and ": INC-9 \\x1b[2J\\x1b[1;1Hlegal\\u202e hold\\x85 \n" in out
    code, as_json, err = invoke(gc.config_path, "explain", odd_estate["bidi"], "--format", "json")
    assert code == 0, err
    assert _terminal_safe(as_json)
    data = json.loads(as_json)
    assert (data["blob"], data["operator_hold"]) == (NAMES["bidi"], REASON)  # exact


def test_keep_and_audit_table_escape_names_and_reasons(gc, odd_estate):
    assert odd_estate["keep output"] == "kept gcacct1/vhds/evil\\u202egpj.vhd: INC-9 \\x1b[2J\\x1b[1;1Hlegal\\u202e hold\\x85\n"
    code, out, err = invoke(gc.config_path, "audit")
    assert code == 0, err
    assert _terminal_safe(out), out
    header, line = out.splitlines()
    assert header.split()[:3] == ["AT", "AGE", "d"]
    assert re.search(r"Z\s+0\.0\s+keep\s+-\s+-\s+-\s+-\s+\S+\s+" + re.escape(odd_estate["bidi"]) + "  ", line), line
    assert line.endswith("  INC-9 \\x1b[2J\\x1b[1;1Hlegal\\u202e hold\\x85")
    code, out, err = invoke(gc.config_path, "audit", "--format", "json")
    assert code == 0 and _terminal_safe(out)
    assert [r["reason"] for r in json.loads(out)] == [REASON]


def test_passes_and_scan_escape_an_error_message_from_azure(gc):
    gc.arm.add_fault(path="/images$", status=500, message=ARM_MESSAGE)
    code, out, err = invoke(gc.config_path, "scan")
    assert code == 3, err
    escaped = "boom \\x1b]0;pwned\\x07 \\u202eevil"
    assert f"  - {SUB}/images: HTTP 500 InternalServerError: {escaped}\n" in err
    code, out, err = invoke(gc.config_path, "passes")
    assert code == 0, err
    assert _terminal_safe(out), out
    header, line = out.splitlines()
    assert line.endswith(f"{SUB}/images: HTTP 500 InternalServerError: {escaped}")
