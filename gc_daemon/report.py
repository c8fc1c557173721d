"""Rendering the stored state for people and programs: report (json, table, csv) and explain.

A report's rows are blobs (:class:`gc_daemon.domain.Tracked`, ``kind`` ``vhd``) and managed disks and
snapshots (:class:`gc_daemon.disks.DiskRow`): for those, ``url`` is the ARM id, ``account`` and
``container`` are null, ``blob`` is the resource's name, and the row adds ``subscription``,
``resource_group``, ``sku``, ``disk_state`` and ``quarantine_snapshot`` (docs/contract.md, "Report")."""

from __future__ import annotations

import csv
import heapq
import io
import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from itertools import islice

from .cost import blob_monthly_cost
from .disk_cost import billed_bytes as disk_billed_bytes
from .disk_cost import disk_monthly_cost, snapshot_monthly_cost
from .disks import DiskRow, Kind
from .domain import Classification, State, Tracked
from .owners import OwnerRecord, blob_item_id, disk_item_id

GIB = 1024**3


# -- names are data ---------------------------------------------------------------------------
# Blob names, reasons, actors, holders and error messages come from Azure, the state database or
# an operator; a terminal must never interpret them. Text output shows every character that is
# not printable (C0 and C1 controls, DEL, ANSI escape sequences by their ESC, bidi overrides and
# other format characters, line and paragraph separators) as a visible escape; JSON output keeps
# the exact value; a CSV cell never starts with a formula character.


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    n = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(text: object) -> str:
    """``text`` for a terminal: every non-printable character as ``\\x1b``, ``\\u202e``, ..."""
    text = "" if text is None else str(text)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape_char(ch) for ch in text)


def _json_escape_char(ch: str) -> str:
    n = ord(ch)
    if n < 0x10000:
        return f"\\u{n:04x}"
    n -= 0x10000
    return f"\\u{0xD800 + (n >> 10):04x}\\u{0xDC00 + (n & 0x3FF):04x}"


def json_text(text: str) -> str:
    """JSON text (from ``json.dumps(..., ensure_ascii=False)``) with the characters json leaves raw
    but a terminal interprets (DEL, C1 controls, bidi overrides, ...) written as ``\\uXXXX``
    escapes: the same JSON value, safe to print. Outside strings JSON text has only printable
    ASCII, spaces and newlines, so any other character is inside a string."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == "\n" else _json_escape_char(ch) for ch in text)


_CSV_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet never runs as a formula: a text starting with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return gets a leading single quote (OWASP CSV injection)."""
    if isinstance(value, str) and value.startswith(_CSV_FORMULA):
        return "'" + value
    return value


FIELDS = [
    "url",
    "account",
    "container",
    "blob",
    "state",
    "size_bytes",
    "billed_bytes",
    "first_orphaned_at",
    "delete_after",
    "sightings",
    "hold",
    "reason",
    "last_owner",
    "owner",
    "holder",
    "owner_source",
    "blob_type",
    "etag",
    "last_modified",
    "deleted_at",
    "recoverable_until",
    "tier",
    "kind",
    "monthly_cost",
]
# The columns a managed disk or snapshot adds (a CSV has them when the report holds such rows).
DISK_FIELDS = [
    "subscription",
    "resource_group",
    "sku",
    "disk_state",
    "quarantine_snapshot",
    "quarantine_until",
    "location",
    "zones",
    "ownership_time",
]


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


def monthly_cost(row: Tracked, prices) -> float | None:
    """The blob's monthly cost at ``prices`` (gc_daemon.config.PricesConfig), rounded to 1e-6."""
    cost = blob_monthly_cost(prices, row.size_bytes, row.billed_bytes, row.tier)
    return None if cost is None else round(cost, 6)


