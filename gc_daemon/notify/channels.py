"""The notice channels: a signed JSON webhook, Slack and Microsoft Teams incoming webhooks, and email.

A channel turns a :class:`~gc_daemon.notify.model.Digest` into one message and sends it once: no
retries here (the outbox retries, with backoff), every wait bounded by the channel's ``timeout``, and
every failure raised as :class:`~gc_daemon.notify.model.DeliveryError` (``permanent`` when retrying
cannot help), never as anything else.

Secrets come only from the environment: the webhook's HMAC key (``secret_env``), SMTP credentials
(``username_env``, ``password_env``), and any URL that is itself a secret (Slack's and Teams' webhook
URLs are: whoever has one can post) through ``url_env``. No message, log line or error carries a
URL's path or query, nor a secret.

The formats, the webhook's signature, and which failures are transient: docs/notice-channels.md.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import math
import os
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import urllib3
from pydantic import Field, field_validator, model_validator

from .. import USER_AGENT
from ..config import Duration, _Strict, is_loopback_url
from ..urls import redact_text
from .model import Channel, DeliveryError, Digest, NoticeItem

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_NAME)]
# The headers the webhook sets itself; `headers` may not replace them.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "host", "idempotency-key", "x-vhdgc-signature", "x-vhdgc-timestamp", "user-agent"}
)
_HEADER_NAME = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$"  # an RFC 9110 token


def check_http_url(url: str) -> str:
    """``url`` when it is https, or http to a loopback address (a local receiver); ValueError
    otherwise. The message never holds the URL: it may be a secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("not a valid URL") from None
    if parts.scheme == "https" and host:
        return url
    if parts.scheme == "http" and host and is_loopback_url(url):
        return url
    raise ValueError("must be an https URL (plain http only to a loopback address)")


class _HttpChannelConfig(_Strict):
    url: str | None = None
    """The URL to POST to. Prefer `url_env` when the URL is itself a secret (Slack's and Teams' are):
    https, or plain http only to a loopback address. Exactly one of `url` and `url_env`."""
    url_env: EnvName | None = None
    """An environment variable holding the URL (read when a notice is sent)."""
    timeout: Duration = timedelta(seconds=10)
    """The longest one delivery may take (connect, and then the reply); the outbox retries a failure."""
    ca_file: str | None = None
    """A PEM file of the certificate authorities to trust instead of the system's (a private CA)."""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url(v)

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("the timeout must be positive")
        return v

    @model_validator(mode="after")
    def _one_url(self):
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of `url` and `url_env`")
        return self

    def env_names(self) -> list[str]:
        """The environment variables this channel reads."""
        return [n for n in (self.url_env,) if n]


class WebhookChannelConfig(_HttpChannelConfig):
    """A generic JSON webhook: the digest as a versioned JSON body, signed with HMAC-SHA256."""

    type: Literal["webhook"]
    """`webhook`: POST the digest as JSON, signed (X-VHDGC-Signature, X-VHDGC-Timestamp)."""
    secret_env: EnvName
    """An environment variable holding the HMAC-SHA256 key the receiver verifies the signature with."""
    headers: dict[Annotated[str, Field(pattern=_HEADER_NAME)], str] = {}
    """Extra request headers (no secrets: this file holds none). Cannot replace the ones vhd-gc sets."""

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if name.lower() in RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by vhd-gc")
            if any(c in value for c in "\r\n\x00"):
                raise ValueError(f"header {name!r}: a value cannot hold a line break")
        return v

    def env_names(self) -> list[str]:
        return [*super().env_names(), self.secret_env]


class SlackChannelConfig(_HttpChannelConfig):
    """A Slack incoming webhook (https://api.slack.com/messaging/webhooks)."""

    type: Literal["slack"]
    """`slack`: a Slack incoming webhook (text and Block Kit blocks)."""


class TeamsChannelConfig(_HttpChannelConfig):
    """A Microsoft Teams incoming webhook (a Workflows "post to a channel when a webhook request is
    received" URL, or a legacy connector URL): an Adaptive Card."""

    type: Literal["teams"]
    """`teams`: a Microsoft Teams incoming webhook (an Adaptive Card)."""


