"""A fault-injecting HTTP proxy for tests: it sits between a client and one upstream HTTP server
(Azurite), forwards every request, and applies per-request rules to the ones that match.

    proxy = FaultProxy(("127.0.0.1", azurite.port)).start()
    account_endpoint = proxy.endpoint("gcacct1")       # point the client here
    proxy.add(Rule(DropReply(), method="DELETE"))       # the next DELETE: forwarded, reply lost
    ...
    proxy.stop()

A request goes through three steps, and a rule's :class:`Action` may act at each of them:

1. :meth:`Action.before`: answer it here (:class:`Respond`), drop the connection (:class:`Drop`),
   or let it go on (``None``). A future latency action waits here.
2. forward it to the upstream, on a connection of its own, and read the upstream's full reply;
3. :meth:`Action.after`: hand the reply to the client (the default), replace it
   (:class:`ReplaceReply`), or drop the connection without replying (:class:`DropReply`).

A :class:`Rule` matches on the method and a regular expression searched in the path (query
included), and applies to its first ``times`` matching requests (``None``: all of them); the first
rule that matches and still has uses takes the request. ``on_request`` runs when the rule takes a
request, before its action; ``on_upstream_reply`` once the upstream has answered and before the
client sees anything (a test changes the world there, deterministically).
Every request is logged in :attr:`FaultProxy.exchanges`.

Standard library only, one thread per client connection; nothing here sleeps.
"""

from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Headers that belong to one connection, not to the request: never forwarded as they came.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
     "trailer", "transfer-encoding", "upgrade"}
)
UPSTREAM_TIMEOUT = 60.0


@dataclass
class Request:
    method: str
    path: str  # as sent: path and query
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Reply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class Dropped:
    """What :meth:`Action.before`/:meth:`Action.after` return to close the client connection without
    replying; ``reset`` sends a TCP RST instead of an orderly FIN."""

    reset: bool = False


class Action:
    """What a rule does to a request it takes. The base class forwards it untouched."""

    name = "forward"

    def before(self, request: Request) -> Reply | Dropped | None:
        """Before forwarding: a reply of our own, a drop, or None to forward."""
        return None

    def after(self, request: Request, reply: Reply) -> Reply | Dropped:
        """Once the upstream has answered: what the client gets."""
        return reply


class Forward(Action):
    """Forward untouched (a rule that only counts, or only runs ``on_upstream_reply``)."""


def azure_error(status: int, code: str, message: str = "injected by the fault proxy") -> Reply:
    """An error reply in the storage service's shape (``x-ms-error-code`` and the XML body)."""
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error>").encode()
    reason = http.client.responses.get(status, "Error")
    return Reply(status, reason, [("Content-Type", "application/xml"), ("x-ms-error-code", code),
                                  ("Content-Length", str(len(body)))], body)


_CODES = {500: "InternalError", 503: "ServerBusy", 408: "OperationTimedOut", 429: "ServerBusy"}


@dataclass
class Respond(Action):
    """Answer ``status`` without forwarding: the upstream never sees the request."""

    status: int = 503
    code: str | None = None
    name = "respond"

    def before(self, request: Request) -> Reply:
        return azure_error(self.status, self.code or _CODES.get(self.status, "InternalError"))


@dataclass
class Drop(Action):
    """Close the client connection without forwarding: the upstream never sees the request."""

    reset: bool = False
    name = "drop"

    def before(self, request: Request) -> Dropped:
        return Dropped(self.reset)


@dataclass
class DropReply(Action):
    """Forward, wait for the upstream's full reply, then close the client connection without
    replying: the request was executed, and the client cannot know."""

    reset: bool = False
    name = "drop-reply"

    def after(self, request: Request, reply: Reply) -> Dropped:
        return Dropped(self.reset)


@dataclass
class ReplaceReply(Action):
    """Forward, then answer ``status`` instead of the upstream's reply (executed, reported failed)."""

    status: int = 500
    code: str | None = None
    name = "replace-reply"

    def after(self, request: Request, reply: Reply) -> Reply:
        return azure_error(self.status, self.code or _CODES.get(self.status, "InternalError"))


@dataclass
class Rule:
    action: Action
    method: str | None = None  # e.g. "DELETE"; None: any
    path: str | None = None  # a regular expression searched in the path (query included); None: any
    times: int | None = 1  # how many matching requests it takes; None: every one
    on_request: Callable[[Request], None] | None = None  # runs first, before the action
    on_upstream_reply: Callable[[Request, Reply], None] | None = None
    fired: int = 0  # requests it took
    exhausted: threading.Event = field(default_factory=threading.Event)  # set once ``times`` are used

    def matches(self, request: Request) -> bool:
        if self.method is not None and request.method.upper() != self.method.upper():
            return False
        return self.path is None or re.search(self.path, request.path) is not None


@dataclass
class Exchange:
    """One request as the proxy handled it."""

    method: str
    path: str
    action: str  # the action's name ("forward" when no rule took it)
    upstream_status: int | None  # None: not forwarded, or the upstream failed
    client_status: int | None  # None: the client got no reply (dropped)


