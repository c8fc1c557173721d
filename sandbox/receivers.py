"""Real receivers of notices, for the tests and the demo: an SMTP server and an HTTP webhook receiver.

Both listen on 127.0.0.1 on a free port, record what they are sent, and can be told at run time to
fail the way real ones do, so that a test sees the channel's own error handling:

- :class:`SmtpReceiver`: aiosmtpd, STARTTLS with a self-signed certificate (sandbox.tls), AUTH (only
  after STARTTLS) when users are given; records every step of the conversation (EHLO, STARTTLS, AUTH,
  DATA) with whether TLS was up, and every message. Faults: ``reply_data`` / ``reply_rcpt`` (e.g.
  ``451 4.3.0 try later``, ``550 5.1.1 no such user``), :meth:`~SmtpReceiver.hold` (DATA's reply waits
  until :meth:`~SmtpReceiver.release`), :meth:`~SmtpReceiver.refuse` (the port closed).
- :class:`HttpReceiver`: a threaded http.server that verifies the webhook's HMAC signature itself (not
  with vhd-gc's code: ``HMAC-SHA256(secret, timestamp + "." + body)``) and records every request.
  Faults: :meth:`~HttpReceiver.fail_with` (any status and body), :meth:`~HttpReceiver.hold` (the reply
  waits until :meth:`~HttpReceiver.release`, so the client's timeout fires), :meth:`~HttpReceiver.refuse`.

No sleeps: :meth:`wait_for` waits on a condition that every recorded request or message notifies.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import hashlib
import hmac
import json
import logging
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from .tls import make_self_signed

HOST = "127.0.0.1"
HOLD_LIMIT = 60.0  # a held reply is released after this long even if nobody releases it


class _QuietLoginData(logging.Filter):
    # aiosmtpd warns about its own use of the deprecated Session.login_data on every AUTH
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietLoginData())


class _Port:
    """A port on 127.0.0.1 that is bound but not listening: a connection to it is refused, and no other
    process can take it meanwhile."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, port))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def closed_port() -> _Port:
    """A port nothing listens on (connections are refused) until ``.close()``."""
    return _Port()