class SmtpChannelConfig(_Strict):
    """Email through an SMTP relay: one multipart (text and HTML) message per recipient."""

    type: Literal["smtp"]
    """`smtp`: email through an SMTP relay."""
    host: Annotated[str, Field(min_length=1)]
    """The relay's host name (the certificate must name it)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 587
    """The relay's port: 587 (submission, STARTTLS), 465 (`ssl: true`), 25."""
    starttls: bool = True
    """Upgrade the connection with STARTTLS before anything else is sent; a relay that does not offer it is
    a failed delivery, never a plain-text one. Not used with `ssl: true`."""
    ssl: bool = False
    """Speak TLS from the first byte (implicit TLS, port 465) instead of STARTTLS."""
    from_: Annotated[str, Field(alias="from", pattern=r"^[^@\s<>]+@[^@\s<>]+$")]
    """The sender address (From, and the envelope sender)."""
    username_env: EnvName | None = None
    """An environment variable holding the user name to authenticate with (AUTH); none: no AUTH."""
    password_env: EnvName | None = None
    """An environment variable holding the password (with `username_env`)."""
    timeout: Duration = timedelta(seconds=30)
    """The longest one SMTP operation may wait (connect, each reply)."""
    ca_file: str | None = None
    """A PEM file of the certificate authorities to trust instead of the system's (a private CA)."""

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: timedelta) -> timedelta:
        if v <= timedelta(0):
            raise ValueError("the timeout must be positive")
        return v

    @model_validator(mode="after")
    def _credentials_need_tls(self):
        if (self.username_env is None) != (self.password_env is None):
            raise ValueError("give both `username_env` and `password_env`, or neither")
        if self.username_env is not None and not (self.starttls or self.ssl):
            raise ValueError("credentials are sent only over TLS: set `starttls: true` or `ssl: true`")
        return self

    @property
    def sender(self) -> str:
        return self.from_

    def env_names(self) -> list[str]:
        """The environment variables this channel reads."""
        return [n for n in (self.username_env, self.password_env) if n]


ChannelConfig = Annotated[
    WebhookChannelConfig | SlackChannelConfig | TeamsChannelConfig | SmtpChannelConfig,
    Field(discriminator="type"),
]
"""One `notify.channels` entry, chosen by its `type`."""


AnyChannelConfig = WebhookChannelConfig | SlackChannelConfig | TeamsChannelConfig | SmtpChannelConfig
# `type` -> its model (for the docs generator: one table of keys per type)
CHANNEL_MODELS: dict[str, type[_Strict]] = {
    "webhook": WebhookChannelConfig, "slack": SlackChannelConfig, "teams": TeamsChannelConfig,
    "smtp": SmtpChannelConfig,
}


def missing_env(cfg: AnyChannelConfig, env: Mapping[str, str] | None = None) -> list[str]:
    """The environment variables ``cfg`` reads that are unset or empty (for `config check`, `doctor`)."""
    env = os.environ if env is None else env
    return [n for n in cfg.env_names() if not env.get(n)]


# ---------------------------------------------------------------------------------------------------
# The shared renderer: what every human-facing channel (Slack, Teams, email) says about an item.

_KIND_LABEL = {"vhd": "VHD", "managed_disk": "managed disk", "snapshot": "snapshot"}
_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(n: int) -> str:
    """``137438953472`` -> ``128 GiB``; ``1610612736`` -> ``1.5 GiB`` (binary units, at most two decimals)."""
    value, unit = float(n), 0
    while abs(value) >= 1024 and unit < len(_BINARY_UNITS) - 1:
        value /= 1024
        unit += 1
    if unit == 0:
        return f"{int(n)} B"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{text} {_BINARY_UNITS[unit]}"


def money(amount: float, currency: str) -> str:
    """``12.4, "USD"`` -> ``12.40 USD``."""
    return f"{amount:,.2f} {currency}"


def utc(dt: datetime) -> datetime:
    """``dt`` in UTC (a naive datetime is taken to be UTC already)."""
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def when(dt: datetime | None) -> str:
    """``2026-12-11 14:00 UTC``, or ``not scheduled yet`` without a date."""
    return "not scheduled yet" if dt is None else utc(dt).strftime("%Y-%m-%d %H:%M UTC")


def iso_z(dt: datetime | None) -> str | None:
    """ISO 8601 in UTC with a ``Z``: ``2026-12-11T14:00:00Z``."""
    return None if dt is None else utc(dt).isoformat().replace("+00:00", "Z")


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


@dataclass(frozen=True, slots=True)
class RenderedItem:
    """One item as people read it; every field is display text."""

    name: str
    kind: str  # VHD | managed disk | snapshot
    location: str
    url: str
    size: str  # "128 GiB", or "128 GiB (12.5 GiB billed)"
    cost: str  # "12.40 USD/month", or "unpriced"
    delete: str  # "2026-12-11 14:00 UTC", or "not scheduled yet"
    owner: str  # the owner, or "unknown"
    holder: str | None  # "last held by ..."
    keep_command: str
    reason: str  # "new candidate" | "reminder"


