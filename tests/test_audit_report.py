"""The report people read and the audit an auditor can use (issue 12, items 5 and 7), black-box
through the CLI against Azurite and the ARM stand-in: the monthly cost of each blob, --sort,
--limit, --account and several --state; the audit's own time, ETag, size and actor per row,
--since and --format csv; headers on every table; the blast-radius refusal per account."""

from __future__ import annotations

import csv
import io
import json
import os
import pwd
import re
import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gc_daemon.config import load_config
from gc_daemon.domain import BlobKey
from gc_daemon.wiring import open_store
from sandbox import seed

GIB = 1024**3
REPO = Path(__file__).parent.parent
# 2^17 per GiB-month: 8 KiB written cost exactly 1.0 a month, 4 KiB 0.5 (no rounding in the way).
PRICE = 131072.0


def run(gc, *args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """vhd-gc as a separate process (its environment decides the operator's name)."""
    environ = dict(os.environ)
    environ.pop("VHD_GC_CONFIG", None)
    for name in drop:
        environ.pop(name, None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "gc_daemon", "-c", str(gc.config_path), *args], capture_output=True,
                          text=True, env=environ, timeout=120, cwd=REPO)


def iso(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def store_of(gc):
    return open_store(load_config(gc.config_path))


def _priced_estate(gc) -> dict[str, str]:
    """Blobs of known billed size over two accounts: cost 1.0, 0.5 and 8.0 a month, and a block
    blob named .vhd (kept; it bills its 10 bytes)."""
    gc.configure(prices={"currency": "EUR", "standard_gb_month": PRICE})
    urls = {
        "one": gc.page("vhds", "one.vhd", written=[(0, 8192)]),  # billed 8 KiB
        "half": gc.page("vhds", "half.vhd", size=2 * GIB, written=[(0, 4096)]),  # billed 4 KiB, 2 GiB nominal
        "eight": gc.page("data", "eight.vhd", account="gcacct2", written=[(0, 65536)]),  # billed 64 KiB
    }
    seed.block_blob(gc.svc(), "vhds", "upload.vhd", b"not a disk")
    urls["block"] = gc.url("vhds", "upload.vhd")
    assert gc.scan().outcome == "complete"
    return urls


# -- report: monthly cost ------------------------------------------------------------------------


def test_report_monthly_cost_is_billed_gib_times_the_price_per_gib_month(gc):
    urls = _priced_estate(gc)
    result = gc.cli("report", "--format", "json")
    assert result.code == 0, result.err
    by_url = {r["url"]: r for r in result.json()}
    assert (by_url[urls["one"]]["billed_bytes"], by_url[urls["one"]]["monthly_cost"]) == (8192, 1.0)
    assert (by_url[urls["half"]]["billed_bytes"], by_url[urls["half"]]["monthly_cost"]) == (4096, 0.5)
    assert (by_url[urls["eight"]]["billed_bytes"], by_url[urls["eight"]]["monthly_cost"]) == (65536, 8.0)
    block = by_url[urls["block"]]
    assert (block["state"], block["billed_bytes"], block["monthly_cost"]) == ("kept", 10, round(10 / GIB * PRICE, 6))
    assert block["monthly_cost"] == 0.001221

    as_csv = {r["url"]: r for r in csv.DictReader(io.StringIO(gc.cli("report", "--format", "csv").out))}
    assert [as_csv[urls[k]]["monthly_cost"] for k in ("one", "half", "eight", "block")] == ["1.0", "0.5", "8.0", "0.001221"]

    table = gc.cli("report").out.splitlines()
    header = table[0].split()
    assert header[:4] == ["STATE", "SIZE", "GiB", "BILLED"] and "EUR/mo" in table[0] and "AGE d" in table[0]
    half = next(line for line in table if line.endswith("gcacct1/vhds/half.vhd"))
    assert re.match(r"due\s+2\.00\s+0\.00\s+0\.50\s+\d+\.\d\s", half), half
    block_line = next(line for line in table if line.endswith("gcacct1/vhds/upload.vhd"))
    assert re.match(r"kept\s+0\.00\s+0\.00\s+0\.00\s", block_line), block_line
    due_total = next(line for line in table[table.index("TOTALS"):] if line.strip().startswith("due "))
    assert due_total.endswith("9.50 EUR/month"), due_total  # 1.0 + 0.5 + 8.0


def test_report_monthly_cost_is_null_when_the_billed_bytes_were_not_measured(gc):
    urls = _priced_estate(gc)
    with sqlite3.connect(gc.db_url.removeprefix("sqlite:///")) as db:  # as a failed measurement leaves it
        db.execute("UPDATE tracked_blobs SET billed_bytes = NULL WHERE blob = 'one.vhd'")
    one = {r["url"]: r for r in gc.cli("report", "--format", "json").json()}[urls["one"]]
    assert (one["billed_bytes"], one["monthly_cost"]) == (None, None)
    line = next(line for line in gc.cli("report").out.splitlines() if line.endswith("gcacct1/vhds/one.vhd"))
    assert re.match(r"due\s+0\.00\s+pending\s+-\s", line), line  # billed bytes pending: the next pass measures them
    assert _urls(gc.cli("report", "--format", "json", "--sort", "cost"))[-1] == urls["one"]  # unknown last


# -- report: sort, limit, account, state -------------------------------------------------------


def _urls(result) -> list[str]:
    assert result.code == 0, result.err
    return [r["url"] for r in result.json()]


def test_report_sort_orders_numbers_descending_and_text_ascending(gc):
    urls = _priced_estate(gc)
    assert _urls(gc.cli("report", "--format", "json", "--sort", "cost")) == [
        urls["eight"], urls["one"], urls["half"], urls["block"]]  # unknown cost last
    assert _urls(gc.cli("report", "--format", "json", "--sort", "billed")) == [
        urls["eight"], urls["one"], urls["half"], urls["block"]]
    assert _urls(gc.cli("report", "--format", "json", "--sort", "size"))[0] == urls["half"]  # 2 GiB nominal
    assert _urls(gc.cli("report", "--format", "json", "--sort", "url")) == sorted(urls.values())
    assert _urls(gc.cli("report", "--format", "json", "--sort", "state"))[-1] == urls["block"]  # due before kept
    table = gc.cli("report", "--sort", "cost").out.splitlines()
    assert [line.rsplit(None, 1)[-1] for line in table[1:5]] == [
        "gcacct2/data/eight.vhd", "gcacct1/vhds/one.vhd", "gcacct1/vhds/half.vhd", "gcacct1/vhds/upload.vhd"]


def test_report_sort_by_age_puts_the_oldest_orphan_first(gc):
    gc.page("vhds", "old.vhd")
    assert gc.scan(advance=timedelta(days=-3)).outcome == "complete"  # first seen three days ago
    gc.page("vhds", "new.vhd")
    assert gc.scan(advance=timedelta(days=3)).outcome == "complete"
    ordered = gc.cli("report", "--format", "json", "--sort", "age").json()
    assert [r["blob"] for r in ordered] == ["old.vhd", "new.vhd"]
    lines = gc.cli("report", "--sort", "age").out.splitlines()
    ages = [float(line.split()[4]) for line in lines[1:3]]  # STATE SIZE BILLED COST AGE
    assert ages[0] >= 3.0 > ages[1]


def test_report_limit_takes_the_first_rows_of_the_chosen_order(gc):
    urls = _priced_estate(gc)
    assert _urls(gc.cli("report", "--format", "json", "--sort", "cost", "--limit", "2")) == [urls["eight"], urls["one"]]
    assert _urls(gc.cli("report", "--format", "json", "--limit", "1")) == [urls["half"]]  # gcacct1/vhds/half.vhd first
    rows = list(csv.DictReader(io.StringIO(gc.cli("report", "--format", "csv", "--sort", "size", "--limit", "1").out)))
    assert [r["url"] for r in rows] == [urls["half"]]
    table = gc.cli("report", "--limit", "1").out
    assert "half.vhd" in table and "one.vhd" not in table
    assert gc.cli("report", "--limit", "0").code == 2


def test_report_account_filter_is_repeatable_and_combines_with_state(gc):
    urls = _priced_estate(gc)
    assert _urls(gc.cli("report", "--format", "json", "--account", "gcacct2")) == [urls["eight"]]
    assert _urls(gc.cli("report", "--format", "json", "--account", "GCACCT2")) == [urls["eight"]]  # names ignore case
    both = gc.cli("report", "--format", "json", "--account", "gcacct1", "--account", "gcacct2")
    assert sorted(_urls(both)) == sorted(urls.values())
    assert _urls(gc.cli("report", "--format", "json", "--account", "gcacct1", "--state", "kept")) == [urls["block"]]
    several = gc.cli("report", "--format", "json", "--account", "gcacct1", "--state", "kept", "--state", "due",
                     "--sort", "cost")
    assert _urls(several) == [urls["one"], urls["half"], urls["block"]]
    assert _urls(gc.cli("report", "--format", "json", "--account", "nosuch")) == []


# -- audit: the time, ETag, size and actor of each row -------------------------------------------


BOTH_DATABASES = pytest.mark.parametrize(
    "gc", [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)],
    indirect=True,
)