class FaultProxy:
    """Listens on 127.0.0.1 (port ``port``, 0: any free one) and forwards to ``upstream``
    (host, port). Constructing it opens nothing; :meth:`start` does."""

    def __init__(self, upstream: tuple[str, int], port: int = 0) -> None:
        self.upstream = upstream
        self._port = port
        self._rules: list[Rule] = []
        self._lock = threading.Lock()
        self.exchanges: list[Exchange] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()

    # -- control ----------------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._server.daemon_threads = True
        # serve_forever notices shutdown() within its poll interval: stop() returns that fast.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="faultproxy",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:  # idle keep-alive connections: their handler threads end on EOF
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._server = None

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def endpoint(self, account: str) -> str:
        """A path-style account endpoint (Azurite's shape) through the proxy."""
        return f"{self.url}/{account}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> None:
        """Remove every rule and forget the exchanges."""
        with self._lock:
            self._rules.clear()
            self.exchanges.clear()

    # shorthands for the usual faults
    def drop_reply(self, method: str | None = "DELETE", path: str | None = None, times: int | None = 1,
                   **kw) -> Rule:
        return self.add(Rule(DropReply(kw.pop("reset", False)), method, path, times, **kw))

    def respond(self, status: int, method: str | None = None, path: str | None = None, times: int | None = 1,
                **kw) -> Rule:
        return self.add(Rule(Respond(status, kw.pop("code", None)), method, path, times, **kw))

    def replace_reply(self, status: int, method: str | None = None, path: str | None = None,
                      times: int | None = 1, **kw) -> Rule:
        return self.add(Rule(ReplaceReply(status, kw.pop("code", None)), method, path, times, **kw))

    def requests(self, method: str | None = None) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if method is None or e.method == method]

    # -- the data path ----------------------------------------------------------------------

    def _take(self, request: Request) -> Rule | None:
        """The first rule that matches and still has uses, its use counted (atomically)."""
        with self._lock:
            for rule in self._rules:
                if (rule.times is None or rule.fired < rule.times) and rule.matches(request):
                    rule.fired += 1
                    if rule.times is not None and rule.fired >= rule.times:
                        rule.exhausted.set()
                    return rule
        return None

    def _log(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def _forward(self, request: Request) -> Reply:
        """Send the request upstream on a connection of its own (a stale pooled connection must never
        make the proxy send a request twice) and read the full reply."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=UPSTREAM_TIMEOUT)
        try:
            conn.putrequest(request.method, request.path, skip_host=True, skip_accept_encoding=True)
            for name, value in request.headers:
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if request.body or request.method.upper() in ("PUT", "POST", "PATCH"):
                conn.putheader("Content-Length", str(len(request.body)))
            conn.putheader("Connection", "close")
            conn.endheaders(request.body or None)
            resp = conn.getresponse()
            body = resp.read()
            headers = resp.getheaders()
            if any(k.lower() == "transfer-encoding" for k, _ in headers):
                # read() took the chunks apart: the client gets the body with its length
                headers = [(k, v) for k, v in headers if k.lower() not in ("transfer-encoding", "content-length")]
                headers.append(("Content-Length", str(len(body))))
            headers = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
            return Reply(resp.status, resp.reason, headers, body)
        finally:
            conn.close()


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects

    def setup(self) -> None:
        super().setup()
        with self.owner._lock:
            self.owner._clients.add(self.connection)

    def finish(self) -> None:
        with self.owner._lock:
            self.owner._clients.discard(self.connection)
        try:
            super().finish()
        except OSError:  # a connection we dropped
            pass

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy = self.owner
        request = Request(self.command, self.path, list(self.headers.items()), self._read_body())
        rule = proxy._take(request)
        action = rule.action if rule is not None else Forward()
        upstream_status = None
        if rule is not None and rule.on_request is not None:
            rule.on_request(request)
        outcome = action.before(request)
        if outcome is None:
            try:
                reply = proxy._forward(request)
            except OSError as exc:  # the upstream is down or failed mid-reply: what a gateway says
                outcome = azure_error(502, "BadGateway", f"upstream failed: {type(exc).__name__}")
            else:
                upstream_status = reply.status
                if rule is not None and rule.on_upstream_reply is not None:
                    rule.on_upstream_reply(request, reply)
                outcome = action.after(request, reply)
        if isinstance(outcome, Dropped):
            proxy._log(Exchange(request.method, request.path, action.name, upstream_status, None))
            self._drop(outcome.reset)
            return
        # Logged before the client can see the reply: a client's next request is logged after it.
        proxy._log(Exchange(request.method, request.path, action.name, upstream_status, outcome.status))
        self._send(outcome)

    def _send(self, reply: Reply) -> None:
        lines = [f"HTTP/1.1 {reply.status} {reply.reason}"]
        lines += [f"{k}: {v}" for k, v in reply.headers]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + (b"" if self.command == "HEAD" else reply.body))
        self.wfile.flush()

    def _drop(self, reset: bool) -> None:
        self.close_connection = True
        if reset:  # SO_LINGER 0: close() sends RST, not FIN
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _proxy
