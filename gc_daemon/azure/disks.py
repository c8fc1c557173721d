"""The managed-disk gateway: the one adapter that reads one disk or snapshot and writes them
(quarantine snapshot, delete, restore) through azure-mgmt-compute.

Its callers are :mod:`gc_daemon.disk_pass` (the ownership GETs) and :mod:`gc_daemon.execute_disks`
(re-verification, quarantine, delete, settling unknown outcomes, ``vhd-gc restore``). Writes are
long-running operations polled by the SDK's own poller (``begin_*``), every ``poll_interval`` unless
ARM's ``Retry-After`` says otherwise, and waited for at most ``lro_timeout`` (wall clock, from the
first request): the poller stops at that deadline, it never polls on in the background.

What a write raises says what the caller may conclude:

- :class:`DiskRefused`: ARM refused the request, nothing was done (409 ``OperationNotAllowed``: the
  disk is attached or otherwise owned; 409 ``ScopeLocked``: a lock; 404: a subscription or group ARM
  does not know (a disk already gone is 204: done); 403; 400).
- :class:`DiskOperationFailed`: the operation ended ``Failed`` or ``Canceled`` (or the request was
  throttled past the SDK's retries, or never reached ARM): nothing was done, or a resource made is
  left ``Failed``.
- :class:`DiskOutcomeUnknown`: the operation did not end within ``lro_timeout``, its reply or a poll
  was lost, or ARM answered 5xx past the retries: it may or may not have happened; the caller settles
  it by looking at the resource.

Reads raise :class:`DiskReadFailed` for anything but 404, which is ``None`` (the resource is gone).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.core.polling.base_polling import OperationFailed
from azure.mgmt.core.polling.arm_polling import ARMPolling

from ..disks import GIB, QUARANTINE_TAG, DiskRow, DiskSeen, Kind, SnapshotSeen
from ..resource_ids import ResourceIdError, parse_resource_id
from ..sources.disks import disk_seen
from ..sources.snapshots import snapshot_seen

QUARANTINE_UNTIL_TAG = "vhdgc-quarantine-until"
RESTORED_FROM_TAG = "vhdgc-restored-from"
NEVER_ATTACHED = "never-attached"

# Azure snapshot names: 1-80 characters, letters, digits, '_', '.', '-'; they begin with a letter or
# digit and end with a letter, a digit or '_'.
MAX_NAME = 80
_NAME_PREFIX = "vhdgc-q-"
_HASH_CHARS = 12
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
class DiskError(Exception):
    """A gateway failure; ``code`` is ARM's error code (or a name of ours when ARM gave none)."""

    def __init__(self, code: str, message: str = "") -> None:
        self.code = code
        super().__init__(f"{code}: {message}" if message else code)


class DiskRefused(DiskError):
    """ARM refused the write: nothing was done."""


class DiskOperationFailed(DiskError):
    """The long-running operation ended Failed or Canceled (or was throttled): nothing was deleted."""


class DiskOutcomeUnknown(DiskError):
    """Whether the write happened is not known: look at the resource."""


class DiskReadFailed(DiskError):
    """A GET of one disk or snapshot failed (not a 404)."""


def parse_id(resource_id: str, kind: str | None = None) -> tuple[str, str, str, str]:
    """(subscription, resource group, kind, name) of a disk or snapshot id (``kind``: "disks" or
    "snapshots" to require one); ValueError for anything else."""
    try:
        rid = parse_resource_id(resource_id)
    except ResourceIdError:
        rid = None
    plural = None if rid is None else ("disks" if rid.kind is Kind.MANAGED_DISK else "snapshots")
    if rid is None or (kind is not None and plural != kind):
        what = {"disks": "a managed disk", "snapshots": "a snapshot"}.get(kind or "", "a managed disk or snapshot")
        raise ValueError(f"{resource_id!r} is not the ARM id of {what}")
    return rid.subscription, rid.resource_group, plural, rid.name


def is_disk_id(text: str) -> bool:
    """Whether ``text`` is the ARM id of a managed disk (what `vhd-gc restore ID` takes)."""
    try:
        return parse_resource_id(text).kind is Kind.MANAGED_DISK
    except ResourceIdError:
        return False



def _code(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    if code:
        return str(code)
    return f"HTTP{exc.status_code}" if exc.status_code else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:300] if text else type(exc).__name__


class _DeadlinePolling(ARMPolling):
    """The SDK's ARM poller with a wall-clock deadline: past it, the polling thread ends (the caller
    gets :class:`DiskOutcomeUnknown`) instead of polling on for ever in the background."""

    def __init__(self, interval: float, deadline: float) -> None:
        super().__init__(timeout=interval)
        self._deadline = deadline

    def _delay(self) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise DiskOutcomeUnknown("OperationTimedOut", "the operation did not end in time")
        self._sleep(min(self._extract_delay(), remaining))