@BOTH_DATABASES
def test_each_audit_row_of_a_pass_has_its_own_time_within_the_pass_and_what_it_acted_on(gc):
    urls = {name: gc.page("vhds", f"{name}.vhd", written=[(0, 4096 * (i + 1))]) for i, name in enumerate("abc")}
    gc.configure(mode="dry-run")
    assert gc.scan().outcome == "complete"
    marked = gc.report()
    gc.configure(mode="delete")
    scan = run(gc, "scan")
    assert scan.returncode == 0, scan.stderr
    assert "deleted 3" in scan.stdout
    [last] = store_of(gc).passes(1)
    records = run(gc, "audit", "--format", "json")
    assert records.returncode == 0, records.stderr
    rows = [r for r in json.loads(records.stdout) if r["pass_id"] == last.id]
    assert sorted(r["action"] for r in rows) == ["delete-intent"] * 3 + ["deleted"] * 3
    ats = [iso(r["at"]) for r in rows]
    assert all(last.started_at <= at <= last.finished_at for at in ats), (last, ats)
    assert ats == sorted(ats)  # in the order they happened
    assert len(set(ats)) == len(ats)  # each its own instant, not the pass's start
    assert last.started_at not in ats
    intents = {r["url"]: r for r in rows if r["action"] == "delete-intent"}
    for r in rows:
        before = marked[r["url"]]
        assert (r["etag"], r["size_bytes"], r["billed_bytes"]) == (before["etag"], before["size_bytes"], before["billed_bytes"])
        assert r["actor"] == f"vhd-gc@{socket.gethostname()} (credential emulator, pid {r['actor'].rsplit(' ', 1)[-1]}"
        assert re.fullmatch(r"vhd-gc@\S+ \(credential emulator, pid \d+\)", r["actor"]), r["actor"]
        if r["action"] == "deleted":
            assert r["intent_id"] is not None and iso(intents[r["url"]]["at"]) < iso(r["at"])
    assert {marked[u]["billed_bytes"] for u in urls.values()} == {4096, 8192, 12288}


