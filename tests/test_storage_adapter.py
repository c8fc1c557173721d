"""The storage adapter against a real Azurite: listing, re-reading, page ranges, conditional delete."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import BlobProperties, BlobServiceClient

from gc_daemon.azure.storage import (
    AccountStorage,
    DeleteOutcomeUnknown,
    DeleteRefused,
    StorageError,
    fold_snapshots,
)
from gc_daemon.domain import BlobKey, BlobSeen
from sandbox import seed
from sandbox.azurite import Azurite, free_port, random_key
from sandbox.faultproxy import FaultProxy

ACCOUNT = "gcacct1"

# Blob names that a URL or a listing could mangle.
AWKWARD_NAMES = ["with space.vhd", "100% full.vhd", "ünïcode-ディスク.vhd", "a/b/c.vhd"]


@pytest.fixture
def service(azurite: Azurite) -> BlobServiceClient:
    return azurite.service_client(ACCOUNT)


@pytest.fixture
def storage(azurite: Azurite) -> AccountStorage:
    return AccountStorage(ACCOUNT, azurite.blob_endpoint(ACCOUNT), azurite.key(ACCOUNT), retry_total=0)


def key(container: str, blob: str) -> BlobKey:
    return BlobKey(ACCOUNT, container, blob)


def listed(storage: AccountStorage, **kwargs: object) -> dict[BlobKey, BlobSeen]:
    seen = list(storage.list_blobs(**kwargs))
    by_key = {b.key: b for b in seen}
    assert len(by_key) == len(seen), "a blob was listed more than once"
    return by_key


@pytest.fixture
def estate(azurite: Azurite, service: BlobServiceClient) -> set[BlobKey]:
    """A bit of everything, in two containers of gcacct1 (and a decoy in gcacct2)."""
    seed.page_blob(service, "vhds", "plain.vhd", size=2048)
    seed.page_blob(service, "vhds", "leased.vhd", lease=True)
    seed.page_blob(service, "vhds", "keep-meta.vhd", metadata={"VhdGc_Keep": "yes"})
    seed.page_blob(service, "vhds", "keep-tag.vhd", tags={"vhdgc-keep": "true"})
    seed.page_blob(service, "vhds", "owned.vhd", metadata={"microsoftazurecompute_VMName": "vm-7"})
    seed.page_blob(service, "vhds", "snap1.vhd", snapshots=1)
    seed.page_blob(service, "vhds", "snap3.vhd", snapshots=3)
    seed.page_blob(service, "vhds", "snap3-leased.vhd", snapshots=3, lease=True)
    seed.block_blob(service, "vhds", "upload.vhd", data=b"x" * 700)
    for name in AWKWARD_NAMES:
        seed.page_blob(service, "odd-names", name, size=512)
    with azurite.service_client("gcacct2") as other:
        seed.page_blob(other, "vhds", "elsewhere.vhd")
    return {key(c, b) for c, b in seed.names(service)}


def test_listing_gives_every_base_blob_once_with_its_fields(
    storage: AccountStorage, estate: set[BlobKey]
) -> None:
    blobs = listed(storage)
    assert set(blobs) == estate
    assert len(estate) == 9 + len(AWKWARD_NAMES)

    plain = blobs[key("vhds", "plain.vhd")]
    assert plain.blob_type == "PageBlob" and plain.is_vhd
    assert plain.size == 2048
    assert plain.etag.startswith('"') and plain.etag.endswith('"')
    assert plain.last_modified.tzinfo is not None
    assert plain.last_modified.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - plain.last_modified) < timedelta(minutes=5)
    assert (plain.lease_state, plain.lease_status) == ("available", "unlocked")
    assert not plain.leased
    assert plain.snapshot_count == 0
    assert not plain.keep_metadata and not plain.keep_tag and plain.owner_hint is None
    assert plain.url == f"{storage.blob_endpoint}/vhds/plain.vhd"

    leased = blobs[key("vhds", "leased.vhd")]
    assert (leased.lease_state, leased.lease_status) == ("leased", "locked")
    assert leased.leased

    assert blobs[key("vhds", "keep-meta.vhd")].keep_metadata
    assert not blobs[key("vhds", "keep-meta.vhd")].keep_tag
    assert blobs[key("vhds", "keep-tag.vhd")].keep_tag
    assert not blobs[key("vhds", "keep-tag.vhd")].keep_metadata
    assert blobs[key("vhds", "owned.vhd")].owner_hint == "vm-7"

    assert blobs[key("vhds", "snap1.vhd")].snapshot_count == 1
    assert blobs[key("vhds", "snap3.vhd")].snapshot_count == 3
    assert blobs[key("vhds", "snap3-leased.vhd")].snapshot_count == 3
    assert blobs[key("vhds", "snap3-leased.vhd")].leased

    upload = blobs[key("vhds", "upload.vhd")]
    assert upload.blob_type == "BlockBlob" and not upload.is_vhd
    assert upload.size == 700
    assert upload.tier == "Hot"


def test_listing_keeps_awkward_names_exact_and_quotes_their_urls(
    storage: AccountStorage, estate: set[BlobKey]
) -> None:
    blobs = listed(storage)
    for name in AWKWARD_NAMES:
        assert key("odd-names", name) in blobs
    base = f"{storage.blob_endpoint}/odd-names/"
    assert blobs[key("odd-names", "with space.vhd")].url == base + "with%20space.vhd"
    assert blobs[key("odd-names", "100% full.vhd")].url == base + "100%25%20full.vhd"
    assert blobs[key("odd-names", "a/b/c.vhd")].url == base + "a/b/c.vhd"
    assert blobs[key("odd-names", "ünïcode-ディスク.vhd")].url == (
        base + "%C3%BCn%C3%AFcode-%E3%83%87%E3%82%A3%E3%82%B9%E3%82%AF.vhd"
    )


def test_listing_pages_through_containers_and_blobs(
    azurite: Azurite, service: BlobServiceClient
) -> None:
    # Five containers of seven blobs with results_per_page=2: both listings take several pages.
    # No snapshots here: Azurite 3.37's continuation marker is the bare blob name, so a page that
    # ends inside one name's snapshots loses the rest of that name (Azure's markers are opaque and
    # do not; see Azure/azure-sdk-for-net#29423). Snapshot folding is covered by the other tests.
    expected = set()
    for c in range(5):
        for b in range(7):
            seed.page_blob(service, f"cont{c}", f"disk{b:02d}.vhd", size=512)
            expected.add(key(f"cont{c}", f"disk{b:02d}.vhd"))
    storage = AccountStorage(
        ACCOUNT, azurite.blob_endpoint(ACCOUNT), azurite.key(ACCOUNT), results_per_page=2
    )
    assert set(listed(storage)) == expected
    # The same through the per-call parameter, with another page size.
    storage = AccountStorage(ACCOUNT, azurite.blob_endpoint(ACCOUNT), azurite.key(ACCOUNT))
    assert set(listed(storage, results_per_page=3)) == expected


def test_listing_an_empty_account_gives_nothing(storage: AccountStorage) -> None:
    assert list(storage.list_blobs()) == []


def test_read_blob_equals_the_listing(storage: AccountStorage, estate: set[BlobKey]) -> None:
    blobs = listed(storage)
    for k, seen in blobs.items():
        assert storage.read_blob(k) == seen, k


def test_read_blob_of_a_missing_blob_is_none(storage: AccountStorage, estate: set[BlobKey]) -> None:
    assert storage.read_blob(key("vhds", "never-was.vhd")) is None
    assert storage.read_blob(key("no-such-container", "plain.vhd")) is None


def test_read_blob_sees_a_change_the_listing_did_not(
    storage: AccountStorage, service: BlobServiceClient
) -> None:
    seed.page_blob(service, "vhds", "d.vhd")
    (before,) = storage.list_blobs()
    service.get_blob_client("vhds", "d.vhd").set_blob_tags({"vhdgc-keep": "1"})
    service.get_blob_client("vhds", "d.vhd").create_snapshot()
    after = storage.read_blob(before.key)
    assert after is not None
    assert after.keep_tag and after.snapshot_count == 1


def test_billed_bytes_sums_written_ranges(storage: AccountStorage, service: BlobServiceClient) -> None:
    seed.page_blob(service, "vhds", "two-ranges.vhd", size=64 * 1024, written=[(0, 1024), (8192, 4096)])
    seed.page_blob(service, "vhds", "empty.vhd", size=64 * 1024)
    assert storage.billed_bytes(key("vhds", "two-ranges.vhd")) == 1024 + 4096
    assert storage.billed_bytes(key("vhds", "empty.vhd")) == 0


def test_delete_with_the_listed_etag_deletes(storage: AccountStorage, service: BlobServiceClient) -> None:
    seed.page_blob(service, "vhds", "orphan.vhd")
    seed.page_blob(service, "vhds", "neighbour.vhd")
    seen = storage.read_blob(key("vhds", "orphan.vhd"))
    assert seen is not None
    (listed_orphan,) = [b for b in storage.list_blobs() if b.key.blob == "orphan.vhd"]
    storage.delete_if_match(listed_orphan.key, listed_orphan.etag)
    assert not seed.exists(service, "vhds", "orphan.vhd")
    assert seed.exists(service, "vhds", "neighbour.vhd")


def test_delete_an_awkward_name(storage: AccountStorage, service: BlobServiceClient) -> None:
    for name in AWKWARD_NAMES:
        seed.page_blob(service, "odd-names", name, size=512)
    for seen in list(storage.list_blobs()):
        storage.delete_if_match(seen.key, seen.etag)
    assert seed.names(service) == set()


def test_delete_with_a_stale_etag_is_refused(storage: AccountStorage, service: BlobServiceClient) -> None:
    seed.page_blob(service, "vhds", "changed.vhd")
    (seen,) = storage.list_blobs()
    service.get_blob_client("vhds", "changed.vhd").set_blob_metadata({"touched": "1"})
    with pytest.raises(DeleteRefused) as refused:
        storage.delete_if_match(seen.key, seen.etag)
    assert refused.value.code == "ConditionNotMet"
    assert seed.exists(service, "vhds", "changed.vhd")


def test_delete_of_a_leased_blob_is_refused(storage: AccountStorage, service: BlobServiceClient) -> None:
    seed.page_blob(service, "vhds", "attached.vhd", lease=True)
    (seen,) = storage.list_blobs()
    with pytest.raises(DeleteRefused) as refused:
        storage.delete_if_match(seen.key, seen.etag)
    assert refused.value.code == "LeaseIdMissing"
    assert seed.exists(service, "vhds", "attached.vhd")


def test_delete_of_a_blob_with_snapshots_is_refused(
    storage: AccountStorage, service: BlobServiceClient
) -> None:
    seed.page_blob(service, "vhds", "backed-up.vhd", snapshots=2)
    (seen,) = storage.list_blobs()
    with pytest.raises(DeleteRefused) as refused:
        storage.delete_if_match(seen.key, seen.etag)
    assert refused.value.code == "SnapshotsPresent"
    assert seed.exists(service, "vhds", "backed-up.vhd")
    assert len(seed.snapshots(service, "vhds", "backed-up.vhd")) == 2


def test_delete_of_a_missing_blob_is_refused(storage: AccountStorage, service: BlobServiceClient) -> None:
    seed.page_blob(service, "vhds", "gone.vhd")
    (seen,) = storage.list_blobs()
    service.get_blob_client("vhds", "gone.vhd").delete_blob()
    with pytest.raises(DeleteRefused) as refused:
        storage.delete_if_match(seen.key, seen.etag)
    # Azure answers 404 BlobNotFound; Azurite 3.37 checks If-Match first and answers 412.
    assert refused.value.code in ("BlobNotFound", "ConditionNotMet")
    assert not seed.exists(service, "vhds", "gone.vhd")


# -- deletes whose outcome is unknown (through the fault proxy) --------------------------------


@pytest.fixture
def proxy(azurite: Azurite):
    with FaultProxy(("127.0.0.1", azurite.port)) as p:
        yield p


def proxied(azurite: Azurite, proxy: FaultProxy, retry_total: int) -> AccountStorage:
    # The SDK client gets retry_total as always; the delete takes its retries into its own hands.
    storage = AccountStorage(ACCOUNT, proxy.endpoint(ACCOUNT), azurite.key(ACCOUNT), retry_total=retry_total)
    storage.delete_backoff = 0
    return storage


def deletes(proxy: FaultProxy) -> list[tuple[str, int | None, int | None]]:
    return [(e.action, e.upstream_status, e.client_status) for e in proxy.requests("DELETE")]


def test_a_refusal_after_a_lost_reply_names_the_attempt_that_may_have_deleted(azurite, proxy, service) -> None:
    seed.page_blob(service, "vhds", "lost.vhd")
    storage = proxied(azurite, proxy, retry_total=3)
    seen = storage.read_blob(key("vhds", "lost.vhd"))
    proxy.drop_reply("DELETE")
    with pytest.raises(DeleteRefused) as refused:
        storage.delete_if_match(seen.key, seen.etag)
    assert refused.value.code == "ConditionNotMet"  # Azurite's answer for a gone blob (Azure: BlobNotFound)
    assert len(refused.value.after) == 1 and refused.value.after[0].startswith("ServiceResponseError: ")
    assert deletes(proxy) == [("drop-reply", 202, None), ("forward", 412, 412)]  # the SDK retried nothing
    assert not seed.exists(service, "vhds", "lost.vhd")


def test_a_refusal_on_a_first_attempt_names_no_earlier_attempt(azurite, proxy, service) -> None:
    seed.page_blob(service, "vhds", "changed.vhd")
    storage = proxied(azurite, proxy, retry_total=3)
    seen = storage.read_blob(key("vhds", "changed.vhd"))
    service.get_blob_client("vhds", "changed.vhd").set_blob_metadata({"touched": "1"})
    with pytest.raises(DeleteRefused) as refused:
        storage.delete_if_match(seen.key, seen.etag)
    assert (refused.value.code, refused.value.after) == ("ConditionNotMet", ())
    assert deletes(proxy) == [("forward", 412, 412)]


def test_a_5xx_that_was_not_executed_is_retried_and_the_delete_goes_through(azurite, proxy, service) -> None:
    seed.page_blob(service, "vhds", "busy.vhd")
    storage = proxied(azurite, proxy, retry_total=3)
    seen = storage.read_blob(key("vhds", "busy.vhd"))
    proxy.respond(503, "DELETE", times=2)
    storage.delete_if_match(seen.key, seen.etag)
    assert deletes(proxy) == [("respond", None, 503), ("respond", None, 503), ("forward", 202, 202)]
    assert not seed.exists(service, "vhds", "busy.vhd")


def test_a_delete_that_never_gets_an_answer_has_an_unknown_outcome(azurite, proxy, service) -> None:
    seed.page_blob(service, "vhds", "silent.vhd")
    storage = proxied(azurite, proxy, retry_total=1)
    seen = storage.read_blob(key("vhds", "silent.vhd"))
    proxy.drop_reply("DELETE", times=None)
    with pytest.raises(DeleteOutcomeUnknown) as unknown:
        storage.delete_if_match(seen.key, seen.etag)
    assert len(unknown.value.attempts) == 2 and isinstance(unknown.value, StorageError)
    assert deletes(proxy) == [("drop-reply", 202, None), ("drop-reply", 412, None)]


def test_a_definite_error_is_not_retried_unless_an_earlier_attempt_may_have_deleted(azurite, proxy, service) -> None:
    seed.page_blob(service, "vhds", "denied.vhd")
    storage = proxied(azurite, proxy, retry_total=3)
    seen = storage.read_blob(key("vhds", "denied.vhd"))
    proxy.respond(403, "DELETE", code="AuthorizationPermissionMismatch")
    with pytest.raises(StorageError) as failed:
        storage.delete_if_match(seen.key, seen.etag)
    assert not isinstance(failed.value, DeleteOutcomeUnknown) and failed.value.code == "AuthorizationPermissionMismatch"
    assert deletes(proxy) == [("respond", None, 403)]
    proxy.clear()
    proxy.replace_reply(500, "DELETE")  # executed, reported failed; then the service says 403
    proxy.respond(403, "DELETE", code="AuthorizationPermissionMismatch")
    with pytest.raises(DeleteOutcomeUnknown) as unknown:
        storage.delete_if_match(seen.key, seen.etag)
    assert unknown.value.attempts[-1] == "403 AuthorizationPermissionMismatch"
    assert not seed.exists(service, "vhds", "denied.vhd")


def test_listing_an_account_whose_endpoint_is_down_raises() -> None:
    endpoint = f"http://127.0.0.1:{free_port()}/{ACCOUNT}"
    storage = AccountStorage(ACCOUNT, endpoint, random_key(), retry_total=0, connection_timeout=2)
    with pytest.raises(StorageError):
        list(storage.list_blobs())


def test_listing_with_a_wrong_key_raises(azurite: Azurite, service: BlobServiceClient) -> None:
    seed.page_blob(service, "vhds", "x.vhd")
    storage = AccountStorage(ACCOUNT, azurite.blob_endpoint(ACCOUNT), random_key(), retry_total=0)
    with pytest.raises(StorageError) as failed:
        list(storage.list_blobs())
    assert failed.value.code  # the service's code (AuthorizationFailure on Azurite)


def test_constructing_does_no_io() -> None:
    # Port 9 (discard) on loopback: nothing listens, and nothing is tried until a call.
    AccountStorage(ACCOUNT, "http://127.0.0.1:9/gcacct1", random_key())


# -- the fold, on hand-made listing items (no I/O) -----------------------------------------------


def item(name: str, snapshot: str | None = None) -> BlobProperties:
    return BlobProperties(name=name, **{"x-ms-snapshot": snapshot})


def folded(*items: BlobProperties) -> list[tuple[str, int]]:
    return [(base.name, count) for base, count in fold_snapshots(iter(items))]


def test_fold_counts_snapshots_before_or_after_the_base() -> None:
    assert folded(
        item("a"),
        item("a", "2024-01-01T00:00:00Z"),
        item("b", "2024-01-01T00:00:00Z"),
        item("b", "2024-01-02T00:00:00Z"),
        item("b"),
        item("c"),
    ) == [("a", 1), ("b", 2), ("c", 0)]


def test_fold_drops_snapshots_whose_base_is_gone() -> None:
    assert folded(
        item("a", "2024-01-01T00:00:00Z"),
        item("b"),
        item("c", "2024-01-01T00:00:00Z"),
        item("c", "2024-01-02T00:00:00Z"),
    ) == [("b", 0)]
    assert folded() == []
