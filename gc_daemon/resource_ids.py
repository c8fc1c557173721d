"""ARM ids of managed disks and snapshots, as an operator types them on the command line.

``/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/disks/NAME`` or
``.../snapshots/NAME``, in any case (ARM ids compare without case); a trailing ``/`` is allowed.
:func:`looks_like_resource_id` tells an ARM id from a blob URL (a command taking either tries this
first); :func:`parse_resource_id` checks it and gives its parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .disks import Kind, resource_key

_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourcegroups/(?P<rg>[^/]+)/providers/microsoft\.compute/"
    r"(?P<type>disks|snapshots)/(?P<name>[^/]+)/?$",
    re.IGNORECASE,
)
EXPECTED = ("/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Compute/disks/NAME "
            "or .../snapshots/NAME")


class ResourceIdError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ResourceId:
    id: str  # as given, without a trailing slash
    kind: Kind
    subscription: str
    resource_group: str
    name: str

    @property
    def key(self) -> str:
        return resource_key(self.id)


def looks_like_resource_id(text: str) -> bool:
    """An ARM id (``/subscriptions/...``), not a blob URL."""
    return text.strip().lower().startswith("/subscriptions/")


def parse_resource_id(text: str) -> ResourceId:
    """The parts of a managed disk's or snapshot's ARM id; ResourceIdError when it is neither."""
    text = text.strip()
    m = _ID.match(text)
    if m is None:
        raise ResourceIdError(f"not the id of a managed disk or snapshot: {text!r} (expected {EXPECTED})")
    kind = Kind.MANAGED_DISK if m["type"].lower() == "disks" else Kind.SNAPSHOT
    return ResourceId(text.rstrip("/"), kind, m["sub"], m["rg"], m["name"])
