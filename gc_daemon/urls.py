"""Blob URL -> canonical (account, container, blob) key.

The matching rule of the contract: the account is the host's first label (``<account>.blob.<any
suffix>``, also Azure's DNS-zone endpoints ``<account>.zNN.blob.<suffix>``, private endpoints
``<account>.privatelink.blob.<suffix>``, and the account's secondary and routing-preference
endpoints ``<account>-secondary``, ``<account>-microsoftrouting``, ...), or the first path segment
when the host is an IP address or localhost (path-style, as Azurite and Azure Stack serve it). Host and container compare without case; the blob name exactly, after percent-decoding.

Anything that does not fit is an error, never a guess: a reference we cannot place makes the pass
incomplete, because a wrong key is how collectors delete disks in use.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Callable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from .domain import BlobKey, ContainerKey

_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_CONTAINER = re.compile(r"^(?:\$root|\$web|\$logs|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})$")
_ZONE = re.compile(r"^z[0-9]{2}$")
MAX_BLOB_NAME = 1024
_new_key = tuple.__new__  # BlobKey(a, c, b) without the NamedTuple constructor's Python frame
_intern = sys.intern
# The shape nearly every reference has: public or sovereign cloud host in lower case, a lower-case
# container, no percent-encoding, query or fragment. Parsed by one regex; anything else takes the
# general path. Both give the same key (a property test holds them to it).
_FAST = re.compile(
    r"https?://([a-z0-9]{3,24})\.blob\.core\.(?:windows\.net|usgovcloudapi\.net|chinacloudapi\.cn)"
    r"/([a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})/([^?#%\s\x00-\x1f\x7f\\]{1,1024})\Z"
)


# The same shape, up to the container (the blob name is checked with string operations): what
# blob_url_parser matches once per distinct prefix.
_FAST_PREFIX = re.compile(
    r"https?://([a-z0-9]{3,24})\.blob\.core\.(?:windows\.net|usgovcloudapi\.net|chinacloudapi\.cn)"
    r"/([a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62})\Z"
)


class UrlError(ValueError):
    """A URI that cannot be placed on exactly one (account, container[, blob])."""

    def __init__(self, uri: str, why: str) -> None:
        super().__init__(f"cannot parse blob URL {redact_query(uri)!r}: {why}")
        self.uri = uri
        self.why = why


QUERY_REDACTED = "?<query redacted>"
USERINFO_REDACTED = "<redacted>@"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")


def _redact_one(text: str, query_stop: str) -> str:
    """``text`` starts with a URL: its userinfo and its query replaced by markers.

    The userinfo is whatever precedes the last ``@`` before the first ``/`` after the scheme (a
    password holding ``?`` or ``#`` is redacted too); the query runs from the first ``?`` after
    it to the end, or to the first character of ``query_stop``. Host, port and path are kept.
    """
    m = _SCHEME.match(text)
    if m is not None:
        start = m.end()
        slash = text.find("/", start)
        authority_end = len(text) if slash < 0 else slash
        at = text.rfind("@", start, authority_end)
        if at >= 0 and text[start:at + 1] != USERINFO_REDACTED:
            text = text[:start] + USERINFO_REDACTED + text[at + 1:]
            start += len(USERINFO_REDACTED)
        else:
            start = at + 1 if at >= 0 else start
    else:
        start = 0
    q = text.find("?", start)
    if q < 0:
        return text
    end = q + 1
    while end < len(text) and text[end] not in query_stop:
        end += 1
    if end == q + 1:
        return text  # an empty query (or a marker already there)
    return text[:q] + QUERY_REDACTED + text[end:]


def redact_url(uri: object) -> str:
    """The URL with its userinfo (``user:password@``) and its whole query (a SAS signature, a
    token) replaced by markers; scheme, host, port and path are kept, so that an operator still
    recognises it. The one redaction of URLs: effective configuration, errors, logs, explain."""
    return _redact_one(str(uri), "")


redact_query = redact_url  # the older name

# In free text (log fields, exception messages): every URL, up to the next whitespace; its query
# ends at a quote or bracket that closes the text around it. Secret query parameters outside a
# URL with a scheme (``/acct?sv=...&sig=...`` in an HTTP library's message) are redacted by name.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:sig|signature|password|passwd|pwd|secret|client_secret|token|access_token"
    r"|refresh_token|code|key|api[-_]?key|sas|sastoken)=)[^&\s\"'<>`]+"
)
_TEXT_QUERY_STOP = "\"'<>`"


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted as :func:`redact_url` does, and secret query
    parameters (``sig=``, ``password=``, ...) anywhere replaced by ``<redacted>``."""
    if "://" not in text and "=" not in text:
        return text
    if "://" in text:
        text = _URL_IN_TEXT.sub(lambda m: _redact_one(m.group(0), _TEXT_QUERY_STOP), text)
    if "=" in text:
        text = _SECRET_PARAM.sub(r"\1<redacted>", text)
    return text


def public_endpoint(endpoint: str) -> str:
    """An endpoint as it appears in a blob's canonical URL: no userinfo, no query, no fragment."""
    try:
        parts = urlsplit(endpoint)
    except ValueError:
        return redact_url(endpoint)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")


def _is_path_style(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_account(host: str) -> str | None:
    """The account label of a blob host: ``<account>.blob.<suffix>``, Azure's DNS-zone endpoints
    ``<account>.zNN.blob.<suffix>``, and private endpoints ``<account>.privatelink.blob.<suffix>``
    (the account itself)."""
    labels = host.split(".")
    if len(labels) >= 3 and labels[1] == "blob":
        return _strip_endpoint_suffix(labels[0])
    if len(labels) >= 4 and labels[2] == "blob" and (_ZONE.match(labels[1]) or labels[1] == "privatelink"):
        return _strip_endpoint_suffix(labels[0])
    return None


# The account's other endpoints: its read-only secondary (RA-GRS) and its routing-preference
# endpoints (storage__StorageAccountList.json in azure-rest-api-specs lists
# sto1125-microsoftrouting.blob.core.windows.net beside sto1125.blob.core.windows.net).
_ENDPOINT_SUFFIXES = ("-microsoftrouting-secondary", "-internetrouting-secondary", "-microsoftrouting",
                      "-internetrouting", "-secondary")


def _strip_endpoint_suffix(label: str) -> str:
    if "-" in label:
        for suffix in _ENDPOINT_SUFFIXES:
            if label.endswith(suffix):
                return label[: -len(suffix)]
    return label


def account_of(uri: str) -> str | None:
    """The storage account a URI could address, or None when its host can be no storage account's
    blob endpoint (a managed disk's export host ``md-*.blob.storage.azure.net``, a file share, a key
    vault, ...). Raises :class:`UrlError` when the URI is not an http(s) URL with a host at all."""
    if not isinstance(uri, str) or not uri:
        raise UrlError(str(uri), "empty")
    try:
        parts = urlsplit(uri.strip())
        host = parts.hostname
    except ValueError as exc:
        raise UrlError(uri, str(exc)) from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise UrlError(uri, "not an http(s) URL with a host")
    host = host.lower().rstrip(".")
    if _is_path_style(host):
        account = parts.path.lstrip("/").partition("/")[0].lower()
    else:
        account = _host_account(host)
    return account if account is not None and _ACCOUNT.match(account) else None


_STORAGE_ACCOUNT_ID = re.compile(
    r"^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Storage/storageAccounts/([^/]+)/?$", re.IGNORECASE
)


def parse_account_id(resource_id: str) -> str:
    """The account name of a storage account's ARM id (references that hold a whole account)."""
    m = _STORAGE_ACCOUNT_ID.match(resource_id) if isinstance(resource_id, str) else None
    if m is None or not _ACCOUNT.match(m.group(1).lower()):
        raise UrlError(str(resource_id), "not a storage account id")
    return m.group(1).lower()


def _split(uri: str) -> tuple[str, str, str | None]:
    """(account, raw container segment, raw blob remainder or None without a slash), undecoded."""
    if not isinstance(uri, str) or not uri:
        raise UrlError(str(uri), "empty")
    if any(c in uri for c in "\r\n\t\x00") or uri != uri.strip():
        raise UrlError(uri, "contains whitespace or control characters at its ends")
    try:
        parts = urlsplit(uri)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise UrlError(uri, str(exc)) from None
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlError(uri, "scheme is not http or https")
    if not host:
        raise UrlError(uri, "no host")
    host = host.lower().rstrip(".")
    path = parts.path
    if not path.startswith("/"):
        raise UrlError(uri, "no path")
    path = path[1:]
    if _is_path_style(host):
        account, sep, path = path.partition("/")
        if not sep:
            raise UrlError(uri, "path-style URL without a container")
        account = account.lower()
    else:
        account = _host_account(host)
        if account is None:
            raise UrlError(uri, "host is not <account>.blob.<suffix> nor path-style")
    if not _ACCOUNT.match(account):
        raise UrlError(uri, f"{account!r} is not a storage account name")
    container, sep, blob = path.partition("/")
    return account, container, (blob if sep else None)


def _container(uri: str, raw: str) -> str:
    name = unquote(raw).lower()
    if not _CONTAINER.match(name):
        raise UrlError(uri, f"{name!r} is not a container name")
    return name


def parse_blob_url(uri: str) -> BlobKey:
    """The key of the blob ``uri`` names. Query (SAS, snapshot) and fragment are ignored."""
    m = _FAST.match(uri) if isinstance(uri, str) else None
    if m is not None:
        account, container, blob = m.groups()
        if blob.isascii() and "/." not in blob and blob[0] != ".":
            return _new_key(BlobKey, (_intern(account), _intern(container), blob))
    return parse_blob_url_general(uri)


def blob_url_parser() -> Callable[[str], BlobKey]:
    """A parse_blob_url for many URIs (the references of a pass): the scheme, host and container
    of the common shape are validated once per distinct prefix (an estate's blobs sit in a few
    containers), the blob name with string operations. Same keys and errors as parse_blob_url
    (a property test holds it to parse_blob_url_general); anything unusual takes the general path.
    """
    prefixes: dict[str, tuple[str, str]] = {}
    general, match_prefix, new_key = parse_blob_url_general, _FAST_PREFIX.match, _new_key

    def parse(uri: str) -> BlobKey:
        if type(uri) is str:
            end = uri.find("/", uri.find("/", 8) + 1)
            if end > 0:
                prefix = uri[:end]
                place = prefixes.get(prefix)
                if place is None:
                    m = match_prefix(prefix)
                    if m is not None:
                        place = prefixes[prefix] = (_intern(m[1]), _intern(m[2]))
                blob = uri[end + 1 :]
                if (
                    place is not None
                    and 0 < len(blob) <= MAX_BLOB_NAME
                    and blob.isascii()
                    and blob.isprintable()  # in ASCII: no control character, no DEL
                    and blob[0] != "."
                    and "/." not in blob
                    and " " not in blob
                    and "?" not in blob
                    and "#" not in blob
                    and "%" not in blob
                    and "\\" not in blob
                ):
                    return new_key(BlobKey, (place[0], place[1], blob))
        return general(uri)

    return parse


def parse_blob_url_general(uri: str) -> BlobKey:
    """parse_blob_url without the fast path (what the fast path must agree with)."""
    account, raw_container, raw_blob = _split(uri)
    if raw_blob is None:
        # A single segment (no slash after it) addresses a blob in the root container.
        raw_container, raw_blob = "$root", raw_container
    container = _container(uri, raw_container)
    if "\\" in raw_blob:
        # WHATWG parsers and .NET read a backslash as a slash; Python does not: refuse, never guess.
        raise UrlError(uri, "a backslash in the path")
    try:
        blob = unquote(raw_blob, errors="strict")
    except UnicodeDecodeError:
        raise UrlError(uri, "blob name is not valid UTF-8 after percent-decoding") from None
    if not blob:
        raise UrlError(uri, "empty blob name")
    try:
        blob.encode("utf-8")
    except UnicodeEncodeError:
        raise UrlError(uri, "blob name holds a lone surrogate") from None
    if len(blob) > MAX_BLOB_NAME:
        raise UrlError(uri, "blob name longer than 1024 characters")
    if any(seg in (".", "..") for seg in blob.split("/")):
        # HTTP clients resolve dot segments before sending: `a/../os.vhd` addresses `os.vhd`.
        raise UrlError(uri, "a '.' or '..' path segment")
    return BlobKey(sys.intern(account), sys.intern(container), blob)


def parse_container_url(uri: str) -> ContainerKey:
    """The container a URL names (scale-set ``vhdContainers``); a trailing slash is allowed."""
    account, raw_container, raw_blob = _split(uri)
    if raw_blob:
        raise UrlError(uri, "a container URL must not name a blob")
    return ContainerKey(account, _container(uri, raw_container))


# What quote(name, safe="/") leaves as it is: a name made only of these needs no quoting.
_URL_PLAIN = re.compile(r"[A-Za-z0-9_.~/-]*")


def quote_blob_name(name: str) -> str:
    """``quote(name, safe="/")``; most names (letters, digits, ``_.-~/``) come back as they are
    without quote's per-character work (a listing builds one URL a blob)."""
    return name if _URL_PLAIN.fullmatch(name) is not None else quote(name, safe="/")


def blob_url(blob_endpoint: str, key: BlobKey) -> str:
    """The canonical URL of a blob under an account's blob endpoint (never with the endpoint's
    userinfo or query: a URL that reaches the state database, a report or a log carries no secret)."""
    if "@" in blob_endpoint or "?" in blob_endpoint or "#" in blob_endpoint:
        blob_endpoint = public_endpoint(blob_endpoint)
    return f"{blob_endpoint.rstrip('/')}/{key.container}/{quote_blob_name(key.blob)}"


def default_blob_endpoint(account: str) -> str:
    return f"https://{account}.blob.core.windows.net"