def owner_fields(owner: "OwnerRecord | None") -> dict:
    """Who owned it (gc_daemon.owners): ``owner``, ``holder`` and ``owner_source`` ("reference": seen
    held by a pass; "metadata": from the item's own metadata or tags only), all None without a record."""
    if owner is None:
        return {"owner": None, "holder": None, "owner_source": None}
    return {"owner": owner.owner, "holder": owner.holder, "owner_source": owner.source}


def item_id(row: "Tracked | DiskRow") -> str:
    """The owner record's id of a report row."""
    return disk_item_id(row.id) if isinstance(row, DiskRow) else blob_item_id(row.key)


OWNER_BATCH = 500  # rows whose owner records one lookup reads


def with_owners(rows: Iterable, owners_of=None) -> Iterator[tuple]:
    """``(row, its OwnerRecord or None)``, the records read ``OWNER_BATCH`` rows at a time with
    ``owners_of`` (``Store.owner_records``; None: no records)."""
    if owners_of is None:
        for row in rows:
            yield row, None
        return
    it = iter(rows)
    while chunk := list(islice(it, OWNER_BATCH)):
        found = owners_of([item_id(r) for r in chunk])
        for r in chunk:
            yield r, found.get(item_id(r))


def record(row: Tracked, seq: int, prices=None, owner: "OwnerRecord | None" = None) -> dict:
    """The report's element for ``row`` (with ``owner``, its owner record); with ``prices``, its
    ``monthly_cost`` too."""
    data = {
        "url": row.url,
        "account": row.key.account,
        "container": row.key.container,
        "blob": row.key.blob,
        "state": row.state.value,
        "size_bytes": row.size_bytes,
        "billed_bytes": row.billed_bytes,
        "first_orphaned_at": _iso(row.first_orphaned_at),
        "delete_after": _iso(row.delete_after),
        "sightings": row.sightings(seq),
        "hold": row.hold.value if row.hold else None,
        "reason": row.reason,
        "last_owner": row.last_owner,
        **owner_fields(owner),
        "blob_type": row.blob_type,
        "etag": row.etag,
        "last_modified": _iso(row.last_modified),
        "deleted_at": _iso(row.deleted_at),
        "recoverable_until": _iso(row.recoverable_until),
        "tier": row.tier,
        "kind": "vhd",
    }
    if prices is not None:
        data["monthly_cost"] = monthly_cost(row, prices)
    return data


def disk_billed(row: DiskRow) -> int | None:
    """What Azure bills of a disk: its provisioned size rounded up to its tier (None: an unknown SKU).
    A snapshot bills the bytes it holds, which the listing does not give: its source's provisioned
    size is the upper bound (what a full snapshot of a full disk bills), as the metrics count it."""
    if row.size_bytes is None:
        return None
    if row.kind is Kind.SNAPSHOT:
        return row.size_bytes
    return disk_billed_bytes(row.sku, row.size_bytes) if row.sku else None


def disk_cost(row: DiskRow, prices) -> float | None:
    """The monthly cost at ``prices.disks`` (a disk by SKU and tier, a snapshot by the bytes of
    :func:`disk_billed` at the snapshot rate), rounded to 1e-6; None when not known."""
    if prices is None or row.size_bytes is None:
        return None
    if row.kind is Kind.SNAPSHOT:
        zrs = bool(row.sku) and row.sku.upper().endswith("_ZRS")
        cost = snapshot_monthly_cost(prices.disks, row.size_bytes, zrs=zrs)
    else:
        cost = disk_monthly_cost(prices.disks, row.sku, row.size_bytes)
    return None if cost is None else round(cost, 6)