def test_operator_actor_is_the_actor_option_else_sudo_user_else_user_else_the_login_name(gc):
    url = gc.page("vhds", "precious.vhd")
    assert gc.scan().outcome == "complete"
    etag = gc.report()[url]["etag"]
    assert run(gc, "keep", url, "--reason", "r1", "--actor", "alice", env={"SUDO_USER": "bob", "USER": "carol"}).returncode == 0
    assert run(gc, "unkeep", url, env={"SUDO_USER": "bob", "USER": "carol"}).returncode == 0
    assert run(gc, "keep", url, "--reason", "r2", env={"USER": "carol"}, drop=("SUDO_USER",)).returncode == 0
    assert run(gc, "unkeep", url, drop=("SUDO_USER", "USER")).returncode == 0
    rows = json.loads(run(gc, "audit", "--format", "json").stdout)
    login = pwd.getpwuid(os.getuid()).pw_name
    assert [(r["action"], r["actor"]) for r in rows] == [
        ("keep", "alice"), ("unkeep", "bob"), ("keep", "carol"), ("unkeep", login)]
    assert {(r["etag"], r["size_bytes"]) for r in rows} == {(etag, 1024 * 1024)}  # the blob as it was recorded
    at = [iso(r["at"]) for r in rows]
    assert at == sorted(at) and len(set(at)) == 4


def test_confirm_pass_records_the_operator(gc):
    for i in range(4):
        gc.page("vhds", f"left-{i}.vhd")
    gc.configure(blast_radius={"max_new_share": 0.2, "min_new": 2})
    assert run(gc, "scan").returncode == 3
    confirmed = run(gc, "confirm-pass", "--actor", "dana")
    assert confirmed.returncode == 0, confirmed.stderr
    [row] = json.loads(run(gc, "audit", "--format", "json").stdout)
    assert (row["action"], row["actor"], row["size_bytes"], row["billed_bytes"]) == ("confirm-pass", "dana", 4 << 20, 4)


