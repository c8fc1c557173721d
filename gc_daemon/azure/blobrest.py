"""The hot read path of one storage account: container listings, blob listings and page ranges, as
the same REST calls the storage SDK makes, sent through an azure-core pipeline that carries the SDK
client's own credential policy, and read with a lean XML reader.

Why not the SDK's models: measured on 2 cores (docs/performance.md), the SDK's generated deserializer
costs about 140 µs of Python per listed blob and 1.3 ms per Get Page Ranges call, which is what
bounds a pass there, not the service. Here a listed blob costs about 10 µs and a page-range call
about 0.6 ms. What stays the SDK's: signing (shared key or bearer token, from the client's
``_credential_policy``), the API version (``client.api_version``), and the transport. Retries are
azure-core's (408, 429, 5xx and connection errors, honouring Retry-After). Writes (delete, undelete)
and the rare per-blob re-reads stay on the SDK's clients.

Nothing unexpected is glossed over: an error status, a body that is not the XML the service sends,
or a field the decision needs that is missing raises :class:`StorageError`, so a pass that could not
read everything fails closed. So does a listing that would not end (:class:`PageGuard`: a NextMarker
repeating one already given, or more pages than the limit), and a ``Date`` header that is not a date
(the first answer of a listing gives the service's time, :func:`service_time`). ``tests/test_blobrest.py`` holds this reader to the SDK's, field by
field, over the same Azurite estates.
"""

from __future__ import annotations

import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import urllib3
from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.core.pipeline import Pipeline
from azure.core.pipeline.policies import RetryPolicy, SansIOHTTPPolicy, UserAgentPolicy
from azure.core.pipeline.transport import HttpResponse, HttpTransport
from azure.core.rest import HttpRequest

from gc_daemon import USER_AGENT
from gc_daemon.domain import ServiceTime

MALFORMED = "MalformedResponse"
LISTING_LOOP = "ListingLoop"  # a NextMarker repeats one the same listing already gave
LISTING_TOO_LONG = "ListingTooLong"  # a listing goes on past its page limit (azure.max_list_pages)
MAX_LIST_PAGES = 10_000


