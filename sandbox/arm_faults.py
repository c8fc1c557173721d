"""What a test makes the ARM stand-in do wrong or wait on: :class:`Fault` (an error, a malformed or
truncated body, a delay, a lost reply), :class:`Hook` (run an action when a request arrives) and
:class:`Gate` (hold a request until released). The stand-in (sandbox/arm.py) keeps the rules; its
handler (sandbox/arm_http.py) applies them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.arm import ArmStandIn

# A delay fault never holds a request longer than this, so a forgotten rule cannot hang a test run.
MAX_DELAY_SECONDS = 30.0
MAX_GATE_SECONDS = 300.0  # a gate never held longer: only catches a test that forgot to release it

FAULT_KINDS = ("error", "malformed", "truncate", "delay", "body", "lost_reply")

_DEFAULT_CODES = {
    400: "BadRequest",
    401: "AuthenticationFailed",
    403: "AuthorizationFailed",
    404: "ResourceNotFound",
    409: "Conflict",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class Fault:
    """A rule that makes matching requests misbehave.

    ``path`` is a regex searched in the request path (no query). ``kind``:

    - ``error``: answer ``status`` with an ARM error body (``code``/``message``); ``retry_after``
      (seconds) adds a ``Retry-After`` header.
    - ``malformed``: 200 with a body that is not JSON.
    - ``truncate``: 200 whose body stops halfway (Content-Length promises more; the connection closes).
    - ``delay``: wait ``delay`` seconds (at most :data:`MAX_DELAY_SECONDS`), then answer normally.
    - ``body``: 200 with ``body`` (any JSON value) verbatim, e.g. ``{}`` or ``{"value": "x"}``.
    - ``lost_reply``: the request is served (a write happens; a long-running operation it starts is
      finished at once, see sandbox/arm_disks.py), then the connection closes with no reply.

    Which matching requests it hits: ``nth`` (1-based) only that one (and the ``times - 1`` after it
    when ``times`` is also given); ``times`` alone, the next ``times``; neither, every one.
    ``on_next_link`` restricts it to requests carrying ``$skiptoken`` (a nextLink follow-up).
    """

    path: str = ".*"
    kind: str = "error"
    status: int = 500
    code: str | None = None
    message: str | None = None
    retry_after: float | int | None = None
    delay: float = 0.0
    body: Any = None
    nth: int | None = None
    times: int | None = None
    on_next_link: bool = False
    method: str = "GET"
    seen: int = field(default=0, compare=False)
    fired: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        re.compile(self.path)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Fault":
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        data = {k: v for k, v in data.items() if k not in ("seen", "fired")}  # counters restart
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hit(self, method: str, path: str, has_skiptoken: bool) -> bool:
        """Count this request if it matches; return whether the fault fires on it. Caller holds the lock."""
        if method.upper() != self.method.upper() or not re.search(self.path, path):
            return False
        if self.on_next_link and not has_skiptoken:
            return False
        self.seen += 1
        if self.nth is not None:
            last = self.nth + (self.times or 1) - 1
            fire = self.nth <= self.seen <= last
        elif self.times is not None:
            fire = self.fired < self.times
        else:
            fire = True
        if fire:
            self.fired += 1
        return fire



@dataclass
class Hook:
    """Runs ``action(method, path_and_query)`` in the stand-in's thread when a matching request
    arrives, after it is logged and before it is served (a test's way to change the estate at an
    exact point of vhd-gc's sequence, or to wait on vhd-gc reaching that point). ``path`` is a regex
    searched in the request path (no query); ``method`` the HTTP method; ``times`` how many matching
    requests it takes (None: all). An action that returns True drops the request: it is not served
    and the connection closes with no reply (as if it never reached ARM). :attr:`entered` is set when
    the action starts, :attr:`done` when it has returned."""

    path: str
    method: str = "GET"
    action: Any = None
    times: int | None = 1
    fired: int = field(default=0, compare=False)
    entered: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)
    done: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def take(self, method: str, path: str) -> bool:
        """Caller holds the stand-in's lock."""
        if method.upper() != self.method.upper() or not re.search(self.path, path):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True

    def run(self, method: str, path_and_query: str) -> bool:
        self.entered.set()
        try:
            return bool(self.action(method, path_and_query)) if self.action is not None else False
        finally:
            self.done.set()


class Gate:
    """Holds the first request matching ``path``/``method`` unserved until :meth:`release`: the
    test waits for vhd-gc to reach that request (:meth:`wait`), acts (a SIGKILL), then lets the
    request be dropped (``serve=False``: ARM never saw it) or served."""

    def __init__(self, standin: "ArmStandIn", path: str, method: str) -> None:
        self._release = threading.Event()
        self._serve = False
        self.hook = standin.on_request(path, method, self._hold, times=1)

    def _hold(self, method: str, path: str) -> bool:
        self._release.wait(MAX_GATE_SECONDS)
        return not self._serve

    def wait(self, timeout: float) -> bool:
        """Whether the request arrived within ``timeout`` seconds (a bound that only catches a hang)."""
        return self.hook.entered.wait(timeout)

    def release(self, serve: bool = False) -> None:
        self._serve = serve
        self._release.set()
        if self.hook.entered.is_set():  # held: wait until the stand-in has dropped (or served) it
            self.hook.done.wait(MAX_GATE_SECONDS)
