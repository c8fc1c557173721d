"""The storage adapter: one storage account's blobs, read and deleted. I/O only, no decisions.

Listing streams: one listing per container (metadata, snapshots and tags in the same call), folded
into one :class:`BlobSeen` per base blob, holding only the current name's state. Any failure while
listing propagates: a pass that did not see every blob must fail closed, never come out smaller.

Deletion is conditional on the ETag recorded when the blob was marked, and never takes snapshots
with it: the service's refusals come back as :class:`DeleteRefused`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobProperties, BlobServiceClient

from gc_daemon.azure.blobrest import BlobRest, ListedBlob, ReadError, Urllib3Transport
from gc_daemon.domain import BlobKey, BlobSeen
from gc_daemon.urls import blob_url

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
    """The service refused a conditional delete; nothing was deleted. ``code`` is one of
    :data:`REFUSAL_CODES`."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


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
        self.results_per_page = results_per_page
        self.reader = reader
        self._read_transport = read_transport
        self._client: BlobServiceClient | None = None
        self._rest: BlobRest | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"AccountStorage(account={self.account!r}, blob_endpoint={self.blob_endpoint!r})"

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

    def list_blobs(self, results_per_page: int | None = None) -> Iterator[BlobSeen]:
        """Every base blob of every container, streamed. Errors propagate as :class:`StorageError`."""
        per_page = results_per_page or self.results_per_page
        if self.reader == "lean":
            yield from self._list_blobs_lean(per_page)
            return
        page_kwargs = {"results_per_page": per_page} if per_page else {}
        try:
            for container in self.client.list_containers(**page_kwargs):
                container_client = self.client.get_container_client(container.name)
                items = container_client.list_blobs(include=_LIST_INCLUDE, **page_kwargs)
                for item, snapshot_count in fold_snapshots(items):
                    tags = item.tags
                    if tags is None and item.tag_count:
                        # The listing did not carry the tags (Azurite 3.37 does; this is the net).
                        tags = container_client.get_blob_client(item.name).get_blob_tags()
                    yield self._seen(container.name, _listed(item), snapshot_count, tags)
        except AzureError as exc:
            raise _storage_error(exc) from exc

    def _list_blobs_lean(self, per_page: int | None) -> Iterator[BlobSeen]:
        rest = self.rest
        try:
            for container in rest.list_containers(per_page):
                for item, snapshot_count in fold_snapshots(rest.list_blobs(container, per_page)):
                    tags = item.tags
                    if tags is None and item.tag_count:
                        tags = self._tags(container, item.name)
                    yield self._seen(container, item, snapshot_count, tags)
        except ReadError as exc:
            raise StorageError(exc.code, exc.message) from exc

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

    def billed_bytes(self, key: BlobKey) -> int:
        """Bytes a page blob actually stores: the sum of its written page ranges."""
        if self.reader == "lean":
            try:
                return self.rest.page_bytes(key.container, key.blob)
            except ReadError as exc:
                raise StorageError(exc.code, exc.message) from exc
        blob_client = self.client.get_blob_client(key.container, key.blob)
        try:
            return sum(
                r.end - r.start + 1 for r in blob_client.list_page_ranges() if not r.cleared
            )
        except AzureError as exc:
            raise _storage_error(exc) from exc

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

        Raises :class:`DeleteRefused` when the service refuses (see :data:`REFUSAL_CODES`),
        :class:`StorageError` for anything else.
        """
        blob_client = self.client.get_blob_client(key.container, key.blob)
        try:
            blob_client.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except HttpResponseError as exc:
            code = _error_code(exc)
            if code in REFUSAL_CODES:
                raise DeleteRefused(code, _storage_error(exc).message) from exc
            raise _storage_error(exc) from exc
        except AzureError as exc:
            raise _storage_error(exc) from exc


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