def render_item(item: NoticeItem) -> RenderedItem:
    size = human_bytes(item.size_bytes)
    if item.billed_bytes is not None and item.billed_bytes != item.size_bytes:
        size += f" ({human_bytes(item.billed_bytes)} billed)"
    cost = _finite(item.monthly_cost)
    return RenderedItem(
        name=item.name,
        kind=_KIND_LABEL.get(item.kind, item.kind),
        location=item.location,
        url=item.url,
        size=size,
        cost="unpriced" if cost is None else f"{money(cost, item.currency)}/month",
        delete=when(item.delete_after),
        owner=item.owner or "unknown",
        holder=item.holder,
        keep_command=item.keep_command,
        reason="reminder" if item.reason == "reminder" else "new candidate",
    )


@dataclass(frozen=True, slots=True)
class RenderedDigest:
    """A digest as people read it: the headline (an email's subject, a card's title), an introduction,
    its items in order (soonest deletion first), and helpers for "and N more" lines."""

    headline: str
    intro: str
    items: tuple[RenderedItem, ...]
    source: tuple[NoticeItem, ...]  # the same order as ``items``

    def more_line(self, shown: int) -> str:
        """The line that stands for the items after the first ``shown``."""
        rest = self.source[shown:]
        cost = total_cost(rest)
        return (f"...and {len(rest)} more" + (f" ({cost}/month)" if cost else "")
                + ": `vhd-gc report` lists them all.")


def total_cost(items) -> str:
    """``12.40 USD`` (or ``12.40 USD + 3.00 EUR``); empty when none is priced."""
    sums: dict[str, float] = {}
    for it in items:
        cost = _finite(it.monthly_cost)
        if cost is not None:
            sums[it.currency] = sums.get(it.currency, 0.0) + cost
    return " + ".join(money(v, k) for k, v in sorted(sums.items()))


def _order(item: NoticeItem) -> tuple:
    return (item.delete_after is None, utc(item.delete_after) if item.delete_after else datetime.min, item.location,
            item.name)


def render_digest(digest: Digest) -> RenderedDigest:
    """The one rendering Slack, Teams and email share."""
    items = tuple(sorted(digest.items, key=_order))
    n = len(items)
    noun = "leftover" if n == 1 else "leftovers"
    whose = " of yours" if items and all(it.owner for it in items) else ""
    dates = [utc(it.delete_after) for it in items if it.delete_after is not None]
    verb = "is" if n == 1 else "are"
    if dates:
        tail = f"will be deleted from {min(dates):%Y-%m-%d}"
    else:
        tail = f"{verb} about to be scheduled for deletion"
    cost = total_cost(items)
    reminder = "reminder: " if items and all(it.reason == "reminder" for it in items) else ""
    headline = f"vhd-gc: {reminder}{n} {noun}{whose} {tail}" + (f" ({cost}/month)" if cost else "")
    intro = (
        f"vhd-gc found {n} {noun} (Azure VHDs or managed disks that nothing uses any more) that "
        f"{'it' if n == 1 else 'they'} will delete unless kept. To keep one, run its keep command; "
        "to let it go, do nothing."
    )
    return RenderedDigest(headline=headline, intro=intro, items=tuple(render_item(i) for i in items), source=items)


# ---------------------------------------------------------------------------------------------------
# Failures: what is transient, what is permanent, and messages without secrets.

_MAX_REPLY = 64 * 1024  # read at most this much of a receiver's reply


def _transient_status(status: int) -> bool:
    return status in (408, 429) or status >= 500


