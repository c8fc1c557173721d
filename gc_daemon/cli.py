"""Commands: parse, wire, print. No logic of their own.

Exit status: 0 done; 1 anything unexpected; 2 bad configuration or usage (the message names the
key or argument); 3 (scan) the pass was incomplete and changed nothing; 128 + the signal's number
(130 SIGINT, 143 SIGTERM) when `scan` or `run --once` was stopped by it (the pass is `stopped`).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import click
import yaml

from .config import Config, ConfigError, load_config, redacted
from .report import json_text, printable
from .urls import redact_text

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


class _Fail(click.ClickException):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code

    def show(self, file=None) -> None:
        # One line, whatever the message quotes (an exception's text, a blob name, a URL): no
        # secret from a URL, no control character reaches the terminal.
        click.echo(f"vhd-gc: {_safe(self.format_message())}", err=True)


def _safe(text: object) -> str:
    """Text for the terminal: URLs redacted (userinfo, query), non-printable characters escaped."""
    return printable(redact_text(str(text)))


def _config(ctx: click.Context) -> Config:
    obj = ctx.find_root().obj
    if "config" not in obj:
        try:
            obj["config"] = load_config(obj["config_path"])
        except ConfigError as exc:
            raise _Fail(f"config error: {exc}", EXIT_USAGE) from None
        from .wiring import configure_logging

        configure_logging(obj["config"])
    return obj["config"]


def _guard(fn):
    """Map configuration errors to exit 2 and anything unexpected to exit 1, with one line."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except ConfigError as exc:
            raise _Fail(f"config error: {exc}", EXIT_USAGE) from None
        except Exception as exc:  # noqa: BLE001
            raise _Fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="VHD_GC_CONFIG",
    help="Configuration file (default: $VHD_GC_CONFIG).",
)
@click.version_option(package_name="vhd-gc")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None) -> None:
    """vhd-gc: finds orphaned Azure VHD page blobs and, after a grace period, deletes them safely."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


# -- scan ------------------------------------------------------------------------------------


@cli.command()
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A live status line on stderr: what the pass has listed, decided and measured so far. "
    "Default: on when stderr is a terminal. On a file or pipe it writes a line every 5 s.",
)
@click.pass_context
@_guard
def scan(ctx: click.Context, progress: bool | None) -> None:
    """One complete pass: inventory, reconcile, and (in mode: delete) delete what is due."""
    import contextlib

    from .daemon import finish_stopped, stop_on_signals
    from .locks import replica_lock
    from .progress import PassProgress
    from .wiring import account_keys, build_collector, open_store

    config = _config(ctx)
    account_keys(config)  # an unset key_env is a configuration error: before touching the database
    store = open_store(config)
    lock = replica_lock(store.engine)
    if not lock.try_acquire():
        raise _Fail(f"another vhd-gc process is running passes on this database ({lock.describe()})", EXIT_ERROR)
    stderr = sys.stderr
    if progress is None:
        progress = stderr.isatty()
    try:
        collector = build_collector(config, store)
        status = contextlib.nullcontext()
        if progress:
            tty = stderr.isatty()
            status = collector.progress = PassProgress(stderr, interval=0.5 if tty else 5.0, tty=tty)
        with status, stop_on_signals() as stop:
            result = collector.run_pass(should_stop=stop.is_set)
    finally:
        lock.release()
    s = result.stats
    summary = (
        f"pass {result.pass_id} {result.outcome}: {s.references} references, {s.blobs} blobs "
        f"({s.vhds} VHDs); marked {s.marked}, due {s.due}, deleted {s.deleted}, refused {s.refused}, "
        f"failed {s.failed}, kept {s.kept}, released {s.released}; mode {config.mode}"
    )
    click.echo(summary)
    if result.outcome == "stopped":
        click.echo(f"vhd-gc: the pass was stopped by {stop.name}: {_safe('; '.join(result.errors))}", err=True)
        ctx.exit(finish_stopped(stop.exit_status))
    if result.outcome == "incomplete":
        click.echo("vhd-gc: the pass was incomplete and changed nothing:", err=True)
        for e in result.errors:
            click.echo(f"  - {_safe(e)}", err=True)
        ctx.exit(EXIT_INCOMPLETE)
    if result.outcome != "complete":
        click.echo(f"vhd-gc: the pass failed: {_safe('; '.join(result.errors))}", err=True)
        ctx.exit(EXIT_ERROR)


# -- run -------------------------------------------------------------------------------------


@cli.command()
@click.option("--once", is_flag=True, help="Run one pass with the daemon's wiring, then exit.")
@click.pass_context
@_guard
def run(ctx: click.Context, once: bool) -> None:
    """The daemon: a pass every `interval`, metrics and health over HTTP, until SIGTERM/SIGINT."""
    from .daemon import run_daemon

    ctx.exit(run_daemon(_config(ctx), once=once))


# -- report / explain --------------------------------------------------------------------------


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["json", "table", "csv"]), default="table", show_default=True
)
@click.option("--state", "states", multiple=True, type=click.Choice(["candidate", "due", "deleted", "kept", "released"]))
@click.pass_context
@_guard
def report(ctx: click.Context, fmt: str, states: tuple[str, ...]) -> None:
    """Every tracked blob (json, table or csv)."""
    from .domain import State
    from .report import render
    from .wiring import open_store

    store = open_store(_config(ctx))
    seq = store.last_complete_seq()
    rows = store.rows([State(s) for s in states] if states else None)
    render(fmt, rows, seq, datetime.now(UTC), sys.stdout)


@cli.command()
@click.argument("url")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
@_guard
def explain(ctx: click.Context, url: str, fmt: str) -> None:
    """Why a blob is, or is not, a candidate: its references, lease, opt-outs, history."""
    from .explain import explain as build
    from .report import explain_text
    from .urls import UrlError, parse_blob_url

    try:
        key = parse_blob_url(url)
    except UrlError as exc:
        raise _Fail(f"URL: {exc}", EXIT_USAGE) from None
    data = build(_config(ctx), key)
    click.echo(json_text(json.dumps(data, indent=2, ensure_ascii=False)) if fmt == "json" else explain_text(data), nl=fmt == "json")


# -- operator holds and audit -----------------------------------------------------------------


def _key(url: str):
    from .urls import UrlError, parse_blob_url

    try:
        return parse_blob_url(url)
    except UrlError as exc:
        raise _Fail(f"URL: {exc}", EXIT_USAGE) from None


def _canonical_url(config: Config, key) -> str:
    """The blob's canonical URL under its account's configured endpoint (never the operator's
    spelling: a pasted SAS signature must not land in the audit log)."""
    from .urls import blob_url, default_blob_endpoint

    endpoint = next(
        (a.endpoint for a in config.azure.storage_accounts or [] if a.name == key.account),
        default_blob_endpoint(key.account),
    )
    return blob_url(endpoint, key)


@cli.command()
@click.argument("url")
@click.option("--reason", required=True, help="Why it must stay (recorded in the audit log).")
@click.pass_context
@_guard
def keep(ctx: click.Context, url: str, reason: str) -> None:
    """Keep a blob: never a candidate while the hold stands."""
    from .execute import default_actor
    from .wiring import open_store

    key = _key(url)
    config = _config(ctx)
    store = open_store(config)
    now = datetime.now(UTC)
    store.add_hold(key, reason, default_actor(), now)
    store.audit(action="keep", key=key, url=_canonical_url(config, key), at=now, actor=default_actor(), reason=reason)
    click.echo(_safe(f"kept {key}: {reason}"))


@cli.command()
@click.argument("url")
@click.pass_context
@_guard
def unkeep(ctx: click.Context, url: str) -> None:
    """Lift an operator hold."""
    from .execute import default_actor
    from .wiring import open_store

    key = _key(url)
    config = _config(ctx)
    store = open_store(config)
    if not store.remove_hold(key):
        raise _Fail(f"URL: no operator hold on {key}", EXIT_USAGE)
    store.audit(action="unkeep", key=key, url=_canonical_url(config, key), at=datetime.now(UTC), actor=default_actor())
    click.echo(_safe(f"hold lifted on {key}"))


@cli.command()
@click.argument("url")
@click.pass_context
@_guard
def restore(ctx: click.Context, url: str) -> None:
    """Undelete a blob (blob soft delete must be on) and keep it with an operator hold."""
    from .azure.storage import StorageError, soft_delete_days, undelete
    from .execute import default_actor
    from .wiring import build_accounts, open_store

    key = _key(url)
    config = _config(ctx)
    store = open_store(config)
    accounts = build_accounts(config)
    accounts = accounts() if callable(accounts) else accounts
    storage = accounts.get(key.account)
    if storage is None:
        raise _Fail(f"URL: account {key.account} is not collected by this configuration", EXIT_USAGE)
    try:
        days = soft_delete_days(storage)
        if days is None:
            raise _Fail(f"blob soft delete is off for account {key.account}: {key} cannot be restored", EXIT_ERROR)
        undelete(storage, key)
    except StorageError as exc:
        raise _Fail(f"restore failed: {exc.code}: {exc}", EXIT_ERROR) from None
    now = datetime.now(UTC)
    canonical = _canonical_url(config, key)
    store.add_hold(key, "restored by an operator", default_actor(), now)
    store.audit(action="restore", key=key, url=canonical, at=now, actor=default_actor(),
                reason="undeleted; kept by an operator hold (`vhd-gc unkeep` to let it be collected again)")
    click.echo(_safe(f"restored {key}; kept by an operator hold"))


@cli.command("confirm-pass")
@click.pass_context
@_guard
def confirm_pass(ctx: click.Context) -> None:
    """Let the next pass mark what the blast-radius guard held back (about as many blobs and bytes)."""
    from .execute import default_actor
    from .wiring import open_store

    store = open_store(_config(ctx))
    blocked = store.last_blocked_pass()
    if blocked is None:
        raise _Fail("confirm-pass: the last pass was not held back by the blast-radius guard", EXIT_USAGE)
    store.confirm_pass(blocked, default_actor(), datetime.now(UTC))
    stats = blocked.stats or {}
    click.echo(
        f"confirmed: the next pass may newly mark about {stats.get('new_candidates')} blobs "
        f"({stats.get('new_bytes')} bytes) held back by pass {blocked.id}: {stats.get('blocked')}"
    )


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["json", "table"]), default="table", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.pass_context
@_guard
def audit(ctx: click.Context, fmt: str, limit: int | None) -> None:
    """The audit log: every deletion intent and outcome, holds, with who, when, size, ETag, reason."""
    from .wiring import open_store

    records = open_store(_config(ctx)).audit_log(limit=limit)
    rows = [
        {
            "at": r.at.isoformat().replace("+00:00", "Z"),
            "action": r.action,
            "url": r.url,
            "etag": r.etag,
            "size_bytes": r.size_bytes,
            "billed_bytes": r.billed_bytes,
            "actor": r.actor,
            "reason": r.reason,
            "error_code": r.error_code,
            "pass_id": r.pass_id,
        }
        for r in records
    ]
    if fmt == "json":
        click.echo(json_text(json.dumps(rows, indent=2, ensure_ascii=False)))
        return
    for r in rows:
        click.echo(_safe(f"{r['at']}  {r['action']:<15} {r['url']}  etag={r['etag']} size={r['size_bytes']} by {r['actor']} {r['error_code'] or ''} {r['reason'] or ''}".rstrip(" ")))


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.pass_context
@_guard
def passes(ctx: click.Context, limit: int) -> None:
    """The most recent passes and their outcomes."""
    from .wiring import open_store

    for p in open_store(_config(ctx)).passes(limit):
        took = f"{(p.finished_at - p.started_at).total_seconds():.1f}s" if p.finished_at else "-"
        click.echo(_safe(f"#{p.id:<6} seq={p.seq or '-':<6} {p.outcome:<10} {p.started_at.isoformat()}  {took:>8}  {p.host}  {p.error or ''}".rstrip(" ")))


# -- db / config -----------------------------------------------------------------------------


@cli.group()
def db() -> None:
    """The state database."""


@db.command("upgrade")
@click.pass_context
@_guard
def db_upgrade(ctx: click.Context) -> None:
    """Bring the state database to the newest schema (Alembic)."""
    from .state.db import current_revision, head_revision, make_engine, upgrade

    engine = make_engine(_config(ctx).database_url)
    before = current_revision(engine)
    upgrade(engine)
    click.echo(f"database at {head_revision()} (was {before or 'empty'})")


@cli.group("config")
def config_group() -> None:
    """The configuration file."""


def _warn_soft_delete(config: Config, deadline: float = 10.0) -> None:
    """Ask each account whether blob soft delete is on: one try each, all together, bounded."""
    import threading

    from .azure.storage import AccountStorage, soft_delete_days
    from .wiring import account_keys, build_credential

    keys = account_keys(config)
    lines: dict[str, str] = {}

    def check(acct) -> None:
        secret = keys[acct.name]
        storage = AccountStorage(acct.name, acct.endpoint, secret if secret is not None else build_credential(config),
                                 retry_total=0, connection_timeout=5, read_timeout=5)
        try:
            days = soft_delete_days(storage)
        except Exception as exc:  # noqa: BLE001 - a check, not a pass
            lines[acct.name] = f"# warning: {acct.name}: could not read blob soft delete settings ({_safe(exc)})"
            return
        lines[acct.name] = (
            f"# warning: {acct.name}: blob soft delete is off: a VHD vhd-gc deletes cannot be restored"
            if days is None
            else f"# {acct.name}: blob soft delete on: deleted VHDs stay restorable for {days} days"
        )

    threads = [threading.Thread(target=check, args=(a,), daemon=True) for a in config.azure.storage_accounts or []]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=deadline)
    for acct in config.azure.storage_accounts or []:
        click.echo(lines.get(acct.name, f"# warning: {acct.name}: soft delete check timed out"), err=True)


@config_group.command("check")
@click.option("--offline", is_flag=True, help="Do not contact the storage accounts (soft-delete check).")
@click.pass_context
@_guard
def config_check(ctx: click.Context, offline: bool) -> None:
    """Validate the file and print the effective configuration, secrets redacted."""
    from .wiring import account_keys

    config = _config(ctx)
    try:
        account_keys(config)
        env_ok = True
    except ConfigError as exc:  # the file is valid; the environment of this shell is not complete
        click.echo(f"# warning: {_safe(exc)} (scan and run will refuse to start)", err=True)
        env_ok = False
    problems: list[str] = []
    if env_ok and not offline and config.azure.storage_accounts:
        _warn_soft_delete(config)
        problems = _placement(config)
    click.echo(yaml.safe_dump(redacted(config), sort_keys=False, allow_unicode=True), nl=False)
    if config.mode == "dry-run":
        click.echo("# mode is dry-run: nothing will be deleted", err=True)
    if problems:
        for problem in problems:
            click.echo(f"error: azure.storage_accounts: {problem}", err=True)
        ctx.exit(2)


def _placement(config: Config) -> list[str]:
    """Every collected account must be in a configured subscription (what every pass checks too):
    asked of ARM once, so the operator learns it before the first pass."""
    from .sources import storage_accounts
    from .sources.inventory import ReferenceInventory
    from .wiring import build_credential, ca_bundle

    inventory = ReferenceInventory(
        build_credential(config), config.azure.arm_endpoint, list(config.azure.subscriptions),
        sources=(storage_accounts.SOURCE,), connection_verify=ca_bundle(), retry_total=1,
        timeout=min(config.azure.timeout.total_seconds(), 15),
    )
    with inventory:
        read = inventory.read()
        if read.errors:
            for e in read.errors:
                click.echo(f"# warning: could not place the storage accounts ({e.source}: {e.message})", err=True)
            return []
        names = [a.name for a in config.azure.storage_accounts or []]
        return storage_accounts.placement_problems(read.accounts or {}, names, inventory.locate)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="vhd-gc", obj={})
