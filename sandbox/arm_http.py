"""The ARM stand-in's HTTP side: the request handler (authentication, api-version, faults and hooks,
the read budget, paging, the route to each resource family's module, the ``/_control/...`` surface)
and the TLS server it runs in. The state it serves is :class:`sandbox.arm.ArmStandIn`'s.
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from sandbox import arm_disks, arm_images, arm_services, arm_throttle, arm_vms
from sandbox.arm_estate import (
    COMPUTE,
    GENERIC_NAMESPACES,
    STORAGE,
    TOP_LEVEL_KINDS,
    ArmError,
    _by_name,
    _in_rg,
    _lookup,
    _not_found,
)
from sandbox.arm_faults import _DEFAULT_CODES, MAX_DELAY_SECONDS, Fault

if TYPE_CHECKING:
    from sandbox.arm import ArmStandIn


class _Handler(BaseHTTPRequestHandler):
    """Routes ARM GETs and the control surface.

    Control (no auth, no api-version):
      ``PUT /_control/estate`` (JSON body replaces the estate), ``GET /_control/estate``,
      ``POST /_control/faults`` (JSON list of :class:`Fault` dicts, replaces), ``DELETE /_control/faults``,
      ``GET /_control/requests`` (``[[method, path+query], ...]``), ``DELETE /_control/requests``,
      ``PUT /_control/permissions`` (what the identity holds: see :meth:`ArmStandIn.set_permissions`),
      ``DELETE /_control/permissions`` (back to :data:`DEFAULT_PERMISSIONS`),
      ``PUT /_control/read_budget`` (``{"size": N, "refill": R}``: ARM's read limit, sandbox.arm_throttle).
    """

    # Headers and body go out in separate writes: with Nagle on, each response waits ~40 ms for the
    # peer's delayed ACK. Real ARM answers in one go.
    disable_nagle_algorithm = True

    protocol_version = "HTTP/1.1"
    server_version = "vhdgc-arm-standin/1"
    timeout = 30  # idle keep-alive connections give up after this

    @property
    def standin(self) -> "ArmStandIn":
        return self.server.standin  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature from the base
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-ms-request-id", str(uuid.uuid4()))
        for k, v in {**getattr(self, "_ratelimit", {}), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send_error(self, err: ArmError) -> None:
        self._send_json(err.status, {"error": {"code": err.code, "message": err.message}}, err.headers)

    def _safe(self, fn: Any) -> None:
        try:
            fn()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, socket.timeout):
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._safe(self._dispatch)

    def do_PUT(self) -> None:  # noqa: N802
        self._safe(self._dispatch)

    def do_POST(self) -> None:  # noqa: N802
        self._safe(self._dispatch)

    def do_DELETE(self) -> None:  # noqa: N802
        self._safe(self._dispatch)

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        self._ratelimit: dict[str, str] = {}  # ARM's remaining-reads header, on every answer to a read
        if path.startswith("/_control/"):
            self._control(path)
            return
        query = parse_qs(split.query, keep_blank_values=True)
        standin = self.standin
        self._body = self._read_body()  # drain; PUTs of disks and snapshots carry one
        standin._log(self.command, self.path, self.headers.get("User-Agent"))
        hook = standin._match_hook(self.command, path)
        if hook is not None and hook.run(self.command, self.path):
            self.close_connection = True  # dropped: not served, no reply
            return
        if self._take_read(path):
            return
        fault = standin._match_fault(self.command, path, "$skiptoken" in query)
        if fault is not None and fault.kind == "delay":
            time.sleep(min(max(fault.delay, 0.0), MAX_DELAY_SECONDS))
            fault = None
        if fault is not None and fault.kind == "error":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            code = fault.code or _DEFAULT_CODES.get(fault.status, "InternalServerError")
            message = fault.message or f"Injected fault: {code}."
            self._send_error(ArmError(fault.status, code, message, headers))
            return
        if fault is not None and fault.kind == "malformed":
            self._send(200, b'{"value": [{"id": "/subscriptions/oops", "name": nope')
            return
        if fault is not None and fault.kind == "body":
            self._send_json(200, fault.body)
            return
        if fault is not None and fault.kind == "lost_reply":
            self._operation_started = None
            try:
                self._serve_arm(path, query)
            except ArmError:
                pass
            if self._operation_started is not None:
                standin.disk_rp.settle(self._operation_started)
            self.close_connection = True
            return
        extra_headers: dict[str, str] = {}
        try:
            served = self._serve_arm(path, query)
        except ArmError as err:
            self._send_error(err)
            return
        status, payload = served[0], served[1]
        if len(served) > 2:
            extra_headers = served[2]
        if payload is None:  # 202/204 without a body
            self._send(status, b"", extra_headers)
            return
        raw = json.dumps(payload).encode()
        if fault is not None and fault.kind == "truncate":
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw[: max(1, len(raw) // 2)])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(status, raw, extra_headers)

    def _take_read(self, path: str) -> bool:
        """A read scoped to a subscription takes a token of its read budget (sandbox.arm_throttle);
        True when it was answered 429 for want of one."""
        subscription = arm_throttle.subscription_of(path) if self.command in ("GET", "HEAD") else None
        if subscription is None:
            return False
        remaining, retry_after = self.standin.read_budget.take(subscription)
        self._ratelimit = {arm_throttle.READS_HEADER: str(remaining)}
        if retry_after is None:
            return False
        self._send_error(ArmError(
            429, "SubscriptionRequestsThrottled",
            f"Number of 'read' requests for subscription '{subscription}' actor 'vhd-gc' exceeded. Please try "
            f"again after '{retry_after}' seconds after additional tokens are available. "
            "Refer to https://aka.ms/arm-throttling",
            {"Retry-After": str(retry_after)},
        ))
        return True

    def _serve_arm(self, path: str, query: dict[str, list[str]]) -> tuple[Any, ...]:
        """``(status, payload)`` or ``(status, payload, headers)``; a ``None`` payload sends no body."""
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            raise ArmError(
                401,
                "AuthenticationFailed",
                "Authentication failed. The 'Authorization' header is missing.",
                {
                    "WWW-Authenticate": 'Bearer authorization_uri="https://login.microsoftonline.com/common", '
                    'error="invalid_token", error_description="The authentication failed because of '
                    "missing 'Authorization' header.\""
                },
            )
        api_version = (query.get("api-version") or [""])[0]
        if not api_version:
            raise ArmError(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        segs = [s for s in path.split("/") if s]
        served = arm_disks.serve(self, segs, path, api_version, query, getattr(self, "_body", b""))
        if served is not None:  # disks, snapshots, their operations, resource groups, locks
            return served
        if self.command != "GET":
            raise ArmError(405, "MethodNotAllowed", f"The stand-in serves GET only, not {self.command}.")
        if [s.lower() for s in segs[-3:]] == ["providers", "microsoft.authorization", "permissions"]:
            return 200, self._page(path, api_version, query, self._permissions(segs[:-3]))
        items = self._route(segs)
        if isinstance(items, dict):  # a single resource
            return 200, items
        return 200, self._page(path, api_version, query, items)

    def _page(self, path: str, api_version: str, query: dict[str, list[str]], items: list[Any]) -> dict[str, Any]:
        token = (query.get("$skiptoken") or ["0"])[0]
        try:
            start = int(token)
        except ValueError:
            raise ArmError(400, "InvalidSkipToken", f"The skip token '{token}' is not valid.") from None
        size = max(1, self.standin.page_size)
        page: dict[str, Any] = {"value": items[start : start + size]}
        if start + size < len(items):
            page["nextLink"] = (
                f"{self.standin.url}{quote(path)}?api-version={quote(api_version)}&%24skiptoken={start + size}"
            )
        return page

    def _route(self, segs: list[str]) -> list[Any] | dict[str, Any]:
        low = [s.lower() for s in segs]
        estate = self.standin._estate_snapshot()
        subs: dict[str, Any] = estate.get("subscriptions", {})
        if low == ["subscriptions"]:
            return [
                {
                    "id": f"/subscriptions/{s}",
                    "subscriptionId": s,
                    "displayName": f"stand-in {s}",
                    "state": "Enabled",
                    "tenantId": "00000000-0000-0000-0000-00000000aaaa",
                }
                for s in subs
            ]
        if len(low) < 2 or low[0] != "subscriptions":
            raise _not_found("/" + "/".join(segs), None)
        sub_id = segs[1]
        sub = _lookup(subs, sub_id)
        if sub is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{sub_id}' could not be found.")
        if len(low) == 2:
            return {"id": f"/subscriptions/{sub_id}", "subscriptionId": sub_id, "state": "Enabled"}
        rest, rest_low, rg = segs[2:], low[2:], None
        if rest_low[0] == "resourcegroups" and len(rest) >= 2:
            rg = rest[1]
            rest, rest_low = rest[2:], rest_low[2:]
        if len(rest_low) < 3 or rest_low[0] != "providers":
            raise _not_found("/" + "/".join(segs), rg)
        namespace, tail, tail_low = rest_low[1], rest[2:], rest_low[2:]
        if namespace == STORAGE.lower() and tail_low[0] == "storageaccounts":
            return self._list_or_get(sub.get("storageAccounts", []), tail, rg, f"{STORAGE}/storageAccounts")
        if namespace in GENERIC_NAMESPACES or (
            namespace == COMPUTE.lower() and len(tail_low) >= 3 and tail_low[0] == "galleries"
            and tail_low[2] == "applications"
        ):
            return arm_services.generic(sub, segs, rg, rest[1])
        if namespace != COMPUTE.lower():
            raise _not_found("/" + "/".join(segs), rg)
        kind = tail_low[0]
        if kind not in TOP_LEVEL_KINDS:
            raise _not_found(f"{COMPUTE}/{tail[0]}", rg)
        top = sub.get(TOP_LEVEL_KINDS[kind], [])
        type_name = f"{COMPUTE}/{TOP_LEVEL_KINDS[kind]}"
        if len(tail) <= 2:
            return self._list_or_get(top, tail, rg, type_name)
        if rg is None:
            raise _not_found("/" + "/".join(segs), rg)
        parent = _by_name([r for r in top if _in_rg(r, rg)], tail[1])
        if parent is None:
            raise _not_found(f"{type_name}/{tail[1]}", rg)
        if kind == "virtualmachinescalesets" and tail_low[2] == "virtualmachines" and len(tail) <= 4:
            return arm_vms.scale_set_vms(sub, rg, tail, type_name)
        if kind == "galleries" and tail_low[2] == "images" and len(tail) <= 6:
            return arm_images.gallery_images(sub, segs, rg, tail, tail_low, type_name)
        raise _not_found("/" + "/".join(segs), rg)

    def _permissions(self, scope: list[str]) -> list[Any]:
        """Permissions - List For Resource (or For Resource Group): what the identity holds at
        ``scope``, which must exist (a resource, a resource group of a known subscription)."""
        low = [s.lower() for s in scope]
        if len(low) < 2 or low[0] != "subscriptions":
            raise _not_found("/" + "/".join(scope), None)
        if len(low) > 4 or (len(low) == 3) or (len(low) == 4 and low[2] != "resourcegroups"):
            self._route(scope)  # the resource must exist: ResourceNotFound otherwise
        elif _lookup(self.standin._estate_snapshot().get("subscriptions", {}), scope[1]) is None:
            raise ArmError(404, "SubscriptionNotFound", f"The subscription '{scope[1]}' could not be found.")
        return self.standin.permissions_at("/" + "/".join(scope))

    @staticmethod
    def _list_or_get(
        items: list[Any], tail: list[str], rg: str | None, type_name: str
    ) -> list[Any] | dict[str, Any]:
        scoped = [r for r in items if _in_rg(r, rg)]
        if len(tail) == 1:
            return scoped
        if rg is None:
            raise _not_found(f"{type_name}/{tail[1]}", rg)
        found = _by_name(scoped, tail[1])
        if found is None:
            raise _not_found(f"{type_name}/{tail[1]}", rg)
        return found

    # -- control -------------------------------------------------------------------------------

    def _control(self, path: str) -> None:
        standin = self.standin
        body = self._read_body()
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            self._send_error(ArmError(400, "InvalidJson", "The control request body is not JSON."))
            return
        route = (self.command, path.rstrip("/"))
        try:
            if route == ("PUT", "/_control/estate"):
                standin.set_estate(payload)
                self._send_json(200, {"ok": True})
            elif route == ("GET", "/_control/estate"):
                self._send_json(200, standin._estate_snapshot())
            elif route == ("POST", "/_control/faults"):
                if not isinstance(payload, list):
                    raise ValueError("the faults body must be a JSON list")
                standin.set_faults([Fault.from_dict(f) for f in payload])
                self._send_json(200, {"ok": True, "faults": len(payload)})
            elif route == ("GET", "/_control/faults"):
                self._send_json(200, [f.to_dict() for f in standin.faults])
            elif route == ("DELETE", "/_control/faults"):
                standin.clear_faults()
                self._send_json(200, {"ok": True})
            elif route == ("PUT", "/_control/permissions"):
                # A list: what the identity holds at every scope. {"scope": ID, "permissions": [...]}:
                # at that scope only (a resource id). Null or []: holds nothing.
                if isinstance(payload, dict):
                    standin.set_permissions(payload.get("permissions") or [], scope=payload.get("scope"))
                else:
                    standin.set_permissions(payload or [])
                self._send_json(200, {"ok": True})
            elif route == ("DELETE", "/_control/permissions"):
                standin.reset_permissions()
                self._send_json(200, {"ok": True})
            elif route == ("GET", "/_control/requests"):
                self._send_json(200, [list(r) for r in standin.requests])
            elif route == ("DELETE", "/_control/requests"):
                standin.clear_requests()
                self._send_json(200, {"ok": True})
            elif route == ("PUT", "/_control/read_budget"):
                # {"size": N, "refill": R}: ARM's read bucket per subscription (sandbox.arm_throttle).
                standin.read_budget.configure((payload or {}).get("size"), (payload or {}).get("refill"))
                self._send_json(200, {"ok": True})
            elif route[1].startswith("/_control/lro") or route[1].startswith("/_control/operations"):
                self._send_json(200, standin.disk_rp.control(self.command, route[1], payload))
            else:
                self._send_error(ArmError(404, "ResourceNotFound", f"No control route {self.command} {path}."))
        except (ValueError, TypeError) as exc:
            self._send_error(ArmError(400, "InvalidControlRequest", str(exc)))


class _TlsThreadingServer(ThreadingHTTPServer):
    """Accepts plain TCP and does the TLS handshake in the worker thread, so a slow or rejecting
    client never blocks ``accept``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], handler: type, context: ssl.SSLContext, standin: "ArmStandIn"):
        self.ssl_context = context
        self.standin = standin
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(_Handler.timeout)
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        except (ssl.SSLError, OSError):
            pass
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass
