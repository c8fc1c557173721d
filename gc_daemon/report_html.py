"""`report --format html`: one self-contained page for an owner or a FinOps person.

The page is built from exactly the rows `report --format json` prints (:func:`gc_daemon.report.any_record`,
with the same filters and order), so its numbers cannot differ from the JSON's; that JSON is embedded
in the page (``<script type="application/json" id="vhdgc-report">``) beside the page's own sums
(``id="vhdgc-summary"``), so a program can check every number it shows.

It fetches nothing: CSS inline, charts as inline SVG drawn here, no script that runs, and a
Content-Security-Policy that forbids every fetch. Every text that comes from Azure, the state
database or an operator (blob names, owners, reasons) is escaped, non-printable characters shown as
escapes (:func:`gc_daemon.report.printable`); the page is ASCII (other characters as references).

What it counts (docs/operations.md, "The report as a page"):

- *orphaned*: the rows that exist and are billed for nothing: ``candidate``, ``due`` and ``kept``.
  Their billed bytes are ``billed_bytes``, or the nominal ``size_bytes`` while that is not measured
  (pending: an upper bound, as the table and the metrics count it); their cost is the sum of
  ``monthly_cost`` (a row whose cost is not known adds nothing, and the page says how many).
- *saved*: the ``deleted`` rows' ``monthly_cost`` (what they cost before vhd-gc deleted them).
- cost by subscription (a blob row has none: "not recorded (VHD blobs)"), by storage account (disks
  and snapshots have none: "managed disks and snapshots") and by state; ages since
  ``first_orphaned_at`` in buckets; the due list: ``candidate`` and ``due`` rows with a
  ``delete_after``, soonest first.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from datetime import datetime

from .report import GIB, _owner_short, any_record, printable, with_owners

ORPHANED = ("candidate", "due", "kept")
STATES = ("candidate", "due", "kept", "released", "deleted")
NO_SUBSCRIPTION = "not recorded (VHD blobs)"
NO_ACCOUNT = "managed disks and snapshots"
UNKNOWN = "unknown"
# Ages since first orphaned: (label, upper bound in days, exclusive; None: no bound).
AGE_BUCKETS = (("<7d", 7), ("7-30d", 30), ("30-90d", 90), ("90d-1y", 365), (">1y", None))
DAY = 86400.0


def _parse(ts: str | None) -> datetime | None:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")) if ts else None


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def counted_billed(rec: dict) -> int:
    """A row's billed bytes as the totals count them: measured, or the nominal size while pending."""
    if rec.get("billed_bytes") is not None:
        return rec["billed_bytes"]
    return rec.get("size_bytes") or 0


def age_bucket(rec: dict, now: datetime) -> str:
    """The label of the row's age since it was first seen orphaned (``unknown`` without a date)."""
    first = _parse(rec.get("first_orphaned_at"))
    if first is None:
        return UNKNOWN
    days = (now - first).total_seconds() / DAY
    for label, bound in AGE_BUCKETS:
        if bound is None or days < bound:
            return label
    raise AssertionError("unreachable")


class _Sum:
    __slots__ = ("count", "billed", "costs", "pending", "cost_unknown")

    def __init__(self) -> None:
        self.count = 0
        self.billed = 0
        self.costs: list[float] = []
        self.pending = 0
        self.cost_unknown = 0

    def add(self, rec: dict) -> None:
        self.count += 1
        self.billed += counted_billed(rec)
        self.pending += rec.get("billed_bytes") is None
        if rec.get("monthly_cost") is None:
            self.cost_unknown += 1
        else:
            self.costs.append(rec["monthly_cost"])

    def as_dict(self, **extra) -> dict:
        return {**extra, "count": self.count, "billed_bytes": self.billed,
                "monthly_cost": round(math.fsum(self.costs), 6), "billed_pending": self.pending,
                "cost_unknown": self.cost_unknown}


