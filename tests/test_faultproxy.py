"""The fault-injecting proxy (sandbox/faultproxy.py): it forwards faithfully, and each rule does what
it says to exactly the requests it matches. Against a small recording upstream of the test's own,
and through the real SDK against Azurite."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from azure.core.exceptions import ServiceResponseError
from azure.storage.blob import BlobServiceClient

from sandbox import seed
from sandbox.faultproxy import Drop, DropReply, FaultProxy, Forward, ReplaceReply, Respond, Rule


class Upstream:
    """Records every request it gets and answers with a JSON echo of it (``/chunked``: in chunks)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                record = {"method": self.command, "path": self.path, "body": body.decode(),
                          "headers": {k.lower(): v for k, v in self.headers.items()}}
                upstream.seen.append(record)
                out = json.dumps(record).encode()
                if self.path.startswith("/chunked"):
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(out), 7):
                        part = out[i:i + 7]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                    return
                self.send_response(201 if self.command == "PUT" else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-test", "kept")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(out)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.server_address[1])


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    u = Upstream()
    u.thread.start()
    try:
        yield u
    finally:
        u.server.shutdown()
        u.server.server_close()


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[FaultProxy]:
    with FaultProxy(upstream.address) as p:
        yield p


def _client(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)


def test_forwards_method_path_headers_and_body_both_ways_on_one_connection(proxy, upstream):
    conn = _client(proxy)
    conn.request("PUT", "/acct/c/blob.vhd?comp=page&x=1", body=b"payload", headers={"x-ms-version": "2025-01-05"})
    resp = conn.getresponse()
    echo = json.loads(resp.read())
    assert resp.status == 201 and resp.getheader("x-test") == "kept"
    assert (echo["method"], echo["path"], echo["body"]) == ("PUT", "/acct/c/blob.vhd?comp=page&x=1", "payload")
    assert echo["headers"]["x-ms-version"] == "2025-01-05"
    assert echo["headers"]["host"] == f"127.0.0.1:{proxy.port}"  # as the client sent it (signing)
    conn.request("DELETE", "/acct/c/blob.vhd")  # the same client connection: keep-alive
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["method"] == "DELETE"
    conn.request("HEAD", "/acct/c/blob.vhd")
    resp = conn.getresponse()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0 and resp.read() == b""
    conn.close()
    assert [(e.method, e.action, e.upstream_status, e.client_status) for e in proxy.exchanges] == [
        ("PUT", "forward", 201, 201), ("DELETE", "forward", 200, 200), ("HEAD", "forward", 200, 200)]


def test_a_chunked_reply_reaches_the_client_whole(proxy, upstream):
    conn = _client(proxy)
    conn.request("GET", "/chunked/listing")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["path"] == "/chunked/listing"
    conn.close()


def test_drop_reply_forwards_then_closes_the_connection_without_a_reply(proxy, upstream):
    rule = proxy.drop_reply("DELETE")
    conn = _client(proxy)
    conn.request("DELETE", "/acct/c/gone.vhd")
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    assert [r["method"] for r in upstream.seen] == ["DELETE"]  # executed upstream
    assert rule.fired == 1 and rule.exhausted.is_set()
    conn.close()
    conn = _client(proxy)  # the rule is used up: the next DELETE goes through
    conn.request("DELETE", "/acct/c/gone.vhd")
    assert conn.getresponse().status == 200
    conn.close()
    assert [(e.action, e.upstream_status, e.client_status) for e in proxy.exchanges] == [
        ("drop-reply", 200, None), ("forward", 200, 200)]


def test_drop_reply_with_reset_resets_the_connection(proxy, upstream):
    proxy.add(Rule(DropReply(reset=True), method="DELETE"))
    conn = _client(proxy)
    conn.request("DELETE", "/acct/c/x.vhd")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        conn.getresponse()
    assert len(upstream.seen) == 1
    conn.close()


def test_respond_answers_without_forwarding(proxy, upstream):
    proxy.respond(503, method="DELETE")
    conn = _client(proxy)
    conn.request("DELETE", "/acct/c/x.vhd")
    resp = conn.getresponse()
    body = resp.read()
    assert resp.status == 503 and resp.getheader("x-ms-error-code") == "ServerBusy" and b"<Code>ServerBusy" in body
    assert upstream.seen == []  # never forwarded
    conn.request("DELETE", "/acct/c/x.vhd")  # the connection stays usable
    assert conn.getresponse().status == 200
    conn.close()


def test_replace_reply_forwards_and_answers_the_given_status(proxy, upstream):
    proxy.replace_reply(500, method="DELETE")
    conn = _client(proxy)
    conn.request("DELETE", "/acct/c/x.vhd")
    resp = conn.getresponse()
    assert resp.status == 500 and resp.getheader("x-ms-error-code") == "InternalError"
    resp.read()
    assert len(upstream.seen) == 1  # executed, yet reported failed
    conn.close()


def test_drop_closes_without_forwarding(proxy, upstream):
    proxy.add(Rule(Drop(), method="GET", times=None))
    conn = _client(proxy)
    conn.request("GET", "/x")
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    assert upstream.seen == []
    conn.close()


def test_rules_match_by_method_and_path_take_their_times_and_the_first_match_wins(proxy, upstream):
    seen_by_hook: list[tuple[str, int]] = []
    taken: list[str] = []
    first = proxy.add(Rule(Respond(500), method="GET", path=r"/a/", times=2,
                           on_request=lambda req: taken.append(req.path)))
    second = proxy.add(Rule(Forward(), method="GET", path=r"/a/", times=None,
                            on_upstream_reply=lambda req, reply: seen_by_hook.append((req.path, reply.status))))
    statuses = []
    for path in ["/a/1", "/b/1", "/a/2", "/a/3", "/a/4"]:
        conn = _client(proxy)
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
        conn.close()
    assert statuses == [500, 200, 500, 200, 200]
    assert (first.fired, first.exhausted.is_set(), second.fired, second.exhausted.is_set()) == (2, True, 2, False)
    assert taken == ["/a/1", "/a/2"]  # before the action (never forwarded)
    assert seen_by_hook == [("/a/3", 200), ("/a/4", 200)]  # after the upstream answered
    assert [e.action for e in proxy.exchanges] == ["respond", "forward", "respond", "forward", "forward"]
    proxy.clear()
    assert proxy.exchanges == [] and proxy.requests() == []


def test_an_upstream_that_is_down_is_a_502(upstream):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = ("127.0.0.1", s.getsockname()[1])
    with FaultProxy(dead) as p:
        conn = _client(p)
        conn.request("GET", "/x")
        resp = conn.getresponse()
        assert resp.status == 502
        resp.read()
        conn.close()


def test_the_sdk_against_azurite_through_the_proxy(azurite):
    with FaultProxy(("127.0.0.1", azurite.port)) as p:
        svc = BlobServiceClient(p.endpoint("gcacct1"), retry_total=0,
                                credential={"account_name": "gcacct1", "account_key": azurite.key("gcacct1")})
        seed.page_blob(svc, "vhds", "a.vhd", written=[(0, 512)])
        seed.page_blob(svc, "vhds", "b.vhd")
        assert sorted(b.name for b in svc.get_container_client("vhds").list_blobs()) == ["a.vhd", "b.vhd"]
        assert svc.get_blob_client("vhds", "a.vhd").get_blob_properties().size == 1024 * 1024
        p.drop_reply("DELETE")
        with pytest.raises(ServiceResponseError):
            svc.get_blob_client("vhds", "a.vhd").delete_blob()
        direct = azurite.service_client("gcacct1")
        assert not seed.exists(direct, "vhds", "a.vhd")  # the delete was executed, its reply lost
        assert seed.exists(direct, "vhds", "b.vhd")
        assert [(e.method, e.upstream_status, e.client_status) for e in p.requests("DELETE")] == [("DELETE", 202, None)]
