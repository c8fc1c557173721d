"""The compute inventory: every blob URI Azure Compute holds, read through azure-mgmt-compute.

One reader per reference kind (``read_virtual_machines``, ``read_scale_sets``, ...), each turning
SDK models into :class:`~gc_daemon.domain.RawReference` through a pure extractor
(``vm_references``, ``scale_set_references``, ...). :class:`ComputeInventory` runs the readers for
every subscription concurrently and gathers a :class:`ReferenceRead`.

Fail closed: anything that goes wrong in a source (an HTTP error after retries, a timeout, a page
that is not JSON, lacks its ``value`` list or holds an item without an ``id``) becomes a
:class:`SourceError` naming that source, and the caller must treat the pass as incomplete. A source
is never silently shorter than what ARM holds.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from azure.core.credentials import TokenCredential
from azure.core.exceptions import HttpResponseError

from gc_daemon.domain import RawReference, RefKind

# Source kinds, the suffix of a SourceError.source / counts key: "<subscription>/<kind>".
VIRTUAL_MACHINES = "virtualMachines"
SCALE_SETS = "virtualMachineScaleSets"
SCALE_SET_VMS = "virtualMachineScaleSetVMs"
IMAGES = "images"
DISKS = "disks"
SNAPSHOTS = "snapshots"
GALLERIES = "galleries"
GALLERY_IMAGES = "galleryImages"
GALLERY_IMAGE_VERSIONS = "galleryImageVersions"
SOURCE_KINDS = (
    VIRTUAL_MACHINES,
    SCALE_SETS,
    SCALE_SET_VMS,
    IMAGES,
    DISKS,
    SNAPSHOTS,
    GALLERIES,
    GALLERY_IMAGES,
    GALLERY_IMAGE_VERSIONS,
)

_MAX_MESSAGE = 240


@dataclass(frozen=True, slots=True)
class SourceError:
    """A source that could not be read in full. ``source`` is ``"<subscription>/<kind>"``."""

    source: str
    message: str


@dataclass(slots=True)
class ReferenceRead:
    """What one read of the compute inventory found. Complete only when ``errors`` is empty."""

    references: list[RawReference] = field(default_factory=list)
    errors: list[SourceError] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # references per source

    @property
    def complete(self) -> bool:
        return not self.errors


class MalformedPage(ValueError):
    """A 200 page that cannot be trusted to hold the whole list."""


# --------------------------------------------------------------------------------------------------
# Page validation: the SDK's pager reads ``value`` with a default of [] and would turn a broken page
# into a silently shorter list, so every list page is checked on the wire first.
# --------------------------------------------------------------------------------------------------


def check_list_page(pipeline_response: Any) -> None:
    """``raw_response_hook`` for list calls: raise :class:`MalformedPage` unless the page is sound."""
    http = pipeline_response.http_response
    if http.status_code != 200:
        return  # errors are the retry policy's and the pager's business
    try:
        body = json.loads(http.text())
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


def _list_kwargs() -> dict[str, Any]:
    return {"raw_response_hook": check_list_page}


# --------------------------------------------------------------------------------------------------
# Pure extractors: SDK model -> references. Missing or null intermediate fields yield nothing; a
# field of the wrong type raises (and fails the source).
# --------------------------------------------------------------------------------------------------


def _attr(obj: Any, *path: str) -> Any:
    """Follow attributes, stopping at the first None. A non-model in the way raises AttributeError."""
    for name in path:
        if obj is None:
            return None
        obj = getattr(obj, name)
    return obj


def _uri(value: Any, holder: str, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{holder}: {where} is not a URI")
    return value


def _items(value: Any, holder: str, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Iterable):
        raise ValueError(f"{holder}: {where} is not a list")
    return list(value)


def _holder(resource: Any) -> str:
    rid = getattr(resource, "id", None)
    if not isinstance(rid, str) or not rid:
        raise ValueError("a resource has no id")
    return rid


def _ref(kind: RefKind, holder: str, value: Any, where: str, **extra: Any) -> list[RawReference]:
    uri = _uri(value, holder, where)
    return [RawReference(kind=kind, holder=holder, uri=uri, **extra)] if uri else []


def _disk_refs(
    storage_profile: Any, holder: str, os_kind: RefKind, data_kind: RefKind, image_kind: RefKind
) -> list[RawReference]:
    if storage_profile is None:
        return []
    refs: list[RawReference] = []
    os_disk = _attr(storage_profile, "os_disk")
    refs += _ref(os_kind, holder, _attr(os_disk, "vhd", "uri"), "osDisk.vhd.uri")
    refs += _ref(image_kind, holder, _attr(os_disk, "image", "uri"), "osDisk.image.uri")
    for i, data_disk in enumerate(_items(_attr(storage_profile, "data_disks"), holder, "dataDisks")):
        refs += _ref(data_kind, holder, _attr(data_disk, "vhd", "uri"), f"dataDisks[{i}].vhd.uri")
        refs += _ref(image_kind, holder, _attr(data_disk, "image", "uri"), f"dataDisks[{i}].image.uri")
    return refs


def vm_references(vm: Any) -> list[RawReference]:
    """A VM's OS and data VHDs, and the user images they were made from."""
    holder = _holder(vm)
    return _disk_refs(
        _attr(vm, "storage_profile"), holder, RefKind.VM_OS_DISK, RefKind.VM_DATA_DISK, RefKind.VM_IMAGE
    )


