"""The latency bench's proxy (bench/latency_proxy.py): bytes pass unchanged (plain HTTP and TLS), the
delay is paid per exchange on a kept-alive connection, and storage requests are counted by kind."""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from azure.storage.blob import BlobServiceClient

from bench.latency_proxy import HttpRequestCounter, LatencyProxy, ProxyProcess, storage_kind
from sandbox import arm as armlib
from sandbox import seed

SUB = "00000000-0000-0000-0000-0000000000aa"


class _Echo(socketserver.BaseRequestHandler):
    """Answers every line with the same line: one exchange per line."""

    def handle(self) -> None:
        f = self.request.makefile("rb")
        for line in f:
            self.request.sendall(line)


@pytest.fixture
def echo() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _exchange(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    got = b""
    while len(got) < len(line):
        chunk = sock.recv(65536)
        assert chunk, "the proxy closed the connection"
        got += chunk
    return got


def test_bytes_pass_unchanged_both_ways(echo: int) -> None:
    payload = bytes(range(256)).replace(b"\n", b"") * 4000 + b"\n"  # ~1 MB, every byte value but \n
    with LatencyProxy({"echo": ("127.0.0.1", echo)}) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.ports["echo"])) as sock:
            assert _exchange(sock, payload) == payload
            assert _exchange(sock, b"\x16\x03\x01 not http\n") == b"\x16\x03\x01 not http\n"
        assert proxy.counts() == {"connections": {"echo": 1}}  # a raw stream is not counted


def test_the_delay_is_paid_by_every_exchange_of_one_connection(echo: int) -> None:
    delay = 0.1
    with LatencyProxy({"echo": ("127.0.0.1", echo)}, delay=delay) as proxy:
        with socket.create_connection(("127.0.0.1", proxy.ports["echo"])) as sock:
            started = time.monotonic()
            for i in range(3):
                assert _exchange(sock, b"ping %d\n" % i) == b"ping %d\n" % i
            elapsed = time.monotonic() - started
        assert proxy.counts()["connections"] == {"echo": 1}  # one kept-alive connection carried them all
    assert elapsed >= 3 * 2 * delay  # each of the three round trips paid the delay both ways


def test_storage_requests_are_counted_by_kind(azurite) -> None:
    account = "gcacct1"
    data = bytes((i * 7) % 256 for i in range(8192))
    with LatencyProxy({"storage": ("127.0.0.1", azurite.port)}, http={"storage"}, delay=0.001) as proxy:
        url = f"http://127.0.0.1:{proxy.ports['storage']}/{account}"
        with BlobServiceClient(url, credential={"account_name": account, "account_key": azurite.key(account)}) as svc:
            blob = seed.container(svc, "vhds").get_blob_client("a.vhd")
            blob.create_page_blob(len(data))
            blob.upload_page(data, offset=0, length=len(data))
            assert [c.name for c in svc.list_containers()] == ["vhds"]
            assert [b.name for b in svc.get_container_client("vhds").list_blobs()] == ["a.vhd"]
            assert [(r.start, r.end) for r in blob.list_page_ranges()] == [(0, len(data) - 1)]
            assert blob.get_blob_properties().size == len(data)
            assert blob.download_blob().readall() == data  # the bytes came back through the proxy unchanged
            blob.delete_blob()
        counts = proxy.counts()["storage"]
    assert counts == {
        "other: PUT container": 1,  # create_container
        "other: PUT -": 1,  # Put Blob (page blob)
        "other: PUT page": 1,  # Put Page
        "List Containers": 1,
        "List Blobs": 1,
        "Get Page Ranges": 2,  # list_page_ranges, and download_blob's own (a page blob's empty ranges)
        "Get Blob Properties": 1,
        "other: GET -": 1,  # Get Blob
        "Delete Blob": 1,
    }


def test_tls_passes_through_to_the_arm_stand_in(arm) -> None:
    from azure.mgmt.compute import ComputeManagementClient

    from gc_daemon.azure.credentials import EmulatorCredential

    arm.set_estate(armlib.build_estate(armlib.vm(SUB, "rg", "vm1"), subscriptions=[SUB]))
    with LatencyProxy({"arm": ("127.0.0.1", arm.port)}, delay=0.001) as proxy:
        base = f"https://127.0.0.1:{proxy.ports['arm']}"
        client = ComputeManagementClient(EmulatorCredential(), SUB, base_url=base,
                                         credential_scopes=[base + "/.default"], connection_verify=arm.cert_path)
        with client:
            assert [v.name for v in client.virtual_machines.list_all()] == ["vm1"]
        assert proxy.counts() == {"connections": {"arm": 1}}  # ciphertext: counted by the stand-in
    assert arm.requests == [("GET", f"/subscriptions/{SUB}/providers/Microsoft.Compute/virtualMachines"
                                    f"?api-version={arm.requests[0][1].split('api-version=')[1]}")]