def due_list(records: Iterable[dict]) -> list[dict]:
    """The rows due or becoming due (``candidate``, ``due``) with a delete date, soonest first."""
    rows = [r for r in records if r["state"] in ("candidate", "due") and r.get("delete_after")]
    return sorted(rows, key=lambda r: (_parse(r["delete_after"]), r["url"]))


def summarize(records: list[dict], now: datetime, currency: str | None, seq: int | None) -> dict:
    """The page's numbers, from the report's JSON rows only."""
    orphaned, saved = _Sum(), _Sum()
    by_state: dict[str, _Sum] = {}
    by_sub: dict[str, _Sum] = {}
    by_account: dict[str, _Sum] = {}
    by_age: dict[str, _Sum] = {label: _Sum() for label, _ in AGE_BUCKETS}
    for rec in records:
        by_state.setdefault(rec["state"], _Sum()).add(rec)
        if rec["state"] == "deleted":
            saved.add(rec)
        if rec["state"] not in ORPHANED:
            continue
        orphaned.add(rec)
        by_sub.setdefault(rec.get("subscription") or NO_SUBSCRIPTION, _Sum()).add(rec)
        by_account.setdefault(rec.get("account") or NO_ACCOUNT, _Sum()).add(rec)
        by_age.setdefault(age_bucket(rec, now), _Sum()).add(rec)

    def ranked(groups: dict[str, _Sum]) -> list[dict]:
        items = [s.as_dict(name=name) for name, s in groups.items()]
        return sorted(items, key=lambda d: (-d["monthly_cost"], -d["billed_bytes"], d["name"]))

    order = {s: i for i, s in enumerate(STATES)}
    return {
        "generated_at": _iso(now),
        "currency": currency,
        "pass_seq": seq,
        "rows": len(records),
        "orphaned": orphaned.as_dict(),
        "saved": saved.as_dict(),
        "by_state": [by_state[s].as_dict(name=s) for s in sorted(by_state, key=lambda s: (order.get(s, 99), s))],
        "by_subscription": ranked(by_sub),
        "by_account": ranked(by_account),
        "by_age": [by_age[label].as_dict(name=label) for label in by_age],
        "due": [r["url"] for r in due_list(records)],
    }


# -- rendering ----------------------------------------------------------------------------------


def esc(value: object) -> str:
    """Text for the page: non-printable characters as visible escapes, then HTML-escaped (quotes too)."""
    return html.escape(printable("" if value is None else value), quote=True)


