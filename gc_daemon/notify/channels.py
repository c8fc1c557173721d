"""The notice channels: a signed JSON webhook, Slack and Microsoft Teams incoming webhooks, and email.

A channel turns a :class:`~gc_daemon.notify.model.Digest` into one message and sends it once: no
retries here (the outbox retries, with backoff), every wait bounded by the channel's ``timeout``, and
every failure raised as :class:`~gc_daemon.notify.model.DeliveryError` (``permanent`` when retrying
cannot help), never as anything else.

Secrets come only from the environment: the webhook's HMAC key (``secret_env``), SMTP credentials
(``username_env``, ``password_env``), and any URL that is itself a secret (Slack's and Teams' webhook
URLs are: whoever has one can post) through ``url_env``. No message, log line or error carries a
URL's path or query, nor a secret.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ..config import Duration, _Strict, is_loopback_url

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
    from urllib.parse import urlsplit

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


def missing_env(cfg: WebhookChannelConfig | SlackChannelConfig | TeamsChannelConfig | SmtpChannelConfig,
                env=None) -> list[str]:
    """The environment variables ``cfg`` reads that are unset or empty (for `config check`, `doctor`)."""
    import os

    env = os.environ if env is None else env
    return [n for n in cfg.env_names() if not env.get(n)]