def scale_set_references(scale_set: Any) -> list[RawReference]:
    """A scale set's OS-disk containers (each protects a whole container) and user image."""
    holder = _holder(scale_set)
    os_disk = _attr(scale_set, "virtual_machine_profile", "storage_profile", "os_disk")
    refs: list[RawReference] = []
    for i, container in enumerate(_items(_attr(os_disk, "vhd_containers"), holder, "osDisk.vhdContainers")):
        refs += _ref(RefKind.VMSS_CONTAINER, holder, container, f"osDisk.vhdContainers[{i}]")
    refs += _ref(RefKind.VMSS_IMAGE, holder, _attr(os_disk, "image", "uri"), "osDisk.image.uri")
    return refs


def scale_set_vm_references(instance: Any) -> list[RawReference]:
    """A scale-set instance's OS and data VHDs and its user image."""
    holder = _holder(instance)
    return _disk_refs(
        _attr(instance, "storage_profile"),
        holder,
        RefKind.VMSS_VM_DISK,
        RefKind.VMSS_VM_DISK,
        RefKind.VMSS_VM_IMAGE,
    )


def image_references(image: Any) -> list[RawReference]:
    """A managed image's source VHDs (it takes no lease, yet breaks if they go)."""
    holder = _holder(image)
    profile = _attr(image, "storage_profile")
    refs = _ref(RefKind.IMAGE_BLOB, holder, _attr(profile, "os_disk", "blob_uri"), "osDisk.blobUri")
    for i, data_disk in enumerate(_items(_attr(profile, "data_disks"), holder, "dataDisks")):
        refs += _ref(RefKind.IMAGE_BLOB, holder, _attr(data_disk, "blob_uri"), f"dataDisks[{i}].blobUri")
    return refs


def gallery_image_version_references(version: Any) -> list[RawReference]:
    """A gallery image version's source VHDs."""
    holder = _holder(version)
    profile = _attr(version, "storage_profile")
    refs = _ref(
        RefKind.GALLERY_SOURCE,
        holder,
        _attr(profile, "os_disk_image", "source", "uri"),
        "osDiskImage.source.uri",
    )
    for i, data_image in enumerate(_items(_attr(profile, "data_disk_images"), holder, "dataDiskImages")):
        refs += _ref(
            RefKind.GALLERY_SOURCE, holder, _attr(data_image, "source", "uri"), f"dataDiskImages[{i}].source.uri"
        )
    return refs