class _Recorder:
    def __init__(self) -> None:
        self._cond = threading.Condition()

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _count(self) -> int:
        raise NotImplementedError

    def wait_for(self, n: int, timeout: float = 30.0) -> bool:
        """True once at least ``n`` things were recorded; False after ``timeout`` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count() >= n, timeout)


# ---------------------------------------------------------------------------------------------------
# HTTP


@dataclass
class HttpRequest:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    status: int  # what the receiver answered (or was about to, when held)
    signature_ok: bool | None  # None: no secret configured or no signature sent

    def json(self) -> Any:
        return json.loads(self.body)

    def summary(self) -> str:
        """A few lines for a person (the demo prints them): what arrived, and whether it verified."""
        sig = {True: "signature verified", False: "SIGNATURE WRONG", None: "unsigned"}[self.signature_ok]
        try:
            doc = self.json()
        except ValueError:
            return f"POST {self.path}: {len(self.body)} bytes, not JSON ({sig}), answered {self.status}"
        lines = [f"POST {self.path} ({sig}, answered {self.status})"]
        if isinstance(doc, dict) and doc.get("version") == 1:  # the vhd-gc webhook
            lines.append(f"  key {doc['key']}: {len(doc['items'])} item(s) for {doc['recipient']}")
            lines += [f"  - {i['name']} ({i['location']}), delete after {i['delete_after']}: {i['keep_command']}"
                      for i in doc["items"]]
        elif isinstance(doc, dict) and "blocks" in doc:  # Slack
            lines.append(f"  Slack: {doc.get('text')!r}, {len(doc['blocks'])} blocks")
        elif isinstance(doc, dict) and doc.get("type") == "message":  # Teams
            body = doc["attachments"][0]["content"]["body"]
            lines.append(f"  Teams: {body[0].get('text')!r}, {len(body)} card elements")
        return "\n".join(lines)


class _Handler(BaseHTTPRequestHandler):
    server_version = "vhdgc-receiver/1"
    receiver: HttpReceiver  # set on the subclass made per receiver

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        pass  # quiet: tests read .requests

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        rec = self.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, reply, held = rec._reply()
        req = HttpRequest(self.path, headers, body, status, rec.verify(headers, body))
        rec._record(req)
        if held is not None:
            held.wait(HOLD_LIMIT)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)
        except OSError:
            pass  # the client gave up (a held reply): nothing to answer


class HttpReceiver(_Recorder):
    """A webhook receiver on http(s)://127.0.0.1:PORT. ``secret``: the HMAC key it verifies with.
    ``tls``: serve HTTPS with a fresh self-signed certificate (:attr:`ca_file` is the client's trust)."""

    def __init__(self, *, secret: str | None = None, tls: bool = False) -> None:
        super().__init__()
        self.secret = secret
        self.tls = tls
        self.requests: list[HttpRequest] = []
        self.ca_file: str | None = None
        self.port = 0
        self._status, self._body = 200, b"ok"
        self._held: threading.Event | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._closed: _Port | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- lifecycle
    def start(self) -> HttpReceiver:
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="vhdgc-receiver-")
            cert, key = make_self_signed(self._tmp.name)
            self.ca_file = cert
            self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._ssl.load_cert_chain(cert, key)
        self._serve(0)
        return self

    def _serve(self, port: int) -> None:
        handler = type("Handler", (_Handler,), {"receiver": self})
        server = ThreadingHTTPServer((HOST, port), handler)
        server.daemon_threads = True
        if self._ssl is not None:
            server.socket = self._ssl.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"http-receiver-{self.port}", daemon=True)
        self._thread.start()

    def _shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = self._thread = None

    def stop(self) -> None:
        self.release()
        self._shutdown()
        if self._closed is not None:
            self._closed.close()
            self._closed = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> HttpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, path: str = "/hook") -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}{path}"

    # -- faults, settable at run time
    def ok(self, body: bytes = b"ok") -> None:
        """Answer 200 with ``body`` (the default)."""
        self.fail_with(200, body)

    def fail_with(self, status: int, body: bytes = b"") -> None:
        """Answer every request with ``status`` and ``body``."""
        with self._cond:
            self._status, self._body = status, body

    def hold(self) -> None:
        """Hold every reply until :meth:`release` (the client's read timeout fires first)."""
        with self._cond:
            self._held = threading.Event()

    def release(self) -> None:
        """Let held replies go, and stop holding."""
        with self._cond:
            held, self._held = self._held, None
        if held is not None:
            held.set()

    def refuse(self) -> None:
        """Close the listening socket: connections are refused (the port stays reserved)."""
        port = self.port
        self._shutdown()
        self._closed = _Port(port)

    def accept(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        if self._closed is not None:
            self._closed.close()
            self._closed = None
            self._serve(self.port)

    # -- inside
    def _reply(self) -> tuple[int, bytes, threading.Event | None]:
        with self._cond:
            return self._status, self._body, self._held

    def _record(self, req: HttpRequest) -> None:
        with self._cond:
            self.requests.append(req)
            self._cond.notify_all()

    def _count(self) -> int:
        return len(self.requests)

    def verify(self, headers: dict[str, str], body: bytes) -> bool | None:
        """The webhook's signature checked as a receiver would: HMAC-SHA256 over
        ``timestamp + "." + body`` with the shared secret, compared in constant time."""
        sig, ts = headers.get("x-vhdgc-signature"), headers.get("x-vhdgc-timestamp")
        if self.secret is None or sig is None:
            return None
        if ts is None or not ts.isdigit():
            return False
        expected = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, sig)


# ---------------------------------------------------------------------------------------------------
# SMTP


@dataclass
class SmtpEvent:
    what: str  # connect | ehlo | starttls | auth | mail | rcpt | data
    tls: bool  # was TLS up when it happened
    detail: str = ""


@dataclass
class SmtpMessage:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None  # who authenticated, if anyone
    message: EmailMessage = field(repr=False)

    def summary(self) -> str:
        """The headers a person looks at and the text part (the demo prints it)."""
        m = self.message
        head = [f"{h}: {m[h]}" for h in ("From", "To", "Subject", "Message-ID") if m[h]]
        head.append(f"(over {'TLS' if self.tls else 'PLAIN TEXT'}, authenticated as {self.login or 'nobody'})")
        body = m.get_body(("plain",))
        return "\n".join(head) + "\n\n" + (body.get_content() if body is not None else "")