class ReadError(Exception):
    """A read failed; ``code`` is the service's error code, the exception class name for a transport
    failure, or ``MalformedResponse``. The storage adapter turns it into its ``StorageError``."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


class ListedBlob(NamedTuple):
    """One item of a blob listing: what :class:`~azure.storage.blob.BlobProperties` would carry of it,
    for the fields the collector reads."""

    name: str
    snapshot: str | None
    blob_type: str
    size: int
    etag: str
    last_modified: datetime
    lease_state: str | None
    lease_status: str | None
    tier: str | None
    tag_count: int | None
    metadata: dict[str, str]
    tags: dict[str, str] | None


class _Urllib3Response(HttpResponse):
    def __init__(self, request: Any, response: urllib3.BaseHTTPResponse) -> None:
        super().__init__(request, response)
        self.status_code = response.status
        self.headers = response.headers  # case-insensitive, as azure-core's policies expect
        self.reason = response.reason
        self.content_type = response.headers.get("Content-Type")
        self._body = response.data

    def body(self) -> bytes:
        return self._body


_DIRECT = ""  # the route of a host reached without a proxy


def proxy_schemes_supported() -> bool:
    """Whether every proxy the environment names is one :class:`Urllib3Transport` can speak to: an
    ``http://`` or ``https://`` proxy (or one without a scheme, taken as ``http://`` as requests does).
    A SOCKS proxy (``ALL_PROXY=socks5://...``) is not: the caller uses requests for it."""
    import urllib.request

    for name, url in urllib.request.getproxies().items():
        if name == "no" or not url:
            continue
        scheme = urlsplit(url).scheme.lower() if "://" in url else "http"
        if scheme not in ("http", "https"):
            return False
    return True


class Urllib3Transport(HttpTransport):
    """An azure-core transport straight over urllib3 (what requests itself sends with), for the
    read path's small GETs: requests' per-call session machinery costs as much Python as the rest of
    the call. TLS verification is fixed at construction (``verify``: True for certifi's bundle, a
    CA bundle path, or False); connection failures become ServiceRequestError and failures after
    sending ServiceResponseError, so azure-core's RetryPolicy treats them as it does for requests.

    Proxies are honoured as requests honours them (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``, lower or upper case; with requests' own functions, so ``NO_PROXY`` entries, ``*``
    and CIDR ranges mean what they mean there). The route (direct, or the proxy's URL) is decided
    once per scheme and host, from the environment at that first request, and kept: requests
    decides on every call, which costs what the call costs. A host routed direct uses one
    PoolManager; each proxy one pooled ProxyManager (HTTPS through the proxy with CONNECT, the TLS
    session still verified end to end; plain HTTP forwarded in absolute form). Credentials in the
    proxy's URL (``http://user:pass@proxy:3128``) go in ``Proxy-Authorization``. SOCKS proxies are
    not spoken here (see :func:`proxy_schemes_supported`)."""

    def __init__(self, *, verify: str | bool = True, maxsize: int = 16) -> None:
        self.verify = verify
        self.maxsize = maxsize
        self._pool: urllib3.PoolManager | None = None
        self._proxies: dict[str, urllib3.ProxyManager] = {}
        self._routes: dict[tuple[str, str], str] = {}  # (scheme, netloc) -> proxy URL, or _DIRECT
        self._lock = threading.Lock()

    def _tls(self) -> dict[str, Any]:
        if self.verify is False:
            return {"cert_reqs": "CERT_NONE"}
        import certifi

        bundle = self.verify if isinstance(self.verify, str) else certifi.where()
        return {"cert_reqs": "CERT_REQUIRED", "ca_certs": bundle}

    def open(self) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = urllib3.PoolManager(num_pools=4, maxsize=self.maxsize, **self._tls())

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            proxies, self._proxies = list(self._proxies.values()), {}
            self._routes = {}
        for manager in (pool, *proxies):
            if manager is not None:
                manager.clear()

    def __enter__(self) -> Urllib3Transport:
        self.open()
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL requests to ``url`` go through, or None when they go direct. Decided from
        the environment at the first request to that scheme and host, then kept."""
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.netloc.lower())
        route = self._routes.get(key)
        if route is None:
            from requests.utils import get_environ_proxies, prepend_scheme_if_needed, select_proxy

            # What requests does for a session with trust_env: the environment's proxies unless the
            # host is bypassed (NO_PROXY), then the most specific one for the URL.
            chosen = select_proxy(url, get_environ_proxies(url))
            route = prepend_scheme_if_needed(chosen, "http") if chosen else _DIRECT
            self._routes[key] = route  # a race only computes the same answer twice
        return route or None

    def _manager(self, url: str) -> urllib3.PoolManager:
        proxy = self.proxy_for(url)
        if proxy is None:
            if self._pool is None:
                self.open()
            assert self._pool is not None
            return self._pool
        manager = self._proxies.get(proxy)
        if manager is None:
            with self._lock:
                manager = self._proxies.get(proxy)
                if manager is None:
                    from requests.utils import get_auth_from_url

                    user, password = get_auth_from_url(proxy)
                    headers = urllib3.make_headers(proxy_basic_auth=f"{user}:{password}") if user else None
                    manager = self._proxies[proxy] = urllib3.ProxyManager(
                        proxy, num_pools=4, maxsize=self.maxsize, proxy_headers=headers, **self._tls()
                    )
        return manager

    def send(self, request: Any, **kwargs: Any) -> HttpResponse:
        timeout = urllib3.Timeout(connect=kwargs.get("connection_timeout", 10), read=kwargs.get("read_timeout", 60))
        try:
            response = self._manager(request.url).request(
                request.method, request.url, headers=dict(request.headers), body=request.content or None,
                timeout=timeout, retries=False, redirect=False,
            )
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError,
                urllib3.exceptions.SSLError, urllib3.exceptions.ProxyError) as exc:
            raise ServiceRequestError(exc, error=exc) from exc
        except urllib3.exceptions.HTTPError as exc:  # read timeout, connection reset, bad answer
            raise ServiceResponseError(exc, error=exc) from exc
        return _Urllib3Response(request, response)


class _StorageHeaders(SansIOHTTPPolicy):
    """What the SDK's headers policy adds to each try: API version, date (signed, so it is set anew
    on every retry: this policy sits after the retry policy) and a client request id."""

    def __init__(self, api_version: str) -> None:
        self.api_version = api_version

    def on_request(self, request: Any) -> None:
        headers = request.http_request.headers
        headers["x-ms-version"] = self.api_version
        headers["x-ms-date"] = formatdate(usegmt=True)
        headers["x-ms-client-request-id"] = str(uuid.uuid4())


def _malformed(what: str) -> ReadError:
    return ReadError(MALFORMED, what)


def _parse(body: bytes, root_tag: str) -> ET.Element:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise _malformed(f"not XML ({exc})") from None
    if root.tag != root_tag:
        raise _malformed(f"expected <{root_tag}>, got <{root.tag}>")
    return root


def _error_details(body: bytes) -> tuple[str | None, str]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return None, ""
    message = (root.findtext("Message") or "").strip().splitlines()
    return root.findtext("Code"), message[0] if message else ""


def service_time(date: str | None, received: float) -> ServiceTime:
    """The service's time from an answer's ``Date`` header (RFC 9110 IMF-fixdate). A missing header
    gives ``date=None`` (the caller decides); one that is not an HTTP date is a malformed answer."""
    if date is None:
        return ServiceTime(None, received)
    try:
        parsed = parsedate_to_datetime(date)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None:
        raise _malformed(f"Date header {_show(date)} is not an HTTP date")
    if parsed.tzinfo is None:  # "-0000": UTC, as HTTP dates are
        parsed = parsed.replace(tzinfo=timezone.utc)
    return ServiceTime(parsed.astimezone(timezone.utc), received)


def _show(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


class PageGuard:
    """Follows the NextMarkers of ONE listing and refuses to go on when one repeats a marker it
    already gave (the service would answer the same pages forever) or when the listing passes
    ``max_pages`` pages: a listing that never ends would stall the pass forever instead of
    failing it closed. Per page, never per item."""

    __slots__ = ("what", "max_pages", "pages", "_seen")

    def __init__(self, what: str, max_pages: int = MAX_LIST_PAGES) -> None:
        self.what = what
        self.max_pages = max_pages
        self.pages = 0
        self._seen: set[str] = set()

    def next(self, marker: str | None) -> bool:
        """Count one page whose NextMarker is ``marker``: whether there is a next page to ask for."""
        self.pages += 1
        if not marker:
            return False
        if marker in self._seen:
            raise ReadError(LISTING_LOOP, f"{self.what}: NextMarker {_show(marker)} of page {self.pages} "
                                          "repeats one this listing already gave")
        if self.pages >= self.max_pages:
            raise ReadError(LISTING_TOO_LONG, f"{self.what}: still a NextMarker ({_show(marker)}) after "
                                              f"{self.pages} pages, the limit (azure.max_list_pages)")
        self._seen.add(marker)
        return True


class BlobRest:
    """One account's REST reads. Thread-safe: the pipeline holds no per-call state."""

    def __init__(
        self,
        blob_endpoint: str,
        credential_policy: Any,
        api_version: str,
        transport: Any,
        *,
        retry_total: int = 3,
        connection_timeout: float = 10,
        read_timeout: float = 60,
        connection_verify: str | bool = True,
        max_pages: int = MAX_LIST_PAGES,
    ) -> None:
        self.endpoint = blob_endpoint.rstrip("/")
        self.max_pages = max_pages  # of one listing: a container's blobs, the containers, a blob's page ranges
        # Path-style endpoints (Azurite, http://host:port/account) list containers at the account's
        # path; service endpoints at the root.
        self._service_url = self.endpoint + ("?" if urlsplit(self.endpoint).path else "/?")
        policies: list[Any] = [
            UserAgentPolicy(user_agent=USER_AGENT, sdk_moniker="vhd-gc"),  # vhd-gc/<version> first
            RetryPolicy(retry_total=retry_total),
            _StorageHeaders(api_version),
            credential_policy,
        ]
        self._pipeline = Pipeline(transport, policies=[p for p in policies if p is not None])
        self._send_kwargs = {
            "connection_timeout": connection_timeout,
            "read_timeout": read_timeout,
            "connection_verify": connection_verify,
        }

    def _get(self, url: str, if_match: str | None = None) -> bytes:
        return self._fetch(url, if_match)[0]

    def _fetch(self, url: str, if_match: str | None = None) -> tuple[bytes, Any, float]:
        """The body and headers of a 200 answer, and time.monotonic() when it had arrived."""
        try:
            request = HttpRequest("GET", url, headers={"If-Match": if_match} if if_match else None)
            response = self._pipeline.run(request, **self._send_kwargs).http_response
            received = time.monotonic()
            status = response.status_code
            body = response.body()
        except AzureError as exc:
            lines = str(getattr(exc, "message", None) or exc).strip().splitlines()
            raise ReadError(type(exc).__name__, lines[0] if lines else "") from exc
        if status != 200:
            code, message = _error_details(body)
            code = response.headers.get("x-ms-error-code") or code or f"HTTP {status}"
            raise ReadError(code, message or f"status {status}")
        return body, response.headers, received

    @staticmethod
    def _page_query(per_page: int | None, marker: str) -> str:
        query = f"&maxresults={per_page}" if per_page else ""
        if marker:
            query += "&marker=" + quote(marker, safe="")
        return query

    def list_containers(
        self, per_page: int | None = None, on_time: Callable[[ServiceTime], None] | None = None
    ) -> Iterator[str]:
        """Every container's name. ``on_time`` gets the service's time from the first answer, before
        any name is yielded (an unparseable Date header fails the read)."""
        marker = ""
        guard = PageGuard("the container list", self.max_pages)
        while True:
            body, headers, received = self._fetch(self._service_url + "comp=list" + self._page_query(per_page, marker))
            if on_time is not None:
                on_time(service_time(headers.get("Date"), received))
                on_time = None
            root = _parse(body, "EnumerationResults")
            containers = root.find("Containers")
            if containers is None:
                raise _malformed("container listing without <Containers>")
            for item in containers:
                name = item.findtext("Name")
                if item.tag != "Container" or not name:
                    raise _malformed(f"container listing item <{item.tag}> without a name")
                yield name
            marker = root.findtext("NextMarker") or ""
            if not guard.next(marker):
                return

    def list_blobs(self, container: str, per_page: int | None = None) -> Iterator[ListedBlob]:
        """Every blob and snapshot of ``container``, in the service's (name) order, page by page."""
        base = (f"{self.endpoint}/{quote(container, safe='')}"
                "?restype=container&comp=list&include=metadata,snapshots,tags")
        marker = ""
        times: dict[str, datetime] = {}
        guard = PageGuard(f"container {container!r}", self.max_pages)
        while True:
            root = _parse(self._get(base + self._page_query(per_page, marker)), "EnumerationResults")
            blobs = root.find("Blobs")
            if blobs is None:
                raise _malformed("blob listing without <Blobs>")
            for item in blobs:
                yield _listed_blob(item, times)
            marker = root.findtext("NextMarker") or ""
            if not guard.next(marker):
                return

    def page_bytes(self, container: str, blob: str, etag: str | None = None) -> int:
        """The sum of a page blob's written (not cleared) page ranges, over every page of the answer;
        with ``etag``, of that version only (``If-Match``: another one fails ``ConditionNotMet``)."""
        base = f"{self.endpoint}/{quote(container, safe='')}/{quote(blob, safe='~/')}?comp=pagelist"
        total = 0
        marker = ""
        guard = PageGuard(f"page ranges of {container}/{blob!r}", self.max_pages)
        while True:
            root = _parse(self._get(base + self._page_query(None, marker), etag), "PageList")
            marker = ""
            for item in root:
                tag = item.tag
                if tag == "PageRange":
                    start, end = item.findtext("Start"), item.findtext("End")
                    try:
                        first, last = int(start or ""), int(end or "")
                    except ValueError:
                        raise _malformed(f"page range {start!r}-{end!r}") from None
                    if last < first:
                        raise _malformed(f"page range {first}-{last}")
                    total += last - first + 1
                elif tag == "NextMarker":
                    marker = item.text or ""
            if not guard.next(marker):
                return total