def _safe_endpoint(url: str) -> str:
    """``https://hooks.slack.com`` of a URL: scheme, host and port only (its path may be a secret)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


class _Scrubber:
    """Removes known secrets (and any URL's query and userinfo) from a text."""

    def __init__(self, *secrets: str | None) -> None:
        pieces: set[str] = set()
        for s in secrets:
            if not s:
                continue
            pieces.add(s)
            if "://" in s:
                try:
                    parts = urlsplit(s)
                except ValueError:
                    continue
                if parts.path and parts.path != "/":
                    pieces.add(parts.path)
                if parts.query:
                    pieces.add(parts.query)
        # the longest first, so that a secret's substring never leaves the rest of it behind
        self._pieces = sorted((p for p in pieces if len(p) >= 3), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for p in self._pieces:
            text = text.replace(p, "<redacted>")
        return redact_text(text)


def _describe(exc: BaseException) -> str:
    """A short name for a network failure, without the library's message (urllib3 puts the URL's path in
    it)."""
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(chain) < 6:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, ssl.SSLCertVerificationError):
            return f"TLS certificate not trusted ({e.verify_message})"
    for e in chain:
        # urllib3's NewConnectionError (and NameResolutionError under it) subclass ConnectTimeoutError:
        # name them before the timeouts
        if isinstance(e, (urllib3.exceptions.NameResolutionError, socket.gaierror)):
            return "host name not resolved"
        if isinstance(e, urllib3.exceptions.NewConnectionError):
            return "could not connect"
        if isinstance(e, (urllib3.exceptions.TimeoutError, socket.timeout, TimeoutError)):
            return "timed out"
        if isinstance(e, ConnectionResetError):
            return "connection reset"
        if isinstance(e, ssl.SSLError):
            return f"TLS error ({e.reason or type(e).__name__})"
        if isinstance(e, urllib3.exceptions.ProtocolError):
            return "connection closed without a reply"
    return type(exc).__name__


def _is_cert_failure(exc: BaseException) -> bool:
    e: BaseException | None = exc
    for _ in range(6):
        if e is None:
            return False
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        e = e.__cause__ or e.__context__
    return False


# ---------------------------------------------------------------------------------------------------
# HTTP channels: the webhook, Slack, Teams.


@dataclass(frozen=True, slots=True)
class HttpReply:
    status: int
    body: bytes


class _HttpChannel:
    """POSTs a JSON body to a URL, once, within the timeout; subclasses say what the body is."""

    kind = "http"

    def __init__(self, name: str, cfg: _HttpChannelConfig, env: Mapping[str, str]) -> None:
        self.name = name
        self._cfg = cfg
        self._env = env
        self._pools: dict[str | None, urllib3.PoolManager] = {}  # by proxy; made at the first send
        self._lock = threading.Lock()

    # -- what subclasses provide
    def body(self, digest: Digest) -> bytes:
        raise NotImplementedError

    def headers(self, digest: Digest, body: bytes) -> dict[str, str]:
        return {}

    def check_reply(self, reply: HttpReply, fail: Callable[..., DeliveryError]) -> None:
        """Raise ``fail(...)`` when a 2xx reply still says the message was not taken."""

    # -- the delivery
    @property
    def endpoint(self) -> str:
        """Where the channel posts, fit to show: scheme, host, port (never the path, which may be a
        secret), or the environment variable that holds the URL."""
        if self._cfg.url is not None:
            return _safe_endpoint(self._cfg.url)
        url = self._env.get(self._cfg.url_env or "")
        return _safe_endpoint(url) if url else f"${self._cfg.url_env}"

    def _secrets(self) -> list[str | None]:
        return [self._url_or_none()]

    def _url_or_none(self) -> str | None:
        return self._cfg.url if self._cfg.url is not None else self._env.get(self._cfg.url_env or "")

    def _fail(self, what: str, *, permanent: bool) -> DeliveryError:
        scrub = _Scrubber(*self._secrets())
        return DeliveryError(scrub(f"{self.name} ({self.kind}): {what}"), permanent=permanent)

    def _url(self) -> str:
        if self._cfg.url is not None:
            return self._cfg.url
        url = self._env.get(self._cfg.url_env or "")
        if not url:
            raise self._fail(f"the environment variable {self._cfg.url_env} (the URL) is not set", permanent=True)
        try:
            return check_http_url(url.strip())
        except ValueError as exc:
            raise self._fail(f"the URL in {self._cfg.url_env} {exc}", permanent=True) from None

    def _manager(self, url: str) -> urllib3.PoolManager:
        """Direct, or through the proxy the environment names for ``url`` (HTTPS_PROXY, NO_PROXY, ... as
        requests reads them: corporate networks reach Slack and Teams through one). TLS is verified
        against ``ca_file``, else certifi's bundle (what requests and the Azure clients trust)."""
        from requests.utils import get_auth_from_url, get_environ_proxies, prepend_scheme_if_needed, select_proxy

        chosen = select_proxy(url, get_environ_proxies(url))
        proxy = prepend_scheme_if_needed(chosen, "http") if chosen else None
        with self._lock:
            manager = self._pools.get(proxy)
            if manager is None:
                import certifi

                tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": self._cfg.ca_file or certifi.where()}
                if proxy is None:
                    manager = urllib3.PoolManager(num_pools=2, maxsize=1, retries=False, **tls)
                else:
                    if urlsplit(proxy).scheme.lower() not in ("http", "https"):
                        raise self._fail(f"the proxy for {_safe_endpoint(url)} is not an http(s) proxy",
                                         permanent=True)
                    user, password = get_auth_from_url(proxy)
                    headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
                    manager = urllib3.ProxyManager(proxy, num_pools=2, maxsize=1, retries=False,
                                                   proxy_headers=headers, **tls)
                self._pools[proxy] = manager
        return manager

    def send(self, digest: Digest) -> None:
        try:
            self._send(digest)
        except DeliveryError:
            raise
        except Exception as exc:  # never anything but DeliveryError (the outbox counts on it)
            raise self._fail(f"could not send: {type(exc).__name__}", permanent=True) from None

    def _send(self, digest: Digest) -> None:
        url = self._url()
        endpoint = _safe_endpoint(url)
        body = self.body(digest)
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
                   **self.headers(digest, body)}
        seconds = self._cfg.timeout.total_seconds()
        try:
            resp = self._manager(url).request(
                "POST", url, body=body, headers=headers, retries=False, redirect=False,
                timeout=urllib3.Timeout(total=seconds), preload_content=False,
            )
            try:
                data = resp.read(_MAX_REPLY)
            finally:
                resp.close()
                resp.release_conn()
        except urllib3.exceptions.LocationValueError:
            raise self._fail(f"POST to {endpoint}: the URL is not valid", permanent=True) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            what = _describe(exc)
            raise self._fail(f"POST to {endpoint}: {what}", permanent=_is_cert_failure(exc)) from None
        reply = HttpReply(resp.status, data)
        if 200 <= reply.status < 300:
            self.check_reply(reply, lambda what, permanent: self._fail(f"POST to {endpoint}: {what}",
                                                                       permanent=permanent))
            return
        snippet = data[:300].decode("utf-8", "replace").strip().replace("\n", " ")
        detail = f"HTTP {reply.status}" + (f": {snippet}" if snippet else "")
        if 300 <= reply.status < 400:
            detail += " (redirects are not followed)"
        raise self._fail(f"POST to {endpoint}: {detail}", permanent=not _transient_status(reply.status))


