"""What a reference source is, and the pieces every source shares.

A *reference source* is one kind of thing in Azure that can name a VHD: virtual machines, scale
sets, images, Site Recovery replication items, ... Each lives in a module of its own in this
package and declares a :class:`Source`: the ARM reads it makes (REST path, SDK operation, the
Azure permission each needs) and how its failure is named (``<subscription>/<label>``). The
inventory (:mod:`gc_daemon.sources.inventory`) runs every registered source for every configured
subscription; the roles in deploy/azure/ and the fault matrix are checked against the declarations.

Fail closed: anything that goes wrong in a source (an HTTP error after retries, a timeout, a page
that is not JSON, lacks its ``value`` list, holds an item without an ``id``, an item that lacks
the fields that would hold its references, a ``nextLink`` to another host, one that repeats, or a
listing past ``azure.max_list_pages``) becomes a :class:`SourceError` naming the source, and the
pass is incomplete. A source is never silently shorter than what ARM holds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urljoin, urlsplit

from azure.core.exceptions import HttpResponseError
from azure.core.pipeline.policies import SansIOHTTPPolicy
from azure.core.rest import HttpRequest

from gc_daemon.disks import DiskSeen, SnapshotSeen
from gc_daemon.domain import RawReference, RefKind

_MAX_MESSAGE = 400
DEFAULT_MAX_PAGES = 10_000


# --------------------------------------------------------------------------------------------------
# Declarations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """One ARM list a source makes. ``label`` names its failures (``<subscription>/<label>``);
    ``path`` is the REST path template (what the stand-in serves and the fault matrix targets);
    ``permission`` the Azure RBAC action it needs; ``operation`` the SDK call, or ``REST`` when
    the source sends the request itself through the ARM pipeline."""

    label: str
    path: str
    permission: str
    api_version: str | None = None  # REST reads: the api-version sent
    operation: str = "REST"

    def path_regex(self) -> str:
        """A regex matching this read's request path (placeholders are one segment), for faults."""
        parts = re.split(r"(\{[^}]+\})", self.path)
        body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
        return f"(?i){body}$"


@dataclass(frozen=True, slots=True)
class Source:
    """A reference source: what it reads, and the tasks that read it for one subscription."""

    name: str  # the module's short name (``virtual_machines``)
    service: str  # the Azure service, for documentation (``Compute``, ``Site Recovery``, ...)
    reads: tuple[Read, ...]
    tasks: Callable[["SubscriptionContext"], list["Task"]]
    sees: str = ""  # one line: what this source protects (docs/operations.md lists them)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.label for r in self.reads))

    @property
    def permissions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.permission for r in self.reads))


