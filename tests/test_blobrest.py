"""The lean read path (gc_daemon.azure.blobrest) against the SDK's, and against answers no service
should give.

The lean reader replaces the SDK's deserializer for listings and page ranges, so it is held to the
SDK field by field: the same Azurite estate read both ways gives the same BlobSeen list, in the same
order, and the same billed bytes. Answers that are not what the service sends (a canned HTTP server
gives them, over a real socket) fail the read with a code, never a shorter listing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gc_daemon.azure.blobrest import MALFORMED, BlobRest, ReadError, Urllib3Transport
from gc_daemon.azure.storage import AccountStorage, StorageError
from gc_daemon.domain import BlobKey, BlobSeen
from sandbox import seed
from sandbox.azurite import Azurite, random_key
from tests.support.canned import Canned, blob_xml, blobs, containers

ACCOUNT = "gcacct1"
PAGE = 512


def storages(azurite: Azurite, **kwargs: object) -> tuple[AccountStorage, AccountStorage]:
    endpoint, key = azurite.blob_endpoint(ACCOUNT), azurite.key(ACCOUNT)
    return (
        AccountStorage(ACCOUNT, endpoint, key, retry_total=0, reader="lean", **kwargs),
        AccountStorage(ACCOUNT, endpoint, key, retry_total=0, reader="sdk", **kwargs),
    )


def both_listings(azurite: Azurite, per_page: int | None = None) -> tuple[list[BlobSeen], list[BlobSeen]]:
    lean, sdk = storages(azurite)
    with lean, sdk:
        return list(lean.list_blobs(per_page)), list(sdk.list_blobs(per_page))


# --------------------------------------------------------------------------------------------------
# Against the SDK, on Azurite
# --------------------------------------------------------------------------------------------------


def test_lean_listing_equals_the_sdk_listing_on_a_varied_estate(azurite: Azurite) -> None:
    with azurite.service_client(ACCOUNT) as service:
        seed.page_blob(service, "vhds", "plain.vhd", size=2048, written=[(0, 512)])
        seed.page_blob(service, "vhds", "leased.vhd", lease=True)
        seed.page_blob(service, "vhds", "keep-meta.vhd", metadata={"VhdGc_Keep": "yes", "other": ""})
        seed.page_blob(service, "vhds", "keep-tag.vhd", tags={"vhdgc-keep": "true", "team": "a b"})
        seed.page_blob(service, "vhds", "owned.vhd", metadata={"microsoftazurecompute_VMName": "vm-7"})
        seed.page_blob(service, "vhds", "snap3.vhd", snapshots=3)
        seed.page_blob(service, "vhds", "snap1-leased.vhd", snapshots=1, lease=True)
        seed.block_blob(service, "vhds", "upload.vhd", data=b"x" * 700)
        seed.block_blob(service, "vhds", "notes.txt", data=b"hello")
        for name in ["with space.vhd", "100% full.vhd", "ünïcode-ディスク.vhd", "a/b/c.vhd", "q?x=1&y#z.vhd"]:
            seed.page_blob(service, "odd-names", name, size=PAGE)
        seed.break_lease(service, "vhds", "leased.vhd")  # lease state "broken", status "unlocked"
        seed.container(service, "empty")
    lean, sdk = both_listings(azurite)
    assert len(lean) == 14
    assert lean == sdk
    by_name = {b.key.blob: b for b in lean}
    assert by_name["snap3.vhd"].snapshot_count == 3
    assert by_name["keep-tag.vhd"].keep_tag and by_name["keep-meta.vhd"].keep_metadata
    assert by_name["owned.vhd"].owner_hint == "vm-7"
    assert by_name["snap1-leased.vhd"].lease_state == "leased"
    assert by_name["leased.vhd"].lease_state == "broken"
    assert by_name["upload.vhd"].blob_type == "BlockBlob"


def test_lean_listing_follows_every_page_of_containers_and_blobs(azurite: Azurite) -> None:
    with azurite.service_client(ACCOUNT) as service:
        for c in range(3):
            for b in range(5):
                seed.page_blob(service, f"cx{c}", f"disk-{b}.vhd", size=PAGE)
    lean, sdk = both_listings(azurite, per_page=2)  # 2 containers, then 1; blobs 2, 2, 1
    assert [(b.key.container, b.key.blob) for b in lean] == [
        (f"cx{c}", f"disk-{b}.vhd") for c in range(3) for b in range(5)
    ]
    assert lean == sdk


@pytest.mark.parametrize(
    "written, cleared, expected",
    [
        ([], [], 0),
        ([(0, PAGE)], [], PAGE),
        ([(0, 4 * PAGE), (10 * PAGE, PAGE)], [], 5 * PAGE),
        ([(0, 8 * PAGE)], [(2 * PAGE, 2 * PAGE)], 6 * PAGE),  # a written run with a hole cleared
        ([(0, 4 * PAGE)], [(0, 4 * PAGE)], 0),
    ],
)
def test_lean_page_bytes_equal_the_sdk_and_the_pages_written(
    azurite: Azurite, written: list[tuple[int, int]], cleared: list[tuple[int, int]], expected: int
) -> None:
    with azurite.service_client(ACCOUNT) as service:
        seed.page_blob(service, "vhds", "d.vhd", size=16 * PAGE, written=written)
        for offset, length in cleared:
            service.get_blob_client("vhds", "d.vhd").clear_page(offset=offset, length=length)
    lean, sdk = storages(azurite)
    key = BlobKey(ACCOUNT, "vhds", "d.vhd")
    with lean, sdk:
        assert lean.billed_bytes(key) == sdk.billed_bytes(key) == expected


def test_lean_page_bytes_of_a_missing_blob_is_an_error_with_the_service_code(azurite: Azurite) -> None:
    with azurite.service_client(ACCOUNT) as service:
        seed.container(service, "vhds")
    lean, _ = storages(azurite)
    with lean, pytest.raises(StorageError) as err:
        lean.billed_bytes(BlobKey(ACCOUNT, "vhds", "gone.vhd"))
    assert err.value.code == "BlobNotFound"


def test_lean_listing_with_a_wrong_key_fails_with_the_service_code(azurite: Azurite) -> None:
    with azurite.service_client(ACCOUNT) as service:
        seed.page_blob(service, "vhds", "d.vhd", size=PAGE)
    storage = AccountStorage(ACCOUNT, azurite.blob_endpoint(ACCOUNT), random_key(), retry_total=0)
    with storage, pytest.raises(StorageError) as err:
        list(storage.list_blobs())
    assert err.value.code == "AuthorizationFailure"


_NAME_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\\\ufffe\uffff"
)
_META_KEY = st.from_regex(r"[a-zA-Z_][a-zA-Z0-9_]{0,12}", fullmatch=True)
_TAG_TEXT = st.from_regex(r"[a-zA-Z0-9 +\-.:=_/]{1,12}", fullmatch=True)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    names=st.lists(
        st.text(_NAME_CHARS, min_size=1, max_size=30).filter(
            lambda n: not n.endswith((".", "/")) and "//" not in n and not n.startswith("/")
        ),
        min_size=1, max_size=4, unique=True,
    ),
    metadata=st.dictionaries(_META_KEY, st.text(st.characters(codec="ascii", min_codepoint=32, max_codepoint=126), max_size=10), max_size=3),
    tags=st.dictionaries(_TAG_TEXT.filter(lambda t: t.strip() == t), _TAG_TEXT, max_size=3),
)
def test_lean_listing_equals_the_sdk_listing_for_any_names_metadata_and_tags(
    azurite: Azurite, names: list[str], metadata: dict[str, str], tags: dict[str, str]
) -> None:
    with azurite.service_client(ACCOUNT) as service:
        seed.wipe(service)
        for name in names:
            seed.page_blob(service, "vhds", name, size=PAGE, metadata=metadata, tags=tags or None)
    lean, sdk = both_listings(azurite)
    assert sorted(b.key.blob for b in lean) == sorted(names)
    assert lean == sdk


# --------------------------------------------------------------------------------------------------
# Answers no service should give, from a canned server on a real socket
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def canned() -> Iterator[Canned]:
    server = Canned()
    yield server
    server.close()


def rest(canned: Canned, retry_total: int = 0, transport: object = None) -> BlobRest:
    return BlobRest(canned.endpoint, None, "2025-01-05", transport or Urllib3Transport(), retry_total=retry_total)


def test_canned_listing_is_read_field_by_field(canned: Canned) -> None:
    canned.ok(blobs(
        blob_xml("a.vhd", props={"AccessTier": "P10", "TagCount": "1"},
                 extra="<Metadata><VhdGc_Keep>1</VhdGc_Keep></Metadata>"
                       "<Tags><TagSet><Tag><Key>vhdgc-keep</Key><Value>x</Value></Tag></TagSet></Tags>"),
        blob_xml("a%EF%BF%BEb.vhd", name_attrs=' Encoded="true"'),
    ))
    a, b = list(rest(canned).list_blobs("vhds"))
    assert (a.name, a.tier, a.tag_count, a.metadata, a.tags) == ("a.vhd", "P10", 1, {"VhdGc_Keep": "1"}, {"vhdgc-keep": "x"})
    assert (a.size, a.etag, a.blob_type, a.lease_state, a.snapshot) == (1048576, "0x8DD0000000000001", "PageBlob", "available", None)
    assert a.last_modified.isoformat() == "2026-11-25T10:00:00+00:00"
    assert b.name == "a\ufffeb.vhd" and b.metadata == {} and b.tags is None


def test_canned_listing_follows_next_marker_and_sends_it_encoded(canned: Canned) -> None:
    canned.ok(containers("vhds", next_marker="c/1 2"))
    canned.ok(containers("more"))
    canned.ok(blobs(blob_xml("a.vhd"), next_marker="b/2 +"))
    canned.ok(blobs(blob_xml("b.vhd")))
    reader = rest(canned)
    assert list(reader.list_containers(per_page=1)) == ["vhds", "more"]
    assert [b.name for b in reader.list_blobs("vhds")] == ["a.vhd", "b.vhd"]
    queries = [parse_qs(urlsplit(p).query) for p in canned.requests]
    assert queries[0] == {"comp": ["list"], "maxresults": ["1"]}
    assert queries[1]["marker"] == ["c/1 2"]
    assert queries[2]["include"] == ["metadata,snapshots,tags"] and "marker" not in queries[2]
    assert queries[3]["marker"] == ["b/2 +"]


@pytest.mark.parametrize(
    "body",
    [
        "this is not XML",
        "<EnumerationResults><Blobs>" + blob_xml(),  # cut off
        "<Error><Code>Nope</Code></Error>",
        "<EnumerationResults><NextMarker/></EnumerationResults>",  # no <Blobs>
        blobs("<Blob><Name>d.vhd</Name></Blob>"),  # no <Properties>
        blobs("<Blob><Properties/></Blob>"),  # no name
        blobs(blob_xml(props={"Etag": None})),  # type: ignore[dict-item]
        blobs(blob_xml(props={"BlobType": ""})),
        blobs(blob_xml(props={"Content-Length": "lots"})),
        blobs(blob_xml(props={"Last-Modified": "yesterday"})),
        blobs("<BlobPrefix><Name>a/</Name></BlobPrefix>"),
    ],
)
def test_canned_malformed_listing_fails_the_read(canned: Canned, body: str) -> None:
    canned.ok(body)
    with pytest.raises(ReadError) as err:
        list(rest(canned).list_blobs("vhds"))
    assert err.value.code == MALFORMED


def test_a_malformed_second_page_fails_the_whole_listing_through_the_adapter(canned: Canned) -> None:
    canned.ok(containers("vhds"))
    canned.ok(blobs(blob_xml("a.vhd"), next_marker="m"))
    canned.ok(blobs(blob_xml("b.vhd", props={"Content-Length": "-x"})))
    storage = AccountStorage(ACCOUNT, canned.endpoint, random_key(), retry_total=0)
    got: list[BlobSeen] = []
    with storage, pytest.raises(StorageError) as err:
        for blob in storage.list_blobs():
            got.append(blob)
    assert err.value.code == MALFORMED
    assert len(canned.requests) == 3


def test_canned_error_status_gives_the_service_code_and_message(canned: Canned) -> None:
    canned.answers.append((403, {"x-ms-error-code": "AuthorizationPermissionMismatch"},
                           b"<Error><Code>Other</Code><Message>not allowed\nRequestId:1</Message></Error>"))
    canned.answers.append((500, {}, b"<Error><Code>InternalError</Code><Message>oops</Message></Error>"))
    canned.answers.append((502, {}, b"bad gateway"))
    reader = rest(canned)
    for code, message in [("AuthorizationPermissionMismatch", "not allowed"), ("InternalError", "oops"),
                          ("HTTP 502", "status 502")]:
        with pytest.raises(ReadError) as err:
            list(reader.list_containers())
        assert (err.value.code, err.value.message) == (code, message)


def test_canned_busy_answer_is_retried_after_retry_after(canned: Canned) -> None:
    canned.answers.append((503, {"Retry-After": "0"}, b"<Error><Code>ServerBusy</Code></Error>"))
    canned.ok(containers("vhds"))
    assert list(rest(canned, retry_total=1).list_containers()) == ["vhds"]
    assert len(canned.requests) == 2


def test_canned_page_ranges_sum_written_ranges_over_every_page(canned: Canned) -> None:
    canned.ok("<PageList><PageRange><Start>0</Start><End>511</End></PageRange>"
              "<ClearRange><Start>512</Start><End>1023</End></ClearRange>"
              "<NextMarker>p 2</NextMarker></PageList>")
    canned.ok("<PageList><PageRange><Start>4096</Start><End>8191</End></PageRange><NextMarker/></PageList>")
    assert rest(canned).page_bytes("vhds", "a b.vhd") == 512 + 4096
    first, second = (urlsplit(p) for p in canned.requests)
    assert first.path == f"/{ACCOUNT}/vhds/a%20b.vhd" and parse_qs(first.query) == {"comp": ["pagelist"]}
    assert parse_qs(second.query) == {"comp": ["pagelist"], "marker": ["p 2"]}


@pytest.mark.parametrize(
    "body",
    [
        "<PageList><PageRange><Start>0</Start></PageRange></PageList>",
        "<PageList><PageRange><Start>1024</Start><End>511</End></PageRange></PageList>",
        "<PageList><PageRange><Start>x</Start><End>511</End></PageRange></PageList>",
        "<EnumerationResults/>",
        "<PageList>",
    ],
)
def test_canned_malformed_page_ranges_fail_the_measurement(canned: Canned, body: str) -> None:
    canned.ok(body)
    with pytest.raises(ReadError) as err:
        rest(canned).page_bytes("vhds", "d.vhd")
    assert err.value.code == MALFORMED


@pytest.mark.parametrize("transport", ["urllib3", "requests"])
def test_both_transports_read_the_same_answers(canned: Canned, transport: str) -> None:
    from azure.core.pipeline.transport import RequestsTransport

    sender = Urllib3Transport() if transport == "urllib3" else RequestsTransport(use_env_settings=False)
    canned.ok(containers("vhds"))
    canned.answers.append((404, {"x-ms-error-code": "ContainerNotFound"}, b""))
    reader = rest(canned, transport=sender)
    assert list(reader.list_containers()) == ["vhds"]
    with pytest.raises(ReadError) as err:
        list(reader.list_blobs("vhds"))
    assert err.value.code == "ContainerNotFound"


def test_urllib3_transport_verifies_tls_against_the_bundle_it_is_given(tmp_path) -> None:
    from sandbox.tls import make_self_signed

    cert, key = make_self_signed(tmp_path)
    server = Canned(cert, key)
    try:
        server.ok(containers("vhds"))
        trusted = rest(server, transport=Urllib3Transport(verify=cert))
        assert list(trusted.list_containers()) == ["vhds"]
        untrusted = rest(server, transport=Urllib3Transport())  # certifi's bundle: not our CA
        with pytest.raises(ReadError) as err:
            list(untrusted.list_containers())
        assert err.value.code == "ServiceRequestError" and "CERTIFICATE_VERIFY_FAILED" in err.value.message
        assert len(server.requests) == 1  # the untrusted client never sent its request
    finally:
        server.close()


def test_urllib3_transport_maps_a_refused_connection_to_a_request_error() -> None:
    from sandbox.azurite import free_port

    reader = BlobRest(f"http://127.0.0.1:{free_port()}/{ACCOUNT}", None, "2025-01-05", Urllib3Transport())
    with pytest.raises(ReadError) as err:
        reader.page_bytes("vhds", "d.vhd")
    assert err.value.code == "ServiceRequestError"


def test_urllib3_transport_maps_a_dropped_answer_to_a_response_error_and_retries_it(canned: Canned) -> None:
    import socket

    # A server that accepts and closes without answering, then (second connection) answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    answer = containers("vhds").encode()

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()  # dropped
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(answer) + answer)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{port}/{ACCOUNT}"
        once = BlobRest(endpoint, None, "2025-01-05", Urllib3Transport(), retry_total=0)
        with pytest.raises(ReadError) as err:
            list(once.list_containers())
        assert err.value.code == "ServiceResponseError"
        retried = BlobRest(endpoint, None, "2025-01-05", Urllib3Transport(), retry_total=1)
        assert list(retried.list_containers()) == ["vhds"]
    finally:
        thread.join(timeout=10)
        listener.close()


# --------------------------------------------------------------------------------------------------
# Listings that never end, and the service's time: both readers, through the adapter
# --------------------------------------------------------------------------------------------------

READERS = ["lean", "sdk"]
XML = {"Content-Type": "application/xml"}


def canned_storage(canned: Canned, reader: str, **kwargs: object) -> AccountStorage:
    return AccountStorage(ACCOUNT, canned.endpoint, random_key(), retry_total=0, reader=reader, **kwargs)


def endless_containers(cap: int = 300):
    """A container list whose every page gives the NextMarker "c-1" (its blob lists end at once);
    500s after ``cap`` requests, so that a reader that does not notice fails instead of hanging."""
    served = {"n": 0}

    def respond(path: str):
        served["n"] += 1
        if served["n"] > cap:
            return 500, XML, b"<Error><Code>InternalError</Code><Message>gave up</Message></Error>"
        if "restype=container" in path:
            return 200, XML, blobs(blob_xml("d.vhd")).encode()
        return 200, XML, containers(f"c{served['n']}", next_marker="c-1").encode()

    return respond


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize(
    "marker, pages",
    [(lambda n: "m/same 1", 2), (lambda n: "ab"[n % 2], 3)],  # the same marker again; one seen two pages back
    ids=["same-marker", "marker-seen-before"],
)
def test_a_blob_listing_whose_next_marker_repeats_fails_closed_naming_container_and_marker(
    canned: Canned, reader: str, marker, pages: int
) -> None:
    from tests.support.canned import endless_listing

    canned.respond = endless_listing(containers("vhds"), marker=marker)
    with canned_storage(canned, reader) as storage, pytest.raises(StorageError) as err:
        list(storage.list_blobs())
    assert err.value.code == "ListingLoop", err.value
    assert "container 'vhds'" in err.value.message and repr(marker(pages)) in err.value.message
    assert len(canned.requests) == 1 + pages  # the container list, then the blob pages up to the repeat


@pytest.mark.parametrize("reader", READERS)
def test_a_container_list_whose_next_marker_repeats_fails_closed(canned: Canned, reader: str) -> None:
    canned.respond = endless_containers()
    with canned_storage(canned, reader) as storage, pytest.raises(StorageError) as err:
        list(storage.list_blobs())
    assert err.value.code == "ListingLoop", err.value
    assert "the container list" in err.value.message and "'c-1'" in err.value.message
    assert len(canned.requests) == 4  # containers page 1, its container's blobs, containers page 2: the repeat


@pytest.mark.parametrize("reader", READERS)
def test_a_listing_with_ever_new_markers_fails_closed_past_max_list_pages(canned: Canned, reader: str) -> None:
    from tests.support.canned import endless_listing

    canned.respond = endless_listing(containers("vhds"), marker=lambda n: f"page-{n + 1}")
    with canned_storage(canned, reader, max_list_pages=5) as storage, pytest.raises(StorageError) as err:
        list(storage.list_blobs())
    assert err.value.code == "ListingTooLong", err.value
    assert "container 'vhds'" in err.value.message and "'page-6'" in err.value.message
    assert "azure.max_list_pages" in err.value.message
    assert len(canned.requests) == 1 + 5  # the sixth page is never asked for


@pytest.mark.parametrize("reader", READERS)
def test_a_listing_of_exactly_max_list_pages_pages_is_complete(canned: Canned, reader: str) -> None:
    from tests.support.canned import endless_listing

    canned.respond = endless_listing(containers("vhds"), marker=lambda n: f"page-{n + 1}" if n < 5 else "")
    with canned_storage(canned, reader, max_list_pages=5) as storage:
        names = [b.key.blob for b in storage.list_blobs()]
    assert names == [f"d{n:06d}.vhd" for n in range(1, 6)]


def test_page_ranges_whose_next_marker_repeats_fail_the_measurement(canned: Canned) -> None:
    page = "<PageList><PageRange><Start>0</Start><End>511</End></PageRange><NextMarker>p</NextMarker></PageList>"
    canned.ok(page)
    canned.ok(page)
    canned.ok(page)  # a reader that does not notice asks for a third page, and then gets a 599
    with pytest.raises(ReadError) as err:
        rest(canned).page_bytes("vhds", "d.vhd")
    assert err.value.code == "ListingLoop" and "page ranges of vhds/'d.vhd'" in err.value.message
    assert len(canned.requests) == 2


@pytest.mark.parametrize("reader", READERS)
def test_the_service_time_is_the_date_of_the_listings_first_answer(canned: Canned, reader: str) -> None:
    import time

    canned.ok(containers("vhds", next_marker="c2"), Date="Wed, 25 Nov 2026 10:00:00 GMT")
    canned.ok(blobs(blob_xml("a.vhd")), Date="Wed, 25 Nov 2026 11:00:00 GMT")
    canned.ok(containers("more"), Date="Wed, 25 Nov 2026 12:00:00 GMT")
    canned.ok(blobs(blob_xml("b.vhd")), Date="Wed, 25 Nov 2026 13:00:00 GMT")
    events: list[object] = []
    before = time.monotonic()
    with canned_storage(canned, reader) as storage:
        for blob in storage.list_blobs(1, on_service_time=events.append):
            events.append(blob.key.blob)
    after = time.monotonic()
    first, *rest_ = events
    assert rest_ == ["a.vhd", "b.vhd"]  # told once, before the first blob
    assert first.date.isoformat() == "2026-11-25T10:00:00+00:00"
    assert before <= first.received <= after


@pytest.mark.parametrize("reader", READERS)
def test_a_listing_answer_without_a_date_gives_no_service_time(canned: Canned, reader: str) -> None:
    canned.ok(containers("vhds"), Date=None)
    canned.ok(blobs(blob_xml("a.vhd")))
    events: list[object] = []
    with canned_storage(canned, reader) as storage:
        assert [b.key.blob for b in storage.list_blobs(on_service_time=events.append)] == ["a.vhd"]
    assert [e.date for e in events] == [None]


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("date", ["yesterday", "", "Wed, 32 Nov 2026 10:00:00 GMT"])
def test_a_listing_answer_with_an_unparseable_date_fails_the_listing(canned: Canned, reader: str, date: str) -> None:
    canned.ok(containers("vhds"), Date=date)
    canned.ok(blobs(blob_xml("a.vhd")))
    with canned_storage(canned, reader) as storage, pytest.raises(StorageError) as err:
        list(storage.list_blobs(on_service_time=lambda st: None))
    assert err.value.code == MALFORMED
    assert f"Date header {date!r} is not an HTTP date" in err.value.message