def _failed_code(poller: Any, exc: HttpResponseError) -> str:
    """ARM's code for a failed operation: the status body's ``error.code``, else the exception's."""
    try:
        body = poller.polling_method()._pipeline_response.http_response.json()  # noqa: SLF001
        code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
        if code:
            return str(code)
        status = body.get("status") if isinstance(body, dict) else None
        if status:
            return str(status)
    except Exception:  # noqa: BLE001 - the exception's code will do
        pass
    return _code(exc)


class DiskGateway:
    """Reads and writes managed disks and snapshots. ``client_for(subscription)`` returns the
    ComputeManagementClient of that subscription (no I/O until a method is called)."""

    def __init__(self, client_for: Callable[[str], Any], lro_timeout: timedelta | float,
                 poll_interval: timedelta | float = 5.0) -> None:
        self._client_for = client_for
        self.lro_timeout = lro_timeout.total_seconds() if isinstance(lro_timeout, timedelta) else float(lro_timeout)
        self.poll_interval = (poll_interval.total_seconds() if isinstance(poll_interval, timedelta)
                              else float(poll_interval))
        if self.lro_timeout <= 0 or self.poll_interval < 0:
            raise ValueError("lro_timeout must be above 0s and poll_interval at least 0s")

    # -- reads -------------------------------------------------------------------------------

    def _get(self, resource_id: str, kind: str) -> Any | None:
        sub, rg, _, name = parse_id(resource_id, kind)
        ops = getattr(self._client_for(sub), kind)
        try:
            return ops.get(rg, name)
        except ResourceNotFoundError:
            return None  # the resource, or its group, is gone
        except HttpResponseError as exc:
            if exc.status_code == 404:
                return None
            raise DiskReadFailed(_code(exc), _first_line(exc)) from exc
        except AzureError as exc:
            raise DiskReadFailed(type(exc).__name__, _first_line(exc)) from exc

    def get_disk(self, resource_id: str) -> DiskSeen | None:
        """GET one disk, with its ``LastOwnershipUpdateTime`` (``ownership_read=True``); None: gone."""
        disk = self._get(resource_id, "disks")
        if disk is None:
            return None
        try:  # one conversion for a listed disk and a GET's: the sources' (strict on types)
            return disk_seen(parse_id(resource_id, "disks")[0], disk, from_get=True)
        except (TypeError, ValueError) as exc:
            raise DiskReadFailed("MalformedResponse", _first_line(exc)) from exc

    def get_snapshot(self, resource_id: str) -> SnapshotSeen | None:
        snap = self._get(resource_id, "snapshots")
        if snap is None:
            return None
        try:
            return snapshot_seen(parse_id(resource_id, "snapshots")[0], snap)
        except (TypeError, ValueError) as exc:
            raise DiskReadFailed("MalformedResponse", _first_line(exc)) from exc

    # -- the operations ----------------------------------------------------------------------

    def _operation(self, start: Callable[[ARMPolling], Any]) -> Any:
        """Send the request ``start`` makes (with our polling method), wait for the operation, and
        turn what happened into a result or one of the gateway's errors."""
        deadline = time.monotonic() + self.lro_timeout
        try:
            poller = start(_DeadlinePolling(self.poll_interval, deadline))
        except HttpResponseError as exc:
            status = exc.status_code
            if isinstance(exc.__cause__, OperationFailed):  # the first answer already says Failed
                raise DiskOperationFailed(_code(exc), _first_line(exc)) from exc
            if status is None:  # never reached ARM (a credential that cannot get a token)
                raise DiskOperationFailed(_code(exc), _first_line(exc)) from exc
            if status >= 500 or status < 400:  # ARM's trouble, or an answer that is no LRO: unknown
                raise DiskOutcomeUnknown(_code(exc), _first_line(exc)) from exc
            if status == 429:
                raise DiskOperationFailed(_code(exc) if _code(exc) != "HTTP429" else "TooManyRequests",
                                          _first_line(exc)) from exc
            raise DiskRefused(_code(exc), _first_line(exc)) from exc
        except DiskError:
            raise
        except AzureError as exc:  # no reply (connection lost, read timeout): sent or not, unknown
            raise DiskOutcomeUnknown(type(exc).__name__, _first_line(exc)) from exc
        try:
            # The polling thread stops at the deadline by itself; the margin is for a poll in flight
            # then (bounded by the client's read timeout).
            poller.wait(timeout=max(0.0, deadline - time.monotonic()) + max(1.0, 2 * self.poll_interval))
            if not poller.done():
                raise DiskOutcomeUnknown("OperationTimedOut", f"the operation did not end within {self.lro_timeout:g}s")
            return poller.result()
        except DiskError:
            raise
        except HttpResponseError as exc:
            if isinstance(exc.__cause__, OperationFailed):
                raise DiskOperationFailed(_failed_code(poller, exc), _first_line(exc)) from exc
            # A poll answered badly (BadStatus, BadResponse: a 5xx past the retries, a 404 for the
            # operation): the operation itself may still end either way.
            raise DiskOutcomeUnknown(_code(exc), f"polling failed: {_first_line(exc)}") from exc
        except AzureError as exc:
            raise DiskOutcomeUnknown(type(exc).__name__, f"polling failed: {_first_line(exc)}") from exc

    @staticmethod
    def quarantine_name(disk: DiskSeen, ownership: datetime | None) -> str:
        """The quarantine snapshot's name: ``vhdgc-q-<disk name>-<hash>``, the hash of the disk's id and
        the ownership time the deletion is bound to. The same disk and time give the same name, so a
        retry after a crash PUTs the same snapshot; a disk attached and detached since gets a new one."""
        bound = ownership.isoformat() if ownership is not None else NEVER_ATTACHED
        digest = hashlib.sha256(f"{disk.id.lower()}|{bound}".encode()).hexdigest()[:_HASH_CHARS]
        room = MAX_NAME - len(_NAME_PREFIX) - 1 - _HASH_CHARS
        stem = _UNSAFE.sub("-", disk.name)[:room].strip("-.")
        return f"{_NAME_PREFIX}{stem}-{digest}" if stem else f"{_NAME_PREFIX}{digest}"

    def create_quarantine_snapshot(self, disk: DiskSeen, name: str, until: datetime) -> str:
        """An incremental snapshot of ``disk`` named ``name`` in its resource group and location,
        tagged ``vhdgc-quarantine-of`` (the disk's id) and ``vhdgc-quarantine-until``; waits for it to
        succeed. A snapshot of that name already made from this disk (a retry) is fine. Its id."""
        sub, rg, _, _ = parse_id(disk.id, "disks")
        if not disk.location:
            raise DiskRefused("InvalidParameter", f"{disk.id}: the disk's location is not known")
        body = {
            "location": disk.location,
            "tags": {QUARANTINE_TAG: disk.id, QUARANTINE_UNTIL_TAG: until.isoformat()},
            "properties": {
                "creationData": {"createOption": "Copy", "sourceResourceId": disk.id},
                "incremental": True,
            },
        }
        ops = self._client_for(sub).snapshots
        snap = self._operation(lambda polling: ops.begin_create_or_update(rg, name, body, polling=polling))
        if snap is None:
            snap = self._get(f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/snapshots/{name}",
                             "snapshots")
        if snap is None:
            raise DiskOutcomeUnknown("NotFound", f"snapshot {name}: the operation ended but the snapshot is not there")
        source = snap.creation_data.source_resource_id if snap.creation_data is not None else None
        if (source or "").lower() != disk.id.lower():  # whatever its state: never ours to touch
            raise DiskOperationFailed("QuarantineNameTaken",
                                      f"snapshot {snap.id} exists and is not a copy of {disk.id} (source {source})")
        state = (snap.provisioning_state or "").lower()
        if state != "succeeded":  # ProvisioningStateFailed: an earlier attempt's copy (the executor's to redo)
            raise DiskOperationFailed(f"ProvisioningState{snap.provisioning_state}",
                                      f"snapshot {snap.id} is {snap.provisioning_state}")
        return snap.id

    def delete_disk(self, resource_id: str) -> None:
        """DELETE one disk and wait for the operation (a disk already gone: done)."""
        sub, rg, _, name = parse_id(resource_id, "disks")
        ops = self._client_for(sub).disks
        self._operation(lambda polling: ops.begin_delete(rg, name, polling=polling))

    def delete_snapshot(self, resource_id: str) -> None:
        sub, rg, _, name = parse_id(resource_id, "snapshots")
        ops = self._client_for(sub).snapshots
        self._operation(lambda polling: ops.begin_delete(rg, name, polling=polling))

    def restore_disk(self, row: DiskRow, snapshot_id: str) -> str:
        """Recreate the disk ``row`` recorded from ``snapshot_id``: same name, group, location, SKU,
        size, zones and tags, plus ``vhdgc-restored-from`` (the snapshot's id). Waits; its id."""
        sub, rg, _, name = parse_id(row.id, "disks")
        location = row.location
        if not location:
            snap = self.get_snapshot(snapshot_id)
            location = snap.location if snap is not None else None
        if not location:
            raise DiskRefused("InvalidParameter", f"{row.id}: neither the row nor the snapshot names a location")
        tags = {k: v for k, v in (row.tags or {}).items() if k.lower() != RESTORED_FROM_TAG}
        tags[RESTORED_FROM_TAG] = snapshot_id
        body: dict[str, Any] = {
            "location": location,
            "tags": tags,
            "properties": {"creationData": {"createOption": "Copy", "sourceResourceId": snapshot_id}},
        }
        if row.sku:
            body["sku"] = {"name": row.sku}
        if row.size_bytes:
            body["properties"]["diskSizeGB"] = math.ceil(row.size_bytes / GIB)
        if row.zones:
            body["zones"] = list(row.zones)
        ops = self._client_for(sub).disks
        disk = self._operation(lambda polling: ops.begin_create_or_update(rg, name, body, polling=polling))
        if disk is not None and (disk.provisioning_state or "").lower() not in ("", "succeeded"):
            raise DiskOperationFailed(f"ProvisioningState{disk.provisioning_state}",
                                      f"disk {disk.id} is {disk.provisioning_state}")
        return disk.id if disk is not None and disk.id else row.id