WEBHOOK_SCHEMA_VERSION = 1
SIGNATURE_HEADER = "X-VHDGC-Signature"
TIMESTAMP_HEADER = "X-VHDGC-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _item_json(item: NoticeItem) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(NoticeItem):
        value = getattr(item, f.name)
        if isinstance(value, datetime):
            value = iso_z(value)
        elif isinstance(value, float):
            value = _finite(value)
        out[f.name] = value
    return out


def webhook_body(digest: Digest) -> bytes:
    """The webhook's body: UTF-8 JSON, schema version 1 (docs/notice-channels.md).

    ``{"version": 1, "key", "channel", "recipient", "created_at", "items": [{every NoticeItem field}]}``;
    datetimes are ISO 8601 in UTC with a ``Z``; a cost that is not a finite number is ``null``. A new
    field may be added within version 1; a change of meaning makes version 2.
    """
    doc = {
        "version": WEBHOOK_SCHEMA_VERSION,
        "key": digest.key,
        "channel": digest.channel,
        "recipient": digest.recipient,
        "created_at": iso_z(digest.created_at),
        "items": [_item_json(i) for i in digest.items],
    }
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def webhook_signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 keyed with ``secret`` over ``timestamp``, a dot, and the exact body
    bytes (``f"{timestamp}.".encode() + body``). The timestamp is the X-VHDGC-Timestamp header, Unix
    seconds; a receiver recomputes the HMAC, compares in constant time, and refuses a timestamp too far
    from its clock (replays)."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


