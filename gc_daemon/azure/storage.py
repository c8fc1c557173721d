"""The storage adapter: one storage account's blobs, read and deleted. I/O only, no decisions.

Listing streams: one listing per container (metadata, snapshots and tags in the same call), folded
into one :class:`BlobSeen` per base blob, holding only the current name's state. Any failure while
listing propagates: a pass that did not see every blob must fail closed, never come out smaller.

Deletion is conditional on the ETag recorded when the blob was marked, and never takes snapshots
with it: the service's refusals come back as :class:`DeleteRefused`. A delete is retried here, not
by the SDK, so that the caller learns whether an earlier attempt may have been executed (a reply
lost, a timeout, a 5xx): a refusal after such an attempt says so (``DeleteRefused.after``), and a
delete that never got an answer raises :class:`DeleteOutcomeUnknown`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobProperties, BlobServiceClient

from gc_daemon.azure.blobrest import (
    MAX_LIST_PAGES,
    BlobRest,
    ListedBlob,
    PageGuard,
    ReadError,
    Urllib3Transport,
    service_time,
)
from gc_daemon import USER_AGENT
from gc_daemon.domain import BlobKey, BlobSeen, ServiceTime
from gc_daemon.urls import blob_url, redact_url

KEEP_METADATA_KEY = "vhdgc_keep"
KEEP_TAG_KEY = "vhdgc-keep"
OWNER_METADATA_KEY = "microsoftazurecompute_vmname"
# What Compute and Kubernetes write in a VHD's metadata (keys compared without case).
OWNER_GROUP_METADATA_KEY = "microsoftazurecompute_resourcegroupname"
OWNER_DISK_METADATA_KEY = "microsoftazurecompute_diskname"
IMAGE_TYPE_METADATA_KEY = "microsoftazurecompute_imagetype"  # a captured VM image
CREATED_BY_METADATA_KEY = "createdby"  # k8sAzureDataDisk: a Kubernetes in-tree volume

# What the service answers when a conditional delete must not (or need not) happen. Nothing was
# deleted; the caller decides what that means for the candidate.
REFUSAL_CODES = frozenset(
    {
        "ConditionNotMet",  # the ETag changed since the blob was marked
        "LeaseIdMissing",  # leased: someone holds it
        "SnapshotsPresent",  # it has snapshots: someone's backups
        "BlobNotFound",  # already gone
        "ContainerNotFound",  # already gone, with its container
    }
)

# A delete that got one of these (or no answer at all: a transport error, a timeout) is retried, and
# counts as an attempt that may have been executed: none of them says the service did not act.
DELETE_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
DELETE_BACKOFF_CAP = 8.0  # seconds between two attempts of a delete at most (Retry-After: 30 s at most)
RETRY_AFTER_CAP = 30.0

_LIST_INCLUDE = ["metadata", "snapshots", "tags"]
# How listings and page ranges are read: "lean" (BlobRest: the same REST calls, signed by the SDK
# client's credential policy, read with a lean XML reader) or "sdk" (the SDK's models).
READERS = ("lean", "sdk")


class StorageError(Exception):
    """The storage service failed (or could not be reached). ``code`` is the service error code when
    it gave one, else the exception class name (``ServiceRequestError`` for a refused connection)."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class DeleteRefused(Exception):
    """The service refused a conditional delete. ``code`` is one of :data:`REFUSAL_CODES`.

    With ``after`` empty, nothing was deleted (by this call). ``after`` lists what earlier attempts
    of the same delete ran into when one of them may have been executed: then a 412 or 404 may be
    the answer to our own delete having gone through, and only the blob can say (the executor
    settles it as an interrupted intent is settled)."""

    def __init__(self, code: str, message: str = "", after: tuple[str, ...] = ()) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.after = tuple(after)


class DeleteOutcomeUnknown(StorageError):
    """Every attempt of a delete ended without a definite answer (no reply, a timeout, a 5xx, or a
    definite error after such an attempt): it may or may not have been executed. ``attempts`` says
    what each ran into; ``code`` is the last one's."""

    def __init__(self, code: str, attempts: tuple[str, ...]) -> None:
        super().__init__(code, "outcome unknown after " + "; ".join(attempts))
        self.attempts = tuple(attempts)


def _error_code(exc: AzureError) -> str:
    code = getattr(exc, "error_code", None)
    if code:
        return str(getattr(code, "value", code))
    return type(exc).__name__


def _storage_error(exc: AzureError) -> StorageError:
    lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
    message = lines[0] if lines else ""
    return StorageError(_error_code(exc), message)


