"""The ARM stand-in's estate: its buckets, ARM ids, filing a resource in its bucket, looking resources up.

An estate is plain JSON-able data, ``{"subscriptions": {SUB: {bucket: [...] or {key: [...]}}}}`` (see
:mod:`sandbox.arm`); the builders of each resource family (sandbox/arm_vms.py, arm_images.py,
arm_disk_builders.py, arm_storage.py, arm_services.py) make what :func:`place` files here, and the
routes (sandbox/arm_http.py) find it with :func:`_lookup`, :func:`_in_rg`, :func:`_by_name` or answer
:class:`ArmError`.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Iterable

COMPUTE = "Microsoft.Compute"
STORAGE = "Microsoft.Storage"

# Estate buckets that are flat lists of top-level resources, by the REST type segment.
TOP_LEVEL_KINDS = {
    "virtualmachines": "virtualMachines",
    "virtualmachinescalesets": "virtualMachineScaleSets",
    "images": "images",
    "disks": "disks",
    "snapshots": "snapshots",
    "galleries": "galleries",
}
# Resources of other services (and Compute's gallery applications) are served by one generic route:
# a resource by its id, a collection by its parent's id and its type segment (at any depth below the
# parent: Site Recovery's vault-wide lists return items nested under fabrics and containers).
GENERIC_NAMESPACES = ("microsoft.recoveryservices", "microsoft.virtualmachineimages", "microsoft.devtestlab")
GENERIC_COMPUTE_TYPES = ("galleries/applications", "galleries/applications/versions")
SUBSCRIPTION_BUCKETS = (
    "resources",
    "virtualMachines",
    "virtualMachineScaleSets",
    "virtualMachineScaleSetVMs",
    "images",
    "disks",
    "snapshots",
    "galleries",
    "galleryImages",
    "galleryImageVersions",
    "storageAccounts",
)
_KEYED_BUCKETS = {"virtualMachineScaleSetVMs", "galleryImages", "galleryImageVersions"}

DEFAULT_LOCATION = "westeurope"


def rg_id(sub: str, rg: str) -> str:
    return f"/subscriptions/{sub}/resourceGroups/{rg}"


def compute_id(sub: str, rg: str, *type_and_names: str) -> str:
    """``compute_id(S, RG, "virtualMachines", "vm1")`` -> ``/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm1``."""
    return f"{rg_id(sub, rg)}/providers/{COMPUTE}/" + "/".join(type_and_names)


def storage_account_id(sub: str, rg: str, name: str) -> str:
    return f"{rg_id(sub, rg)}/providers/{STORAGE}/storageAccounts/{name}"


def _iso(value: datetime | str | None) -> str:
    if value is None:
        value = datetime.now(timezone.utc)
    if isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
def _type_of(resource: dict[str, Any]) -> str:
    """A resource's type, from its ``type``, else from its id (some examples carry none)."""
    if resource.get("type"):
        return str(resource["type"])
    parts = str(resource["id"]).split("/providers/", 1)[1].split("/")
    return "/".join([parts[0]] + parts[1::2])


def _type_of_or_none(resource: dict[str, Any]) -> str | None:
    if resource.get("type"):
        return str(resource["type"]).lower()
    return None


def empty_subscription() -> dict[str, Any]:
    return {bucket: ({} if bucket in _KEYED_BUCKETS else []) for bucket in SUBSCRIPTION_BUCKETS}


def empty_estate(*subscriptions: str) -> dict[str, Any]:
    return {"subscriptions": {sub: empty_subscription() for sub in subscriptions}}


_ID_RE = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/(?P<rest>.+)$", re.I)


def place(estate: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    """File ``resource`` in the right bucket of ``estate`` (by its ``id`` and ``type``); returns it.

    Resource groups go to ``resourceGroups`` and management locks (at any scope) to ``locks`` of
    their subscription (sandbox/arm_disks.py makes and serves them)."""
    if _type_of_or_none(resource) in ("microsoft.resources/resourcegroups", "microsoft.authorization/locks"):
        sub = str(resource["id"]).split("/")[2]
        bucket = "resourceGroups" if _type_of_or_none(resource).startswith("microsoft.resources") else "locks"
        subs = estate.setdefault("subscriptions", {})
        subs.setdefault(sub, empty_subscription()).setdefault(bucket, []).append(resource)
        return resource
    m = _ID_RE.match(resource["id"])
    if not m:
        raise ValueError(f"not a resource-group scoped ARM id: {resource['id']!r}")
    sub, rg = m["sub"], m["rg"]
    parts = m["rest"].split("/")  # Namespace/type/name[/type/name...]
    subs = estate.setdefault("subscriptions", {})
    bucket_set = subs.setdefault(sub, empty_subscription())
    rtype = _type_of(resource).lower()
    if rtype == f"{STORAGE}/storageAccounts".lower():
        bucket_set.setdefault("storageAccounts", []).append(resource)
    elif rtype == f"{COMPUTE}/virtualMachineScaleSets/virtualMachines".lower():
        bucket_set.setdefault("virtualMachineScaleSetVMs", {}).setdefault(f"{rg}/{parts[2]}", []).append(resource)
    elif rtype == f"{COMPUTE}/galleries/images".lower():
        bucket_set.setdefault("galleryImages", {}).setdefault(f"{rg}/{parts[2]}", []).append(resource)
    elif rtype == f"{COMPUTE}/galleries/images/versions".lower():
        key = f"{rg}/{parts[2]}/{parts[4]}"
        bucket_set.setdefault("galleryImageVersions", {}).setdefault(key, []).append(resource)
    elif rtype.split("/", 1)[0] in GENERIC_NAMESPACES or rtype.split("/", 1)[-1] in GENERIC_COMPUTE_TYPES:
        bucket_set.setdefault("resources", []).append(resource)
    else:
        kind = rtype.split("/", 1)[1] if "/" in rtype else rtype
        if kind not in TOP_LEVEL_KINDS:
            raise ValueError(f"unsupported resource type {resource['type']!r}")
        bucket_set.setdefault(TOP_LEVEL_KINDS[kind], []).append(resource)
    return resource


def build_estate(*resources: dict[str, Any], subscriptions: Iterable[str] = ()) -> dict[str, Any]:
    """An estate holding ``resources``; ``subscriptions`` adds (possibly empty) subscriptions."""
    estate = empty_estate(*subscriptions)
    for resource in resources:
        place(estate, resource)
    return estate

class ArmError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def _not_found(what: str, rg: str | None) -> ArmError:
    where = f" under resource group '{rg}'" if rg else ""
    return ArmError(404, "ResourceNotFound", f"The Resource '{what}'{where} was not found.")


def _lookup(mapping: dict[str, Any], key: str) -> Any:
    """Case-insensitive dict lookup (ARM names compare without case)."""
    if key in mapping:
        return mapping[key]
    low = key.lower()
    for k, v in mapping.items():
        if k.lower() == low:
            return v
    return None


def _in_rg(resource: Any, rg: str | None) -> bool:
    if rg is None:
        return True
    rid = resource.get("id", "") if isinstance(resource, dict) else ""
    m = _ID_RE.match(rid)
    return bool(m) and m["rg"].lower() == rg.lower()


def _by_name(items: list[Any], name: str) -> Any:
    for item in items:
        if isinstance(item, dict) and str(item.get("name", "")).lower() == name.lower():
            return item
    return None