def test_the_counter_follows_bodies_split_anywhere() -> None:
    stream = (
        b"PUT /a/c/b.vhd?comp=page HTTP/1.1\r\nContent-Length: 6\r\n\r\nGET /x"
        b"PUT /a/c/b.vhd HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /a?comp=list HTTP/1.1\r\nHost: h\r\n\r\n"
        b"GET /a/c?restype=container&comp=list&marker=m HTTP/1.1\r\n\r\n"
    )
    for step in (1, 3, 7, len(stream)):
        counts: Counter = Counter()
        counter = HttpRequestCounter(counts, threading.Lock())
        for i in range(0, len(stream), step):
            counter.feed(stream[i : i + step])
        assert counts == {"other: PUT page": 1, "other: PUT -": 1, "List Containers": 1, "List Blobs": 1}, step


def test_storage_kinds() -> None:
    assert storage_kind("GET", "/acct?comp=list&include=metadata") == "List Containers"
    assert storage_kind("GET", "/acct/vhds?restype=container&comp=list&include=snapshots") == "List Blobs"
    assert storage_kind("GET", "/acct/vhds/d.vhd?comp=pagelist") == "Get Page Ranges"
    assert storage_kind("HEAD", "/acct/vhds/d.vhd") == "Get Blob Properties"
    assert storage_kind("DELETE", "/acct/vhds/d.vhd") == "Delete Blob"
    assert storage_kind("GET", "/acct?restype=service&comp=properties") == "other: GET properties"


def test_the_proxy_process_answers_its_commands(echo: int, tmp_path) -> None:
    proxy = ProxyProcess({"echo": ("127.0.0.1", echo)}, http=["echo"], log_path=str(tmp_path / "proxy.log")).start()
    try:
        proxy.set_delay(0.001)
        with socket.create_connection(("127.0.0.1", proxy.ports["echo"])) as sock:
            assert _exchange(sock, b"GET /a?comp=list HTTP/1.1\r\n\r\n\n") == b"GET /a?comp=list HTTP/1.1\r\n\r\n\n"
        assert proxy.counts() == {"echo": {"List Containers": 1}, "connections": {"echo": 1}}
        proxy.reset()
        assert proxy.counts() == {"echo": {}, "connections": {}}
    finally:
        proxy.stop()
    assert os.path.getsize(tmp_path / "proxy.log") == 0  # nothing went wrong in it


def test_the_stand_in_behind_the_proxy_names_the_proxy_in_its_links(tmp_path) -> None:
    """A list of several pages is followed through the proxy: the nextLink names the address the
    client called (bench/latency_arm.py), as real ARM's do."""
    from azure.mgmt.compute import ComputeManagementClient

    from bench.latency_arm import AdvertisedArmStandIn
    from gc_daemon.azure.credentials import EmulatorCredential
    from sandbox.azurite import free_port

    port = free_port()
    advertised = f"https://127.0.0.1:{port}"
    estate = armlib.build_estate(*(armlib.vm(SUB, "rg", f"vm{i}") for i in range(3)), subscriptions=[SUB])
    standin = AdvertisedArmStandIn(estate, page_size=1, cert_dir=str(tmp_path), advertised=advertised).start()
    try:
        with LatencyProxy({"arm": ("127.0.0.1", standin.port)}, listen={"arm": port}, delay=0.001) as proxy:
            client = ComputeManagementClient(EmulatorCredential(), SUB, base_url=advertised,
                                             credential_scopes=[advertised + "/.default"],
                                             connection_verify=standin.cert_path)
            with client:
                assert [v.name for v in client.virtual_machines.list_all()] == ["vm0", "vm1", "vm2"]
            assert proxy.counts()["connections"] == {"arm": 1}  # all three pages through the proxy
        assert [path.rsplit("skiptoken=", 1)[-1] if "skiptoken" in path else "" for _, path in standin.requests] == [
            "", "1", "2"]
    finally:
        standin.stop()


def test_arm_requests_are_named_by_type_and_operation() -> None:
    from bench.latency import arm_kind

    s = f"/subscriptions/{SUB}"
    assert arm_kind("GET", f"{s}/providers/Microsoft.Compute/virtualMachines?api-version=1&%24skiptoken=50") == (
        "GET Microsoft.Compute/virtualMachines list")
    assert arm_kind("GET", f"{s}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/ss/"
                           "virtualMachines?api-version=1") == "GET Microsoft.Compute/virtualMachineScaleSets/virtualMachines list"
    assert arm_kind("GET", f"{s}/resourceGroups/rg/providers/Microsoft.Compute/disks/d1?api-version=1") == (
        "GET Microsoft.Compute/disks get")
    assert arm_kind("GET", f"{s}/resourcegroups?api-version=1") == "GET resourceGroups list"
    assert arm_kind("GET", f"{s}/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/a/providers/"
                           "Microsoft.Authorization/permissions?api-version=1") == "GET Microsoft.Authorization/permissions list"