def _quoted_etag(etag: str) -> str:
    """ETags as the service sends them in headers, quotes included (listings omit the quotes)."""
    if not etag or etag.startswith('"') or etag.startswith("W/"):
        return etag
    return f'"{etag}"'


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _enum_str(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))


def _lower(value: Any) -> str | None:
    text = value if type(value) is str else _enum_str(value)  # both readers give plain strings
    return text.lower() if text else None


def _has_key(mapping: dict[str, str] | None, wanted: str) -> bool:
    return bool(mapping) and any(k.lower() == wanted for k in mapping)


def _value_of(mapping: dict[str, str] | None, wanted: str) -> str | None:
    if mapping:
        for k, v in mapping.items():
            if k.lower() == wanted:
                return v
    return None



def _listed(props: BlobProperties) -> ListedBlob:
    """The SDK's view of a blob, as the lean reader gives it: one place builds BlobSeen from either."""
    return ListedBlob(
        name=props.name,
        snapshot=props.snapshot,
        blob_type=_enum_str(props.blob_type) or "",
        size=int(props.size or 0),
        etag=props.etag,
        last_modified=_utc(props.last_modified),
        lease_state=_enum_str(props.lease.state),
        lease_status=_enum_str(props.lease.status),
        tier=_enum_str(props.blob_tier),
        tag_count=props.tag_count,
        metadata=props.metadata or {},
        tags=props.tags,
    )


def _guarded(paged: Any, guard: PageGuard, on_page: Callable[[], None] | None = None) -> Iterator[Any]:
    """The items of an SDK listing (ItemPaged), page by page, with ``guard`` checking each page's
    continuation token before the next page is asked for; ``on_page`` runs once the first page is in."""
    pages = paged.by_page()
    for page in pages:
        if on_page is not None:
            on_page()
            on_page = None
        yield from page
        if not guard.next(pages.continuation_token):
            return


def fold_snapshots(items: Iterable[Any]) -> Iterator[tuple[Any, int]]:
    """Fold a name-sorted listing into (base item, snapshot count) pairs.

    Items of one name are adjacent; whether the snapshots come before or after the base item is
    not relied on. A name with snapshots but no base item (its base blob is gone) yields nothing.
    Only the current name's state is held.
    """
    current: str | None = None
    base: Any = None
    snapshots = 0
    for item in items:
        if item.name != current:
            if base is not None:
                yield base, snapshots
            current, base, snapshots = item.name, None, 0
        if item.snapshot:
            snapshots += 1
        elif base is None:
            base = item
        # A second base item of one name (versions, if ever listed) keeps the first: the current one.
    if base is not None:
        yield base, snapshots


