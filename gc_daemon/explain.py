"""`explain URL`: read the blob and the references now, classify with the pass's own rules, and add
what the state database remembers. The verdict is the one a pass would reach at this instant."""

from __future__ import annotations

from datetime import UTC, datetime

from .config import Config
from .decide import ReferenceIndex, classify, is_tracked_kind
from .domain import BlobKey, Verdict
from .owners import OwnerRecord, blob_item_id, disk_item_id
from .report import _iso, classification_summary, record


def owner_document(rec: OwnerRecord | None) -> dict | None:
    """What explain says of who owned it: the owner record (gc_daemon.owners), None without one."""
    if rec is None:
        return None
    return {
        "owner": rec.owner,
        "holder": rec.holder,
        "owner_source": rec.source,
        "tags": dict(rec.tags),
        "group_tags": dict(rec.group_tags),
        "first_seen": _iso(rec.first_seen),
        "last_seen": _iso(rec.last_seen),
    }
from .urls import redact_query


def explain(config: Config, key: BlobKey) -> dict:
    from .wiring import build_accounts, build_credential, build_references, open_store

    now = datetime.now(UTC)
    store = open_store(config)
    credential = build_credential(config)
    accounts = build_accounts(config, credential)
    if callable(accounts):
        try:
            accounts = accounts()
        except Exception:  # noqa: BLE001 - explain says what it could not see
            accounts = {}
    data: dict = {"account": key.account, "container": key.container, "blob": key.blob}
    storage = accounts.get(key.account)
    data["url"] = storage.blob_url(key) if storage else f"{key.account}/{key.container}/{key.blob}"

    refs = ReferenceIndex()
    read = build_references(config, credential).read()
    if read.errors:
        data["references_error"] = "; ".join(f"{e.source}: {e.message}" for e in read.errors)
    refs, parse_errors = ReferenceIndex.build(read.references, accounts or None)
    if parse_errors:
        data["references_error"] = "; ".join(filter(None, [data.get("references_error"), *parse_errors]))

    found = refs.lookup(key)
    data["references"] = [
        {
            "kind": r.kind.value,
            "holder": r.holder,
            "uri": redact_query(r.uri),
            "time_created": _iso(r.time_created),
            "provisioning_state": r.provisioning_state,
            "field": r.field,
            "protects": r.protects_at(now, config.import_hold),
        }
        for r in found
    ]
    holds = store.holds()
    data["operator_hold"] = holds.get(key)

    live = storage.read_blob(key) if storage else None
    if storage is None:
        data.update(verdict="not collected", why=f"account {key.account} is not in azure.storage_accounts")
    elif live is None:
        data.update(verdict="absent", why="no such blob")
    elif not is_tracked_kind(live):
        data.update(verdict="not tracked", why="a block/append blob not named .vhd is data, not a disk")
    else:
        c = classify(live, refs, holds, config.policy_rules, now)
        data.update(classification_summary(c))
        if c.verdict is Verdict.ORPHAN and data.get("references_error"):
            data["verdict"] = "unknown"
            data["why"] = "references could not be read completely: a pass would change nothing"
    if live is not None:
        data["live"] = {
            "blob_type": live.blob_type,
            "size": live.size,
            "etag": live.etag,
            "last_modified": _iso(live.last_modified),
            "lease_state": live.lease_state,
            "snapshot_count": live.snapshot_count,
            "keep_metadata": live.keep_metadata,
            "keep_tag": live.keep_tag,
            "owner_hint": live.owner_hint,
            # What Compute left in the metadata of an attached VHD: evidence of the last owner,
            # not a reference (a VM converted to managed disks still exists under that name).
            "last_owner_evidence": {
                "vm": live.owner_hint,
                "resource_group": live.owner_group,
                "disk": live.owner_disk,
            } if live.owner_hint or live.owner_group or live.owner_disk else None,
            "image_type": live.image_type,
            "created_by": live.created_by,
        }
    row = store.row(key)
    owner = store.owner_records([blob_item_id(key)]).get(blob_item_id(key))
    data["owner"] = owner_document(owner)
    data["stored"] = record(row, store.last_complete_seq(), owner=owner) if row else None
    data["history"] = [
        {
            "at": _iso(a.at),
            "action": a.action,
            "actor": a.actor,
            "etag": a.etag,
            "reason": a.reason,
            "error_code": a.error_code,
        }
        for a in store.audit_log(key=key)
    ]
    return data


def explain_disk(config: Config, resource_id: str) -> dict:
    """`explain ID` for a managed disk or snapshot: what the last complete pass decided (the stored
    row, its hold and reason), the operator hold as committed now, and the audit history of the
    resource (its quarantine snapshot's entries included)."""
    from .resource_ids import parse_resource_id
    from .report import disk_record
    from .wiring import open_store

    rid = parse_resource_id(resource_id)
    store = open_store(config)
    row = store.disk_row(rid.id)
    data: dict = {"id": row.id if row is not None else rid.id, "kind": rid.kind.value,
                  "subscription": rid.subscription, "resource_group": rid.resource_group, "name": rid.name}
    data["operator_hold"] = store.disk_hold(rid.id)
    if row is None:
        data.update(verdict="not tracked", why="no complete pass has recorded it as an unattached disk or an "
                    "orphaned snapshot (in use, too young, not listed, or never seen)")
        if data["operator_hold"]:
            data["why"] += "; an operator hold is in place for when it is"
    else:
        verdict = row.state.value + (f" (kept: {row.hold.value})" if row.hold else "")
        data.update(verdict=verdict, why=row.reason or "")
    owner = store.owner_records([disk_item_id(rid.id)]).get(disk_item_id(rid.id))
    data["owner"] = owner_document(owner)
    data["stored"] = disk_record(row, store.last_complete_seq(), config.prices, owner) if row is not None else None
    entries = store.audit_log(resource_id=rid.id)
    # Its quarantine snapshots' entries too: the one recorded on the row, and any vhd-gc set out to
    # make of it (a quarantine that failed leaves no row field, only its entries).
    snapshots = {snap for snap, disk in store.quarantine_snapshots().items() if disk.lower() == rid.key}
    if row is not None and row.quarantine_snapshot:
        snapshots.add(row.quarantine_snapshot.lower())
    for snap in sorted(snapshots - {rid.key}):
        entries += store.audit_log(resource_id=snap)
    entries.sort(key=lambda a: a.id)
    data["history"] = [
        {
            "at": _iso(a.at),
            "action": a.action,
            "kind": a.kind,
            "id": a.url,
            "actor": a.actor,
            "etag": a.etag,
            "reason": a.reason,
            "error_code": a.error_code,
        }
        for a in entries
    ]
    return data
