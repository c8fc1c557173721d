"""`report --format html`, rendered by headless Chromium (Debian's package): the page of an estate
seen by real passes (Azurite and the ARM stand-in; blobs, a managed disk, a snapshot), whose rendered
numbers (totals, cost by account, subscription and state, the age histogram, the due list) are the
ones `report --format json` gives, whose user data (a blob named with markup and quotes) stays text,
and which asks the network for nothing (Chromium's net log, the page's requests; a control page shows
the probe sees them)."""

from __future__ import annotations

import json
import math
import re
import struct
import zlib
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from sandbox import arm as a
from sandbox import chromium
from tests.support import disks as d
from tests.support.estate import SUB, SUB2

needs_chromium = pytest.mark.skipif(
    chromium.find() is None, reason="chromium is not installed (Debian package `chromium`; .ci/run installs it)")

GIB = 1024**3
MiB = 1024 * 1024
RG = "rg1"
EVIL = "<script>alert(\"vhd-gc\")</script> & 'quoted' <b>bold</b>.vhd"
ORPHANED = ("candidate", "due", "kept")
SIZE = (1280, 2400)


# -- the rendered DOM, as a tree -------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class Node:
    def __init__(self, tag: str, attrs: dict[str, str | None], parent: "Node | None") -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Node | str] = []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def walk(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.walk()

    def find(self, tag: str | None = None, **attrs: str) -> list["Node"]:
        return [n for n in self.walk() if (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())]

    def one(self, tag: str | None = None, **attrs: str) -> "Node":
        found = self.find(tag, **attrs)
        assert len(found) == 1, (tag, attrs, len(found))
        return found[0]


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = Node("#document", {}, None)

    def handle_starttag(self, tag, attrs):
        node = Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def parse(dom: str) -> Node:
    tree = _Tree()
    tree.feed(dom)
    tree.close()
    return tree.root


def cells(row: Node) -> list[Node]:
    return [c for c in row.children if isinstance(c, Node) and c.tag in ("td", "th")]


def group_rows(doc: Node, table_id: str) -> dict[str, tuple[int, int, str]]:
    """A breakdown's table: name -> (rows, billed bytes, cost with 6 decimals), from its data-value cells."""
    out = {}
    for tr in doc.one("table", id=table_id).one("tbody").find("tr"):
        head, count, billed, cost = cells(tr)
        assert head.text() == tr.attrs["data-key"]
        out[tr.attrs["data-key"]] = (int(count.attrs["data-value"]), int(billed.attrs["data-value"]), cost.attrs["data-value"])
    return out


# -- what the page must say, from the JSON alone -------------------------------------------------------


def counted_billed(r: dict) -> int:
    return r["billed_bytes"] if r["billed_bytes"] is not None else r["size_bytes"]


def expected_groups(rows: list[dict], key) -> dict[str, tuple[int, int, str]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["state"] in ORPHANED:
            groups[key(r)].append(r)
    return {name: (len(rs), sum(counted_billed(r) for r in rs),
                   f"{round(math.fsum(r['monthly_cost'] for r in rs if r['monthly_cost'] is not None), 6):.6f}")
            for name, rs in groups.items()}


def iso(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def age_label(first: str, now: datetime) -> str:
    days = (now - iso(first)).total_seconds() / 86400
    return "<7d" if days < 7 else "7-30d" if days < 30 else "30-90d" if days < 90 else "90d-1y" if days < 365 else ">1y"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def png_pixels_vary(path: Path) -> int:
    """How many distinct byte values the decompressed image data holds (a blank page: a handful)."""
    data = path.read_bytes()
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat)))


# -- the estate --------------------------------------------------------------------------------------