class WebhookChannel(_HttpChannel):
    """The generic JSON webhook: :func:`webhook_body`, signed (:func:`webhook_signature`), with the
    digest's key as ``Idempotency-Key`` (a retry after a lost reply repeats the key: deduplicate on it)."""

    kind = "webhook"

    def __init__(self, name: str, cfg: WebhookChannelConfig, env: Mapping[str, str],
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(name, cfg, env)
        self._clock = clock

    def _secrets(self) -> list[str | None]:
        return [*super()._secrets(), self._env.get(self._cfg.secret_env)]

    def body(self, digest: Digest) -> bytes:
        return webhook_body(digest)

    def headers(self, digest: Digest, body: bytes) -> dict[str, str]:
        secret = self._env.get(self._cfg.secret_env)
        if not secret:
            raise self._fail(f"the environment variable {self._cfg.secret_env} (the signing key) is not set",
                             permanent=True)
        timestamp = str(int(self._clock()))
        return {
            **self._cfg.headers,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: webhook_signature(secret.encode("utf-8"), timestamp, body),
            IDEMPOTENCY_HEADER: digest.key,
        }


# Slack: incoming webhooks take {"text", "blocks"} (https://api.slack.com/messaging/webhooks); `text` is the
# notification's fallback when blocks are given. Limits of Block Kit
# (https://api.slack.com/reference/block-kit/blocks): at most 50 blocks a message, a section's text at most
# 3,000 characters, a header's at most 150. Slack also refuses a message whose blocks are too long as a
# whole (msg_blocks_too_long, observed near 13,000 characters: slackapi/bolt-js#2509): we stay under 12,000.
# Its errors (same page, "Handling errors"): 400 invalid_payload, 403 action_prohibited, 404
# channel_not_found, 410 channel_is_archived, 500 rollup_error; 429 when rate limited.
SLACK_MAX_BLOCKS = 50
SLACK_MAX_SECTION = 3000
SLACK_MAX_HEADER = 150
SLACK_MAX_BLOCKS_TEXT = 12000


def _slack_escape(text: str) -> str:
    # mrkdwn's three control characters (https://api.slack.com/reference/surfaces/formatting#escaping)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_code(text: str) -> str:
    """``text`` in a code span (no formatting inside), unless it holds a backtick (then escaped plain)."""
    return f"`{_slack_escape(text)}`" if "`" not in text and "\n" not in text else _slack_escape(text)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def slack_item_text(it: RenderedItem) -> str:
    lines = [
        f"*{_slack_escape(it.kind)}* {_slack_code(it.name)}" + (" (reminder)" if it.reason == "reminder" else ""),
        f"*Where:* {_slack_code(it.location)}",
        f"*Size:* {it.size}   *Cost:* {it.cost}",
        f"*Deleted from:* {it.delete}",
        f"*Owner:* {_slack_escape(it.owner)}" + (f"   *Last held by:* {_slack_code(it.holder)}" if it.holder else ""),
        f"*Keep it:* {_slack_code(it.keep_command)}",
    ]
    text = "\n".join(lines)
    if len(text) > SLACK_MAX_SECTION:  # a very long name: shorten the name, never the command
        lines[0] = _cut(lines[0], max(200, SLACK_MAX_SECTION - (len(text) - len(lines[0])) - 1))
        text = _cut("\n".join(lines), SLACK_MAX_SECTION)
    return text


def slack_payload(digest: Digest) -> dict[str, Any]:
    r = render_digest(digest)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(r.headline, SLACK_MAX_HEADER)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _slack_escape(r.intro)}},
    ]
    used = len(r.headline) + len(r.intro)
    shown = 0
    for it in r.items:
        text = slack_item_text(it)
        # room for this item and, if any remain after it, the "and N more" block
        remaining_after = len(r.items) - shown - 1
        reserve = 1 if remaining_after else 0
        if len(blocks) + 1 + reserve > SLACK_MAX_BLOCKS or used + len(text) + (300 if reserve else 0) > SLACK_MAX_BLOCKS_TEXT:
            break
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
        used += len(text)
        shown += 1
    if shown < len(r.items):
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _cut(r.more_line(shown), 3000)}]})
    return {"text": _slack_escape(r.headline), "blocks": blocks}


class SlackChannel(_HttpChannel):
    kind = "slack"

    def body(self, digest: Digest) -> bytes:
        return json.dumps(slack_payload(digest), ensure_ascii=False).encode("utf-8")


# Teams: an incoming webhook (a Workflows "When a Teams webhook request is received" URL, or a legacy
# connector) takes an Adaptive Card inside a message:
#   {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
#    "contentUrl": null, "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
#    "type": "AdaptiveCard", "version": "1.2", "body": [...]}}]}
# (Microsoft Learn, "Send Adaptive Cards using an incoming webhook",
#  https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using#send-adaptive-cards-using-an-incoming-webhook).
# "The message size limit is 28 KB" (.../how-to/add-incoming-webhook); senders report failures above
# about 21 KB, so a card stays under 20,000 bytes and the rest becomes an "and N more" line. A legacy
# connector answers a throttled post with 200 and "Microsoft Teams endpoint returned HTTP error 429" in
# the body (same page, "Rate limiting for connectors"): that is a transient failure, not a delivery.
TEAMS_MAX_BYTES = 20000
TEAMS_CARD_VERSION = "1.2"


def _teams_item(it: RenderedItem) -> dict[str, Any]:
    facts = [
        {"title": "Where", "value": it.location},
        {"title": "Size", "value": it.size},
        {"title": "Cost", "value": it.cost},
        {"title": "Deleted from", "value": it.delete},
        {"title": "Owner", "value": it.owner},
    ]
    if it.holder:
        facts.append({"title": "Last held by", "value": it.holder})
    return {
        "type": "Container",
        "separator": True,
        "items": [
            {"type": "TextBlock", "text": f"{it.kind}: {it.name}" + (" (reminder)" if it.reason == "reminder" else ""),
             "weight": "Bolder", "wrap": True},
            {"type": "FactSet", "facts": facts},
            {"type": "TextBlock", "text": "Keep it:", "spacing": "Small", "isSubtle": True, "wrap": True},
            {"type": "TextBlock", "text": it.keep_command, "fontType": "Monospace", "wrap": True},
        ],
    }


def _teams_envelope(body: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                "type": "AdaptiveCard",
                "version": TEAMS_CARD_VERSION,
                "msteams": {"width": "Full"},
                "body": body,
            },
        }],
    }


def _size(doc: Any) -> int:
    return len(json.dumps(doc, ensure_ascii=False).encode("utf-8"))