def _utc(value: Any, holder: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValueError(f"{holder}: timeCreated is not a timestamp")
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _import_references(resource: Any, import_kind: RefKind) -> list[RawReference]:
    holder = _holder(resource)
    creation = _attr(resource, "creation_data")
    refs = _ref(
        import_kind,
        holder,
        _attr(creation, "source_uri"),
        "creationData.sourceUri",
        time_created=_utc(_attr(resource, "time_created"), holder),
        provisioning_state=_attr(resource, "provisioning_state"),
    )
    # Confidential-VM state blobs: not VHDs, but kept as references for as long as the disk exists.
    refs += _ref(RefKind.DISK_SECURITY, holder, _attr(creation, "security_data_uri"), "creationData.securityDataUri")
    refs += _ref(
        RefKind.DISK_SECURITY, holder, _attr(creation, "security_metadata_uri"), "creationData.securityMetadataUri"
    )
    return refs


def disk_references(disk: Any) -> list[RawReference]:
    """A managed disk imported from a VHD (time-limited) and its security blobs."""
    return _import_references(disk, RefKind.DISK_IMPORT)


def snapshot_references(snapshot: Any) -> list[RawReference]:
    """A snapshot imported from a VHD (time-limited)."""
    return _import_references(snapshot, RefKind.SNAPSHOT_IMPORT)


# --------------------------------------------------------------------------------------------------
# Readers: one list call (all pages) per reference kind.
# --------------------------------------------------------------------------------------------------

_RG_RE = re.compile(r"^/subscriptions/[^/]+/resourceGroups/(?P<rg>[^/]+)/", re.IGNORECASE)


def resource_group_of(resource_id: str) -> str:
    m = _RG_RE.match(resource_id)
    if not m:
        raise ValueError(f"cannot find the resource group in {resource_id!r}")
    return m["rg"]


def _collect(items: Iterable[Any], extract: Callable[[Any], list[RawReference]]) -> list[RawReference]:
    refs: list[RawReference] = []
    for item in items:
        refs += extract(item)
    return refs


def read_virtual_machines(client: Any) -> list[RawReference]:
    return _collect(client.virtual_machines.list_all(**_list_kwargs()), vm_references)


def read_scale_sets(client: Any) -> tuple[list[RawReference], list[tuple[str, str]]]:
    """References held by scale-set models, and the (resource group, name) of every scale set."""
    refs: list[RawReference] = []
    scale_sets: list[tuple[str, str]] = []
    for scale_set in client.virtual_machine_scale_sets.list_all(**_list_kwargs()):
        refs += scale_set_references(scale_set)
        name = scale_set.name
        if not isinstance(name, str) or not name:
            raise ValueError(f"{scale_set.id}: scale set has no name")
        scale_sets.append((resource_group_of(scale_set.id), name))
    return refs, scale_sets


def read_scale_set_instances(client: Any, resource_group: str, scale_set: str) -> list[RawReference]:
    pages = client.virtual_machine_scale_set_vms.list(resource_group, scale_set, **_list_kwargs())
    return _collect(pages, scale_set_vm_references)


def read_images(client: Any) -> list[RawReference]:
    return _collect(client.images.list(**_list_kwargs()), image_references)


def read_disks(client: Any) -> list[RawReference]:
    return _collect(client.disks.list(**_list_kwargs()), disk_references)


def read_snapshots(client: Any) -> list[RawReference]:
    return _collect(client.snapshots.list(**_list_kwargs()), snapshot_references)


def read_galleries(client: Any) -> list[tuple[str, str]]:
    """(resource group, name) of every gallery."""
    found = []
    for gallery in client.galleries.list(**_list_kwargs()):
        found.append((resource_group_of(_holder(gallery)), gallery.name))
    return found


def read_gallery_images(client: Any, resource_group: str, gallery: str) -> list[str]:
    """Names of the image definitions in a gallery."""
    names = []
    for image in client.gallery_images.list_by_gallery(resource_group, gallery, **_list_kwargs()):
        _holder(image)
        names.append(image.name)
    return names


def read_gallery_image_versions(client: Any, resource_group: str, gallery: str, image: str) -> list[RawReference]:
    pages = client.gallery_image_versions.list_by_gallery_image(resource_group, gallery, image, **_list_kwargs())
    return _collect(pages, gallery_image_version_references)


# --------------------------------------------------------------------------------------------------
# The inventory
# --------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Task:
    source: str  # "<subscription>/<kind>"
    what: str  # for error messages: which scale set / gallery, or "" for a whole list
    run: Callable[[], tuple[list[RawReference], list["_Task"]]]


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


def arm_client_kwargs(
    arm_endpoint: str, connection_verify: str | bool | None, retry_total: int, timeout: float, retry_backoff: float = 0.8
) -> dict[str, Any]:
    """azure-core settings for an ARM management client (compute, storage discovery)."""
    kwargs: dict[str, Any] = {
        "base_url": arm_endpoint,
        "credential_scopes": [arm_endpoint + "/.default"],
        "retry_total": retry_total,
        "retry_backoff_factor": retry_backoff,
        "retry_backoff_max": max(retry_backoff * 16, 1.0),
        "connection_timeout": timeout,
        "read_timeout": timeout,
    }
    if connection_verify is not None:
        kwargs["connection_verify"] = connection_verify
    return kwargs


class ComputeInventory:
    """Reads every reference Azure Compute holds, in the given subscriptions. No I/O until :meth:`read`."""

    def __init__(
        self,
        credential: TokenCredential,
        arm_endpoint: str,
        subscriptions: list[str],
        *,
        connection_verify: str | bool | None = None,
        retry_total: int = 4,
        retry_backoff: float = 0.8,
        timeout: float = 60,
        max_workers: int = 8,
    ) -> None:
        self._credential = credential
        self._arm_endpoint = arm_endpoint.rstrip("/")
        self._subscriptions = list(subscriptions)
        self._connection_verify = connection_verify
        self._retry_total = retry_total
        self._retry_backoff = retry_backoff
        self._timeout = timeout
        self._max_workers = max(1, max_workers)
        self._clients: dict[str, Any] = {}
        self._clients_lock = threading.Lock()

    # -- clients ---------------------------------------------------------------------------------

    def _client(self, subscription: str) -> Any:
        with self._clients_lock:
            client = self._clients.get(subscription)
            if client is None:
                from azure.mgmt.compute import ComputeManagementClient

                kwargs = arm_client_kwargs(
                    self._arm_endpoint, self._connection_verify, self._retry_total, self._timeout, self._retry_backoff
                )
                client = ComputeManagementClient(self._credential, subscription, **kwargs)
                self._clients[subscription] = client
            return client

    def close(self) -> None:
        with self._clients_lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def __enter__(self) -> "ComputeInventory":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- tasks -----------------------------------------------------------------------------------

    def _subscription_tasks(self, sub: str) -> list[_Task]:
        def source(kind: str) -> str:
            return f"{sub}/{kind}"

        def leaf(reader: Callable[[Any], list[RawReference]]) -> Callable[[], tuple[list[RawReference], list[_Task]]]:
            return lambda: (reader(self._client(sub)), [])

        def scale_sets() -> tuple[list[RawReference], list[_Task]]:
            refs, found = read_scale_sets(self._client(sub))
            follow = [
                _Task(
                    source(SCALE_SET_VMS),
                    f"scale set {rg}/{name}",
                    lambda rg=rg, name=name: (read_scale_set_instances(self._client(sub), rg, name), []),
                )
                for rg, name in found
            ]
            return refs, follow

        def gallery_images(rg: str, gallery: str) -> tuple[list[RawReference], list[_Task]]:
            names = read_gallery_images(self._client(sub), rg, gallery)
            follow = [
                _Task(
                    source(GALLERY_IMAGE_VERSIONS),
                    f"gallery image {rg}/{gallery}/{image}",
                    lambda image=image: (
                        read_gallery_image_versions(self._client(sub), rg, gallery, image),
                        [],
                    ),
                )
                for image in names
            ]
            return [], follow

        def galleries() -> tuple[list[RawReference], list[_Task]]:
            found = read_galleries(self._client(sub))
            follow = [
                _Task(
                    source(GALLERY_IMAGES),
                    f"gallery {rg}/{gallery}",
                    lambda rg=rg, gallery=gallery: gallery_images(rg, gallery),
                )
                for rg, gallery in found
            ]
            return [], follow

        return [
            _Task(source(VIRTUAL_MACHINES), "", leaf(read_virtual_machines)),
            _Task(source(SCALE_SETS), "", scale_sets),
            _Task(source(IMAGES), "", leaf(read_images)),
            _Task(source(DISKS), "", leaf(read_disks)),
            _Task(source(SNAPSHOTS), "", leaf(read_snapshots)),
            _Task(source(GALLERIES), "", galleries),
        ]

    # -- the read --------------------------------------------------------------------------------

    def read(self) -> ReferenceRead:
        """Read every source of every subscription; never raises for a source's failure."""
        result = ReferenceRead()
        for sub in self._subscriptions:
            for kind in SOURCE_KINDS:
                result.counts[f"{sub}/{kind}"] = 0
        tasks = [task for sub in self._subscriptions for task in self._subscription_tasks(sub)]
        if not tasks:
            return result
        with ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="compute-read") as pool:
            pending: dict[Future[tuple[list[RawReference], list[_Task]]], _Task] = {
                pool.submit(task.run): task for task in tasks
            }
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        refs, follow = future.result()
                    except Exception as exc:  # noqa: BLE001 - every failure of a source is a SourceError
                        message = describe_error(exc)
                        if task.what:
                            message = f"{task.what}: {message}"
                        result.errors.append(SourceError(task.source, message[:_MAX_MESSAGE]))
                        continue
                    result.references.extend(refs)
                    result.counts[task.source] = result.counts.get(task.source, 0) + len(refs)
                    for follow_task in follow:
                        pending[pool.submit(follow_task.run)] = follow_task
        result.errors.sort(key=lambda e: (e.source, e.message))
        return result
