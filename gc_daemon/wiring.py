"""Builds the real adapters from a configuration. Nothing here connects until first used."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from .config import Config, ConfigError
from .passes import Collector
from .urls import redact_text


def _redact_value(value, depth: int = 0):
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, (bool, int, float)) or value is None:
        return value
    if depth > 8:
        return redact_text(repr(value))
    if isinstance(value, dict):
        return {k: _redact_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    if isinstance(value, (set, frozenset)):
        return [_redact_value(v, depth + 1) for v in value]
    text = repr(value)  # what the renderers would print for any other object
    safe = redact_text(text)
    return value if safe == text else safe


def redact_event(logger, method_name, event_dict):
    """A structlog processor, the safety net for logs from any module: every string in every
    field (nested in lists and dicts too, the rendered traceback included) with the URLs in it
    redacted (userinfo and query) and secret query parameters (``sig=``...) hidden."""
    return {key: _redact_value(value) for key, value in event_dict.items()}


def configure_logging(config: Config | None = None, *, stream=None) -> None:
    level = getattr(logging, (config.log_level if config else "info").upper())
    fmt = config.log_format if config else "json"
    renderer = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    # The Azure SDKs log every request at INFO, headers included: keep them to warnings.
    for noisy in ("azure", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def open_store(config: Config, *, migrate: bool = True):
    """The state store; the schema is brought to head when it is empty or behind."""
    from .state.db import make_engine, needs_upgrade, upgrade
    from .state.store import Store

    engine = make_engine(config.database_url)
    if migrate and needs_upgrade(engine):
        upgrade(engine)
    return Store(engine)


def account_keys(config: Config) -> dict[str, str | None]:
    """Account keys from the environment variables the configuration names (never from the file)."""
    keys: dict[str, str | None] = {}
    for i, acct in enumerate(config.azure.storage_accounts or []):
        if acct.key_env:
            value = os.environ.get(acct.key_env)
            if not value:
                raise ConfigError(
                    f"azure.storage_accounts[{i}].key_env: environment variable {acct.key_env} is not set"
                )
            keys[acct.name] = value
        else:
            keys[acct.name] = None
    return keys


_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def storage_transport():
    """The HTTP transport of a storage client. Without proxy variables in the environment, requests'
    per-call environment lookups (proxies, .netrc) are skipped: they cost a sixth of a page-range
    call. With them, the environment is honoured as usual."""
    from azure.core.pipeline.transport import RequestsTransport

    use_env = any(k.lower() in _PROXY_VARS for k in os.environ)
    return RequestsTransport(use_env_settings=use_env)


def read_transport(config: Config):
    """The transport of the lean read path (listings, page ranges): urllib3 directly, which honours
    the proxy variables itself (``NO_PROXY`` alone keeps every host direct), or requests when the
    environment names a proxy urllib3 does not speak (SOCKS)."""
    from azure.core.pipeline.transport import RequestsTransport

    from .azure.blobrest import Urllib3Transport, proxy_schemes_supported

    if not proxy_schemes_supported():
        return RequestsTransport(use_env_settings=True)
    # Connections kept per host (an account): its listings and its page-range calls at once.
    kept = max(2 * config.azure.max_concurrency, config.azure.max_concurrency + config.billed_bytes.max_concurrency)
    return Urllib3Transport(verify=ca_bundle(), maxsize=kept)


def arm_budget(config: Config):
    """The process's ARM read budget (gc_daemon.azure.arm_budget), with the configured reserve: every
    ARM client built here records ARM's remaining reads in it and paces its reads by it."""
    from .azure.arm_budget import process_budget

    return process_budget(config.azure.arm_reads_reserve)