def disk_record(row: DiskRow, seq: int, prices=None, owner: "OwnerRecord | None" = None) -> dict:
    """The report's element for a managed disk or snapshot (with ``owner``, its owner record); with
    ``prices``, its ``monthly_cost``."""
    data = {
        "url": row.id,
        "account": None,
        "container": None,
        "blob": row.name or row.id.rstrip("/").rsplit("/", 1)[-1],
        "state": row.state.value,
        "size_bytes": row.size_bytes,
        "billed_bytes": disk_billed(row),
        "first_orphaned_at": _iso(row.first_orphaned_at),
        "delete_after": _iso(row.delete_after),
        "sightings": row.sightings(seq),
        "hold": row.hold.value if row.hold else None,
        "reason": row.reason,
        **owner_fields(owner),
        "deleted_at": _iso(row.deleted_at),
        "kind": row.kind.value,
        "subscription": row.subscription,
        "resource_group": row.resource_group,
        "sku": row.sku,
        "disk_state": row.disk_state,
        "quarantine_snapshot": row.quarantine_snapshot,
        "quarantine_until": _iso(row.quarantine_until),
        "location": row.location,
        "zones": list(row.zones or ()),
        "ownership_time": _iso(row.ownership_time) if row.ownership_known else None,
    }
    if prices is not None:
        data["monthly_cost"] = disk_cost(row, prices)
    return data


def any_record(row: "Tracked | DiskRow", seq: int, prices=None, owner: "OwnerRecord | None" = None) -> dict:
    return disk_record(row, seq, prices, owner) if isinstance(row, DiskRow) else record(row, seq, prices, owner)


# -- choosing and ordering the rows -------------------------------------------------------------

_STATE_ORDER = {s: i for i, s in enumerate(State)}
_FAR = float("inf")


def _desc(value: float | None) -> tuple[bool, float]:
    """Descending, unknown values last."""
    return (value is None, -value if value is not None else 0.0)


def _url(r) -> str:
    return r.id if isinstance(r, DiskRow) else r.url


def _billed(r) -> int | None:
    return disk_billed(r) if isinstance(r, DiskRow) else r.billed_bytes


def _cost(r, prices) -> float | None:
    if isinstance(r, DiskRow):
        return disk_cost(r, prices)
    return blob_monthly_cost(prices, r.size_bytes, r.billed_bytes, r.tier)


def sort_key(sort: str, prices, now: datetime):
    """How ``--sort`` orders rows: numbers descending (the largest, costliest, oldest first), unknown
    values last; state in lifecycle order, account and url ascending; ties by url. A disk's url is its
    ARM id; it has no account (after every blob by ``account``)."""
    keys = {
        "size": lambda r: (_desc(r.size_bytes), _url(r)),
        "billed": lambda r: (_desc(_billed(r)), _url(r)),
        "cost": lambda r: (_desc(_cost(r, prices)), _url(r)),
        "age": lambda r: (_desc((now - r.first_orphaned_at).total_seconds() if r.first_orphaned_at else None), _url(r)),
        "due": lambda r: (r.delete_after is None, r.delete_after.timestamp() if r.delete_after else _FAR, _url(r)),
        "state": lambda r: (_STATE_ORDER[r.state], _url(r)),
        "account": lambda r: ((True, "") if isinstance(r, DiskRow) else (False, r.key.account), _url(r)),
        "url": lambda r: (_url(r),),
    }
    return keys[sort]


SORTS = ("size", "billed", "cost", "age", "due", "state", "account", "url")


def select_rows(rows: Iterable[Tracked], *, sort: str | None, limit: int | None, prices, now: datetime) -> Iterator[Tracked]:
    """``rows`` in ``sort`` order (None: as given: account, container, blob), at most ``limit`` of
    them. With a limit only that many rows are held at once (a heap), whatever the estate's size."""
    if sort is None:
        return iter(rows) if limit is None else islice(rows, limit)
    key = sort_key(sort, prices, now)
    if limit is not None:
        return iter(heapq.nsmallest(limit, rows, key=key))
    return iter(sorted(rows, key=key))


def render_json(rows: Iterable[Tracked], seq: int, out, prices=None, owners_of=None) -> None:
    """A JSON array, written element by element (a large estate never sits in memory twice)."""
    out.write("[")
    first = True
    for row, owner in with_owners(rows, owners_of):
        out.write("\n  " if first else ",\n  ")
        out.write(json_text(json.dumps(any_record(row, seq, prices, owner), ensure_ascii=False)))
        first = False
    out.write("\n]\n" if not first else "]\n")