def teams_payload(digest: Digest) -> dict[str, Any]:
    r = render_digest(digest)
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": r.headline, "size": "Large", "weight": "Bolder", "wrap": True},
        {"type": "TextBlock", "text": r.intro, "wrap": True},
    ]
    more_reserve = 400  # bytes for the "and N more" line
    size = _size(_teams_envelope(body))
    shown = 0
    for i, it in enumerate(r.items):
        block = _teams_item(it)
        extra = _size(block) + 1
        reserve = more_reserve if i < len(r.items) - 1 else 0
        if size + extra + reserve > TEAMS_MAX_BYTES:
            break
        body.append(block)
        size += extra
        shown += 1
    if shown < len(r.items):
        body.append({"type": "TextBlock", "text": r.more_line(shown), "wrap": True, "separator": True})
    return _teams_envelope(body)


class TeamsChannel(_HttpChannel):
    kind = "teams"

    def body(self, digest: Digest) -> bytes:
        return json.dumps(teams_payload(digest), ensure_ascii=False).encode("utf-8")

    def check_reply(self, reply: HttpReply, fail: Callable[..., DeliveryError]) -> None:
        text = reply.body[:2000].decode("utf-8", "replace")
        if "HTTP error 429" in text:
            raise fail("HTTP 200 but Teams says it was throttled (HTTP error 429)", permanent=False)
        if "HTTP error" in text:
            code = text.split("HTTP error", 1)[1].strip()[:3]
            permanent = not (code.isdigit() and _transient_status(int(code)))
            raise fail(f"HTTP 200 but Teams says HTTP error {code}", permanent=permanent)


# ---------------------------------------------------------------------------------------------------
# Email.


def message_id(key: str, sender: str) -> str:
    """The Message-ID of a digest's email: derived from its key, so a resent digest (a retry after a lost
    reply) carries the same Message-ID and receivers can deduplicate it."""
    domain = sender.rpartition("@")[2] or "vhd-gc.invalid"
    return f"<vhdgc.{hashlib.sha256(key.encode('utf-8')).hexdigest()[:40]}@{domain}>"


def email_text(r: RenderedDigest) -> str:
    out = [r.headline, "", r.intro, ""]
    for it in r.items:
        out += [
            f"{it.kind}: {it.name}" + (" (reminder)" if it.reason == "reminder" else ""),
            f"  Where:        {it.location}",
            f"  Size:         {it.size}",
            f"  Cost:         {it.cost}",
            f"  Deleted from: {it.delete}",
            f"  Owner:        {it.owner}",
        ]
        if it.holder:
            out.append(f"  Last held by: {it.holder}")
        out += [f"  URL:          {it.url}", "  Keep it:", f"    {it.keep_command}", ""]
    out.append("-- vhd-gc")
    return "\n".join(out) + "\n"


def email_html(r: RenderedDigest) -> str:
    e = html.escape
    rows = []
    for it in r.items:
        holder = f"<tr><th align='left'>Last held by</th><td>{e(it.holder)}</td></tr>" if it.holder else ""
        rows.append(
            "<div style='margin:1em 0;padding:.5em 1em;border-left:3px solid #c33'>"
            f"<p><b>{e(it.kind)}: {e(it.name)}</b>{' (reminder)' if it.reason == 'reminder' else ''}</p>"
            "<table cellpadding='2'>"
            f"<tr><th align='left'>Where</th><td>{e(it.location)}</td></tr>"
            f"<tr><th align='left'>Size</th><td>{e(it.size)}</td></tr>"
            f"<tr><th align='left'>Cost</th><td>{e(it.cost)}</td></tr>"
            f"<tr><th align='left'>Deleted from</th><td>{e(it.delete)}</td></tr>"
            f"<tr><th align='left'>Owner</th><td>{e(it.owner)}</td></tr>{holder}"
            f"<tr><th align='left'>URL</th><td>{e(it.url)}</td></tr>"
            "</table>"
            f"<p>Keep it:<br><code>{e(it.keep_command)}</code></p></div>"
        )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{e(r.headline)}</title></head><body style='font-family:sans-serif'>"
        f"<h2>{e(r.headline)}</h2><p>{e(r.intro)}</p>{''.join(rows)}<p>-- vhd-gc</p></body></html>\n"
    )


def email_message(digest: Digest, sender: str) -> EmailMessage:
    """The multipart (text, then HTML) email of a digest."""
    r = render_digest(digest)
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = digest.recipient
    msg["Subject"] = r.headline
    msg["Date"] = format_datetime(utc(digest.created_at))
    msg["Message-ID"] = message_id(digest.key, sender)
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies
    msg["X-VHDGC-Key"] = digest.key
    msg.set_content(email_text(r))
    msg.add_alternative(email_html(r), subtype="html")
    return msg


def _valid_address(addr: str) -> bool:
    return (addr.count("@") == 1 and all(addr.split("@")) and not any(c in addr for c in " \t\r\n<>,;\x00"))


