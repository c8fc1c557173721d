"""`vhd-gc doctor`: a preflight. Each check is a line, a tick or a cross, with the fix for a cross.

What it checks, with the pass's own code wherever the pass does the same thing:

- the credential gets a token for the ARM scope;
- every configured subscription is readable for every reference source (the registered sources'
  own reads, gc_daemon/sources/; a 403 names the source, the subscription and the action its role
  lacks);
- every collected account: in a configured subscription (the pass's placement check), listable
  (one page of containers, one page of blobs), and its blob soft delete state;
- the delete permission (the data action ``.../blobs/delete``, asked of ARM's Permissions - List
  For Resource on each account): required in ``mode: delete``; in dry-run holding it is a warning,
  not a failure (least privilege: the reader role is enough, and a warning does not block a
  dry-run rollout that will later switch to delete);
- the database: reachable, writable (an UPDATE in a transaction that is rolled back) and migrated;
- the metrics address can be bound.

Every network call has a per-request timeout and no retries worth waiting for, so doctor never
hangs. Exit 0 when every check holds, 3 otherwise (warnings do not fail).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .config import Config, ConfigError, sqlite_path_problem

OK, WARN, FAIL = "ok", "warn", "FAIL"
ROLE = "deploy/azure/vhd-gc-role.json"
READER_ROLE = "deploy/azure/vhd-gc-reader-role.json"
REQUEST_TIMEOUT = 15.0  # seconds, each request (connect and read)
TOKEN_DEADLINE = 60.0  # the credential's own timeouts come first; this only catches a hang


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


def _ok(name: str, detail: str) -> Check:
    return Check(name, OK, detail)


def _warn(name: str, detail: str, fix: str = "") -> Check:
    return Check(name, WARN, detail, fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name, FAIL, detail, fix)


def _short(exc: BaseException) -> str:
    from .sources.base import describe_error
    from .urls import redact_text

    return redact_text(describe_error(exc))


def _bounded(fn: Callable[[], Any], deadline: float) -> Any:
    """``fn()`` in a thread, waited for at most ``deadline`` seconds (TimeoutError past it)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="doctor-check")
    thread.start()
    thread.join(deadline)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {deadline:.0f} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------


_CREDENTIAL_FIX = {
    "default": "sign in with `az login`, or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET "
    "(or AZURE_FEDERATED_TOKEN_FILE), or run where a managed identity is assigned",
    "managed_identity": "assign a managed identity to this VM or container (and AZURE_CLIENT_ID for a "
    "user-assigned one), or choose another azure.credential",
    "azure_cli": "install the Azure CLI and sign in with `az login` as the user that runs vhd-gc",
    "emulator": "the emulator credential needs nothing: check azure.credential",
}


def check_credential(config: Config, credential: Any) -> Check:
    scope = config.azure.arm_endpoint.rstrip("/") + "/.default"
    try:
        token = _bounded(lambda: credential.get_token(scope), TOKEN_DEADLINE)
    except Exception as exc:  # noqa: BLE001
        return _fail("credential", f"azure.credential {config.azure.credential}: no token for {scope} ({_short(exc)})",
                     _CREDENTIAL_FIX[config.azure.credential])
    if not getattr(token, "token", None):
        return _fail("credential", f"azure.credential {config.azure.credential}: an empty token for {scope}",
                     _CREDENTIAL_FIX[config.azure.credential])
    return _ok("credential", f"azure.credential {config.azure.credential} gets a token for {scope}")


def _read_fix(permission: str, subscription: str, mode: str) -> str:
    role = ROLE if mode == "delete" else f"{READER_ROLE} (or {ROLE} for mode: delete)"
    return (f"the identity lacks {permission} on subscription {subscription}: assign the role in {role} "
            f"at /subscriptions/{subscription} (see deploy/azure/README.md)")