def seed_estate(gc) -> dict[str, str]:
    """Blobs first orphaned 400, 100, 45 and 10 days ago and now (passes on a moved clock), one kept,
    one released, one named with markup, one whose billed bytes are pending; an unattached managed
    disk in SUB and an orphaned snapshot in SUB2."""
    now = datetime.now(UTC)
    d.configure(gc, mode="dry-run", disks="report", min_age="0s", grace_period="60d", min_sightings=1,
                azure={"subscriptions": [SUB, SUB2]})
    urls = {"used": gc.page("vhds", "used.vhd"),
            "ancient": gc.page("vhds", "ancient.vhd", size=4 * MiB, written=[(0, 3 * MiB)])}
    vm = a.vm(SUB, RG, "web", os_vhd=urls["used"])
    d.seed(gc, vm)
    assert gc.scan(at=now - timedelta(days=400)).outcome == "complete"

    urls["kept"] = gc.page("vhds", "kept.vhd", written=[(0, MiB)], metadata={"vhdgc_keep": "INC-1"})
    assert gc.scan(at=now - timedelta(days=100)).outcome == "complete"

    urls["mid"] = gc.page("vhds", "mid.vhd", size=8 * MiB, written=[(0, 2 * MiB)])
    urls["back"] = gc.page("vhds", "back.vhd", account="gcacct2")
    assert gc.scan(at=now - timedelta(days=45)).outcome == "complete"

    urls["evil"] = gc.page("vhds", EVIL, account="gcacct2", written=[(0, 512 * 1024)])
    disk = d.disk("orphan-disk", size_gb=64, sku="Premium_LRS")
    snap = d.snapshot("orphan-snap", source=d.disk_id("gone", sub=SUB2), sub=SUB2, rg="rg-snaps")
    d.seed(gc, a.vm(SUB, RG, "web", os_vhd=urls["used"], data_vhds=[urls["back"]]), disk, snap)
    assert gc.scan(at=now - timedelta(days=10)).outcome == "complete"

    urls["fresh"] = gc.page("uploads", "fresh.vhd")
    d.configure(gc, mode="dry-run", disks="report", min_age="0s", grace_period="60d", min_sightings=1,
                azure={"subscriptions": [SUB, SUB2]}, billed_bytes={"max_per_pass": 0})
    assert gc.scan().outcome == "complete"
    urls["disk"], urls["snap"] = disk["id"], snap["id"]
    return urls


@needs_chromium
def test_the_page_renders_the_numbers_of_the_json_report(gc, tmp_path):
    urls = seed_estate(gc)
    as_json = gc.cli("report", "--format", "json")
    assert as_json.code == 0, as_json.err
    rows = as_json.json()
    by_url = {r["url"].lower(): r for r in rows}
    # The estate is what the test built (the page is checked against this JSON below).
    assert {(r["blob"], r["state"]) for r in rows} >= {
        ("ancient.vhd", "due"), ("kept.vhd", "kept"), ("mid.vhd", "candidate"), ("back.vhd", "released"),
        (EVIL, "candidate"), ("fresh.vhd", "candidate"), ("orphan-disk", "candidate"), ("orphan-snap", "candidate")}
    assert by_url[urls["fresh"].lower()]["billed_bytes"] is None  # pending: counted at its nominal size

    result = gc.cli("report", "--format", "html")
    assert result.code == 0, result.err
    assert result.out.isascii()
    page = tmp_path / "report.html"
    page.write_text(result.out, encoding="ascii")
    shot, printed = tmp_path / "report.png", tmp_path / "report.pdf"
    dom, requests = chromium.render(page, screenshot=shot, size=SIZE, pdf=printed)
    doc = parse(dom)

    # The embedded JSON is the report, exactly; the page's sums are dated by it.
    assert json.loads(doc.one("script", id="vhdgc-report").text()) == rows
    summary = json.loads(doc.one("script", id="vhdgc-summary").text())
    now = iso(summary["generated_at"])
    assert summary["currency"] == "USD"

    # Totals: orphaned billed bytes and monthly cost, and the counts by state.
    orphaned = [r for r in rows if r["state"] in ORPHANED]
    billed = sum(counted_billed(r) for r in orphaned)
    cost = round(math.fsum(r["monthly_cost"] for r in orphaned if r["monthly_cost"] is not None), 6)
    assert doc.one(id="total-billed").attrs["data-value"] == str(billed)
    assert doc.one(id="total-billed").text() == f"{billed / GIB:.2f} GiB"
    assert doc.one(id="total-cost").attrs["data-value"] == f"{cost:.6f}"
    assert doc.one(id="total-cost").text() == f"{cost:.2f} USD"
    assert doc.one(id="total-orphaned").text() == str(len(orphaned)) == "7"
    states = Counter(r["state"] for r in rows)
    for state in ("candidate", "due", "kept", "released", "deleted"):
        assert doc.one(id=f"count-{state}").text() == str(states[state]), state
    assert (states["due"], states["kept"], states["released"]) == (1, 1, 1)

    # Cost by storage account, subscription and state: the tables behind the charts, and each bar's title.
    accounts = expected_groups(rows, lambda r: r["account"] or "managed disks and snapshots")
    assert set(accounts) == {"gcacct1", "gcacct2", "managed disks and snapshots"}
    assert group_rows(doc, "by-account-table") == accounts
    subscriptions = expected_groups(rows, lambda r: r.get("subscription") or "not recorded (VHD blobs)")
    assert set(subscriptions) == {SUB, SUB2, "not recorded (VHD blobs)"}
    assert group_rows(doc, "by-subscription-table") == subscriptions
    assert group_rows(doc, "by-state-table") == expected_groups(rows, lambda r: r["state"])
    for name, (_, _, value) in accounts.items():
        bar = doc.one("svg", id="by-account-chart").one("g", data_key=name)
        assert bar.one("title").text() == f"{name}: {float(value):.2f} USD"
        assert bar.find("rect", **{"class": "bar"})

    # The age histogram: every orphaned row in the bucket of its first_orphaned_at.
    ages = {label: v for label, v in group_rows(doc, "by-age-table").items()}
    assert list(ages) == ["<7d", "7-30d", "30-90d", "90d-1y", ">1y"]
    expected_ages = Counter(age_label(r["first_orphaned_at"], now) for r in orphaned)
    assert {label: v[0] for label, v in ages.items()} == {label: expected_ages[label] for label in ages}
    assert {r["blob"]: age_label(r["first_orphaned_at"], now) for r in orphaned if r["kind"] == "vhd"} == {
        "ancient.vhd": ">1y", "kept.vhd": "90d-1y", "mid.vhd": "30-90d", EVIL: "7-30d", "fresh.vhd": "<7d"}

    # The due list: candidates and due rows by delete date, the name as text, owners "unknown" until known.
    due = sorted((r for r in rows if r["state"] in ("candidate", "due") and r["delete_after"]),
                 key=lambda r: (iso(r["delete_after"]), r["url"]))
    trs = doc.one("table", id="due").one("tbody").find("tr")
    assert [tr.attrs["data-url"] for tr in trs] == [r["url"] for r in due]
    assert trs[0].attrs["data-url"] == urls["ancient"]
    for tr, r in zip(trs, due):
        c = cells(tr)
        assert c[0].attrs["data-value"] == r["delete_after"]
        assert (c[2].text(), c[3].text(), c[4].text()) == (r["state"], r["kind"], r["blob"])
        assert c[6].attrs["data-value"] == str(counted_billed(r))
        assert c[7].attrs["data-value"] == ("" if r["monthly_cost"] is None else f"{r['monthly_cost']:.6f}")
        assert c[9].text() == (r.get("owner") or "unknown")
        assert c[11].text() == (r.get("notified_at") or ("not yet" if r.get("notice_state") in ("none", "pending")
                                                          else "unknown"))
    assert doc.one("h2", id="due-h").text() == f"Due and becoming due ({len(due)})"

    # A name is text: no element came out of it, and the raw page never holds it unescaped.
    scripts = doc.find("script")
    assert [s.attrs.get("type") for s in scripts] == ["application/json", "application/json"]
    assert not doc.find("b")
    assert EVIL not in result.out and "<script>alert" not in result.out
    assert any(cells(tr)[4].text() == EVIL for tr in trs)

    # Nothing fetched: the page requested no URL, and names none to fetch.
    assert requests == []
    assert not re.search(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
                         result.out, re.I)
    assert "default-src 'none'" in doc.one("meta", http_equiv="Content-Security-Policy").attrs["content"]

    # And it was drawn: a window-sized PNG with more than a blank page in it.
    assert png_size(shot) == SIZE
    assert png_pixels_vary(shot) > 32
    assert printed.read_bytes().startswith(b"%PDF-")  # and it prints