@dataclass(slots=True)
class Found:
    """What one task found: references, storage accounts (placement), and further tasks; and for the
    managed-disk half of a pass, the disks and snapshots listed, resource groups, locks, and which
    disks or snapshots an image or gallery image version names (``(key, holder id)`` pairs)."""

    references: list[RawReference] = field(default_factory=list)
    accounts: list["PlacedAccount"] = field(default_factory=list)
    follow: list["Task"] = field(default_factory=list)
    disks: list[DiskSeen] = field(default_factory=list)
    snapshots: list[SnapshotSeen] = field(default_factory=list)
    groups: list["GroupSeen"] = field(default_factory=list)
    locks: list["LockAt"] = field(default_factory=list)
    resource_refs: list[tuple[str, str]] = field(default_factory=list)
    # (holder id, its tags as listed) of the holders this task read that carry tags: the inventory
    # keeps only their owner tags (gc_daemon.owners), for the owner records (no call of its own).
    tags: list[tuple[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlacedAccount:
    """A storage account as ARM places it: its name and the subscription it belongs to."""

    name: str
    subscription: str
    resource_group: str
    blob_endpoint: str | None = None
    kind: str | None = None
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class GroupSeen:
    """A resource group as the resource groups list shows it: what the disk decision reads of it."""

    id: str
    tags: dict[str, str] = field(default_factory=dict)
    managed_by: str | None = None  # set: the group belongs to another resource (AKS MC_*, managed apps)


@dataclass(frozen=True, slots=True)
class LockAt:
    """A management lock: its id, the scope it is on (a subscription, group or resource id, as the
    lock's id names it) and its level (``CanNotDelete``, ``ReadOnly``; anything else holds too)."""

    id: str
    scope: str
    level: str


@dataclass(slots=True)
class Task:
    source: str  # "<subscription>/<label>"
    what: str  # for error messages: which scale set / gallery / vault, or "" for a whole list
    run: Callable[[], Found]


@dataclass(frozen=True, slots=True)
class SourceError:
    """A source that could not be read in full. ``source`` is ``"<subscription>/<label>"``."""

    source: str
    message: str


@dataclass(slots=True)
class ReferenceRead:
    """What one read of every source found. Complete only when ``errors`` is empty."""

    references: list[RawReference] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # references per source
    # Storage accounts of the configured subscriptions, by name (None when placement was not read).
    accounts: dict[str, PlacedAccount] | None = None
    # The managed disks and snapshots listed (``ownership_read=False``: the pass GETs that time
    # itself). None, and the disk half of the pass skipped, unless the disks, snapshots, images,
    # galleries, resource groups and locks sources were all read, and read completely, by this read.
    disks: list[DiskSeen] | None = None
    snapshots: list[SnapshotSeen] | None = None
    disks_read: set[str] = field(default_factory=set)  # subscriptions (lower-case) whose disks were listed in full
    groups: dict[str, GroupSeen] = field(default_factory=dict)  # lower-cased group id -> group
    locks: list[LockAt] = field(default_factory=list)
    # Lower-cased disk / snapshot id -> the ids of the managed images and gallery image versions naming it.
    resource_refs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Lower-cased holder id -> its owner tags ((name as listed, value), in the order of ``owners.tags``):
    # only the holders (VMs, scale sets and their instances, images, gallery versions, disks, snapshots)
    # that carry one; one tuple per holder, shared by all its references.
    holder_tags: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.errors


class ReadStopped(Exception):
    """A stop (SIGTERM/SIGINT) was asked for during the read: it was abandoned, calls in flight
    included (their threads end with their per-request timeouts), and nothing of it is used."""


class MalformedPage(ValueError):
    """A 200 page that cannot be trusted to hold the whole list."""


class IncompleteItem(ValueError):
    """An item that lacks the fields that would hold its references: it cannot be read in full, which
    is uncertainty, never "it holds none"."""


# --------------------------------------------------------------------------------------------------
# Page validation. The SDK's pager reads ``value`` with a default of [] and follows ``nextLink``
# verbatim, with the bearer token: every list page is checked on the wire first, per pager.
# --------------------------------------------------------------------------------------------------


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower().rstrip("."), port


class PageGuard:
    """``raw_response_hook`` for the pages of ONE list: raises :class:`MalformedPage` unless the page
    is sound, its ``nextLink`` (if any) stays on the endpoint's origin, does not lead back to a page
    already read, and the list stays within ``max_pages``. A new guard for every list call."""

    def __init__(self, endpoint: str, max_pages: int = DEFAULT_MAX_PAGES) -> None:
        self.endpoint = endpoint.rstrip("/") + "/"
        self.origin = _origin(endpoint)
        self.max_pages = max(1, max_pages)
        self.pages = 0
        self._read: set[str] = set()

    def __call__(self, pipeline_response: Any) -> None:
        http = pipeline_response.http_response
        if http.status_code != 200:
            return  # errors are the retry policy's and the pager's business
        body = check_list_body(http.text())
        self.pages += 1
        if self.pages > self.max_pages:
            raise MalformedPage(f"the list goes on past {self.max_pages} pages (azure.max_list_pages)")
        self._read.add(_canonical(pipeline_response.http_request.url))
        next_link = body.get("nextLink")
        if next_link:
            next_link = urljoin(self.endpoint, next_link)  # a relative link is the SDK's base URL's
            if _origin(next_link) != self.origin:
                raise MalformedPage(
                    f"nextLink leads to another host ({_origin(next_link)[1] or 'none'}), not the endpoint's "
                    f"({self.origin[1]}): not followed"
                )
            if _canonical(next_link) in self._read:
                raise MalformedPage("nextLink leads back to a page already read (a paging loop)")

    def kwargs(self) -> dict[str, Any]:
        return {"raw_response_hook": self}


def _canonical(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path.lower()}?{parts.query}"


def check_list_body(text: str) -> dict[str, Any]:
    """The JSON object of a list page, or :class:`MalformedPage`."""
    try:
        body = json.loads(text)
    except ValueError:
        raise MalformedPage("list page is not valid JSON") from None
    if not isinstance(body, dict):
        raise MalformedPage("list page is not a JSON object")
    value = body.get("value")
    if not isinstance(value, list):
        raise MalformedPage("list page has no 'value' list")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise MalformedPage(f"list page item {index} is not an object")
        rid = item.get("id")
        if not isinstance(rid, str) or not rid:
            raise MalformedPage(f"list page item {index} has no id")
    next_link = body.get("nextLink")
    if next_link is not None and not isinstance(next_link, str):
        raise MalformedPage("list page has a nextLink that is not a string")
    return body


def check_list_page(pipeline_response: Any) -> None:
    """A page check without loop or host rules (for callers that page on their own)."""
    http = pipeline_response.http_response
    if http.status_code == 200:
        check_list_body(http.text())


class HostPinPolicy(SansIOHTTPPolicy):
    """Refuses, before the credential policy adds the bearer token, any request to an origin other
    than the ARM endpoint's: a ``nextLink`` or a redirect to another host never gets the token."""

    def __init__(self, endpoint: str) -> None:
        self.origin = _origin(endpoint)

    def on_request(self, request: Any) -> None:
        url = request.http_request.url
        if _origin(url) != self.origin:
            raise MalformedPage(f"refused a request to {_origin(url)[1] or url!r}: not the ARM endpoint's host")


# --------------------------------------------------------------------------------------------------
# REST reads through a management client's pipeline (same credential, retries, timeouts, host pin)
# --------------------------------------------------------------------------------------------------


def arm_list(client: Any, endpoint: str, path: str, api_version: str, max_pages: int) -> Iterator[dict[str, Any]]:
    """Every item of an ARM collection, all pages, as plain JSON objects."""
    guard = PageGuard(endpoint, max_pages)
    base = urlsplit(endpoint)  # what an endpoint carries beyond scheme, host and path is not ARM's
    url: str | None = f"{base.scheme}://{base.netloc}{base.path.rstrip('/')}{path}?api-version={api_version}"
    while url:
        response = client.send_request(HttpRequest("GET", url), **guard.kwargs())
        if response.status_code != 200:
            raise _http_error(response)
        body = check_list_body(response.text())
        yield from body["value"]
        url = urljoin(endpoint.rstrip("/") + "/", body["nextLink"]) if body.get("nextLink") else None


def _http_error(response: Any) -> HttpResponseError:
    from azure.mgmt.core.exceptions import ARMErrorFormat

    return HttpResponseError(response=response, error_format=ARMErrorFormat)


# --------------------------------------------------------------------------------------------------
# Extraction helpers, for SDK models (attribute access) and REST JSON (dict access) alike.
# Missing or null intermediate fields yield nothing; a field of the wrong type raises (and fails
# the source). Fields that every item of a kind carries are demanded with :func:`required`.
# --------------------------------------------------------------------------------------------------


def attr(obj: Any, *path: str) -> Any:
    """Follow attributes of SDK models, stopping at the first None. Anything else in the way (a
    plain dict where the SDK found the wrong shape) raises AttributeError: the source fails."""
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def jget(obj: Any, *path: str) -> Any:
    """Follow keys of REST JSON, stopping at the first None. A non-object in the way raises."""
    for name in path:
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise ValueError(f"expected an object at {name!r}, found {type(obj).__name__}")
        obj = obj.get(name)
    return obj


def required(obj: Any, holder: str, *path: str, where: str) -> Any:
    """Like :func:`attr`, but a missing or null field is an :class:`IncompleteItem` naming the item."""
    value = attr(obj, *path)
    if value is None:
        raise IncompleteItem(f"{where} missing or null in {holder}")
    return value


def uri(value: Any, holder: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{holder}: {where} is not a URI")
    return value


def items(value: Any, holder: str, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise ValueError(f"{holder}: {where} is not a list")
    return list(value)


def holder_id(resource: Any) -> str:
    rid = resource.get("id") if isinstance(resource, dict) else getattr(resource, "id", None)
    if not isinstance(rid, str) or not rid:
        raise ValueError("a resource has no id")
    return rid


def name_of(resource: Any) -> str:
    name = resource.get("name") if isinstance(resource, dict) else getattr(resource, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{holder_id(resource)}: the resource has no name")
    return name


def ref(kind: RefKind, holder: str, value: Any, where: str, **extra: Any) -> list[RawReference]:
    u = uri(value, holder, where)
    return [RawReference(kind=kind, holder=holder, uri=u, **extra)] if u else []


def utc(value: Any, holder: str, where: str = "timeCreated") -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{holder}: {where} is not a timestamp") from None
    if not isinstance(value, datetime):
        raise ValueError(f"{holder}: {where} is not a timestamp")
    # Always datetime.timezone.utc (the SDK's deserializer hands its own UTC tzinfo): equal instants
    # then also look equal wherever they are stored or printed.
    return value.astimezone(timezone.utc) if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def text(value: Any, holder: str, where: str) -> str | None:
    """A string field (an SDK enum gives its value); None when missing, null or empty."""
    if value is None:
        return None
    value = getattr(value, "value", value)  # str enums of the SDK models
    if not isinstance(value, str):
        raise ValueError(f"{holder}: {where} is not a string")
    return value or None


def integer(value: Any, holder: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{holder}: {where} is not a whole number")
    return value


def flag(value: Any, holder: str, where: str) -> bool:
    """A boolean field; missing or null is False."""
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError(f"{holder}: {where} is not a boolean")
    return value


def tags_of(value: Any, holder: str, where: str = "tags") -> dict[str, str]:
    """A resource's tags (missing or null: none). A tag name that is not a string fails the item."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{holder}: {where} is not an object")
    out = {}
    for name, val in value.items():
        if not isinstance(name, str):
            raise ValueError(f"{holder}: {where} has a name that is not a string")
        out[name] = "" if val is None else val if isinstance(val, str) else str(val)
    return out


def strings(value: Any, holder: str, where: str) -> tuple[str, ...]:
    """A list of strings (nulls and empty strings in it dropped); missing or null is empty."""
    out = []
    for item in items(value, holder, where):
        if item is None or item == "":
            continue
        if not isinstance(item, str):
            raise ValueError(f"{holder}: {where} holds something that is not a string")
        out.append(item)
    return tuple(out)


def arm_id(value: Any, holder: str, where: str) -> str | None:
    """An ARM resource id as written (leading ``/`` added when missing: some services, and the REST
    examples, omit it); None when missing, null or empty."""
    rid = text(value, holder, where)
    if rid is None:
        return None
    rid = rid.strip()
    if not rid:
        return None
    return rid if rid.startswith("/") else "/" + rid


def arm_key(resource_id: str) -> str:
    """How ARM ids compare: lower-cased, with a leading ``/`` and no trailing one."""
    rid = resource_id.strip().rstrip("/")
    return (rid if rid.startswith("/") else "/" + rid).lower()


_DISK_OR_SNAPSHOT = re.compile(r"^/subscriptions/[^/]+/resourcegroups/[^/]+/providers/microsoft\.compute/"
                               r"(disks|snapshots)/[^/]+$")


def disk_or_snapshot_refs(holder: str, *ids: Any, where: str) -> list[tuple[str, str]]:
    """``(key, holder)`` for each of ``ids`` that names a managed disk or a snapshot."""
    out = []
    for value in ids:
        rid = arm_id(value, holder, where)
        if rid is not None and _DISK_OR_SNAPSHOT.match(arm_key(rid)):
            out.append((arm_key(rid), holder))
    return out


_RG_RE = re.compile(r"^/subscriptions/[^/]+/resourceGroups/(?P<rg>[^/]+)/", re.IGNORECASE)


def resource_group_of(resource_id: str) -> str:
    m = _RG_RE.match(resource_id)
    if not m:
        raise ValueError(f"cannot find the resource group in {resource_id!r}")
    return m["rg"]


def keep_tags(out: Found, resource: Any) -> None:
    """Note a listed holder's tags for its owner record (nothing when it has none)."""
    tags = attr(resource, "tags")
    if tags:
        out.tags.append((holder_id(resource), tags))


def collect(found: Iterable[Any], extract: Callable[[Any], list[RawReference]]) -> Found:
    out = Found()
    for item in found:
        out.references += extract(item)
        keep_tags(out, item)
    return out


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of why a source failed."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        error = getattr(exc, "error", None)
        code = getattr(error, "code", None)
        text = f"HTTP {exc.status_code}" + (f" {code}" if code else "")
        detail = getattr(error, "message", None) or (None if code else getattr(exc, "reason", None))
        if detail:
            text += f": {' '.join(str(detail).split())}"
    else:
        first_line = (str(exc).strip().splitlines() or [""])[0]
        text = f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
    return text[:_MAX_MESSAGE]


# --------------------------------------------------------------------------------------------------
# What a source's tasks get: one subscription's clients
# --------------------------------------------------------------------------------------------------


@dataclass
class SubscriptionContext:
    subscription: str
    endpoint: str
    max_pages: int
    _compute: Callable[[], Any]
    _storage: Callable[[], Any]
    _resources: Callable[[], Any] | None = None
    _locks: Callable[[], Any] | None = None

    def compute(self) -> Any:
        """The subscription's azure-mgmt-compute client (made once, on first use)."""
        return self._compute()

    def storage(self) -> Any:
        """The subscription's azure-mgmt-storage client (made once, on first use)."""
        return self._storage()

    def resources(self) -> Any:
        """The subscription's azure-mgmt-resource ResourceManagementClient (made once, on first use)."""
        if self._resources is None:
            raise RuntimeError("no resource management client for this context")
        return self._resources()

    def locks(self) -> Any:
        """The subscription's ManagementLockClient (azure-mgmt-resource-locks; made once, on first use)."""
        if self._locks is None:
            raise RuntimeError("no management lock client for this context")
        return self._locks()

    def pages(self) -> dict[str, Any]:
        """Keyword arguments for one SDK list call: a fresh :class:`PageGuard`."""
        return PageGuard(self.endpoint, self.max_pages).kwargs()

    def rest_list(self, read: Read, **path_args: str) -> Iterator[dict[str, Any]]:
        """Every item of the collection ``read.path`` names (with ``path_args`` filled in)."""
        assert read.api_version, read
        path = read.path.format(subscriptionId=self.subscription, **{k: _seg(v) for k, v in path_args.items()})
        return arm_list(self.compute(), self.endpoint, path, read.api_version, self.max_pages)

    def task(self, read: Read, what: str, run: Callable[[], Found]) -> Task:
        return Task(f"{self.subscription}/{read.label}", what, run)


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")