def _csv_record(row, seq: int, prices, owner=None) -> dict:
    rec = any_record(row, seq, prices, owner)
    if "zones" in rec:
        rec["zones"] = ",".join(rec["zones"])
    return rec


def render_csv(rows: Iterable[Tracked], seq: int, out, prices=None, disk_columns: bool = False,
               owners_of=None) -> None:
    """CSV of the blob fields; with ``disk_columns`` (the report may hold disks), the disk ones too."""
    fields = FIELDS if prices is not None else [f for f in FIELDS if f != "monthly_cost"]
    if disk_columns:
        fields = fields + DISK_FIELDS
    write_csv(out, fields, (_csv_record(row, seq, prices, owner) for row, owner in with_owners(rows, owners_of)))


def write_csv(out, fields: list[str], records: Iterable[dict]) -> None:
    """CSV with a header, every text cell through :func:`csv_cell` (report and audit alike)."""
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow({k: csv_cell(v) for k, v in rec.items()})


def _owner_short(owner: str | None) -> str:
    """`.../providers/Microsoft.Compute/disks/db-01` -> `disks/db-01`: the kind and the name."""
    if not owner:
        return ""
    if "/providers/" in owner:
        parts = owner.split("/providers/", 1)[1].split("/")
        return "/".join(parts[1:]) if len(parts) > 1 else owner
    return owner


PENDING = "pending"  # the table's mark of billed bytes not measured yet


def is_pending(row: Tracked) -> bool:
    """An orphaned page blob marked before its billed bytes were measured (the next pass measures
    them): null in JSON, empty in CSV, "pending" in the table."""
    return row.billed_bytes is None and row.blob_type == "PageBlob" and row.state in (
        State.CANDIDATE, State.DUE, State.KEPT)


def pending_note(n: int) -> str:
    return f"  ({n} billed pending, counted at nominal size)" if n else ""


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def days(now: datetime, then: datetime | None) -> str:
    return "-" if then is None else f"{(now - then).total_seconds() / 86400:.1f}"