class SmtpChannel:
    """Email through an SMTP relay: STARTTLS (or implicit TLS) before anything else, AUTH only over TLS,
    one message to ``digest.recipient``. SMTP 4xx is transient, 5xx permanent."""

    kind = "smtp"

    def __init__(self, name: str, cfg: SmtpChannelConfig, env: Mapping[str, str]) -> None:
        self.name = name
        self._cfg = cfg
        self._env = env

    @property
    def endpoint(self) -> str:
        return f"smtp://{self._cfg.host}:{self._cfg.port}"

    def _fail(self, what: str, *, permanent: bool) -> DeliveryError:
        secrets = [self._env.get(n) for n in (self._cfg.password_env, self._cfg.username_env) if n]
        return DeliveryError(_Scrubber(*secrets)(f"{self.name} (smtp {self._cfg.host}:{self._cfg.port}): {what}"),
                             permanent=permanent)

    def send(self, digest: Digest) -> None:
        try:
            self._send(digest)
        except DeliveryError:
            raise
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [c for c, _ in exc.recipients.values()]
            reply = "; ".join(f"{c} {m.decode('utf-8', 'replace') if isinstance(m, bytes) else m}"
                              for c, m in exc.recipients.values())
            raise self._fail(f"recipient refused: {reply}", permanent=all(c >= 500 for c in codes)) from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
            raise self._fail(f"{type(exc).__name__}: {exc.smtp_code} {text}",
                             permanent=not 400 <= exc.smtp_code < 500) from None
        except smtplib.SMTPNotSupportedError as exc:
            raise self._fail(f"the relay does not support it: {exc}", permanent=True) from None
        except smtplib.SMTPServerDisconnected as exc:
            # smtplib reports a reply that never came (a socket timeout) as a disconnection
            what = "timed out waiting for the relay" if "timed out" in str(exc) else "the relay closed the connection"
            raise self._fail(what, permanent=False) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise self._fail(_describe(exc), permanent=_is_cert_failure(exc)) from None
        except Exception as exc:  # never anything but DeliveryError
            raise self._fail(f"could not send: {type(exc).__name__}", permanent=True) from None

    def _tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._cfg.ca_file) if self._cfg.ca_file else ssl.create_default_context()

    def _credentials(self) -> tuple[str, str] | None:
        if not self._cfg.username_env:
            return None
        user = self._env.get(self._cfg.username_env)
        password = self._env.get(self._cfg.password_env or "")
        if not user or not password:
            missing = self._cfg.username_env if not user else self._cfg.password_env
            raise self._fail(f"the environment variable {missing} is not set", permanent=True)
        return user, password

    def _send(self, digest: Digest) -> None:
        if not _valid_address(digest.recipient):
            raise self._fail("the recipient is not an email address", permanent=True)
        cfg = self._cfg
        credentials = self._credentials()
        msg = email_message(digest, cfg.from_)
        timeout = cfg.timeout.total_seconds()
        if cfg.ssl:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=timeout, context=self._tls())
        else:
            smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=timeout)
        done = False
        try:
            smtp.ehlo()
            if cfg.starttls and not cfg.ssl:
                if not smtp.has_extn("starttls"):
                    raise self._fail("the relay does not offer STARTTLS; nothing was sent", permanent=True)
                smtp.starttls(context=self._tls())
                smtp.ehlo()
            if credentials is not None:
                # the config refuses credentials without TLS; this checks the connection itself
                if not isinstance(smtp.sock, ssl.SSLSocket):
                    raise self._fail("refusing to send credentials without TLS", permanent=True)
                smtp.login(*credentials)
            smtp.send_message(msg, from_addr=cfg.from_, to_addrs=[digest.recipient])
            done = True
        finally:
            if done:
                try:
                    smtp.quit()
                except (smtplib.SMTPException, OSError):
                    pass  # the message was taken: a failed QUIT does not undo that
            smtp.close()


def make_channel(name: str, cfg: AnyChannelConfig, env: Mapping[str, str] = os.environ, *,
                 clock: Callable[[], float] = time.time) -> Channel:
    """The channel ``cfg`` describes. Opens nothing and reads no secret yet: the environment is read at
    each send (a missing variable is a permanent :class:`DeliveryError` then; :func:`missing_env` finds
    it at start). ``clock`` gives the webhook's timestamp (Unix seconds)."""
    if isinstance(cfg, WebhookChannelConfig):
        return WebhookChannel(name, cfg, env, clock)
    if isinstance(cfg, SlackChannelConfig):
        return SlackChannel(name, cfg, env)
    if isinstance(cfg, TeamsChannelConfig):
        return TeamsChannel(name, cfg, env)
    if isinstance(cfg, SmtpChannelConfig):
        return SmtpChannel(name, cfg, env)
    raise TypeError(f"not a channel configuration: {type(cfg).__name__}")
