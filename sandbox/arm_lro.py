"""The ARM stand-in's long-running operations of disks and snapshots (a PUT that makes one, a DELETE):
:class:`Operation`, the rules that make one stick or fail (:class:`LroRule`), and :class:`DiskRP`, the
operation state of one stand-in (``ArmStandIn.disk_rp``) with its ``/_control/lro...`` and
``/_control/operations...`` surface. What starts and polls them is sandbox/arm_disks.py.
"""

from __future__ import annotations

import copy
import re
import threading
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from sandbox.arm_estate import _iso

LRO_OUTCOMES = ("stuck", "failed")

# --------------------------------------------------------------------------------------------------
# Long-running operations
# --------------------------------------------------------------------------------------------------


@dataclass
class LroRule:
    """Makes matching operations end otherwise: ``outcome`` ``stuck`` (never ends) or ``failed``
    (ends ``Failed`` with ``code``/``message``). ``path`` is a regex searched in the request path of
    the PUT or DELETE that starts the operation; ``method`` None matches both; ``times`` limits how
    many operations it takes (None: all)."""

    outcome: str
    path: str = ".*"
    method: str | None = None
    code: str = "InternalOperationError"
    message: str = "Injected operation failure."
    times: int | None = None
    taken: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if self.outcome not in LRO_OUTCOMES:
            raise ValueError(f"unknown operation outcome {self.outcome!r}; expected one of {LRO_OUTCOMES}")
        re.compile(self.path)

    def take(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if not re.search(self.path, path) or (self.times is not None and self.taken >= self.times):
            return False
        self.taken += 1
        return True


@dataclass
class Operation:
    """One long-running operation: ``kind`` ``create`` (a PUT) or ``delete``; ``polls`` counts the
    polls answered; ``status`` InProgress / Succeeded / Failed."""

    id: str
    kind: str
    method: str
    resource_id: str
    polls_before_end: int
    outcome: str | None = None  # None: succeeds; "stuck"; "failed"
    code: str | None = None
    message: str | None = None
    status: str = "InProgress"
    polls: int = 0  # every poll answered
    in_progress_answers: int = 0  # the polls answered InProgress
    start_time: str = field(default_factory=lambda: _iso(None))
    end_time: str | None = None


class DiskRP:
    """The operation state of one stand-in (``ArmStandIn.disk_rp``) and its controls."""

    def __init__(self, standin: Any) -> None:
        self.standin = standin
        self._lock = threading.Lock()
        self.lro_polls = 1
        self.retry_after = 0
        self._rules: list[LroRule] = []
        self._ops: dict[str, Operation] = {}

    # -- controls ------------------------------------------------------------------------------

    def set_lro(self, polls: int | None = None, retry_after: int | None = None) -> None:
        """``polls``: how many polls answer InProgress before the end (0: the first says Succeeded).
        ``retry_after``: the integer seconds of ``Retry-After`` (0: the SDK's own polling_interval)."""
        if polls is not None:
            if not isinstance(polls, int) or isinstance(polls, bool) or polls < 0:
                raise ValueError("lro polls must be an integer >= 0")
            self.lro_polls = polls
        if retry_after is not None:
            if not isinstance(retry_after, int) or isinstance(retry_after, bool) or retry_after < 0:
                raise ValueError("retry_after must be an integer >= 0 (ARM sends whole seconds)")
            self.retry_after = retry_after

    def add_rule(self, rule: LroRule) -> LroRule:
        with self._lock:
            self._rules.append(rule)
        return rule

    def lro_stuck(self, path: str = ".*", method: str | None = None, times: int | None = None) -> LroRule:
        """Operations started by matching requests never end (every poll: InProgress)."""
        return self.add_rule(LroRule("stuck", path=path, method=method, times=times))

    def lro_failed(
        self,
        path: str = ".*",
        method: str | None = None,
        *,
        code: str = "InternalOperationError",
        message: str = "Injected operation failure.",
        times: int | None = None,
    ) -> LroRule:
        """Operations started by matching requests end Failed (after the usual polls)."""
        return self.add_rule(LroRule("failed", path=path, method=method, code=code, message=message, times=times))

    def clear_rules(self) -> None:
        with self._lock:
            self._rules.clear()

    def reset(self) -> None:
        with self._lock:
            self.lro_polls = 1
            self.retry_after = 0
            self._rules.clear()
            self._ops.clear()

    @property
    def operations(self) -> list[Operation]:
        with self._lock:
            return [copy.copy(op) for op in self._ops.values()]

    def settle(self, op_id: str | None = None) -> int:
        """End operations now, as their outcome says (all pending ones but stuck ones, or the one
        ``op_id`` names, stuck or not); returns how many ended."""
        with self._lock:
            if op_id is not None:
                ops = [self._ops[op_id]] if op_id in self._ops else []
            else:
                ops = [op for op in self._ops.values() if op.outcome != "stuck"]
            ended = 0
            for op in ops:
                if op.status == "InProgress":
                    self._finish(op)
                    ended += 1
            return ended

    def control(self, method: str, path: str, payload: Any) -> Any:
        """``PUT /_control/lro`` ``{"polls": N, "retry_after": S}``; ``GET /_control/lro``;
        ``POST /_control/lro/rules`` (one rule or a list: ``{"outcome": "stuck"|"failed", "path",
        "method", "code", "message", "times"}``, added); ``DELETE /_control/lro/rules``;
        ``GET /_control/operations``; ``POST /_control/operations/settle`` (``{"id": ...}`` or none)."""
        route = (method, path.rstrip("/"))
        if route == ("PUT", "/_control/lro"):
            if not isinstance(payload, dict) or set(payload) - {"polls", "retry_after"}:
                raise ValueError('the lro body must be {"polls": N, "retry_after": S}')
            self.set_lro(payload.get("polls"), payload.get("retry_after"))
            return {"ok": True, "polls": self.lro_polls, "retry_after": self.retry_after}
        if route == ("GET", "/_control/lro"):
            with self._lock:
                return {"polls": self.lro_polls, "retry_after": self.retry_after,
                        "rules": [asdict(r) for r in self._rules]}
        if route == ("POST", "/_control/lro/rules"):
            items = payload if isinstance(payload, list) else [payload]
            for item in items:
                if not isinstance(item, dict):
                    raise ValueError("an lro rule must be a JSON object")
                unknown = set(item) - (set(LroRule.__dataclass_fields__) - {"taken"})
                if unknown:
                    raise ValueError(f"unknown lro rule keys: {sorted(unknown)}")
            rules = [LroRule(**item) for item in items]
            for rule in rules:
                self.add_rule(rule)
            return {"ok": True, "rules": len(rules)}
        if route == ("DELETE", "/_control/lro/rules"):
            self.clear_rules()
            return {"ok": True}
        if route == ("GET", "/_control/operations"):
            return [asdict(op) for op in self.operations]
        if route == ("POST", "/_control/operations/settle"):
            op_id = payload.get("id") if isinstance(payload, dict) else None
            return {"ok": True, "ended": self.settle(op_id)}
        raise ValueError(f"no control route {method} {path}")

    # -- the operations ------------------------------------------------------------------------

    def start(self, kind: str, method: str, path: str, resource_id: str) -> Operation:
        with self._lock:
            rule = next((r for r in self._rules if r.take(method, path)), None)
            op = Operation(
                id=str(uuid.uuid4()),
                kind=kind,
                method=method,
                resource_id=resource_id,
                polls_before_end=self.lro_polls,
                outcome=rule.outcome if rule else None,
                code=rule.code if rule else None,
                message=rule.message if rule else None,
            )
            self._ops[op.id] = op
            return op

    def poll(self, op_id: str) -> Operation | None:
        """Answer one poll: count it, and end the operation when its polls are spent."""
        with self._lock:
            op = self._ops.get(op_id)
            if op is None:
                return None
            if op.status == "InProgress" and op.outcome != "stuck" and op.in_progress_answers >= op.polls_before_end:
                self._finish(op)
            if op.status == "InProgress":
                op.in_progress_answers += 1
            op.polls += 1
            return copy.copy(op)

    def _finish(self, op: Operation) -> None:
        """Caller holds ``self._lock``. Applies the write to the estate."""
        failed = op.outcome == "failed"
        op.status = "Failed" if failed else "Succeeded"
        op.end_time = _iso(None)
        rid = op.resource_id.lower()

        def change(estate: dict[str, Any]) -> None:
            for bucket in _buckets_of(estate):
                for i, item in enumerate(list(bucket)):
                    if not (isinstance(item, dict) and str(item.get("id", "")).lower() == rid):
                        continue
                    if op.kind == "delete":
                        if not failed:
                            del bucket[i]
                    else:
                        item.setdefault("properties", {})["provisioningState"] = "Failed" if failed else "Succeeded"
                    return

        self.standin.update_estate(change)

    def status_body(self, op: Operation) -> dict[str, Any]:
        body: dict[str, Any] = {"startTime": op.start_time, "status": op.status, "name": op.id}
        if op.end_time:
            body["endTime"] = op.end_time
        if op.status == "Failed":
            body["error"] = {"code": op.code, "message": op.message}
        return body


def _buckets_of(estate: dict[str, Any]) -> Iterable[list[Any]]:
    for sub in estate.get("subscriptions", {}).values():
        for name in ("disks", "snapshots"):
            bucket = sub.get(name)
            if isinstance(bucket, list):
                yield bucket