@needs_chromium
def test_the_network_probe_sees_what_a_page_requests(tmp_path):
    """The control for `requests == []` above: a page that does fetch is seen fetching."""
    page = tmp_path / "fetching.html"
    page.write_text('<!DOCTYPE html><html><head><link rel="stylesheet" href="https://fonts.example.com/x.css">'
                    '</head><body><p id="x">hi</p><img src="http://images.example.org/a.png"></body></html>')
    dom, requests = chromium.render(page)
    assert parse(dom).one("p", id="x").text() == "hi"
    assert sorted(requests) == ["http://images.example.org/a.png", "https://fonts.example.com/x.css"]


@needs_chromium
def test_the_page_of_an_empty_estate_says_nothing_is_due(gc, tmp_path):
    result = gc.cli("report", "--format", "html")
    assert result.code == 0, result.err
    page = tmp_path / "empty.html"
    page.write_text(result.out, encoding="ascii")
    dom, requests = chromium.render(page)
    doc = parse(dom)
    assert json.loads(doc.one("script", id="vhdgc-report").text()) == []
    assert doc.one(id="due-empty").text() == "Nothing is due or becoming due."
    assert doc.one(id="total-billed").attrs["data-value"] == "0"
    assert doc.one(id="total-cost").text() == "0.00 USD"
    assert group_rows(doc, "by-account-table") == {}
    assert requests == []