def check_references(config: Config, inventory: Any) -> tuple[list[Check], Any]:
    """Every source of every subscription: the pass's own reference read, bounded by its
    per-request timeouts. Returns the checks and the read (its placed accounts serve later checks)."""
    try:
        read = inventory.read()
    except Exception as exc:  # noqa: BLE001 - read() reports source failures itself; this is anything else
        return [_fail("references", f"the reference read failed: {_short(exc)}",
                      "see the message; `vhd-gc scan` would fail the same way")], None
    by_label = {r.label: r for s in inventory.sources for r in s.reads}
    checks = []
    for sub in config.azure.subscriptions:
        for source in inventory.sources:
            errors = [e for e in read.errors if e.source in {f"{sub}/{label}" for label in source.labels}]
            name = f"references {source.name} @ {sub}"
            if not errors:
                count = sum(read.counts.get(f"{sub}/{label}", 0) for label in source.labels)
                # Sources that hold no references (placement; the disk holds' groups and locks): listed.
                no_refs = source.name in ("storage_accounts", "resource_groups", "locks")
                what = "listed" if no_refs else f"readable ({count} references)"
                checks.append(_ok(name, what))
                continue
            error = errors[0]
            label = error.source.split("/", 1)[1]
            read_decl = by_label.get(label)
            message = error.message
            if "HTTP 403" in message or "AuthorizationFailed" in message:
                fix = _read_fix(read_decl.permission if read_decl else "a read permission", sub, config.mode)
                detail = f"{label}: {message} (needs {read_decl.permission if read_decl else '?'})"
            elif "HTTP 401" in message or "ClientAuthenticationError" in message:
                fix = "the credential is not accepted by ARM: see the credential check"
                detail = f"{label}: {message}"
            elif "SubscriptionNotFound" in message or "HTTP 404" in message:
                fix = f"check that subscription {sub} exists and that the identity can see it (azure.subscriptions)"
                detail = f"{label}: {message}"
            else:
                fix = ("the source could not be read in full; every pass will be incomplete until it can: "
                       "check azure.arm_endpoint, the network, and the message")
                detail = f"{label}: {message}"
            if len(errors) > 1:
                detail += f" (and {len(errors) - 1} more errors)"
            checks.append(_fail(name, detail, fix))
    return checks, read


def _placed_accounts(config: Config, read: Any, credential: Any) -> tuple[list[Check], dict[str, Any], dict[str, Any]]:
    """The accounts to check: (checks, {name: PlacedAccount or None}, {name: AccountStorage})."""
    from .azure.storage import AccountStorage
    from .wiring import DiscoveredAccounts, DiscoveryFailed, ca_bundle

    checks: list[Check] = []
    placed: dict[str, Any] = {}
    storages: dict[str, Any] = {}
    if config.azure.storage_accounts is None:  # discovery: placed in the configured subscriptions by construction
        discovered = DiscoveredAccounts(config, credential)
        discovered.discovery._retry_total = 0
        discovered.discovery._timeout = REQUEST_TIMEOUT
        try:
            found = discovered.discovery.discover()
            if found.errors:
                raise DiscoveryFailed([f"{e.source}: {e.message}" for e in found.errors], ["storageAccounts"])
            by_name = {a.name: a for a in found.accounts}
            for name, storage in discovered().items():
                placed[name] = by_name.get(name)
                storages[name] = storage
        except Exception as exc:  # noqa: BLE001
            checks.append(_fail("accounts", f"account discovery failed: {_short(exc)}",
                                f"the identity needs Microsoft.Storage/storageAccounts/read: assign the role in {ROLE}"))
            return checks, placed, storages
        if not storages:
            checks.append(_warn("accounts", "discovery found no account to collect",
                                "check azure.discovery (include, exclude, resource groups)"))
        return checks, placed, storages

    keys: dict[str, str | None] = {}
    for i, acct in enumerate(config.azure.storage_accounts):
        if acct.key_env and not os.environ.get(acct.key_env):
            checks.append(_fail(f"account {acct.name}", f"azure.storage_accounts[{i}].key_env: environment variable "
                                f"{acct.key_env} is not set", f"export {acct.key_env} (the account key) for vhd-gc, "
                                "or remove key_env to use the credential"))
            continue
        keys[acct.name] = os.environ.get(acct.key_env) if acct.key_env else None
    for acct in config.azure.storage_accounts:
        if acct.name not in keys:
            continue
        secret = keys[acct.name]
        storages[acct.name] = AccountStorage(
            acct.name, acct.endpoint, secret if secret is not None else credential,
            retry_total=0, connection_timeout=REQUEST_TIMEOUT, read_timeout=REQUEST_TIMEOUT,
            connection_verify=ca_bundle(),
        )
        placed[acct.name] = (read.accounts or {}).get(acct.name) if read is not None and read.accounts is not None else None
    return checks, placed, storages