def _script_json(value: object) -> str:
    """JSON safe inside a <script> element: ``<``, ``>`` and ``&`` (only ever in strings) as escapes."""
    text = json.dumps(value, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def gib_text(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def money_text(value: float | None, currency: str | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} {currency}" if currency else f"{value:.2f}"


def _date(ts: str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    dt = _parse(ts)
    return dt.strftime(fmt) if dt else "-"


def _in_days(ts: str | None, now: datetime) -> str:
    dt = _parse(ts)
    if dt is None:
        return "-"
    days = (dt - now).total_seconds() / DAY
    return "now" if days <= 0 else f"in {days:.1f} d"


CSS = """
:root { --ink: #1d2430; --muted: #5b6472; --line: #d5d9e0; --bar: #2f6db5; --due: #b3261e; --kept: #7a5c00;
        --bg: #ffffff; --panel: #f5f7fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif;
       color: var(--ink); background: var(--bg); margin: 0 auto; max-width: 1260px; padding: 20px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: var(--muted); margin: 0 0 16px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(190px, 1fr)); gap: 12px; margin: 0; }
.cards div { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; }
.cards dt { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.cards dd { margin: 2px 0 0; font-size: 20px; font-weight: 600; }
.note { color: var(--muted); font-size: 12px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 8px 24px; }
figure { margin: 0; } figcaption { font-weight: 600; margin: 8px 0 4px; }
svg text { font: 12px system-ui, "DejaVu Sans", sans-serif; fill: var(--ink); }
svg .bar { fill: var(--bar); } svg .bar.due { fill: var(--due); } svg .bar.kept { fill: var(--kept); }
svg .track { fill: var(--panel); }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
caption { text-align: left; color: var(--muted); font-size: 12px; padding: 2px 0; caption-side: bottom; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: var(--panel); font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name { overflow-wrap: anywhere; min-width: 8em; }
.scroll { overflow-x: auto; }
#due { font-size: 13px; } #due th, #due td { padding: 4px 6px; }
.state-due { color: var(--due); font-weight: 600; }
details summary { cursor: pointer; color: var(--muted); }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  .charts { grid-template-columns: 1fr 1fr; }
  .cards div, thead th { background: none; }
  tr, figure { break-inside: avoid; }
  details { display: none; }
  .scroll { overflow: visible; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _bar_chart(chart_id: str, title: str, groups: list[dict], value_key: str, label_of,
               css_of=lambda g: "") -> str:
    """A horizontal bar chart as inline SVG: one bar per group, its value in a <title> and as text."""
    width, label_w, value_w, bar_h, gap = 580, 215, 120, 18, 6
    track_w = width - label_w - value_w - 8
    top = max((g[value_key] for g in groups), default=0) or 1
    height = max(1, len(groups)) * (bar_h + gap) + gap
    parts = [f'<svg id="{chart_id}" role="img" aria-labelledby="{chart_id}-title" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<title id="{chart_id}-title">{esc(title)}</title>']
    if not groups:
        parts.append(f'<text x="0" y="{bar_h}">nothing orphaned</text>')
    for i, g in enumerate(groups):
        y = gap + i * (bar_h + gap)
        name = printable(g["name"])
        short = name if len(name) <= 28 else name[:12] + "..." + name[-13:]
        w = 0 if g[value_key] <= 0 else max(1.0, track_w * g[value_key] / top)
        text = label_of(g)
        cls = ("bar " + css_of(g)).strip()
        parts.append(
            f'<g data-key="{esc(g["name"])}"><title>{esc(name)}: {esc(text)}</title>'
            f'<text x="{label_w - 6}" y="{y + bar_h - 5}" text-anchor="end">{esc(short)}</text>'
            f'<rect class="track" x="{label_w}" y="{y}" width="{track_w}" height="{bar_h}"/>'
            f'<rect class="{cls}" x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}"/>'
            f'<text x="{label_w + track_w + 6}" y="{y + bar_h - 5}">{esc(text)}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def _group_table(table_id: str, head: str, groups: list[dict], currency: str | None, caption: str) -> str:
    rows = []
    for g in groups:
        rows.append(
            f'<tr data-key="{esc(g["name"])}"><th scope="row">{esc(g["name"])}</th>'
            f'<td class="num" data-value="{g["count"]}">{g["count"]}</td>'
            f'<td class="num" data-value="{g["billed_bytes"]}">{gib_text(g["billed_bytes"])}</td>'
            f'<td class="num" data-value="{g["monthly_cost"]:.6f}">{esc(money_text(g["monthly_cost"], currency))}</td></tr>')
    return (f'<table id="{table_id}"><caption>{esc(caption)}</caption><thead><tr><th scope="col">{esc(head)}</th>'
            f'<th scope="col" class="num">rows</th><th scope="col" class="num">billed</th>'
            f'<th scope="col" class="num">cost a month</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _figure(fig_id: str, title: str, groups: list[dict], currency: str | None, head: str, caption: str,
            by: str = "cost", css_of=lambda g: "") -> str:
    if by == "cost":
        chart = _bar_chart(f"{fig_id}-chart", title, groups, "monthly_cost",
                           lambda g: money_text(g["monthly_cost"], currency), css_of)
    else:
        chart = _bar_chart(f"{fig_id}-chart", title, groups, "count",
                           lambda g: f'{g["count"]} rows, {gib_text(g["billed_bytes"])}', css_of)
    return (f'<figure id="{fig_id}"><figcaption>{esc(title)}</figcaption>{chart}'
            f'<details><summary>the numbers</summary>{_group_table(fig_id + "-table", head, groups, currency, caption)}'
            f'</details></figure>')


def _owner_cells(rec: dict) -> str:
    owner = rec.get("owner") or UNKNOWN
    holder = rec.get("holder") or rec.get("last_owner")
    shown = _owner_short(holder) if holder else UNKNOWN
    notified = rec.get("notified_at") or (
        "not yet" if rec.get("notice_state") in ("none", "pending") else None) or UNKNOWN
    return (f'<td class="owner">{esc(owner)}</td><td class="name holder" title="{esc(holder or UNKNOWN)}">{esc(shown)}</td>'
            f'<td class="notified">{esc(notified)}</td>')


def _where(rec: dict) -> str:
    if rec.get("kind", "vhd") == "vhd":
        return f'{rec.get("account")}/{rec.get("container")}'
    return rec.get("resource_group") or UNKNOWN


def _where_title(rec: dict) -> str:
    if rec.get("kind", "vhd") == "vhd":
        return f'storage account {rec.get("account")}, container {rec.get("container")}'
    return f'subscription {rec.get("subscription") or UNKNOWN}, resource group {rec.get("resource_group") or UNKNOWN}'


def _due_table(rows: list[dict], now: datetime, currency: str | None) -> str:
    if not rows:
        return '<p id="due-empty">Nothing is due or becoming due.</p>'
    body = []
    for r in rows:
        body.append(
            f'<tr data-url="{esc(r["url"])}"><td class="num" data-value="{esc(r["delete_after"])}">{esc(_date(r["delete_after"]))}</td>'
            f'<td class="num">{esc(_in_days(r["delete_after"], now))}</td>'
            f'<td class="state state-{esc(r["state"])}">{esc(r["state"])}</td><td class="kind">{esc(r.get("kind"))}</td>'
            f'<td class="name">{esc(r["blob"])}</td><td class="name where" title="{esc(_where_title(r))}">{esc(_where(r))}</td>'
            f'<td class="num billed" data-value="{counted_billed(r)}">{gib_text(counted_billed(r))}'
            f'{" (pending)" if r.get("billed_bytes") is None else ""}</td>'
            f'<td class="num cost" data-value="{"" if r.get("monthly_cost") is None else format(r["monthly_cost"], ".6f")}">'
            f'{esc(money_text(r.get("monthly_cost"), currency))}</td>'
            f'<td class="num">{esc(_date(r.get("first_orphaned_at"), "%Y-%m-%d"))}</td>{_owner_cells(r)}</tr>')
    return ('<div class="scroll"><table id="due"><caption>Candidates and due rows with a delete date, soonest first. A due row is deleted '
            'at the next pass in delete mode, after a re-check; `vhd-gc keep URL_OR_ID --reason TEXT` stops it.</caption>'
            '<thead><tr><th scope="col" class="num">delete after (UTC)</th><th scope="col" class="num">when</th>'
            '<th scope="col">state</th><th scope="col">kind</th><th scope="col">name</th><th scope="col">account/container or resource group</th>'
            '<th scope="col" class="num">billed</th><th scope="col" class="num">cost a month</th>'
            '<th scope="col" class="num">first orphaned</th><th scope="col">owner</th><th scope="col">holder</th>'
            f'<th scope="col">notified</th></tr></thead><tbody>{"".join(body)}</tbody></table></div>')


def _card(card_id: str, label: str, value: str, data: object) -> str:
    return f'<div><dt>{esc(label)}</dt><dd id="{card_id}" data-value="{esc(data)}">{esc(value)}</dd></div>'


def page(records: list[dict], now: datetime, currency: str | None, seq: int | None) -> str:
    """The whole page (ASCII), from the report's JSON rows."""
    s = summarize(records, now, currency, seq)
    o, saved = s["orphaned"], s["saved"]
    counts = {g["name"]: g["count"] for g in s["by_state"]}
    notes = []
    if o["billed_pending"]:
        notes.append(f'{o["billed_pending"]} orphaned rows have billed bytes not measured yet: counted at their '
                     "nominal size (an upper bound)")
    if o["cost_unknown"]:
        notes.append(f'{o["cost_unknown"]} orphaned rows have no known monthly cost: not counted in the cost')
    cards = [
        _card("total-billed", "orphaned, billed", gib_text(o["billed_bytes"]), o["billed_bytes"]),
        _card("total-cost", "orphaned, cost a month", money_text(o["monthly_cost"], currency), f'{o["monthly_cost"]:.6f}'),
        _card("total-orphaned", "orphaned rows", str(o["count"]), o["count"]),
        _card("total-saved", "deleted, saved a month", money_text(saved["monthly_cost"], currency),
              f'{saved["monthly_cost"]:.6f}'),
    ] + [_card(f"count-{state}", state, str(counts.get(state, 0)), counts.get(state, 0)) for state in STATES]
    state_css = lambda g: g["name"] if g["name"] in ("due", "kept") else ""  # noqa: E731
    orphaned_states = [g for g in s["by_state"] if g["name"] in ORPHANED]
    due = due_list(records)
    generated = now.strftime("%Y-%m-%d %H:%M:%S UTC")
    seq_text = f"the last complete pass is #{seq}" if seq else "no complete pass yet"
    body = f"""<header><h1>vhd-gc: orphaned VHDs, managed disks and snapshots</h1>
<p class="meta">Generated {esc(generated)}; {esc(seq_text)}; {len(records)} rows; costs in {esc(currency or "-")} a month
(an estimate from <code>prices</code>).</p></header>
<main>
<section aria-labelledby="totals-h"><h2 id="totals-h">Totals</h2>
<dl class="cards" id="totals">{"".join(cards)}</dl>
<p class="note">Orphaned: candidate, due and kept rows (they exist and nothing uses them). {esc("; ".join(notes))}</p>
</section>
<section aria-labelledby="charts-h"><h2 id="charts-h">Where the cost is</h2><div class="charts">
{_figure("by-subscription", "Cost a month by subscription (orphaned)", s["by_subscription"], currency, "subscription",
         "A blob row has no subscription in the report: its cost is under the storage account.")}
{_figure("by-account", "Cost a month by storage account (orphaned)", s["by_account"], currency, "storage account",
         "Managed disks and snapshots have no storage account: they are one group.")}
{_figure("by-state", "Cost a month by state (orphaned)", orphaned_states, currency, "state",
         "Deleted rows cost nothing any more; their cost before deletion is the saving above.", css_of=state_css)}
{_figure("by-age", "Age since first orphaned (orphaned rows)", s["by_age"], currency, "age", "Counted from first_orphaned_at.",
         by="count")}
</div></section>
<section aria-labelledby="due-h"><h2 id="due-h">Due and becoming due ({len(due)})</h2>
{_due_table(due, now, currency)}
</section>
</main>"""
    report_json = _script_json(records)
    summary_json = _script_json(s)
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="vhd-gc">
<title>vhd-gc report {esc(generated)}</title>
<style>{CSS}</style>
</head><body>
{body}
<script type="application/json" id="vhdgc-report">{report_json}</script>
<script type="application/json" id="vhdgc-summary">{summary_json}</script>
</body></html>
"""
    return doc.encode("ascii", "xmlcharrefreplace").decode("ascii")


def render_html(rows: Iterable, seq: int | None, now: datetime, out, prices=None, owners_of=None) -> None:
    """The page of ``rows`` (blobs and disks, as the report selected and ordered them) on ``out``."""
    records = [any_record(row, seq, prices, owner) for row, owner in with_owners(rows, owners_of)]
    out.write(page(records, now, prices.currency if prices is not None else None, seq))
