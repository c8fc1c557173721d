"""A storage service whose clock is not ours: a reverse proxy in front of Azurite that passes every
request and answer through unchanged except the answer's ``Date`` header, which it moves by
``offset`` (the service's clock ``offset`` ahead of this machine's), drops (``date = None``), or
replaces (``date = "text"``). vhd-gc's account endpoint points at it; seeding and ground truth go
to Azurite directly. Azurite still stores and lists everything: only its clock, as vhd-gc hears
it, is another machine's."""

from __future__ import annotations

import http.client
import threading
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_KEEP = object()
_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
        "content-length", "date", "host"}


class DateShift:
    def __init__(self, upstream: str) -> None:
        """``upstream``: Azurite's base URL, ``http://127.0.0.1:PORT``."""
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.offset = timedelta(0)
        self.date: object = _KEEP  # _KEEP: Azurite's Date moved by offset; None: no Date; str: that
        shift = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers["Host"] = "%s:%d" % shift.upstream
                if body is not None:
                    headers["Content-Length"] = str(length)
                conn = http.client.HTTPConnection(*shift.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    out = [(k, v) for k, v in answer.getheaders() if k.lower() not in _HOP]
                    upstream_length = answer.getheader("Content-Length")
                    date = shift.rewrite(answer.getheader("Date"))
                finally:
                    conn.close()
                self.send_response_only(answer.status, answer.reason)
                for k, v in out:
                    self.send_header(k, v)
                if date is not None:
                    self.send_header("Date", date)
                if self.command == "HEAD":
                    if upstream_length is not None:
                        self.send_header("Content-Length", upstream_length)
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD" and data:
                    self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_HEAD = do_POST = _forward  # noqa: N815 - http.server's naming

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def rewrite(self, date: str | None) -> str | None:
        if self.date is not _KEEP:
            return self.date  # type: ignore[return-value]
        if date is None:
            return None
        return format_datetime(parsedate_to_datetime(date) + self.offset, usegmt=True)

    def endpoint(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