def write_table(out, headers: list[str], lines: list[list[str]], left: Iterable[int]) -> None:
    """Columns padded to their widest cell under a header line; the columns in ``left`` (text) are
    aligned left, the others (numbers) right; trailing spaces trimmed. Cells must be printable."""
    left = set(left)
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)]

    def emit(cells: list[str]) -> None:
        out.write("  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip() + "\n")

    emit(headers)
    for line in lines:
        emit(line)


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _owner_cell(owner: "OwnerRecord | None") -> str:
    """The table's OWNER column: the owner, by which holder (kind/name), and "metadata" when the record
    comes from the item's own metadata or tags only."""
    if owner is None:
        return "-"
    text = owner.owner or "?"
    if owner.holder:
        text += f" ({_owner_short(owner.holder)})"
    if owner.source == "metadata":
        text += " [metadata]"
    return text


def render_table(rows: Iterable[Tracked], seq: int, now: datetime, out, prices=None, owners_of=None) -> None:
    """For people: sizes in GiB, ages in days, monthly cost, owner, totals by state at the bottom; the
    managed disks and snapshots in a table of their own after the blobs'."""
    blobs: list[Tracked] = []
    disks: list[DiskRow] = []
    owners: dict[int, OwnerRecord] = {}
    for row, owner in with_owners(rows, owners_of):
        (disks if isinstance(row, DiskRow) else blobs).append(row)
        if owner is not None:
            owners[id(row)] = owner
    if blobs or not disks:
        _blob_table(blobs, seq, now, out, prices, owners)
    if disks:
        if blobs:
            out.write("\n")
        _disk_table(disks, seq, now, out, prices, owners)


def _disk_table(rows: list[DiskRow], seq: int, now: datetime, out, prices, owners=None) -> None:
    owners = owners or {}
    currency = prices.currency if prices is not None else None
    headers = ["KIND", "STATE", "SIZE GiB", "BILLED GiB"]
    if prices is not None:
        headers.append(f"COST {printable(currency)}/mo")
    headers += ["AGE d", "DUE IN d", "SEEN", "HOLD/DISK STATE", "OWNER", "RESOURCE"]
    lines: list[list[str]] = []
    totals: dict[tuple[str, str], list] = {}
    for row in rows:
        due_in = "-"
        if row.delete_after and row.state in (State.CANDIDATE, State.DUE):
            due_in = f"{max(0.0, (row.delete_after - now).total_seconds() / 86400):.1f}"
        note = row.hold.value if row.hold else (row.disk_state or "")
        if row.state is State.DELETED:
            if row.quarantine_snapshot and row.quarantine_until:
                left = (row.quarantine_until - now).total_seconds() / 86400
                note = f"restorable {left:.1f}d" if left > 0 else "quarantine over"
            else:
                note = "no quarantine snapshot"
        cost = disk_cost(row, prices)
        billed = disk_billed(row)
        line = [row.kind.value, row.state.value, gib(row.size_bytes), gib(billed)]
        if prices is not None:
            line.append(_money(cost))
        where = "/".join(x for x in (row.subscription, row.resource_group, row.name) if x) or row.id
        line += [days(now, row.first_orphaned_at), due_in, str(row.sightings(seq)), printable(note[:60]),
                 printable(_owner_cell(owners.get(id(row)))[:80]), printable(where)]
        lines.append(line)
        t = totals.setdefault((row.kind.value, row.state.value), [0, 0, 0, 0.0])
        t[0] += 1
        t[1] += row.size_bytes or 0
        t[2] += billed or 0
        t[3] += cost or 0.0
    n = len(headers)
    write_table(out, headers, lines, left=(0, 1, n - 3, n - 2, n - 1))
    out.write("\n")

    def money(total: float) -> str:
        return f"  {total:>10.2f} {printable(currency)}/month" if prices is not None else ""

    out.write("DISK TOTALS\n")
    for kind in (k.value for k in Kind):
        noun = "disks" if kind == Kind.MANAGED_DISK.value else "snapshots"
        for state in (s.value for s in State):
            if (kind, state) in totals:
                count, size, billed, cost = totals[(kind, state)]
                out.write(f"  {kind:<12} {state:<10} {count:>7} {noun:<9}  {size / GIB:>10.2f} GiB provisioned  "
                          f"{billed / GIB:>10.2f} GiB billed{money(cost)}\n")


def _blob_table(rows: Iterable[Tracked], seq: int, now: datetime, out, prices=None, owners=None) -> None:
    owners = owners or {}
    currency = prices.currency if prices is not None else None
    headers = ["STATE", "SIZE GiB", "BILLED GiB"]
    if prices is not None:
        headers.append(f"COST {printable(currency)}/mo")
    headers += ["AGE d", "DUE IN d", "SEEN", "HOLD/OWNER", "OWNER", "BLOB"]
    lines: list[list[str]] = []
    totals: dict[str, list] = {}
    for row in rows:
        due_in = "-"
        if row.delete_after and row.state in (State.CANDIDATE, State.DUE):
            due_in = f"{max(0.0, (row.delete_after - now).total_seconds() / 86400):.1f}"
        note = row.hold.value if row.hold else _owner_short(row.last_owner)
        if row.state is State.DELETED and row.recoverable_until:
            left = (row.recoverable_until - now).total_seconds() / 86400
            note = f"restorable {left:.1f}d" if left > 0 else "no longer restorable"
        cost = monthly_cost(row, prices) if prices is not None else None
        measuring = is_pending(row)
        line = [row.state.value, gib(row.size_bytes), PENDING if measuring else gib(row.billed_bytes)]
        if prices is not None:
            line.append(_money(cost))
        line += [
            days(now, row.first_orphaned_at),
            due_in,
            str(row.sightings(seq)),
            printable(note[:60]),
            printable(_owner_cell(owners.get(id(row)))[:80]),
            printable(f"{row.key.account}/{row.key.container}/{row.key.blob}"),
        ]
        lines.append(line)
        t = totals.setdefault(row.state.value, [0, 0, 0, 0.0, 0])
        t[0] += 1
        t[1] += row.size_bytes
        t[2] += row.size_bytes if measuring else (row.billed_bytes or 0)  # pending: nominal, an upper bound
        if cost is None and measuring and prices is not None:  # pending: at nominal size, like the metric
            cost = blob_monthly_cost(prices, row.size_bytes, row.size_bytes, row.tier)
        t[3] += cost or 0.0
        t[4] += measuring
    n = len(headers)
    write_table(out, headers, lines, left=(0, n - 3, n - 2, n - 1))
    out.write("\n")
    if not totals:
        out.write("nothing tracked yet (run `vhd-gc scan`)\n")
        return

    def money(total: float) -> str:
        return f"  {total:>10.2f} {printable(currency)}/month" if prices is not None else ""

    out.write("TOTALS\n")
    for state in (s.value for s in State):
        if state in totals:
            count, size, billed, cost, measuring = totals[state]
            out.write(f"  {state:<10} {count:>7} blobs  {size / GIB:>10.2f} GiB nominal  {billed / GIB:>10.2f} GiB billed"
                      f"{money(cost)}{pending_note(measuring)}\n")
    wasted = [totals[s] for s in ("candidate", "due", "kept") if s in totals]
    if wasted:
        out.write(
            f"  {'orphaned':<10} {sum(t[0] for t in wasted):>7} blobs  "
            f"{sum(t[1] for t in wasted) / GIB:>10.2f} GiB nominal  {sum(t[2] for t in wasted) / GIB:>10.2f} GiB billed"
            f"{money(sum(t[3] for t in wasted))}{pending_note(sum(t[4] for t in wasted))}\n"
        )


def render(fmt: str, rows: Iterable[Tracked], seq: int, now: datetime, out, prices=None,
           disk_columns: bool = False, owners_of=None) -> None:
    """``owners_of``: ``Store.owner_records`` (the rows' owners); None: no owner records."""
    if fmt == "json":
        render_json(rows, seq, out, prices, owners_of)
    elif fmt == "csv":
        render_csv(rows, seq, out, prices, disk_columns, owners_of)
    else:
        render_table(rows, seq, now, out, prices, owners_of)


def explain_text(data: dict) -> str:
    """The explain document (built by the CLI) as text for a person."""
    buf = io.StringIO()

    def w(line: str) -> None:  # a line and its "\n": nothing else in it reaches the terminal raw
        body, end = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        buf.write(printable(body) + end)

    w(f"blob:     {data['url']}\n")
    w(f"key:      account={data['account']} container={data['container']} blob={data['blob']!r}\n")
    w(f"verdict:  {data['verdict']}\n")
    w(f"why:      {data['why']}\n")
    live = data.get("live")
    if live is None:
        w("live:     the blob does not exist (or its account is not collected)\n")
    else:
        w(
            f"live:     {live['blob_type']} {live['size']} bytes, etag {live['etag']}, modified {live['last_modified']}, "
            f"lease {live['lease_state']}, snapshots {live['snapshot_count']}, "
            f"keep-metadata {live['keep_metadata']}, keep-tag {live['keep_tag']}\n"
        )
        evidence = live.get("last_owner_evidence")
        if evidence:
            w(
                f"last owner (metadata Compute wrote, evidence only): vm {evidence['vm']}, resource group "
                f"{evidence['resource_group']}, disk {evidence['disk']}\n"
            )
    if data.get("references_error"):
        w(f"references: NOT READ ({data['references_error']}): the verdict cannot rule out a reference\n")
    refs = data.get("references") or []
    w(f"references: {len(refs)}\n")
    for r in refs:
        extra = ""
        if r.get("time_created"):
            extra = f" (import created {r['time_created']}, {r['provisioning_state']}, protects: {r['protects']})"
        where = f" at {r['field']}" if r.get("field") else ""
        w(f"  - {r['kind']} of {r['holder']}{where}{extra}\n")
    if data.get("operator_hold"):
        w(f"operator hold: {data['operator_hold']}\n")
    for line in owner_lines(data.get("owner")):
        w(line + "\n")
    stored = data.get("stored")
    if stored:
        w(
            f"stored:   state={stored['state']} sightings={stored['sightings']} first_orphaned_at={stored['first_orphaned_at']} "
            f"delete_after={stored['delete_after']} etag={stored['etag']} hold={stored['hold']}\n"
        )
    else:
        w("stored:   not tracked (never seen orphaned)\n")
    history = data.get("history") or []
    if history:
        w("history:\n")
        for h in history:
            w(f"  {h['at']} {h['action']} by {h['actor']}: {h.get('reason') or ''} {h.get('error_code') or ''}\n")
    return buf.getvalue()


def _tag_text(tags: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in tags.items()) or "none"


def owner_lines(owner: dict | None) -> list[str]:
    """explain's lines on who owned it (``owner``: gc_daemon.explain.owner_document)."""
    if not owner:
        return ["owner:    unknown (no owner record: never seen held by a tagged holder, no metadata naming one)"]
    if owner["owner_source"] == "metadata":
        how = "from its own metadata or tags only (never seen held)"
    elif owner["last_seen"] and owner["first_seen"]:
        how = f"seen held from {owner['first_seen']} to at least {owner['last_seen']}"
    else:
        how = "seen held"
    return [
        f"owner:    {owner['owner'] or 'unknown (no owner tag)'}",
        f"          holder {owner['holder'] or '-'}, {how}",
        f"          owner tags of the holder: {_tag_text(owner['tags'])}; its resource group's tags: "
        f"{_tag_text(owner['group_tags'])}",
    ]


def classification_summary(c: Classification) -> dict:
    return {
        "verdict": c.verdict.value + (f" (kept: {c.hold.value})" if c.hold else ""),
        "why": c.reason,
    }


def disk_explain_text(data: dict) -> str:
    """The explain document of a managed disk or snapshot (built by :func:`gc_daemon.explain.explain_disk`)."""
    buf = io.StringIO()

    def w(line: str) -> None:
        buf.write(printable(line) + "\n")

    w(f"{data['kind'].replace('_', ' ')}: {data['id']}")
    w(f"verdict:  {data['verdict']}")
    w(f"why:      {data['why']}")
    if data.get("operator_hold"):
        w(f"operator hold: {data['operator_hold']}")
    for line in owner_lines(data.get("owner")):
        w(line)
    stored = data.get("stored")
    if stored:
        w(f"stored:   state={stored['state']} sightings={stored['sightings']} first_orphaned_at={stored['first_orphaned_at']} "
          f"delete_after={stored['delete_after']} ownership_time={stored['ownership_time']} hold={stored['hold']}")
        w(f"          subscription={stored['subscription']} resource_group={stored['resource_group']} "
          f"sku={stored['sku']} size_bytes={stored['size_bytes']} disk_state={stored['disk_state']}")
        if stored.get("quarantine_snapshot"):
            w(f"          quarantine_snapshot={stored['quarantine_snapshot']} until {stored['quarantine_until']}")
    else:
        w("stored:   not tracked (never seen unattached and old enough, or not listed)")
    history = data.get("history") or []
    if history:
        w("history:")
        for h in history:
            w(f"  {h['at']} {h['action']} by {h['actor']}: {h.get('reason') or ''} {h.get('error_code') or ''}")
    return buf.getvalue()
