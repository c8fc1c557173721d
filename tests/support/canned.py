"""A canned storage service on a real socket, for answers no service should give: queued answers
served in order, or a function of the request (an endless listing). Tests of the lean reader
(tests/test_blobrest.py) and of whole passes over such an account use it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = tuple[int, dict[str, str | None], bytes]

ACCOUNT = "gcacct1"


class Canned:
    """Serves the queued (status, headers, body) answers in order, or ``respond(path)`` when set;
    records each request's path. Every answer carries a Date header (the local time, as a service
    with a good clock sends it) unless its headers say ``"Date": None`` (none) or give another.
    With ``cert``/``key`` it speaks HTTPS."""

    def __init__(self, cert: str | None = None, key: str | None = None, account: str = ACCOUNT) -> None:
        self.answers: list[Answer] = []
        self.respond: Callable[[str], Answer] | None = None
        self.requests: list[str] = []
        canned = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                canned.requests.append(self.path)
                if canned.respond is not None:
                    status, headers, body = canned.respond(self.path)
                else:
                    status, headers, body = canned.answers.pop(0) if canned.answers else (599, {}, b"")
                headers = dict(headers)
                date = headers.pop("Date", formatdate(usegmt=True))
                self.send_response_only(status)
                if date is not None:
                    self.send_header("Date", date)
                for k, v in headers.items():
                    if v is not None:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        scheme = "http"
        if cert:
            import ssl

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/{account}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def ok(self, body: str, **headers: str | None) -> None:
        self.answers.append((200, {"Content-Type": "application/xml", **headers}, body.encode()))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def containers(*names: str, next_marker: str = "") -> str:
    items = "".join(f"<Container><Name>{n}</Name><Properties/></Container>" for n in names)
    return f"<EnumerationResults><Containers>{items}</Containers><NextMarker>{next_marker}</NextMarker></EnumerationResults>"


def blob_xml(name: str = "d.vhd", *, props: dict[str, str] | None = None, extra: str = "",
             name_attrs: str = "") -> str:
    fields = {
        "Last-Modified": "Wed, 25 Nov 2026 10:00:00 GMT",
        "Etag": "0x8DD0000000000001",
        "Content-Length": "1048576",
        "BlobType": "PageBlob",
        "LeaseStatus": "unlocked",
        "LeaseState": "available",
    }
    fields.update(props or {})
    body = "".join(f"<{k}>{v}</{k}>" for k, v in fields.items() if v is not None)
    return f"<Blob><Name{name_attrs}>{name}</Name><Properties>{body}</Properties>{extra}</Blob>"


def blobs(*items: str, next_marker: str = "") -> str:
    return (f"<EnumerationResults><Blobs>{''.join(items)}</Blobs>"
            f"<NextMarker>{next_marker}</NextMarker></EnumerationResults>")


def endless_listing(containers_xml: str, *, marker: Callable[[int], str], cap: int = 300) -> Callable[[str], Answer]:
    """``respond`` for an account whose container list is ``containers_xml`` and whose every blob
    listing page holds one blob and a NextMarker ``marker(n)`` (n: the page's number), without
    end. After ``cap`` blob pages it answers 500s, so that a reader that does not notice fails
    anyway instead of hanging the test."""
    pages = {"n": 0}
    lock = threading.Lock()

    def respond(path: str) -> Answer:
        xml = {"Content-Type": "application/xml"}
        if "restype=container" not in path:
            return 200, xml, containers_xml.encode()
        with lock:
            pages["n"] += 1
            n = pages["n"]
        if n > cap:
            return 500, xml, b"<Error><Code>InternalError</Code><Message>the canned listing gave up</Message></Error>"
        return 200, xml, blobs(blob_xml(f"d{n:06d}.vhd"), next_marker=marker(n)).encode()

    return respond