@needs_chromium
def test_filters_apply_to_the_page_as_to_the_json(gc, tmp_path):
    """`--state` (and every other filter) selects the page's rows exactly as the JSON's."""
    kept = gc.page("vhds", "kept.vhd", metadata={"vhdgc_keep": "x"})
    gc.page("vhds", "left.vhd")
    assert gc.scan().outcome == "complete"
    rows = gc.cli("report", "--format", "json", "--state", "kept").json()
    assert [r["url"] for r in rows] == [kept]
    result = gc.cli("report", "--format", "html", "--state", "kept")
    page = tmp_path / "kept.html"
    page.write_text(result.out, encoding="ascii")
    doc = parse(chromium.render(page)[0])
    assert json.loads(doc.one("script", id="vhdgc-report").text()) == rows
    assert doc.one(id="count-kept").text() == "1" and doc.one(id="count-due").text() == "0"
    assert doc.one(id="due-empty")


# -- the page without a browser: names, owners, what it counts ----------------------------------------


def _row(**kw):
    base = {"url": "https://a.blob.core.windows.net/c/x.vhd", "account": "a", "container": "c", "blob": "x.vhd",
            "state": "candidate", "size_bytes": 4 * GIB, "billed_bytes": GIB, "first_orphaned_at": "2026-11-01T00:00:00Z",
            "delete_after": "2026-12-10T00:00:00Z", "sightings": 3, "hold": None, "kind": "vhd", "monthly_cost": 0.045}
    base.update(kw)
    return base


def test_a_name_with_controls_and_non_ascii_stays_text_and_the_json_keeps_it_exact():
    from gc_daemon.report_html import page

    name = "caf\u00e9 \u202egnp.exe\x1b[31m </script><!-- .vhd"
    rows = [_row(blob=name, url="https://a.blob.core.windows.net/c/odd.vhd")]
    text = page(rows, datetime(2026, 12, 4, tzinfo=UTC), "EUR", 9)
    assert text.isascii()
    doc = parse(text)
    assert json.loads(doc.one("script", id="vhdgc-report").text()) == rows  # the exact value
    shown = doc.one("table", id="due").one("tbody").one("tr")
    assert cells(shown)[4].text() == "caf\u00e9 \\u202egnp.exe\\x1b[31m </script><!-- .vhd"  # controls visible
    assert "</script><!--" not in text.split('id="vhdgc-report">', 1)[1].split("</script>", 1)[0]


def test_owners_holders_and_notices_show_when_the_rows_carry_them():
    """Rows gain `owner`, `holder`, `notified_at` and `notice_state` (issue 15); absent: "unknown"."""
    from gc_daemon.report_html import page

    rows = [_row(url="u1", owner="alice@example.com", holder="/subscriptions/s/resourceGroups/g/providers/"
                 "Microsoft.Compute/virtualMachines/web-01", notified_at="2026-12-01T10:00:00Z", notice_state="delivered"),
            _row(url="u2", delete_after="2026-12-11T00:00:00Z", owner=None, holder=None, notice_state="pending"),
            _row(url="u3", delete_after="2026-12-12T00:00:00Z", last_owner="vm:old-app")]
    doc = parse(page(rows, datetime(2026, 12, 4, tzinfo=UTC), "USD", 1))
    got = [[c.text() for c in cells(tr)[9:12]] for tr in doc.one("table", id="due").one("tbody").find("tr")]
    assert got == [["alice@example.com", "virtualMachines/web-01", "2026-12-01T10:00:00Z"],
                   ["unknown", "unknown", "not yet"],
                   ["unknown", "vm:old-app", "unknown"]]


def test_the_sums_count_pending_bytes_at_nominal_size_and_unknown_costs_as_nothing():
    from gc_daemon.report_html import summarize

    rows = [_row(url="u1"), _row(url="u2", billed_bytes=None, monthly_cost=None, state="kept", delete_after=None),
            _row(url="u3", state="deleted", monthly_cost=1.5), _row(url="u4", state="released", monthly_cost=9.0)]
    s = summarize(rows, datetime(2026, 12, 4, tzinfo=UTC), "USD", 2)
    assert s["orphaned"] == {"count": 2, "billed_bytes": 5 * GIB, "monthly_cost": 0.045, "billed_pending": 1,
                             "cost_unknown": 1}
    assert (s["saved"]["count"], s["saved"]["monthly_cost"]) == (1, 1.5)
    assert [g["name"] for g in s["by_state"]] == ["candidate", "kept", "released", "deleted"]
    assert s["due"] == ["u1"]
    assert [(g["name"], g["count"]) for g in s["by_age"]] == [("<7d", 0), ("7-30d", 0), ("30-90d", 2), ("90d-1y", 0), (">1y", 0)]
