"""Issue 11, section 2 ("Hardening"), end to end through the real CLI: the configuration file is
read strictly (duplicate keys, encodings, nesting, aliases: exit 2 naming the file and the key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from gc_daemon.cli import cli
from tests.support.estate import SUB

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
    assert yaml.safe_load(out)["policy"] == {"delete_block_blob_vhds": False, "delete_non_vhd_page_blobs": False}
