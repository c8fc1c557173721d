"""Build the blobs of a test or demo estate in Azurite with the real SDK, and read ground truth back.

Each function makes exactly what a scenario names and nothing more; containers are created on
demand. Page blob sizes and written ranges are in 512-byte pages, as Azure requires.
"""

from __future__ import annotations

from collections.abc import Iterable

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient, ContainerClient

PAGE = 512
MAX_PAGE_WRITE = 4 * 1024 * 1024  # the service's limit for one Put Page


def container(service: BlobServiceClient, name: str) -> ContainerClient:
    """The container, created if it does not exist yet."""
    client = service.get_container_client(name)
    try:
        client.create_container()
    except ResourceExistsError:
        pass
    return client


def _check_pages(what: str, value: int) -> None:
    if value < 0 or value % PAGE:
        raise ValueError(f"{what} must be a non-negative multiple of {PAGE}, got {value}")


def page_blob(
    service: BlobServiceClient,
    container_name: str,
    name: str,
    size: int = 1024 * 1024,
    written: Iterable[tuple[int, int]] = (),
    metadata: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    lease: bool = False,
    snapshots: int = 0,
) -> str | None:
    """A page blob of ``size`` bytes with data in the ``written`` (offset, length) ranges.

    ``snapshots`` snapshots are taken after the data is written; ``lease`` then takes an infinite
    lease, as an attached VM disk holds. Returns the lease id, or None without a lease.
    """
    _check_pages("size", size)
    blob = container(service, container_name).get_blob_client(name)
    blob.create_page_blob(size, metadata=metadata, tags=tags)
    for offset, length in written:
        _check_pages("written offset", offset)
        _check_pages("written length", length)
        if offset + length > size:
            raise ValueError(f"written range ({offset}, {length}) beyond size {size}")
        pos = offset
        while pos < offset + length:
            chunk = min(MAX_PAGE_WRITE, offset + length - pos)
            blob.upload_page(_pattern(pos, chunk), offset=pos, length=chunk)
            pos += chunk
    for _ in range(snapshots):
        blob.create_snapshot()
    if lease:
        return blob.acquire_lease(lease_duration=-1).id
    return None


def _pattern(offset: int, length: int) -> bytes:
    # Non-zero bytes: a page of zeros is still a written page, but data that looks like data is
    # easier to recognise when a demo shows it.
    return bytes((offset // PAGE + i) % 251 + 1 for i in range(PAGE)) * (length // PAGE)


def block_blob(
    service: BlobServiceClient,
    container_name: str,
    name: str,
    data: bytes = b"not a disk",
    metadata: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """A block blob (a ``.vhd`` uploaded this way is a failed upload Azure cannot boot)."""
    blob = container(service, container_name).get_blob_client(name)
    blob.upload_blob(data, overwrite=True, metadata=metadata, tags=tags)


def break_lease(service: BlobServiceClient, container_name: str, name: str) -> None:
    """End a blob's lease at once (what happens some minutes after its VM is deleted)."""
    BlobLeaseClient(service.get_blob_client(container_name, name)).break_lease(lease_break_period=0)


def wipe(service: BlobServiceClient) -> None:
    """Delete every container of the account (leased blobs included)."""
    for item in service.list_containers():
        try:
            service.delete_container(item.name)
        except ResourceNotFoundError:
            pass


# -- ground truth -------------------------------------------------------------------------------


def exists(service: BlobServiceClient, container_name: str, name: str) -> bool:
    return service.get_blob_client(container_name, name).exists()


def etag(service: BlobServiceClient, container_name: str, name: str) -> str:
    """The blob's ETag as the service gives it in headers (quotes included)."""
    return service.get_blob_client(container_name, name).get_blob_properties().etag


def snapshots(service: BlobServiceClient, container_name: str, name: str) -> list[str]:
    """The snapshot timestamps of one blob."""
    client = service.get_container_client(container_name)
    return [
        item.snapshot
        for item in client.list_blobs(name_starts_with=name, include=["snapshots"])
        if item.name == name and item.snapshot
    ]


def names(service: BlobServiceClient) -> set[tuple[str, str]]:
    """Every base blob of the account as (container, blob)."""
    return {
        (c.name, b.name)
        for c in service.list_containers()
        for b in service.get_container_client(c.name).list_blobs()
    }