class _SmtpHandler:
    def __init__(self, receiver: SmtpReceiver) -> None:
        self.r = receiver

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: N802 - aiosmtpd's
        session.host_name = hostname  # what aiosmtpd does itself when there is no hook
        self.r._event("ehlo", session, hostname)
        return responses

    def handle_STARTTLS(self, server, session, envelope):  # noqa: N802 - called synchronously
        self.r._event("starttls", session)
        return True

    async def handle_MAIL(self, server, session, envelope, address, mail_options):  # noqa: N802
        self.r._event("mail", session, address)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        self.r._event("rcpt", session, address)
        reply = self.r.reply_rcpt
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: N802
        self.r._event("data", session)
        held = self.r._held
        if held is not None:  # wait off the event loop: other connections go on
            await asyncio.get_running_loop().run_in_executor(None, held.wait, HOLD_LIMIT)
        reply = self.r.reply_data
        if reply:
            return reply
        data = envelope.original_content or envelope.content
        msg = email.message_from_bytes(data, policy=email.policy.default)
        auth = session.auth_data
        login = auth.login.decode() if isinstance(auth, LoginPassword) else None
        self.r._message(SmtpMessage(envelope.mail_from, list(envelope.rcpt_tos), data, self.r._is_tls(session),
                                    login, msg))
        return "250 2.0.0 Message accepted"


class _Controller(Controller):
    """aiosmtpd's Controller on port 0: the port the system chose is read back before the start-up probe."""

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpReceiver(_Recorder):
    """An SMTP server on 127.0.0.1:PORT. ``starttls``: offer STARTTLS (a fresh self-signed certificate;
    :attr:`ca_file` is the client's trust) and require it before MAIL; ``implicit_tls``: TLS from the first
    byte instead (port 465's way). ``users``: login -> password; AUTH is then required, and offered only
    over TLS."""

    def __init__(self, *, starttls: bool = True, implicit_tls: bool = False,
                 users: dict[str, str] | None = None) -> None:
        super().__init__()
        self.starttls = starttls and not implicit_tls
        self.implicit_tls = implicit_tls
        self.users = dict(users or {})
        self.messages: list[SmtpMessage] = []
        self.events: list[SmtpEvent] = []
        self.auth_attempts: list[tuple[str, bool, bool]] = []  # (login, over TLS, accepted)
        self.reply_data: str | None = None  # e.g. "451 4.3.0 try later": DATA answered with it
        self.reply_rcpt: str | None = None  # e.g. "550 5.1.1 no such user": RCPT answered with it
        self.ca_file: str | None = None
        self.port = 0
        self._tls: ssl.SSLContext | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._controller: _Controller | None = None
        self._closed: _Port | None = None
        self._held: threading.Event | None = None

    def start(self) -> SmtpReceiver:
        if self.starttls or self.implicit_tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="vhdgc-smtp-")
            cert, key = make_self_signed(self._tmp.name)
            self.ca_file = cert
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(cert, key)
        self._serve(0)
        return self

    def _serve(self, port: int) -> None:
        kwargs: dict[str, Any] = {}
        if self.implicit_tls:
            kwargs.update(ssl_context=self._tls)
        elif self._tls is not None:
            kwargs.update(tls_context=self._tls, require_starttls=True)
        if self.users:
            # with implicit TLS aiosmtpd sees no STARTTLS and would never offer AUTH; the whole connection
            # is TLS there, and _authenticate refuses any AUTH that is not over TLS
            kwargs.update(authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=not self.implicit_tls)
        controller = _Controller(_SmtpHandler(self), hostname=HOST, port=port, server_hostname="localhost",
                                 **kwargs)
        controller.start()
        self.port = controller.port
        self._controller = controller

    def stop(self) -> None:
        self.release()
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        if self._closed is not None:
            self._closed.close()
            self._closed = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> SmtpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self) -> None:
        """Hold the reply to DATA until :meth:`release` (the client's timeout fires first)."""
        self._held = threading.Event()

    def release(self) -> None:
        """Let held replies go, and stop holding."""
        held, self._held = self._held, None
        if held is not None:
            held.set()

    def refuse(self) -> None:
        """Stop listening: connections are refused (the port stays reserved)."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
        self._closed = _Port(self.port)

    def accept(self) -> None:
        """Listen again on the same port after :meth:`refuse`."""
        if self._closed is not None:
            self._closed.close()
            self._closed = None
            self._serve(self.port)

    # -- inside (called on aiosmtpd's thread)
    def _authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        tls = self._is_tls(session)
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        ok = tls and login in self.users and hmac.compare_digest(self.users[login], password)
        with self._cond:
            self.auth_attempts.append((login, tls, ok))
        self._event("auth", session, f"{mechanism} {login}")
        return AuthResult(success=ok, handled=False, auth_data=auth_data)

    def _event(self, what: str, session, detail: str = "") -> None:
        with self._cond:
            self.events.append(SmtpEvent(what, self._is_tls(session), detail))

    def _is_tls(self, session) -> bool:
        return self.implicit_tls or session.ssl is not None

    def _message(self, m: SmtpMessage) -> None:
        with self._cond:
            self.messages.append(m)
            self._cond.notify_all()

    def _count(self) -> int:
        return len(self.messages)
