"""A tiny forward HTTP proxy on a real socket, as a corporate proxy is: ``CONNECT host:port`` opens a
tunnel (HTTPS goes through it, TLS end to end), and a request in absolute form
(``GET http://host:port/path``) is forwarded and its answer relayed. It records what it served:
:attr:`ForwardProxy.connects` (the ``host:port`` of each tunnel), :attr:`ForwardProxy.forwarded`
(the absolute URL of each forwarded request) and the ``Proxy-Authorization`` header each carried."""

from __future__ import annotations

import http.client
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

# Headers of one hop, not passed on (RFC 9110 section 7.6.1).
_HOP = {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer",
        "transfer-encoding", "upgrade"}


class ForwardProxy:
    def __init__(self) -> None:
        self.connects: list[str] = []
        self.forwarded: list[str] = []
        self.proxy_auth: list[str | None] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_CONNECT(self) -> None:  # noqa: N802 - http.server's naming
                host, _, port = self.path.rpartition(":")
                with proxy._lock:
                    proxy.connects.append(self.path)
                    proxy.proxy_auth.append(self.headers.get("Proxy-Authorization"))
                try:
                    upstream = socket.create_connection((host, int(port)), timeout=10)
                except OSError:
                    self.send_error(502)
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                _pipe(self.connection, upstream)

            def _forward(self) -> None:
                target = urlsplit(self.path)
                if target.scheme != "http" or not target.hostname:
                    self.send_error(400, "absolute-form http:// requests only")
                    return
                with proxy._lock:
                    proxy.forwarded.append(self.path)
                    proxy.proxy_auth.append(self.headers.get("Proxy-Authorization"))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                path = target.path + (f"?{target.query}" if target.query else "")
                conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
                try:
                    conn.request(self.command, path or "/", body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    self.send_response(answer.status, answer.reason)
                    for k, v in answer.getheaders():
                        if k.lower() not in _HOP and k.lower() != "content-length":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def served(self) -> int:
        """Tunnels opened plus requests forwarded."""
        with self._lock:
            return len(self.connects) + len(self.forwarded)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _pipe(client: socket.socket, upstream: socket.socket) -> None:
    """Bytes both ways until either side closes."""
    sockets = [client, upstream]
    try:
        while True:
            readable, _, broken = select.select(sockets, [], sockets, 30)
            if broken or not readable:
                return
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (upstream if sock is client else client).sendall(data)
    except OSError:
        return
    finally:
        upstream.close()
