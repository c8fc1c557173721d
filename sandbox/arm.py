"""A wire-level stand-in for Azure Resource Manager: Microsoft.Compute lists and storage accounts.

It serves the REST paths azure-mgmt-compute 39 calls, over HTTPS (azure-core refuses bearer tokens
over plain HTTP), with ARM's paging (``nextLink`` is absolute and carries ``api-version`` and a
``$skiptoken``), ARM's error bodies, and faults that can be injected per path.

In-process::

    with ArmStandIn(build_estate(vm(SUB, "rg", "vm1", os_vhd=URL)), page_size=2) as arm:
        client = ComputeManagementClient(cred, SUB, base_url=arm.url, connection_verify=arm.cert_path)

As its own process::

    python -m sandbox.arm --port 0 --cert-dir DIR --estate estate.json [--page-size N]
        [--read-budget N --read-refill R]

prints ``READY https://127.0.0.1:PORT CERT_PATH`` once listening and serves until SIGTERM. Another
process steers it through ``/_control/...`` (see :class:`_Handler`).

The estate is plain JSON-able data::

    {"subscriptions": {SUB: {"virtualMachines": [...], "virtualMachineScaleSets": [...],
        "virtualMachineScaleSetVMs": {"<rg>/<vmss>": [...]}, "images": [...], "disks": [...],
        "snapshots": [...], "galleries": [...], "galleryImages": {"<rg>/<gallery>": [...]},
        "galleryImageVersions": {"<rg>/<gallery>/<image>": [...]}, "storageAccounts": [...]}}}

Resources are ARM's REST JSON (``id``, ``name``, ``type``, ``location``, ``properties``); the builder
helpers (:func:`vm`, :func:`disk`, ..., all importable from here) make them, and :func:`build_estate`
files them.

This module is the stand-in's state (:class:`ArmStandIn`: estate, faults and hooks, request log,
permissions) and its command line. The rest, a module a job:

- sandbox/arm_http.py: the request handler (auth, paging, faults, routing, ``/_control/...``) and
  the TLS server;
- sandbox/arm_faults.py: :class:`Fault`, :class:`Hook`, :class:`Gate`;
- sandbox/arm_estate.py: the estate's buckets, ARM ids, :func:`place`, lookups, :class:`ArmError`;
- a module per resource family, its builders and the routes of its nested resources:
  sandbox/arm_vms.py (VMs, scale sets and their instances), arm_images.py (managed images,
  galleries), arm_disk_builders.py (managed disks and snapshots), arm_storage.py (storage
  accounts), arm_services.py (Site Recovery, Image Builder, DevTest Labs: one generic route);
- sandbox/arm_disks.py: what ARM does with disks and snapshots (writes, long-running operations:
  their state in sandbox/arm_lro.py), resource groups and locks; sandbox/arm_throttle.py: ARM's
  subscription read limit.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import signal
import ssl
import sys
import tempfile
import threading
from typing import Any, Iterable

# The stand-in is split by concern; every name its users import from here stays importable from here.
from sandbox import arm_disks, arm_throttle
from sandbox.arm_disk_builders import _managed_disk_like, disk, snapshot  # noqa: F401
from sandbox.arm_estate import (  # noqa: F401
    _ID_RE,
    _KEYED_BUCKETS,
    COMPUTE,
    DEFAULT_LOCATION,
    GENERIC_COMPUTE_TYPES,
    GENERIC_NAMESPACES,
    STORAGE,
    SUBSCRIPTION_BUCKETS,
    TOP_LEVEL_KINDS,
    ArmError,
    _by_name,
    _in_rg,
    _iso,
    _lookup,
    _not_found,
    _type_of,
    _type_of_or_none,
    build_estate,
    compute_id,
    empty_estate,
    empty_subscription,
    place,
    rg_id,
    storage_account_id,
)
from sandbox.arm_faults import (  # noqa: F401
    _DEFAULT_CODES,
    FAULT_KINDS,
    MAX_DELAY_SECONDS,
    MAX_GATE_SECONDS,
    Fault,
    Gate,
    Hook,
)
from sandbox.arm_http import _Handler, _TlsThreadingServer
from sandbox.arm_images import (  # noqa: F401
    gallery,
    gallery_application,
    gallery_application_version,
    gallery_image,
    gallery_image_version,
    image,
)
from sandbox.arm_services import (  # noqa: F401
    EXAMPLES,
    _recovery_id,
    a2a_details,
    devtest_custom_image,
    devtest_lab,
    example,
    hyperv_azure_details,
    image_run_output,
    image_template,
    recovery_vault,
    replication_migration_item,
    replication_protected_item,
    vmware_cbt_details,
)
from sandbox.arm_storage import storage_account  # noqa: F401
from sandbox.arm_vms import _disk_entry, _storage_profile, vm, vmss, vmss_vm  # noqa: F401
from sandbox.tls import make_self_signed

# What the identity holds when a test sets nothing (Permissions - List For Resource answers it at every
# scope): reads everywhere and every blob data action, so a delete-mode preflight passes. Shape: the
# Permission of Microsoft.Authorization 2022-04-01 (sandbox/rest_examples/PROVENANCE.md).
DEFAULT_PERMISSIONS: list[dict[str, Any]] = [
    {
        "actions": ["*/read"],
        "notActions": [],
        "dataActions": ["Microsoft.Storage/storageAccounts/blobServices/containers/blobs/*"],
        "notDataActions": [],
    }
]


class ArmStandIn:
    """The ARM stand-in. The constructor opens nothing; :meth:`start` binds 127.0.0.1:``port``."""

    def __init__(
        self,
        estate: dict[str, Any] | None = None,
        page_size: int = 2,
        cert_dir: str | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.page_size = page_size
        self._host = host
        self._port = port
        self._cert_dir = cert_dir
        self._own_cert_dir = False
        self._lock = threading.Lock()
        self._estate: dict[str, Any] = {"subscriptions": {}}
        self._faults: list[Fault] = []
        self._hooks: list[Hook] = []
        self._requests: list[tuple[str, str]] = []
        self._permissions: dict[str | None, list[dict[str, Any]]] = {None: copy.deepcopy(DEFAULT_PERMISSIONS)}
        self._user_agents: list[str | None] = []
        self.disk_rp = arm_disks.DiskRP(self)  # long-running operations of disks and snapshots
        self.read_budget = arm_throttle.ReadBudget()  # ARM's subscription read limit and its header
        self._server: _TlsThreadingServer | None = None
        self._thread: threading.Thread | None = None
        self.cert_path: str | None = None
        self.key_path: str | None = None
        if estate is not None:
            self.set_estate(estate)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> "ArmStandIn":
        if self._server is not None:
            return self
        if self._cert_dir is None:
            self._cert_dir = tempfile.mkdtemp(prefix="arm-standin-")
            self._own_cert_dir = True
        self.cert_path, self.key_path = make_self_signed(self._cert_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        self._server = _TlsThreadingServer((self._host, self._port), _Handler, context, self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="arm-standin", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_cert_dir and self._cert_dir:
            shutil.rmtree(self._cert_dir, ignore_errors=True)
            self._cert_dir = None
            self._own_cert_dir = False

    def __enter__(self) -> "ArmStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the ARM stand-in is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://{self._host}:{self.port}"

    # -- estate, faults, request log -------------------------------------------------------------

    def set_estate(self, estate: dict[str, Any] | None) -> None:
        """Replace the estate (deep-copied, so later changes by the caller do not leak in)."""
        if estate is None:
            estate = {"subscriptions": {}}
        if not isinstance(estate, dict) or not isinstance(estate.get("subscriptions", {}), dict):
            raise ValueError('the estate must be {"subscriptions": {SUB_ID: {...}}}')
        fresh = json.loads(json.dumps(estate))
        fresh.setdefault("subscriptions", {})
        with self._lock:
            self._estate = fresh

    def update_estate(self, change: Any) -> Any:
        """Apply ``change(estate)`` to a copy of the estate and install it (readers keep the old one);
        returns what ``change`` returns. Writes of disks and snapshots go through here."""
        with self._lock:
            fresh = copy.deepcopy(self._estate)
            result = change(fresh)
            self._estate = fresh
            return result

    def _estate_snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._estate  # replaced wholesale by set_estate, never mutated in place

    @property
    def estate(self) -> dict[str, Any]:
        return copy.deepcopy(self._estate_snapshot())

    def add_fault(self, path: str = ".*", kind: str = "error", **options: Any) -> Fault:
        """Add a :class:`Fault` rule (see its docstring for ``kind`` and options); returns it."""
        fault = Fault(path=path, kind=kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def set_faults(self, faults: Iterable[Fault]) -> None:
        with self._lock:
            self._faults = list(faults)

    def clear_faults(self) -> None:
        self.set_faults([])

    @property
    def faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _match_fault(self, method: str, path: str, has_skiptoken: bool) -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self._faults:
                if fault.hit(method, path, has_skiptoken) and chosen is None:
                    chosen = fault
            return chosen

    def on_request(self, path: str, method: str = "GET", action: Any = None, times: int | None = 1) -> Hook:
        """Add a :class:`Hook`: ``action(method, path_and_query)`` runs when a matching request
        arrives, before it is served (True: drop it). Returns the hook (its ``entered``/``done`` events)."""
        re.compile(path)
        hook = Hook(path=path, method=method, action=action, times=times)
        with self._lock:
            self._hooks.append(hook)
        return hook

    def gate(self, path: str, method: str = "GET") -> Gate:
        """Hold the next matching request unserved until ``release()`` (see :class:`Gate`)."""
        return Gate(self, path, method)

    def clear_hooks(self) -> None:
        with self._lock:
            hooks, self._hooks = self._hooks, []
        for hook in hooks:  # a gate still holding a request lets it go (dropped)
            if isinstance(getattr(hook.action, "__self__", None), Gate):
                hook.action.__self__.release()

    def _match_hook(self, method: str, path: str) -> Hook | None:
        with self._lock:
            for hook in self._hooks:
                if hook.take(method, path):
                    return hook
            return None

    # -- what the identity holds (Microsoft.Authorization/permissions) -----------------------------

    def set_permissions(self, permissions: list[dict[str, Any]], scope: str | None = None) -> None:
        """What the identity holds: at every scope (``scope`` None), or at one resource id. Each entry
        is ARM's Permission (``actions``, ``notActions``, ``dataActions``, ``notDataActions``)."""
        if not isinstance(permissions, list) or not all(isinstance(p, dict) for p in permissions):
            raise ValueError("permissions must be a list of objects (actions, notActions, dataActions, notDataActions)")
        entries = [
            {k: list(p.get(k) or []) for k in ("actions", "notActions", "dataActions", "notDataActions")}
            for p in permissions
        ]
        with self._lock:
            self._permissions[None if scope is None else scope.rstrip("/").lower()] = entries

    def reset_permissions(self) -> None:
        with self._lock:
            self._permissions = {None: copy.deepcopy(DEFAULT_PERMISSIONS)}

    def permissions_at(self, scope: str) -> list[dict[str, Any]]:
        with self._lock:
            found = self._permissions.get(scope.rstrip("/").lower(), self._permissions[None])
            return copy.deepcopy(found)

    def _log(self, method: str, path_and_query: str, user_agent: str | None = None) -> None:
        with self._lock:
            self._requests.append((method, path_and_query))
            self._user_agents.append(user_agent)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every ARM request served so far, as ``(method, path+query)`` (control calls excluded)."""
        with self._lock:
            return list(self._requests)

    @property
    def user_agents(self) -> list[str | None]:
        """The User-Agent header of each request in :attr:`requests`, in the same order."""
        with self._lock:
            return list(self._user_agents)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()
            self._user_agents.clear()

    # -- disks' long-running operations (sandbox/arm_disks.py) ------------------------------------

    def set_lro(self, polls: int | None = None, retry_after: int | None = None) -> None:
        """Polls answered InProgress before an operation ends; the integer ``Retry-After`` it sends."""
        self.disk_rp.set_lro(polls, retry_after)

    def lro_stuck(self, path: str = ".*", method: str | None = None, times: int | None = None) -> Any:
        """Operations started by matching PUTs/DELETEs never end."""
        return self.disk_rp.lro_stuck(path, method, times)

    def lro_failed(self, path: str = ".*", method: str | None = None, **options: Any) -> Any:
        """Operations started by matching PUTs/DELETEs end Failed (``code``, ``message``, ``times``)."""
        return self.disk_rp.lro_failed(path, method, **options)

    def lose_reply(self, path: str, method: str, **options: Any) -> Fault:
        """The matching request is carried out, and its reply is dropped (a ``lost_reply`` fault)."""
        return self.add_fault(path, "lost_reply", method=method, **options)

    @property
    def operations(self) -> list[Any]:
        """The long-running operations started so far (sandbox.arm_disks.Operation copies)."""
        return self.disk_rp.operations

    def settle_operations(self) -> int:
        """End every pending operation that is not stuck, as if its client had polled it to the end."""
        return self.disk_rp.settle()

    def reset(self, estate: dict[str, Any] | None = None) -> None:
        """Back to a clean slate: the given (or an empty) estate, no faults, an empty request log, a full
        read budget."""
        self.set_estate(estate)
        self.clear_faults()
        self.clear_hooks()
        self.clear_requests()
        self.reset_permissions()
        self.disk_rp.reset()
        self.read_budget.reset()


# --------------------------------------------------------------------------------------------------
# python -m sandbox.arm
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.arm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--cert-dir", required=True, help="directory for the self-signed certificate")
    parser.add_argument("--estate", help="JSON file holding the initial estate")
    parser.add_argument("--page-size", type=int, default=2)
    parser.add_argument("--read-budget", type=int, default=arm_throttle.DEFAULT_SIZE,
                        help="reads per subscription before 429 (ARM's bucket: 250)")
    parser.add_argument("--read-refill", type=float, default=arm_throttle.DEFAULT_REFILL,
                        help="reads given back per second (ARM: 25; 0: a plain countdown)")
    args = parser.parse_args(argv)

    estate = None
    if args.estate:
        with open(args.estate, encoding="utf-8") as fh:
            estate = json.load(fh)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    standin = ArmStandIn(estate, page_size=args.page_size, cert_dir=args.cert_dir, port=args.port)
    standin.read_budget = arm_throttle.ReadBudget(args.read_budget, args.read_refill)
    standin.start()
    try:
        print(f"READY {standin.url} {standin.cert_path}", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