def check_placement(config: Config, read: Any, inventory: Any, names: list[str]) -> list[Check]:
    from .sources.storage_accounts import placement_problems

    if config.azure.storage_accounts is None:
        return [_ok(f"account {n} placement", "discovered in a configured subscription") for n in names]
    if read is None or read.accounts is None or any(e.source.endswith("/storageAccounts") for e in read.errors):
        return [_fail(f"account {n} placement", "not checked: the storage accounts of the subscriptions could not "
                      "be listed", "fix the storage_accounts reference check above") for n in names]
    checks = []
    for name in names:
        problems = placement_problems(read.accounts, [name], inventory.locate)
        if problems:
            where = inventory.locate(name)
            fix = (f"add {where.subscription} to azure.subscriptions (or stop collecting {name})" if where is not None
                   else "check azure.subscriptions and the identity's access to the account's subscription")
            checks.append(_fail(f"account {name} placement", problems[0], fix))
        else:
            where = read.accounts[name]
            checks.append(_ok(f"account {name} placement", f"in subscription {where.subscription} "
                              f"(resource group {where.resource_group})"))
    return checks


def check_listing(name: str, storage: Any, uses_key: bool) -> Check:
    """One page of containers and one page of blobs of the first container."""
    def list_one_page() -> str:
        client = storage.client
        containers = next(client.list_containers(results_per_page=1).by_page(), [])
        containers = list(containers)
        if not containers:
            return "listable (no container)"
        first = containers[0].name
        list(next(client.get_container_client(first).list_blobs(results_per_page=1).by_page(), []))
        return f"listable (containers and the blobs of {first})"

    try:
        return _ok(f"account {name} listing", _bounded(list_one_page, 3 * REQUEST_TIMEOUT))
    except Exception as exc:  # noqa: BLE001
        text = _short(exc)
        if uses_key:
            fix = "check the account key in the environment variable key_env names, and the blob_endpoint"
        else:
            fix = (f"assign the role in {READER_ROLE} (data actions blobs/read) on the account, "
                   "and check the blob_endpoint and the network")
        if "AuthorizationPermissionMismatch" in text or "AuthorizationFailure" in text or "403" in text:
            fix = (f"the identity may not list blobs: assign the role in {READER_ROLE} or {ROLE} on the account"
                   if not uses_key else "the key is refused: check the key in the environment variable key_env names")
        return _fail(f"account {name} listing", f"cannot be listed: {text}", fix)


def check_soft_delete(name: str, storage: Any) -> Check:
    from .azure.storage import soft_delete_days

    try:
        days = _bounded(lambda: soft_delete_days(storage), 2 * REQUEST_TIMEOUT)
    except Exception as exc:  # noqa: BLE001
        return _warn(f"account {name} soft delete", f"could not read the blob service settings ({_short(exc)})",
                     "the identity needs Microsoft.Storage/storageAccounts/blobServices/read to read them")
    if days is None:
        return _warn(f"account {name} soft delete", "blob soft delete is off: a VHD vhd-gc deletes cannot be restored",
                     "turn blob soft delete on for the account (e.g. 14 days): az storage account blob-service-properties "
                     "update --enable-delete-retention true --delete-retention-days 14")
    return _ok(f"account {name} soft delete", f"on: deleted VHDs stay restorable for {days} days")