def ca_bundle() -> str | bool:
    """Custom CA bundles come from the standard REQUESTS_CA_BUNDLE, passed explicitly."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or True


class DiscoveryFailed(Exception):
    def __init__(self, errors: list[str], sources: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        self.sources = sources


class DiscoveredAccounts:
    """The accounts to collect, discovered anew at each pass (accounts come and go)."""

    def __init__(self, config: Config, credential) -> None:
        from .azure.discovery import AccountDiscovery

        self.config = config
        self.credential = credential
        self.discovery = AccountDiscovery(
            credential,
            config.azure.arm_endpoint,
            list(config.azure.subscriptions),
            connection_verify=os.environ.get("REQUESTS_CA_BUNDLE") or True,
            retry_total=config.azure.retry_total,
            timeout=config.azure.timeout.total_seconds(),
            max_pages=config.azure.max_list_pages,
            budget=arm_budget(config),
        )
        self._cache: dict[tuple[str, str], object] = {}

    def __call__(self) -> dict:
        from .azure.discovery import matches
        from .azure.storage import AccountStorage
        from .config import is_loopback_url
        from .urls import redact_url

        rules = self.config.azure.discovery
        found = self.discovery.discover()
        if found.errors:
            raise DiscoveryFailed([f"{e.source}: {e.message}" for e in found.errors], ["storageAccounts"])
        accounts = {}
        for acct in found.accounts:
            if not acct.blob_endpoint:
                continue  # file-only accounts hold no blobs
            if not (matches(acct.name, rules.include, rules.exclude)
                    and matches(acct.resource_group, rules.resource_groups_include, rules.resource_groups_exclude)):
                continue
            endpoint = acct.blob_endpoint.rstrip("/")
            if self.config.azure.credential == "emulator" and not is_loopback_url(endpoint):
                raise DiscoveryFailed(
                    [f"storageAccounts: {acct.name}: the emulator credential is refused for {redact_url(endpoint)}"],
                    ["storageAccounts"],
                )
            if acct.name in accounts:
                raise DiscoveryFailed([f"storageAccounts: {acct.name} found in two subscriptions"], ["storageAccounts"])
            key = os.environ.get(f"{rules.key_env_prefix}{acct.name.upper()}") if rules.key_env_prefix else None
            cache_key = (acct.name, endpoint)
            if cache_key not in self._cache:
                self._cache[cache_key] = AccountStorage(
                    acct.name,
                    endpoint,
                    key or self.credential,
                    retry_total=min(self.config.azure.retry_total, 5),
                    read_timeout=self.config.azure.timeout.total_seconds(),
                    transport=storage_transport(),
                    connection_verify=ca_bundle(),
                    reader=self.config.azure.storage_reader,
                    read_transport=read_transport(self.config),
                    max_list_pages=self.config.azure.max_list_pages,
                )
            accounts[acct.name] = self._cache[cache_key]
        return accounts


def build_accounts(config: Config, credential=None):
    from .azure.storage import AccountStorage

    if config.azure.storage_accounts is None:
        return DiscoveredAccounts(config, credential or build_credential(config))
    keys = account_keys(config)
    accounts = {}
    for acct in config.azure.storage_accounts:
        secret = keys[acct.name]
        if secret is None and credential is None:
            credential = build_credential(config)
        accounts[acct.name] = AccountStorage(
            acct.name,
            acct.endpoint,
            secret if secret is not None else credential,
            retry_total=min(config.azure.retry_total, 5),
            read_timeout=config.azure.timeout.total_seconds(),
            transport=storage_transport(),
            connection_verify=ca_bundle(),
            reader=config.azure.storage_reader,
            read_transport=read_transport(config),
            max_list_pages=config.azure.max_list_pages,
        )
    return accounts


def build_credential(config: Config):
    from .azure.credentials import build_credential as make

    return make(config.azure.credential)


def build_references(config: Config, credential=None):
    from .sources import REGISTRY, without_placement
    from .sources.inventory import ReferenceInventory

    # Listed accounts are placed in the configured subscriptions at every pass; discovered ones are
    # found there by construction.
    sources = REGISTRY if config.azure.storage_accounts is not None else without_placement()
    return ReferenceInventory(
        credential or build_credential(config),
        config.azure.arm_endpoint,
        list(config.azure.subscriptions),
        sources=sources,
        connection_verify=ca_bundle(),
        retry_total=config.azure.retry_total,
        timeout=config.azure.timeout.total_seconds(),
        max_workers=config.azure.max_concurrency,
        max_pages=config.azure.max_list_pages,
        arm_budget=arm_budget(config),
        owner_tags=config.owners.tags,
    )


def build_disks(config: Config, references):
    """The managed-disk gateway, on the reference inventory's compute clients (same credential,
    endpoint, retries, timeouts and host pin)."""
    from .azure.disks import DiskGateway

    return DiskGateway(lambda sub: references._client("compute", sub), config.azure.lro_timeout,
                       config.azure.lro_poll_interval)


def build_collector(config: Config, store=None) -> Collector:
    credential = build_credential(config)
    references = build_references(config, credential)
    return Collector(
        config=config,
        store=store if store is not None else open_store(config),
        references=references,
        accounts=build_accounts(config, credential),
        disks=build_disks(config, references),
    )
