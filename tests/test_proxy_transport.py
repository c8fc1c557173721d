"""The lean read path behind a proxy: the urllib3 transport honours the proxy variables as requests
does (a real forward proxy on a socket in front of Azurite, a TLS service and the ARM stand-in), so
setting them never sends the read path to the slower requests transport."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
from azure.core.pipeline import Pipeline
from azure.core.pipeline.policies import HeadersPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.core.rest import HttpRequest

from gc_daemon.azure.blobrest import BlobRest, ReadError, Urllib3Transport
from gc_daemon.azure.storage import AccountStorage
from gc_daemon.config import parse_config
from gc_daemon.domain import BlobKey
from gc_daemon.wiring import read_transport
from sandbox import seed
from sandbox.arm import ArmStandIn, build_estate, vm
from sandbox.azurite import Azurite, free_port
from tests.support.canned import Canned, containers
from tests.support.forward_proxy import ForwardProxy

ACCOUNT = "gcacct1"
SUB = "00000000-0000-0000-0000-0000000000a1"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CONFIG = parse_config({"azure": {"subscriptions": [SUB], "storage_accounts": [{"name": ACCOUNT}]}})


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without proxy variables (either case)."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def proxy() -> Iterator[ForwardProxy]:
    server = ForwardProxy()
    yield server
    server.close()


@pytest.fixture
def tls_service(tmp_path) -> Iterator[tuple[Canned, str]]:
    """A storage-like service over HTTPS (canned answers), and the CA file that trusts it."""
    from sandbox.tls import make_self_signed

    cert, key = make_self_signed(tmp_path)
    server = Canned(cert, key)
    yield server, cert
    server.close()


def _estate(azurite: Azurite) -> set[BlobKey]:
    with azurite.service_client(ACCOUNT) as service:
        seed.page_blob(service, "vhds", "one.vhd", size=512)
        seed.page_blob(service, "vhds", "two.vhd", size=1024)
        seed.page_blob(service, "more", "three.vhd", size=512)
    return {BlobKey(ACCOUNT, "vhds", "one.vhd"), BlobKey(ACCOUNT, "vhds", "two.vhd"),
            BlobKey(ACCOUNT, "more", "three.vhd")}


def _listed(azurite: Azurite, transport: object) -> set[BlobKey]:
    storage = AccountStorage(ACCOUNT, azurite.blob_endpoint(ACCOUNT), azurite.key(ACCOUNT), retry_total=0,
                             read_transport=transport)
    with storage:
        return {b.key for b in storage.list_blobs()}


def _host(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


# -- through the proxy ------------------------------------------------------------------------------


def test_http_proxy_carries_the_azurite_listing_on_the_urllib3_transport(azurite, proxy, monkeypatch):
    expected = _estate(azurite)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    transport = read_transport(CONFIG)
    assert isinstance(transport, Urllib3Transport)
    assert transport.proxy_for(azurite.blob_endpoint(ACCOUNT)) == proxy.url

    assert _listed(azurite, transport) == expected
    # The container list and one page per container, each forwarded to Azurite in absolute form.
    endpoint = azurite.blob_endpoint(ACCOUNT)
    assert sorted(proxy.forwarded) == sorted([
        f"{endpoint}?comp=list",
        f"{endpoint}/more?restype=container&comp=list&include=metadata,snapshots,tags",
        f"{endpoint}/vhds?restype=container&comp=list&include=metadata,snapshots,tags",
    ])
    assert proxy.connects == []


def test_https_proxy_tunnels_every_request_with_connect_and_tls_stays_verified(tls_service, proxy, monkeypatch):
    service, cert = tls_service
    service.ok(containers("a", "b", next_marker="m1"))
    service.ok(containers("c"))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    reader = BlobRest(service.endpoint, None, "2025-01-05", Urllib3Transport(verify=cert), retry_total=0)

    assert list(reader.list_containers()) == ["a", "b", "c"]
    assert len(service.requests) == 2 and service.requests[1].endswith("&marker=m1")
    # The canned service speaks HTTP/1.0 and closes after each answer: one tunnel per request.
    assert proxy.connects == [_host(service.endpoint)] * 2
    assert proxy.forwarded == []


def test_one_tunnel_to_the_arm_stand_in_carries_a_whole_paged_listing(arm: ArmStandIn, proxy, monkeypatch):
    arm.set_estate(build_estate(*(vm(SUB, "rg", f"vm{i}") for i in range(5))))  # 3 pages of 2
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    pipeline = Pipeline(Urllib3Transport(verify=arm.cert_path), policies=[HeadersPolicy({"Authorization": "Bearer t"})])
    url = f"{arm.url}/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines?api-version=2024-07-01"
    names = []
    while url:
        response = pipeline.run(HttpRequest("GET", url)).http_response
        assert response.status_code == 200
        page = json.loads(response.body())
        names += [item["name"] for item in page["value"]]
        url = page.get("nextLink")
    assert names == [f"vm{i}" for i in range(5)]
    assert len(arm.requests) == 3
    assert proxy.connects == [_host(arm.url)]  # the pooled tunnel is kept alive across pages


def test_credentials_in_the_proxy_url_go_in_proxy_authorization(tls_service, proxy, monkeypatch):
    service, cert = tls_service
    service.ok(containers("a"))
    monkeypatch.setenv("https_proxy", proxy.url.replace("http://", "http://ops:p%40ss@"))
    reader = BlobRest(service.endpoint, None, "2025-01-05", Urllib3Transport(verify=cert), retry_total=0)
    assert list(reader.list_containers()) == ["a"]
    assert proxy.proxy_auth == ["Basic " + base64.b64encode(b"ops:p@ss").decode()]


def test_a_proxy_that_cannot_be_reached_is_a_request_error(azurite, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    reader = BlobRest(azurite.blob_endpoint(ACCOUNT), None, "2025-01-05", Urllib3Transport(), retry_total=0)
    with pytest.raises(ReadError) as err:
        list(reader.list_containers())
    assert err.value.code == "ServiceRequestError"


def test_the_route_is_decided_once_per_host_and_kept(azurite, proxy, monkeypatch):
    expected = _estate(azurite)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    transport = read_transport(CONFIG)
    storage = AccountStorage(ACCOUNT, azurite.blob_endpoint(ACCOUNT), azurite.key(ACCOUNT), retry_total=0,
                             read_transport=transport)
    with storage:
        assert {b.key for b in storage.list_blobs()} == expected
        assert len(proxy.forwarded) == 3
        # Changing the environment afterwards does not move a host the transport already routed.
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert transport.proxy_for(azurite.blob_endpoint(ACCOUNT)) == proxy.url
        assert {b.key for b in storage.list_blobs()} == expected
        assert len(proxy.forwarded) == 6
    # Closed, the transport forgets its routes: the next request reads the environment again.
    assert transport.proxy_for(azurite.blob_endpoint(ACCOUNT)) is None


# -- direct --------------------------------------------------------------------------------------------


def test_no_proxy_covering_the_host_goes_direct_on_the_urllib3_transport(azurite, tls_service, proxy, monkeypatch):
    expected = _estate(azurite)
    service, cert = tls_service
    service.ok(containers("a"))
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.internal.example")
    transport = read_transport(CONFIG)
    assert isinstance(transport, Urllib3Transport)
    assert transport.proxy_for(azurite.blob_endpoint(ACCOUNT)) is None
    assert _listed(azurite, transport) == expected

    reader = BlobRest(service.endpoint, None, "2025-01-05", Urllib3Transport(verify=cert), retry_total=0)
    assert list(reader.list_containers()) == ["a"]
    assert proxy.served == 0


def test_no_proxy_not_covering_the_host_still_goes_through_the_proxy(azurite, proxy, monkeypatch):
    expected = _estate(azurite)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,.internal.example,10.0.0.0/8")
    assert _listed(azurite, read_transport(CONFIG)) == expected
    assert len(proxy.forwarded) == 3


def test_no_proxy_alone_keeps_the_urllib3_transport_direct(azurite, monkeypatch):
    expected = _estate(azurite)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1,.corp.example")
    transport = read_transport(CONFIG)
    assert isinstance(transport, Urllib3Transport)
    assert transport.proxy_for(azurite.blob_endpoint(ACCOUNT)) is None
    assert _listed(azurite, transport) == expected


def test_a_socks_proxy_falls_back_to_requests(monkeypatch):
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    assert isinstance(read_transport(CONFIG), RequestsTransport)
    monkeypatch.delenv("ALL_PROXY")
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp.example:3128")  # no scheme: http://, as requests reads it
    transport = read_transport(CONFIG)
    assert isinstance(transport, Urllib3Transport)
    assert transport.proxy_for("https://acct.blob.core.windows.net/") == "http://proxy.corp.example:3128"
