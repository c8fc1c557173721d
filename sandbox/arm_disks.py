"""The ARM stand-in's managed disks, snapshots, resource groups and management locks (issue 13).

Wired into :mod:`sandbox.arm` through its routing (``arm_http._Handler._serve_arm`` calls :func:`serve` first)
and its control surface (``/_control/lro...``, ``/_control/operations...`` go to :meth:`DiskRP.control`).
The disks and snapshots are the estate's ``disks`` / ``snapshots`` buckets the stand-in already lists
for import references; this module adds what issue 13 needs of them:

- ``GET`` of one disk returns ``properties.LastOwnershipUpdateTime``; a list never does (DiskRP's
  Disk_Get example has it, Disk_ListBySubscription has none): it is stripped from list pages.
- ``PUT .../snapshots/{name}`` (an incremental copy of a disk: ``creationData.createOption: Copy``,
  ``sourceResourceId``), ``PUT .../disks/{name}`` (a disk made from a snapshot) and ``DELETE`` of a
  disk or snapshot are long-running operations: ``202`` with ``Azure-AsyncOperation`` and ``Location``
  headers and an integer ``Retry-After`` (azure-mgmt-compute deserializes it as ``int``). A ``201``
  would be refused by azure-mgmt-compute 39 (its disk and snapshot PUTs accept 200 and 202 only).
- Polling the operation answers ``InProgress`` :attr:`DiskRP.lro_polls` times, then ``Succeeded``
  (the write takes effect then: a snapshot goes from ``Updating`` to ``Succeeded``, a deleted disk
  leaves the estate) or ``Failed`` (a rule from :meth:`DiskRP.lro_failed`: the created resource is
  left ``Failed``, a disk to delete stays). :meth:`DiskRP.lro_stuck` makes an operation never end.
- The refusals of real ARM: ``DELETE`` of a disk that is attached or otherwise owned (``diskState``
  other than Unattached/ReadyToUpload, or ``managedBy``/``managedByExtended`` set) → ``409
  OperationNotAllowed``; a ``CanNotDelete``/``ReadOnly`` lock on the resource, its group or its
  subscription → ``409 ScopeLocked`` (a ``ReadOnly`` one refuses a PUT too); a missing disk or
  snapshot → ``204``.
- ``GET /subscriptions/{s}/resourcegroups`` (the estate's ``resourceGroups`` plus a plain group for
  every group a resource names) and ``GET /subscriptions/{s}/providers/Microsoft.Authorization/locks``
  (every lock of the subscription, at any scope), paged like every list.

A lost reply is the ``lost_reply`` fault kind of :class:`sandbox.arm.Fault` (``ArmStandIn.add_fault``,
``POST /_control/faults``): the write is done and an operation it starts finishes at once, and the
client gets no answer. Shapes: sandbox/rest_examples/ (PROVENANCE.md, section "Managed disks ...").
The builders (:func:`managed_disk`, :func:`incremental_snapshot`, ...) are in sandbox/arm_disk_builders.py,
the operations' state (:class:`DiskRP`, :class:`Operation`, :class:`LroRule`) in sandbox/arm_lro.py;
both are importable from here.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any
from urllib.parse import quote

from sandbox.arm_disk_builders import (  # noqa: F401 - the builders, importable from here as before
    LOCK_LEVELS,
    OWNERSHIP_KEY,
    _sku,
    gallery_version_of_disks,
    image_of_disks,
    incremental_snapshot,
    managed_disk,
    management_lock,
    resource_group,
)
from sandbox.arm_estate import COMPUTE, DEFAULT_LOCATION, ArmError, _by_name, _in_rg, _lookup, compute_id
from sandbox.arm_lro import LRO_OUTCOMES, DiskRP, LroRule, Operation, _buckets_of  # noqa: F401 - importable from here

# diskState values that mean the disk has an owner, a live export or an upload: ARM refuses the delete.
BUSY_DISK_STATES = ("Attached", "Reserved", "Frozen", "ActiveSAS", "ActiveSASFrozen", "ActiveUpload")

# --------------------------------------------------------------------------------------------------
# Serving (called by sandbox.arm_http._Handler._serve_arm; None: not a route of this module)
# --------------------------------------------------------------------------------------------------


def serve(handler: Any, segs: list[str], path: str, api_version: str, query: dict[str, list[str]], body: bytes) -> tuple[Any, ...] | None:
    low = [s.lower() for s in segs]
    method = handler.command
    if len(low) < 3 or low[0] != "subscriptions":
        return None
    standin = handler.standin
    sub_id = segs[1]
    rest = low[2:]
    if method == "GET" and rest == ["resourcegroups"]:
        return 200, handler._page(path, api_version, query, _resource_groups(_subscription(standin, sub_id), sub_id))
    if method == "GET" and len(rest) == 2 and rest[0] == "resourcegroups":
        groups = _resource_groups(_subscription(standin, sub_id), sub_id)
        found = _by_name(groups, segs[3])
        if found is None:
            raise ArmError(404, "ResourceGroupNotFound", f"Resource group '{segs[3]}' could not be found.")
        return 200, found
    if method == "GET" and rest == ["providers", "microsoft.authorization", "locks"]:
        sub = _subscription(standin, sub_id)
        return 200, handler._page(path, api_version, query, [l for l in sub.get("locks", []) if isinstance(l, dict)])
    if method == "GET" and len(rest) == 6 and rest[:2] == ["providers", COMPUTE.lower()] and rest[2] == "locations" \
            and rest[4] == "operations":
        return _serve_poll(handler, segs[7], query)
    if method == "GET" and rest in (["providers", COMPUTE.lower(), "disks"], ["providers", COMPUTE.lower(), "snapshots"]):
        return 200, handler._page(path, api_version, query, [_listed(r) for r in handler._route(segs)])
    # .../resourceGroups/{rg}/providers/Microsoft.Compute/{disks|snapshots}[/{name}]
    if len(rest) < 4 or rest[0] != "resourcegroups" or rest[2:4] != ["providers", COMPUTE.lower()]:
        return None
    tail = rest[4:]
    if not tail or tail[0] not in ("disks", "snapshots") or len(tail) > 2:
        return None
    kind, rg = tail[0], segs[3]
    if method == "GET":
        found = handler._route(segs)
        if isinstance(found, list):
            return 200, handler._page(path, api_version, query, [_listed(r) for r in found])
        return None  # one resource: served as it is stored (LastOwnershipUpdateTime included)
    if len(tail) != 2:
        return None
    name = segs[-1]
    _subscription(standin, sub_id)
    rid = compute_id(sub_id, rg, "disks" if kind == "disks" else "snapshots", name)
    if method == "DELETE":
        return _delete(handler, standin, sub_id, rg, kind, name, rid, path, api_version)
    if method == "PUT":
        return _put(handler, standin, sub_id, rg, kind, name, rid, path, api_version, body)
    return None


def _subscription(standin: Any, sub_id: str) -> dict[str, Any]:
    sub = _lookup(standin._estate_snapshot().get("subscriptions", {}), sub_id)
    if sub is None:
        raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub_id}' could not be found.")
    return sub


def _listed(resource: Any) -> Any:
    if isinstance(resource, dict) and OWNERSHIP_KEY in (resource.get("properties") or {}):
        resource = copy.deepcopy(resource)
        del resource["properties"][OWNERSHIP_KEY]
    return resource


def _resource_groups(sub: dict[str, Any], sub_id: str) -> list[Any]:
    """The groups filed in ``resourceGroups``, then one plain group for every other group a resource names."""
    groups = [g for g in sub.get("resourceGroups", []) if isinstance(g, dict)]
    known = {str(g.get("name", "")).lower() for g in groups}
    for bucket in sub.values():
        items = bucket if isinstance(bucket, list) else [x for v in bucket.values() for x in v] if isinstance(bucket, dict) else []
        for item in items:
            if not isinstance(item, dict):
                continue
            m = re.match(r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/", str(item.get("id", "")), re.I)
            if m and m[1].lower() not in known:
                known.add(m[1].lower())
                groups.append(resource_group(sub_id, m[1]))
    return groups


def _locks_over(sub: dict[str, Any], rid: str, levels: tuple[str, ...]) -> list[str]:
    """Ids of the scopes whose locks (of ``levels``) cover ``rid``: the subscription, its group, itself."""
    low = rid.lower()
    scopes = []
    for lock in sub.get("locks", []):
        if not isinstance(lock, dict) or (lock.get("properties") or {}).get("level") not in levels:
            continue
        scope = str(lock.get("id", "")).split("/providers/Microsoft.Authorization/locks/", 1)[0]
        if low == scope.lower() or low.startswith(scope.lower() + "/"):
            scopes.append(scope)
    return scopes


def _scope_locked(rid: str, scopes: list[str], verb: str) -> ArmError:
    listed = ",".join(f"'{s}'" for s in scopes)
    return ArmError(
        409,
        "ScopeLocked",
        f"The scope '{rid}' cannot perform {verb} operation because following scope(s) are locked: "
        f"{listed}. Please remove the lock and try again.",
    )


def _find(sub: dict[str, Any], kind: str, rg: str, name: str) -> dict[str, Any] | None:
    return _by_name([r for r in sub.get(kind, []) if _in_rg(r, rg)], name)


def _lro_headers(handler: Any, standin: Any, op: Operation, sub_id: str, location: str, api_version: str) -> dict[str, str]:
    base = f"{standin.url}/subscriptions/{sub_id}/providers/{COMPUTE}/locations/{quote(location)}/operations/{op.id}"
    handler._operation_started = op.id
    return {
        "Azure-AsyncOperation": f"{base}?p=disk-rp&api-version={quote(api_version)}",
        "Location": f"{base}?p=disk-rp&monitor=true&api-version={quote(api_version)}",
        "Retry-After": str(int(standin.disk_rp.retry_after)),
    }


def _delete(handler: Any, standin: Any, sub_id: str, rg: str, kind: str, name: str, rid: str, path: str,
            api_version: str) -> tuple[Any, ...]:
    sub = _subscription(standin, sub_id)
    locked = _locks_over(sub, rid, ("CanNotDelete", "ReadOnly"))
    if locked:
        raise _scope_locked(rid, locked, "delete")
    found = _find(sub, kind, rg, name)
    if found is None:
        return 204, None
    props = found.get("properties") or {}
    if kind == "disks":
        state = props.get("diskState")
        owner = found.get("managedBy")
        extended = found.get("managedByExtended") or []
        if state in BUSY_DISK_STATES or owner or extended:
            who = owner or (extended[0] if extended else None)
            detail = f" is attached to VM {who}" if who else f" is in state {state}"
            raise ArmError(409, "OperationNotAllowed", f"Disk {name}{detail}. Operation 'Delete' is not allowed.")
    op = standin.disk_rp.start("delete", "DELETE", path, str(found["id"]))
    return 202, None, _lro_headers(handler, standin, op, sub_id, str(found.get("location") or DEFAULT_LOCATION), api_version)


def _put(handler: Any, standin: Any, sub_id: str, rg: str, kind: str, name: str, rid: str, path: str,
         api_version: str, raw: bytes) -> tuple[Any, ...]:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise ArmError(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.") from None
    if not isinstance(body, dict):
        raise ArmError(400, "InvalidRequestContent", "The request content must be a JSON object.")
    sub = _subscription(standin, sub_id)
    locked = _locks_over(sub, rid, ("ReadOnly",))
    if locked:
        raise _scope_locked(rid, locked, "write")
    props = body.get("properties") or {}
    creation = props.get("creationData") or {}
    location = str(body.get("location") or DEFAULT_LOCATION)
    existing = _find(sub, kind, rg, name)
    if existing is not None:
        # Idempotent PUT (a retry after a lost reply, a tag update): the resource as it is, tags set.
        def update(estate: dict[str, Any]) -> dict[str, Any]:
            item = _find(_lookup(estate["subscriptions"], sub_id), kind, rg, name)
            assert item is not None
            if "tags" in body:
                item["tags"] = dict(body.get("tags") or {})
            return copy.deepcopy(item)

        current = standin.update_estate(update)
        pending = next((op for op in standin.disk_rp.operations
                        if op.resource_id.lower() == rid.lower() and op.status == "InProgress"), None)
        if pending is not None:
            return 200, current, _lro_headers(handler, standin, pending, sub_id, location, api_version)
        return 200, current
    option = creation.get("createOption")
    source_id = str(creation.get("sourceResourceId") or "")
    if kind == "snapshots":
        if option != "Copy" or not source_id:
            raise ArmError(400, "InvalidParameter", "The stand-in makes snapshots of disks only: "
                           "creationData.createOption 'Copy' with a sourceResourceId.")
        source = _resource_by_id(standin, source_id, "disks")
        if source is None:
            raise ArmError(404, "NotFound", f"Resource '{source_id}' was not found.")
        sprops = source.get("properties") or {}
        item = incremental_snapshot(
            sub_id, rg, name,
            source_disk_id=str(source["id"]),
            source_unique_id=sprops.get("uniqueId"),
            tags=body.get("tags"),
            size_gb=int(sprops.get("diskSizeGB") or 0),
            sku=str((body.get("sku") or {}).get("name") or "Standard_ZRS"),
            incremental=bool(props.get("incremental", False)),
            provisioning_state="Updating",
            location=location,
        )
        item["properties"]["creationData"]["sourceResourceId"] = source_id
    else:
        if option == "Copy":
            source = _resource_by_id(standin, source_id, "snapshots") or _resource_by_id(standin, source_id, "disks")
            if source is None:
                raise ArmError(404, "NotFound", f"Resource '{source_id}' was not found.")
            size_gb = int(props.get("diskSizeGB") or (source.get("properties") or {}).get("diskSizeGB") or 0)
        elif option == "Empty":
            size_gb = int(props.get("diskSizeGB") or 0)
            if size_gb <= 0:
                raise ArmError(400, "InvalidParameter", "Required parameter 'diskSizeGB' is missing (null).")
        else:
            raise ArmError(400, "InvalidParameter", f"The stand-in makes disks with createOption Copy or Empty, not {option!r}.")
        item = managed_disk(
            sub_id, rg, name,
            tags=body.get("tags"),
            sku=str((body.get("sku") or {}).get("name") or "Standard_LRS"),
            size_gb=size_gb,
            zones=body.get("zones") or (),
            create_option=str(option),
            source_resource_id=source_id or None,
            location=location,
        )
        item["properties"]["provisioningState"] = "Updating"

    def add(estate: dict[str, Any]) -> None:
        _lookup(estate["subscriptions"], sub_id).setdefault(kind, []).append(item)

    standin.update_estate(add)
    op = standin.disk_rp.start("create", "PUT", path, rid)
    # The 202 body of DiskRP's create examples: id, name, location, provisioningState Updating, creationData.
    accepted = {"id": rid, "name": name, "location": location,
                "properties": {"provisioningState": "Updating", "creationData": copy.deepcopy(item["properties"]["creationData"])}}
    return 202, accepted, _lro_headers(handler, standin, op, sub_id, location, api_version)


def _resource_by_id(standin: Any, rid: str, kind: str) -> dict[str, Any] | None:
    low = "/" + rid.strip("/").lower()
    for sub in standin._estate_snapshot().get("subscriptions", {}).values():
        for item in sub.get(kind, []):
            if isinstance(item, dict) and str(item.get("id", "")).lower() == low:
                return item
    return None


def _serve_poll(handler: Any, op_id: str, query: dict[str, list[str]]) -> tuple[Any, ...]:
    standin = handler.standin
    op = standin.disk_rp.poll(op_id)
    if op is None:
        raise ArmError(404, "NotFound", f"The operation '{op_id}' was not found.")
    monitor = (query.get("monitor") or [""])[0].lower() == "true"
    if not monitor:  # Azure-AsyncOperation: always 200 with the status body
        return 200, standin.disk_rp.status_body(op)
    # Location: 202 while running, then the outcome (a failure as an error body).
    if op.status == "InProgress":
        return 202, None, {"Location": f"{standin.url}{handler.path}",
                           "Retry-After": str(int(standin.disk_rp.retry_after))}
    if op.status == "Failed":
        raise ArmError(500, op.code or "InternalOperationError", op.message or "The operation failed.")
    return 200, standin.disk_rp.status_body(op)