def check_delete_permission(config: Config, name: str, placed: Any, client_for: Callable[[str], Any],
                            uses_key: bool) -> Check:
    from .azure.permissions import PermissionsError, holds, list_for_resource
    from .sources.roles import DELETE_DATA_ACTION

    check = f"account {name} delete permission"
    deleting = config.mode == "delete"
    if placed is None:
        detail = "not checked: the account's resource id is unknown (see its placement)"
        return _fail(check, detail, "fix the placement first") if deleting else _warn(check, detail)
    resource_id = (f"/subscriptions/{placed.subscription}/resourceGroups/{placed.resource_group}"
                   f"/providers/Microsoft.Storage/storageAccounts/{placed.name}")
    try:
        permissions = _bounded(
            lambda: list_for_resource(client_for(placed.subscription), config.azure.arm_endpoint, resource_id),
            3 * REQUEST_TIMEOUT,
        )
    except (PermissionsError, Exception) as exc:  # noqa: BLE001
        detail = f"could not read the identity's permissions on {resource_id}: {_short(exc)}"
        fix = "check the network to azure.arm_endpoint; Microsoft.Authorization/permissions needs no role of its own"
        return _fail(check, detail, fix) if deleting else _warn(check, detail, fix)
    has = holds(permissions, DELETE_DATA_ACTION, data=True)
    key_note = " (the account key in key_env can delete whatever the roles say)" if uses_key else ""
    if deleting:
        if has:
            return _ok(check, f"the identity holds {DELETE_DATA_ACTION}{key_note}")
        return _fail(check, f"mode: delete, but the identity lacks {DELETE_DATA_ACTION} on {resource_id}",
                     f"assign the role in {ROLE} at the account or its subscription")
    if has:
        return _warn(check, f"mode: dry-run, but the identity holds {DELETE_DATA_ACTION}{key_note}",
                     f"least privilege for dry-run: assign {READER_ROLE} instead of a role that can delete")
    return _ok(check, f"the identity cannot delete blobs, as mode: dry-run needs{key_note}")


def check_database(config: Config) -> list[Check]:
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from .state.db import current_revision, head_revision, make_engine

    url = make_url(config.database_url)
    shown = url.render_as_string(hide_password=True)
    fix_upgrade = f"run `vhd-gc -c CONFIG db upgrade` (scan and run also do it when the database is behind)"
    if url.get_backend_name() == "sqlite":
        problem = sqlite_path_problem(config.database_url)
        if problem:
            return [_fail("database reachable", problem, "create the directory, or point database_url elsewhere")]
        name = url.database or ""
        if name and name != ":memory:" and not name.startswith("file:") and not os.path.exists(name):
            return [_fail("database reachable", f"{shown}: the file does not exist yet", fix_upgrade)]
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        kwargs["connect_args"] = {"connect_timeout": int(REQUEST_TIMEOUT)}
    checks: list[Check] = []
    engine = make_engine(config.database_url, **kwargs)
    try:
        try:
            _bounded(lambda: _select_one(engine, text), 2 * REQUEST_TIMEOUT)
            checks.append(_ok("database reachable", shown))
        except Exception as exc:  # noqa: BLE001
            return [_fail("database reachable", f"{shown}: {_short(exc)}",
                          "check database_url (host, port, name, user, password) and that the server runs")]
        try:
            current = current_revision(engine)
            head = head_revision()
        except Exception as exc:  # noqa: BLE001
            current, head = None, None
            checks.append(_fail("database migrated", f"cannot compare with the migrations: {_short(exc)}", fix_upgrade))
        else:
            if current == head:
                checks.append(_ok("database migrated", f"at the newest schema ({head})"))
            else:
                checks.append(_fail("database migrated", f"at {current or 'an empty schema'}, the newest is {head}",
                                    fix_upgrade))
        try:
            _bounded(lambda: _rolled_back_write(engine, text, current is not None), 2 * REQUEST_TIMEOUT)
            checks.append(_ok("database writable", "a write in a rolled-back transaction succeeded"))
        except Exception as exc:  # noqa: BLE001
            checks.insert(1, _fail("database writable", f"{shown}: {_short(exc)}",
                                   "the database user needs INSERT, UPDATE and DELETE (and a writable file for "
                                   "SQLite; no read-only mode or replica)"))
    finally:
        engine.dispose()
    return checks


def _select_one(engine: Any, text: Any) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _rolled_back_write(engine: Any, text: Any, migrated: bool) -> None:
    with engine.connect() as conn:
        transaction = conn.begin()
        try:
            if migrated:  # a row of the schema's own table, written and rolled back
                conn.execute(text("UPDATE alembic_version SET version_num = version_num"))
            else:
                conn.execute(text("CREATE TABLE vhdgc_doctor_probe (id INTEGER)"))
                conn.execute(text("INSERT INTO vhdgc_doctor_probe (id) VALUES (1)"))
        finally:
            transaction.rollback()