@BOTH_DATABASES
def test_audit_since_takes_a_timestamp_or_a_duration_ago(gc):
    url = gc.page("vhds", "precious.vhd")
    store = store_of(gc)
    key = BlobKey("gcacct1", "vhds", "precious.vhd")
    store.audit(action="keep", key=key, url=url, at=datetime.now(UTC) - timedelta(days=10), actor="old", reason="old")
    assert gc.cli("keep", url, "--reason", "new", "--actor", "erin").code == 0
    between = datetime.now(UTC)  # after the keep returned, before the unkeep began
    assert gc.cli("unkeep", url, "--actor", "erin").code == 0

    def actions(*args: str) -> list[str]:
        result = gc.cli("audit", "--format", "json", *args)
        assert result.code == 0, result.err
        return [(r["action"], r["actor"]) for r in result.json()]

    assert actions() == [("keep", "old"), ("keep", "erin"), ("unkeep", "erin")]
    assert actions("--since", "7d") == [("keep", "erin"), ("unkeep", "erin")]
    assert actions("--since", "11d") == actions()
    assert actions("--since", between.isoformat()) == [("unkeep", "erin")]
    assert actions("--since", between.isoformat().replace("+00:00", "Z")) == [("unkeep", "erin")]
    assert actions("--since", between.replace(tzinfo=None).isoformat()) == [("unkeep", "erin")]  # naive: UTC
    assert actions("--since", "7d", "--limit", "1") == [("unkeep", "erin")]
    assert actions("--since", (between + timedelta(days=1)).isoformat()) == []
    bad = gc.cli("audit", "--since", "last tuesday")
    assert bad.code == 2 and "--since" in bad.err, bad.err
    empty = gc.cli("audit", "--since", (between + timedelta(days=1)).isoformat())
    assert empty.code == 0 and empty.out.startswith("no audit entries since ")


def test_audit_csv_escapes_formulas_and_the_table_has_headers(gc):
    url = gc.page("vhds", "precious.vhd")
    assert gc.cli("keep", url, "--reason", "=HYPERLINK(\"http://evil\")", "--actor", "@mallory").code == 0
    result = gc.cli("audit", "--format", "csv")
    assert result.code == 0, result.err
    reader = csv.DictReader(io.StringIO(result.out))
    assert reader.fieldnames == ["at", "action", "url", "etag", "size_bytes", "billed_bytes", "actor", "reason",
                                 "error_code", "pass_id", "intent_id"]
    [row] = list(reader)
    assert (row["action"], row["url"], row["actor"], row["reason"]) == (
        "keep", url, "'@mallory", "'=HYPERLINK(\"http://evil\")")
    assert iso(row["at"]) <= datetime.now(UTC)
    table = gc.cli("audit").out.splitlines()
    assert table[0].split() == ["AT", "AGE", "d", "ACTION", "SIZE", "GiB", "BILLED", "GiB", "ETAG", "PASS", "ACTOR",
                                "URL", "WHY"]
    assert len(table) == 2
    assert re.match(r"\S+Z\s+0\.0\s+keep\s+-\s+-\s+-\s+-\s+@mallory\s+" + re.escape(url), table[1]), table[1]


# -- passes table ----------------------------------------------------------------------------


def test_passes_table_has_headers_ages_in_days_and_gib(gc):
    assert gc.cli("passes").out == "no passes yet (run `vhd-gc scan`)\n"
    gc.page("vhds", "left.vhd", size=3 * GIB)
    assert gc.cli("scan").code == 0
    lines = gc.cli("passes").out.splitlines()
    assert lines[0].split() == ["PASS", "SEQ", "OUTCOME", "STARTED", "AGE", "d", "TOOK", "s", "VHDS", "NEW", "NEW",
                                "GiB", "DELETED", "HOST", "ERROR"]
    assert re.match(r"#\d+\s+1\s+complete\s+\S+Z\s+0\.0\s+\d+\.\d\s+1\s+1\s+3\.00\s+0\s+\S+", lines[1]), lines[1]


# -- the blast-radius refusal names what it held back, per account ------------------------------


def test_blast_radius_refusal_names_per_account_what_it_held_back_in_gib(gc):
    for i in range(3):
        gc.page("vhds", f"big-{i}.vhd", size=2 * GIB)
    gc.page("data", "small.vhd", account="gcacct2", size=GIB // 2)
    gc.configure(blast_radius={"max_new_share": 0.2, "min_new": 2})
    scan = run(gc, "scan")
    assert scan.returncode == 3, scan.stderr
    held = "held back: gcacct1 3 blobs (6.00 GiB), gcacct2 1 blob (0.50 GiB)"
    assert held in scan.stderr, scan.stderr
    [last] = store_of(gc).passes(1)
    assert held in last.error and held in last.stats["blocked"]
    assert last.stats["new_by_account"] == {"gcacct1": {"blobs": 3, "bytes": 6 * GIB},
                                            "gcacct2": {"blobs": 1, "bytes": GIB // 2}}
    assert held in gc.cli("passes").out
    assert gc.report() == {}  # nothing was marked