_REQUIRED = ("Last-Modified", "Etag", "Content-Length", "BlobType")


def _listed_blob(item: ET.Element, times: dict[str, datetime]) -> ListedBlob:
    if item.tag != "Blob":
        raise _malformed(f"unexpected <{item.tag}> in a flat blob listing")
    name_el = item.find("Name")
    if name_el is None or not name_el.text:
        raise _malformed("blob without a name")
    name = unquote(name_el.text) if name_el.get("Encoded") == "true" else name_el.text
    props_el = item.find("Properties")
    if props_el is None:
        raise _malformed(f"blob {name!r} without <Properties>")
    props = {child.tag: child.text for child in props_el}
    for field in _REQUIRED:
        if not props.get(field):
            raise _malformed(f"blob {name!r} without <{field}>")
    stamp = props["Last-Modified"]
    last_modified = times.get(stamp)  # type: ignore[arg-type]
    if last_modified is None:
        try:
            last_modified = parsedate_to_datetime(stamp).astimezone(timezone.utc)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _malformed(f"blob {name!r}: Last-Modified {stamp!r}") from None
        times[stamp] = last_modified  # type: ignore[index]
    try:
        size = int(props["Content-Length"])  # type: ignore[arg-type]
        tag_count = int(props["TagCount"]) if props.get("TagCount") else None  # type: ignore[arg-type]
    except ValueError:
        raise _malformed(f"blob {name!r}: a count that is not a number") from None
    metadata_el = item.find("Metadata")
    metadata = {m.tag: m.text or "" for m in metadata_el} if metadata_el is not None else {}
    tags = None
    tags_el = item.find("Tags")  # two plain finds: a path ("Tags/TagSet") goes through ElementPath
    tag_set = tags_el.find("TagSet") if tags_el is not None else None
    if tag_set is not None:
        tags = {t.findtext("Key") or "": t.findtext("Value") or "" for t in tag_set}
    return ListedBlob(
        name=name,
        snapshot=item.findtext("Snapshot") or None,
        blob_type=props["BlobType"],  # type: ignore[arg-type]
        size=size,
        etag=props["Etag"],  # type: ignore[arg-type]
        last_modified=last_modified,
        lease_state=props.get("LeaseState") or None,
        lease_status=props.get("LeaseStatus") or None,
        tier=props.get("AccessTier") or None,
        tag_count=tag_count,
        metadata=metadata,
        tags=tags,
    )