def check_metrics(config: Config) -> Check:
    host, port = config.listen_address
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, socktype, proto, _, addr = infos[0]
        sock = socket.socket(family, socktype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the daemon's server does
            sock.bind(addr)
        finally:
            sock.close()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return _fail("metrics address", f"metrics_listen {config.metrics_listen} cannot be bound: {reason}",
                     "another process listens there (a running `vhd-gc run`?): stop it, or choose another "
                     "metrics_listen" if "in use" in reason.lower() else
                     "choose a metrics_listen address of this host (and a port above 1023 unless run as root)")
    return _ok("metrics address", f"{config.metrics_listen} can be bound")


# --------------------------------------------------------------------------------------------------
# All of them
# --------------------------------------------------------------------------------------------------


def run_checks(config: Config) -> list[Check]:
    from .sources import REGISTRY, without_placement
    from .sources.inventory import ReferenceInventory, arm_client_kwargs
    from .wiring import build_credential, ca_bundle

    checks: list[Check] = []
    credential = build_credential(config)
    token = check_credential(config, credential)
    checks.append(token)

    sources = REGISTRY if config.azure.storage_accounts is not None else without_placement()
    inventory = ReferenceInventory(
        credential, config.azure.arm_endpoint, list(config.azure.subscriptions), sources=sources,
        connection_verify=ca_bundle(), retry_total=0, timeout=REQUEST_TIMEOUT,
        max_workers=config.azure.max_concurrency, max_pages=config.azure.max_list_pages,
    )
    clients: dict[str, Any] = {}
    lock = threading.Lock()

    def client_for(subscription: str) -> Any:
        from azure.mgmt.storage import StorageManagementClient

        with lock:
            if subscription not in clients:
                kwargs = arm_client_kwargs(config.azure.arm_endpoint.rstrip("/"), ca_bundle(), 0, REQUEST_TIMEOUT)
                clients[subscription] = StorageManagementClient(credential, subscription, **kwargs)
            return clients[subscription]

    storages: dict[str, Any] = {}
    try:
        with inventory:
            if token.failed:
                read = None
                checks.append(_fail("references", "not checked: the credential gets no token",
                                    "fix the credential check above first"))
            else:
                reference_checks, read = check_references(config, inventory)
                checks += reference_checks
            account_checks, placed, storages = _placed_accounts(config, read, credential)
            checks += account_checks
            names = list(storages)
            if config.azure.storage_accounts is not None and not token.failed:
                checks += check_placement(config, read, inventory, names)
            keyed = {a.name for a in config.azure.storage_accounts or [] if a.key_env}

            def per_account(name: str) -> list[Check]:
                out = [check_listing(name, storages[name], name in keyed)]
                out.append(check_soft_delete(name, storages[name]))
                if token.failed:
                    out.append(_fail(f"account {name} delete permission", "not checked: the credential gets no token",
                                     "fix the credential check above first"))
                else:
                    out.append(check_delete_permission(config, name, placed.get(name), client_for, name in keyed))
                return out

            if names:
                with ThreadPoolExecutor(max_workers=min(8, len(names)), thread_name_prefix="doctor-account") as pool:
                    for result in pool.map(per_account, names):
                        checks += result
    finally:
        for client in clients.values():
            client.close()
        for storage in storages.values():
            try:
                storage.close()
            except Exception:  # noqa: BLE001
                pass

    checks += check_database(config)
    checks.append(check_metrics(config))
    return checks


def render(checks: list[Check], write: Callable[[str], None], *, unicode: bool = True) -> None:
    marks = {OK: "✓ ok  ", WARN: "! warn", FAIL: "✗ FAIL"} if unicode else {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}
    for check in checks:
        write(f"{marks[check.status]}  {check.name}: {check.detail}")
        if check.fix and check.status != OK:
            write(f"        fix: {check.fix}")
    failed = sum(c.failed for c in checks)
    warned = sum(c.status == WARN for c in checks)
    write(f"{len(checks)} checks: {len(checks) - failed - warned} ok, {warned} warnings, {failed} failed")


__all__ = ["Check", "ConfigError", "render", "run_checks"]