class AccountStorage:
    """One storage account's blobs. No I/O happens until a method is called."""

    # list_blobs() takes on_service_time: the pass measures ages against the service's time.
    reports_service_time = True
    # list_blobs() takes fan_out: the pass lists the containers of the account at once.
    lists_containers_at_once = True

    def __init__(
        self,
        account: str,
        blob_endpoint: str,
        credential: Any,
        *,
        retry_total: int = 3,
        connection_timeout: float = 10,
        read_timeout: float = 60,
        results_per_page: int | None = None,
        reader: str = "lean",
        read_transport: Any = None,
        delete_backoff: float = 0.5,
        max_list_pages: int = MAX_LIST_PAGES,
        **client_kwargs: Any,
    ) -> None:
        if reader not in READERS:
            raise ValueError(f"reader must be one of {', '.join(READERS)}, not {reader!r}")
        self.account = account
        self.blob_endpoint = blob_endpoint.rstrip("/")
        self._credential = credential
        self._client_kwargs = dict(
            retry_total=retry_total,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
            **client_kwargs,
        )
        # "vhd-gc/<version> azsdk-python-storage-blob/... Python/...": the SDK prepends it.
        self._client_kwargs.setdefault("user_agent", USER_AGENT)
        self.results_per_page = results_per_page
        # A delete is tried 1 + retry_total times, waiting delete_backoff, then twice as long, ...
        self.delete_attempts = 1 + max(0, retry_total)
        self.delete_backoff = delete_backoff
        self.reader = reader
        self.max_list_pages = max_list_pages
        self._read_transport = read_transport
        self._client: BlobServiceClient | None = None
        self._rest: BlobRest | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AccountStorage(account={self.account!r}, blob_endpoint={redact_url(self.blob_endpoint)!r})"

    @property
    def client(self) -> BlobServiceClient:
        with self._lock:
            if self._client is None:
                credential = self._credential
                if isinstance(credential, str):
                    # A dict, not the bare key: path-style endpoints (Azurite) carry no account name
                    # in the host, so the SDK cannot infer it for signing.
                    credential = {"account_name": self.account, "account_key": credential}
                self._client = BlobServiceClient(
                    account_url=self.blob_endpoint, credential=credential, **self._client_kwargs
                )
            return self._client

    @property
    def rest(self) -> BlobRest:
        """The lean read path (listings, page ranges), signed by the SDK client's credential policy."""
        client = self.client
        with self._lock:
            if self._rest is None:
                policy = getattr(client, "_credential_policy", None)
                if policy is None and self._credential is not None:
                    raise StorageError(
                        "UnsupportedClient",
                        "this azure-storage-blob has no _credential_policy; set azure.storage_reader: sdk",
                    )
                kwargs = self._client_kwargs
                transport = self._read_transport
                if transport is None:
                    transport = self._read_transport = Urllib3Transport(verify=kwargs.get("connection_verify", True))
                self._rest = BlobRest(
                    self.blob_endpoint,
                    policy,
                    client.api_version,
                    transport,
                    retry_total=kwargs["retry_total"],
                    connection_timeout=kwargs["connection_timeout"],
                    read_timeout=kwargs["read_timeout"],
                    connection_verify=kwargs.get("connection_verify", True),
                    max_pages=self.max_list_pages,
                )
            return self._rest

    def close(self) -> None:
        with self._lock:
            self._rest = None
            if self._read_transport is not None:
                self._read_transport.close()
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> AccountStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- reading ----------------------------------------------------------------------------

    def key_for(self, container: str, blob: str) -> BlobKey:
        return BlobKey(self.account.lower(), container.lower(), blob)

    def blob_url(self, key: BlobKey) -> str:
        return blob_url(self.blob_endpoint, key)

    def list_blobs(
        self,
        results_per_page: int | None = None,
        *,
        on_service_time: Callable[[ServiceTime], None] | None = None,
        fan_out: Callable[[list[str], Callable[[str], Iterator[BlobSeen]]], Iterator[BlobSeen]] | None = None,
    ) -> Iterator[BlobSeen]:
        """Every base blob of every container, streamed. Errors propagate as :class:`StorageError`.

        ``fan_out(names, list_one)``, when given, lists the containers (``list_one(name)`` each) and
        yields their blobs in container order: the pass's Listing lists them at once that way.

        ``on_service_time`` is called once, before the first blob, with the service's time from the
        ``Date`` header of the listing's first answer (the container list): a Date that is not an
        HTTP date fails the listing (``MalformedResponse``); a missing one is passed on as None.
        A NextMarker that repeats one the same listing gave, or a listing longer than
        ``max_list_pages`` pages, fails it (``ListingLoop``, ``ListingTooLong``)."""
        per_page = results_per_page or self.results_per_page
        containers = self.containers(per_page, on_service_time=on_service_time)
        if fan_out is not None:
            yield from fan_out(list(containers), lambda name: self.container_blobs(name, per_page))
            return
        for container in containers:
            yield from self.container_blobs(container, per_page)

    def containers(
        self,
        results_per_page: int | None = None,
        *,
        on_service_time: Callable[[ServiceTime], None] | None = None,
    ) -> Iterator[str]:
        """The name of every container (the first half of :meth:`list_blobs`: ``on_service_time``
        as there). The pass lists the containers of one account concurrently with these two."""
        per_page = results_per_page or self.results_per_page
        try:
            if self.reader == "lean":
                yield from self.rest.list_containers(per_page, on_service_time)
                return
            yield from self._containers_sdk(per_page, on_service_time)
        except ReadError as exc:
            raise StorageError(exc.code, exc.message) from exc
        except AzureError as exc:
            raise _storage_error(exc) from exc

    def container_blobs(self, container: str, results_per_page: int | None = None) -> Iterator[BlobSeen]:
        """Every base blob of one container, streamed in the service's order (the second half of
        :meth:`list_blobs`). Errors propagate as :class:`StorageError`."""
        per_page = results_per_page or self.results_per_page
        try:
            if self.reader == "lean":
                rest = self.rest
                for item, snapshot_count in fold_snapshots(rest.list_blobs(container, per_page)):
                    tags = item.tags
                    if tags is None and item.tag_count:
                        tags = self._tags(container, item.name)
                    yield self._seen(container, item, snapshot_count, tags)
                return
            container_client = self.client.get_container_client(container)
            page_kwargs: dict[str, Any] = {"results_per_page": per_page} if per_page else {}
            items = _guarded(container_client.list_blobs(include=_LIST_INCLUDE, **page_kwargs),
                             PageGuard(f"container {container!r}", self.max_list_pages))
            for item, snapshot_count in fold_snapshots(items):
                tags = item.tags
                if tags is None and item.tag_count:
                    # The listing did not carry the tags (Azurite 3.37 does; this is the net).
                    tags = container_client.get_blob_client(item.name).get_blob_tags()
                yield self._seen(container, _listed(item), snapshot_count, tags)
        except ReadError as exc:
            raise StorageError(exc.code, exc.message) from exc
        except AzureError as exc:
            raise _storage_error(exc) from exc

    def _containers_sdk(
        self, per_page: int | None, on_service_time: Callable[[ServiceTime], None] | None
    ) -> Iterator[str]:
        container_kwargs: dict[str, Any] = {"results_per_page": per_page} if per_page else {}
        report: Callable[[], None] | None = None
        if on_service_time is not None:
            first: list[tuple[str | None, float]] = []

            def hook(response: Any) -> None:  # every try of every page: keep the first answer that listed
                if not first and response.http_response.status_code == 200:
                    first.append((response.http_response.headers.get("Date"), time.monotonic()))

            def once_listed() -> None:
                on_service_time(service_time(*first[0]) if first else ServiceTime(None, time.monotonic()))

            report = once_listed
            container_kwargs["raw_response_hook"] = hook  # a per-call option of the storage pipeline
        containers = self.client.list_containers(**container_kwargs)
        for container in _guarded(containers, PageGuard("the container list", self.max_list_pages), report):
            yield container.name

    def _tags(self, container: str, blob: str) -> dict[str, str]:
        try:
            return self.client.get_blob_client(container, blob).get_blob_tags()
        except AzureError as exc:
            raise _storage_error(exc) from exc

    def read_blob(self, key: BlobKey) -> BlobSeen | None:
        """Re-read one blob now: the same fields a listing gives, or None if it does not exist."""
        container_client = self.client.get_container_client(key.container)
        blob_client = container_client.get_blob_client(key.blob)
        try:
            props = blob_client.get_blob_properties()
            snapshot_count = sum(
                1
                for item in container_client.list_blobs(name_starts_with=key.blob, include=["snapshots"])
                if item.name == key.blob and item.snapshot
            )
            tags = blob_client.get_blob_tags() if props.tag_count else None
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise _storage_error(exc) from exc
        return self._seen(key.container, _listed(props), snapshot_count, tags)

    def billed_bytes(self, key: BlobKey, etag: str | None = None) -> int:
        """Bytes a page blob actually stores: the sum of its written page ranges. With ``etag``, of
        that version only: a blob changed since fails ``ConditionNotMet`` (its measurement is bound
        to the ETag it was made for)."""
        if self.reader == "lean":
            try:
                return self.rest.page_bytes(key.container, key.blob, etag)
            except ReadError as exc:
                raise StorageError(exc.code, exc.message) from exc
        blob_client = self.client.get_blob_client(key.container, key.blob)
        guard = PageGuard(f"page ranges of {key.container}/{key.blob!r}", self.max_list_pages)
        condition = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}
        try:
            return sum(
                r.end - r.start + 1 for r in _guarded(blob_client.list_page_ranges(**condition), guard) if not r.cleared
            )
        except AzureError as exc:
            raise _storage_error(exc) from exc
        except ReadError as exc:
            raise StorageError(exc.code, exc.message) from exc

    def _seen(
        self, container: str, item: ListedBlob, snapshot_count: int, tags: dict[str, str] | None
    ) -> BlobSeen:
        key = self.key_for(container, item.name)
        seen = BlobSeen(
            key=key,
            url=self.blob_url(key),
            blob_type=item.blob_type,
            size=item.size,
            etag=_quoted_etag(item.etag),
            last_modified=item.last_modified,
            lease_state=_lower(item.lease_state),
            lease_status=_lower(item.lease_status),
            snapshot_count=snapshot_count,
            keep_tag=_has_key(tags, KEEP_TAG_KEY),
            tier=item.tier,
        )
        metadata = item.metadata
        if metadata:  # most blobs have none: nothing to look at
            meta = {k.lower(): v for k, v in metadata.items()}
            seen.keep_metadata = KEEP_METADATA_KEY in meta
            seen.owner_hint = meta.get(OWNER_METADATA_KEY)
            seen.image_type = meta.get(IMAGE_TYPE_METADATA_KEY)
            seen.created_by = meta.get(CREATED_BY_METADATA_KEY)
            seen.owner_group = meta.get(OWNER_GROUP_METADATA_KEY)
            seen.owner_disk = meta.get(OWNER_DISK_METADATA_KEY)
        return seen

    # -- deleting ---------------------------------------------------------------------------

    def delete_if_match(self, key: BlobKey, etag: str) -> None:
        """Delete the base blob only if its ETag is still ``etag``; never its snapshots.

        Tried up to :attr:`delete_attempts` times (the SDK's own retries are off for this call:
        whether an attempt may have been executed is what the caller must know). An attempt is
        retried after a transport error (the connection failed or dropped, a timeout) or a 408,
        429 or 5xx; every such attempt counts as possibly executed, for none of them proves the
        service did not act.

        Raises :class:`DeleteRefused` when the service refuses (see :data:`REFUSAL_CODES`; its
        ``after`` names the earlier attempts that may have been executed), :class:`DeleteOutcomeUnknown`
        when no attempt got a definite answer (or a definite error followed one that may have been
        executed), :class:`StorageError` for any other error of a first attempt.
        """
        blob_client = self.client.get_blob_client(key.container, key.blob)
        uncertain: list[str] = []  # what each earlier attempt ran into: any of them may have deleted it
        last: Exception | None = None
        for attempt in range(1, self.delete_attempts + 1):
            retry_after = None
            try:
                blob_client.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified, retry_total=0)
                return
            except HttpResponseError as exc:
                code = _error_code(exc)
                if code in REFUSAL_CODES:
                    raise DeleteRefused(code, _storage_error(exc).message, after=tuple(uncertain)) from exc
                status = exc.status_code
                if status is not None and 400 <= status and status not in DELETE_RETRY_STATUSES:
                    if uncertain:  # definite, but an earlier attempt may have gone through
                        raise DeleteOutcomeUnknown(code, (*uncertain, f"{status} {code}")) from exc
                    raise _storage_error(exc) from exc
                uncertain.append(f"{status} {code}")
                retry_after = _retry_after(exc)
                last = exc
            except (ServiceRequestError, ServiceResponseError) as exc:
                uncertain.append(f"{type(exc).__name__}: {_first_line(exc)}")
                last = exc
            except AzureError as exc:  # not a transport error, nothing sent (a credential failed)
                if uncertain:
                    raise DeleteOutcomeUnknown(_error_code(exc), (*uncertain, _error_code(exc))) from exc
                raise _storage_error(exc) from exc
            if attempt < self.delete_attempts:
                self._delete_pause(attempt, retry_after)
        assert last is not None
        raise DeleteOutcomeUnknown(_error_code(last), tuple(uncertain)) from last

    def _delete_pause(self, attempt: int, retry_after: float | None) -> None:
        """The wait before attempt ``attempt + 1``: the service's Retry-After, else exponential with jitter."""
        if retry_after is not None:
            pause = min(retry_after, RETRY_AFTER_CAP)
        else:
            pause = min(self.delete_backoff * 2 ** (attempt - 1), DELETE_BACKOFF_CAP)
            pause *= random.uniform(0.75, 1.25)
        if pause > 0:
            time.sleep(pause)


def _first_line(exc: BaseException, limit: int = 200) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:limit]


def _retry_after(exc: HttpResponseError) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: not what the storage service sends; use our own backoff
        return None


def _soft_delete_days(client: BlobServiceClient) -> int | None:
    policy = client.get_service_properties().get("delete_retention_policy")
    if policy is None or not getattr(policy, "enabled", False):
        return None
    return int(policy.days or 0) or None


def soft_delete_days(storage: "AccountStorage") -> int | None:
    """Days a deleted blob stays recoverable (blob soft delete), or None when it is off."""
    try:
        return _soft_delete_days(storage.client)
    except HttpResponseError as exc:
        raise _storage_error(exc) from exc
    except AzureError as exc:
        raise _storage_error(exc) from exc


def undelete(storage: "AccountStorage", key: BlobKey) -> None:
    """Bring a soft-deleted blob back (and with it its soft-deleted snapshots)."""
    try:
        storage.client.get_blob_client(key.container, key.blob).undelete_blob()
    except HttpResponseError as exc:
        raise _storage_error(exc) from exc
    except AzureError as exc:
        raise _storage_error(exc) from exc
