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

from . import __version__
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


def _dry_run(ctx: click.Context) -> Config:
    """`--dry-run`: the configuration with `mode: dry-run` for this one invocation."""
    obj = ctx.find_root().obj
    config = _config(ctx)
    if config.mode != "dry-run":
        config = obj["config"] = config.model_copy(update={"mode": "dry-run"})
        import structlog

        structlog.get_logger("gc_daemon.cli").info("mode_overridden", mode="dry-run", by="--dry-run")
    return config


def _warn_quick_delete(config: Config) -> None:
    """A configuration that deletes quickly is named at every start (stderr and the log)."""
    from .config import quick_delete_keys

    keys = quick_delete_keys(config)
    if not keys:
        return
    import structlog

    message = (
        f"mode: delete with {' and '.join(keys)}: a VHD orphaned by mistake can be deleted before anyone "
        "notices; the defaults are grace_period: 7d and min_sightings: 3"
    )
    structlog.get_logger("gc_daemon.cli").warning("quick_deletion", keys=[k.split(":", 1)[0] for k in keys], message=message)
    click.echo(f"vhd-gc: warning: {message}", err=True)


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


def _late_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:  # `vhd-gc scan -c CFG`: as if given before the command (and winning over it)
        ctx.find_root().obj["config_path"] = value


class _Group(click.Group):
    """A group whose every command (and the commands of its sub-groups) also takes -c/--config after
    its name: `vhd-gc scan -c cfg.yaml` as well as `vhd-gc -c cfg.yaml scan`."""

    group_class = type  # sub-groups (`db`, `config`) are _Group too

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not isinstance(cmd, click.Group) and not any(
            "--config" in getattr(p, "opts", ()) for p in cmd.params
        ):
            cmd.params.append(click.Option(
                ["-c", "--config", "late_config_path"], type=click.Path(dir_okay=False), expose_value=False,
                callback=_late_config, help="Configuration file (also accepted before the command).",
            ))
        super().add_command(cmd, name)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="VHD_GC_CONFIG",
    help="Configuration file (default: $VHD_GC_CONFIG, else /etc/vhd-gc/vhd-gc.yaml).",
)
@click.version_option(version=__version__, prog_name="vhd-gc")
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
@click.option("--dry-run", "dry_run", is_flag=True, help="Delete nothing this time, whatever `mode` says.")
@click.pass_context
@_guard
def scan(ctx: click.Context, progress: bool | None, dry_run: bool = False) -> None:
    """One complete pass: inventory, reconcile, and (in mode: delete) delete what is due."""
    import contextlib

    from .daemon import finish_stopped, stop_on_signals
    from .locks import replica_lock
    from .progress import PassProgress
    from .wiring import account_keys, build_collector, open_store

    config = _dry_run(ctx) if dry_run else _config(ctx)
    _warn_quick_delete(config)
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
    if s.disks or s.snapshots:  # the managed-disk half, when the pass read any
        summary += (
            f"\n  managed disks: {s.disks} disks ({s.disks_unattached} unattached), {s.snapshots} snapshots; "
            f"marked {s.disk_marked}, due {s.disk_due}, kept {s.disk_kept}, released {s.disk_released}; "
            f"quarantine snapshots made {s.quarantine_snapshots}, disks deleted {s.disks_deleted}, "
            f"snapshots deleted {s.snapshots_deleted}, quarantine snapshots expired {s.quarantine_expired}; "
            f"managed_disks.mode {config.managed_disks.mode}"
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
@click.option("--dry-run", "dry_run", is_flag=True, help="Delete nothing while this daemon runs, whatever `mode` says.")
@click.pass_context
@_guard
def run(ctx: click.Context, once: bool, dry_run: bool = False) -> None:
    """The daemon: a pass every `interval`, metrics and health over HTTP, until SIGTERM/SIGINT."""
    from .daemon import run_daemon

    config = _dry_run(ctx) if dry_run else _config(ctx)
    _warn_quick_delete(config)
    ctx.exit(run_daemon(config, once=once))


# -- report / explain --------------------------------------------------------------------------


@cli.command()
@click.option(
    "--format", "fmt", type=click.Choice(["json", "table", "csv", "html"]), default="table", show_default=True,
    help="html: one self-contained page (totals, cost charts, ages, the due list) of the rows json prints."
)
@click.option("--state", "states", multiple=True, type=click.Choice(["candidate", "due", "deleted", "kept", "released"]),
              help="Only rows in this state (repeatable).")
@click.option("--account", "accounts", multiple=True, metavar="NAME",
              help="Only blobs of this storage account (repeatable; leaves out disks and snapshots).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["vhd", "managed_disk", "snapshot"]),
              help="Only rows of this kind (repeatable): vhd (page blobs), managed_disk, snapshot. Default: all.")
@click.option("--subscription", "subscriptions", multiple=True, metavar="ID",
              help="Only disks and snapshots of this subscription (repeatable; leaves out blobs).")
@click.option("--sort", type=click.Choice(["size", "billed", "cost", "age", "due", "state", "account", "url"]), default=None,
              help="Order: size, billed, cost and age descending (unknown last), due soonest first, state, "
              "account and url ascending. Default: blobs by account, container, blob, then disks and snapshots by id.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many rows (after --sort).")
@click.pass_context
@_guard
def report(ctx: click.Context, fmt: str, states: tuple[str, ...], accounts: tuple[str, ...], sort: str | None,
           limit: int | None, kinds: tuple[str, ...] = (), subscriptions: tuple[str, ...] = ()) -> None:
    """Every tracked blob, managed disk and snapshot (json, table, csv or an html page), with its monthly cost
    from `prices`."""
    from itertools import chain

    from .domain import State
    from .report import render, select_rows
    from .wiring import open_store

    config = _config(ctx)
    store = open_store(config)
    seq = store.last_complete_seq()
    now = datetime.now(UTC)
    wanted = set(kinds) or {"vhd", "managed_disk", "snapshot"}
    selected = [State(s) for s in states] if states else None
    # A filter keeps the rows it describes: --account names blobs only, --subscription disks only.
    rows = store.rows(selected, accounts=accounts or None) if "vhd" in wanted and not subscriptions else iter(())
    disk_kinds = sorted(wanted - {"vhd"})
    disks = store.disk_rows(selected, disk_kinds, subscriptions or None) if disk_kinds and not accounts else []
    rows = select_rows(chain(rows, disks), sort=sort, limit=limit, prices=config.prices, now=now)
    if fmt == "html":
        from .report_html import render_html

        render_html(rows, seq, now, sys.stdout, prices=config.prices, owners_of=store.owner_records)
        return
    render(fmt, rows, seq, now, sys.stdout, prices=config.prices, disk_columns=bool(disks),
           owners_of=store.owner_records)


@cli.command()
@click.argument("url", metavar="URL_OR_ID")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.pass_context
@_guard
def explain(ctx: click.Context, url: str, fmt: str) -> None:
    """Why a blob is, or is not, a candidate: its references, lease, opt-outs, history; for a managed
    disk or snapshot (its ARM id), what the last complete pass decided, its hold and its history."""
    from .explain import explain as build
    from .report import explain_text
    from .urls import UrlError, parse_blob_url

    rid = _resource_id(url)
    if rid is not None:
        from .explain import explain_disk
        from .report import disk_explain_text

        data = explain_disk(_config(ctx), rid.id)
        click.echo(json_text(json.dumps(data, indent=2, ensure_ascii=False)) if fmt == "json" else disk_explain_text(data),
                   nl=fmt == "json")
        return
    try:
        key = parse_blob_url(url)
    except UrlError as exc:
        raise _Fail(f"URL: {exc}", EXIT_USAGE) from None
    data = build(_config(ctx), key)
    click.echo(json_text(json.dumps(data, indent=2, ensure_ascii=False)) if fmt == "json" else explain_text(data), nl=fmt == "json")


# -- operator holds and audit -----------------------------------------------------------------


def _resource_id(text: str):
    """The parts of a managed disk's or snapshot's ARM id; None when ``text`` is not an ARM id (a blob
    URL, then); exit 2 when it is an ARM id of something else."""
    from .resource_ids import ResourceIdError, looks_like_resource_id, parse_resource_id

    if not looks_like_resource_id(text):
        return None
    try:
        return parse_resource_id(text)
    except ResourceIdError as exc:
        raise _Fail(f"ID: {exc}", EXIT_USAGE) from None


def _disk_facts(row) -> dict:
    """The ownership time and size an operator's action on a disk concerns, as last recorded."""
    if row is None:
        return {}
    from .execute_disks import ownership_etag

    return {"etag": ownership_etag(row.ownership_time) if row.ownership_known else None, "size_bytes": row.size_bytes}


def _keep_disk(config: Config, rid, reason: str | None, who: str) -> str:
    """keep (a reason) or unkeep (None) of a disk or snapshot: the hold and its audit entry."""
    from .wiring import open_store

    store = open_store(config)
    row = store.disk_row(rid.id)
    canonical = row.id if row is not None else rid.id  # Azure's spelling, once a pass has seen it
    now = datetime.now(UTC)
    if reason is not None:
        store.add_disk_hold(canonical, reason, who, now)
    elif not store.remove_disk_hold(canonical):
        raise _Fail(f"ID: no operator hold on {canonical}", EXIT_USAGE)
    store.audit_disk(action="keep" if reason is not None else "unkeep", resource_id=canonical, kind=rid.kind,
                     subscription=rid.subscription, at=now, actor=who, reason=reason, **_disk_facts(row))
    return canonical


def _key(url: str):
    from .urls import UrlError, parse_blob_url

    try:
        return parse_blob_url(url)
    except UrlError as exc:
        raise _Fail(f"URL: {exc}", EXIT_USAGE) from None


def _blob_facts(store, key) -> dict:
    """The ETag and sizes an operator's action concerns: the blob as vhd-gc last recorded it (none
    when it was never tracked)."""
    row = store.row(key)
    if row is None:
        return {}
    return {"etag": row.etag, "size_bytes": row.size_bytes, "billed_bytes": row.billed_bytes}


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
@click.argument("url", metavar="URL_OR_ID")
@click.option("--reason", required=True, help="Why it must stay (recorded in the audit log).")
@click.option("--actor", metavar="NAME", default=None,
              help="Who acts, for the audit log (default: $SUDO_USER, else $USER, else the login name).")
@click.pass_context
@_guard
def keep(ctx: click.Context, url: str, reason: str, actor: str | None) -> None:
    """Keep a blob, managed disk or snapshot (its ARM id): never deleted while the hold stands."""
    from .execute import operator_actor
    from .wiring import open_store

    rid = _resource_id(url)
    if rid is not None:
        canonical = _keep_disk(_config(ctx), rid, reason, operator_actor(actor))
        click.echo(_safe(f"kept {canonical}: {reason}"))
        return
    key = _key(url)
    config = _config(ctx)
    store = open_store(config)
    who = operator_actor(actor)
    now = datetime.now(UTC)
    store.add_hold(key, reason, who, now)
    store.audit(action="keep", key=key, url=_canonical_url(config, key), at=now, actor=who, reason=reason,
                **_blob_facts(store, key))
    click.echo(_safe(f"kept {key}: {reason}"))


@cli.command()
@click.argument("url", metavar="URL_OR_ID")
@click.option("--actor", metavar="NAME", default=None,
              help="Who acts, for the audit log (default: $SUDO_USER, else $USER, else the login name).")
@click.pass_context
@_guard
def unkeep(ctx: click.Context, url: str, actor: str | None) -> None:
    """Lift an operator hold (on a blob URL, or a managed disk's or snapshot's ARM id)."""
    from .execute import operator_actor
    from .wiring import open_store

    rid = _resource_id(url)
    if rid is not None:
        canonical = _keep_disk(_config(ctx), rid, None, operator_actor(actor))
        click.echo(_safe(f"hold lifted on {canonical}"))
        return
    key = _key(url)
    config = _config(ctx)
    store = open_store(config)
    who = operator_actor(actor)
    if not store.remove_hold(key):
        raise _Fail(f"URL: no operator hold on {key}", EXIT_USAGE)
    store.audit(action="unkeep", key=key, url=_canonical_url(config, key), at=datetime.now(UTC), actor=who,
                **_blob_facts(store, key))
    click.echo(_safe(f"hold lifted on {key}"))


@cli.command()
@click.argument("url")
@click.option("--actor", metavar="NAME", default=None,
              help="Who acts, for the audit log (default: $SUDO_USER, else $USER, else the login name).")
@click.pass_context
@_guard
def restore(ctx: click.Context, url: str, actor: str | None) -> None:
    """Undelete a blob (blob soft delete must be on), or recreate a managed disk vhd-gc deleted (its ARM
    id) from its quarantine snapshot; either is then kept with an operator hold."""
    from .azure.disks import is_disk_id
    from .azure.storage import StorageError, soft_delete_days, undelete
    from .execute import operator_actor
    from .wiring import build_accounts, open_store

    if is_disk_id(url):
        _restore_disk(ctx, url.strip(), operator_actor(actor))
        return
    key = _key(url)
    config = _config(ctx)
    store = open_store(config)
    who = operator_actor(actor)
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
    # What came back: the blob as it is now (its ETag after the undelete), else the stored facts.
    facts = _blob_facts(store, key)
    try:
        fresh = storage.read_blob(key)
    except Exception:  # noqa: BLE001 - restored all the same; the audit row keeps the stored facts
        fresh = None
    if fresh is not None:
        facts.update(etag=fresh.etag, size_bytes=fresh.size)
    now = datetime.now(UTC)
    canonical = _canonical_url(config, key)
    store.add_hold(key, "restored by an operator", who, now)
    store.audit(action="restore", key=key, url=canonical, at=now, actor=who, **facts,
                reason="undeleted; kept by an operator hold (`vhd-gc unkeep` to let it be collected again)")
    click.echo(_safe(f"restored {key}; kept by an operator hold"))


def _restore_disk(ctx: click.Context, rid: str, who: str) -> None:
    """`vhd-gc restore ID` for a managed disk: execute_disks.restore_disk with the gateway."""
    from .azure.disks import DiskError, parse_id
    from .execute_disks import RestoreRefused, restore_disk
    from .wiring import build_disks, build_references, open_store

    config = _config(ctx)
    subscription = parse_id(rid, "disks")[0]
    if subscription.lower() not in {s.lower() for s in config.azure.subscriptions}:
        raise _Fail(f"ID: subscription {subscription} is not collected by this configuration", EXIT_USAGE)
    store = open_store(config)
    references = build_references(config)
    try:
        made = restore_disk(store, build_disks(config, references), rid, who, clock=lambda: datetime.now(UTC))
    except RestoreRefused as exc:
        raise _Fail(f"restore refused: {exc}", EXIT_ERROR) from None
    except DiskError as exc:
        raise _Fail(f"restore failed: {exc}", EXIT_ERROR) from None
    finally:
        references.close()
    click.echo(_safe(f"restored {made} from its quarantine snapshot; kept by an operator hold "
                     "(`vhd-gc unkeep` to let it be collected again)"))


@cli.command("confirm-pass")
@click.option("--actor", metavar="NAME", default=None,
              help="Who acts, for the audit log (default: $SUDO_USER, else $USER, else the login name).")
@click.pass_context
@_guard
def confirm_pass(ctx: click.Context, actor: str | None) -> None:
    """Let the next pass mark what the blast-radius guard held back (about as many blobs and bytes)."""
    from .execute import operator_actor
    from .wiring import open_store

    store = open_store(_config(ctx))
    blocked = store.last_blocked_pass()
    if blocked is None:
        raise _Fail("confirm-pass: the last pass was not held back by the blast-radius guard", EXIT_USAGE)
    store.confirm_pass(blocked, operator_actor(actor), datetime.now(UTC))
    stats = blocked.stats or {}
    disks = int(stats.get("new_disk_candidates") or 0)
    what = f"{stats.get('new_candidates')} blobs" + (f" and {disks} disks and snapshots" if disks else "")
    size = int(stats.get("new_bytes") or 0) + int(stats.get("new_disk_bytes") or 0)
    click.echo(
        f"confirmed: the next pass may newly mark about {what} "
        f"({size} bytes) held back by pass {blocked.id}: {stats.get('blocked')}"
    )


AUDIT_FIELDS = ["at", "action", "url", "etag", "size_bytes", "billed_bytes", "actor", "reason", "error_code",
                "pass_id", "intent_id"]


def _since(value: str | None, now: datetime) -> datetime | None:
    """``--since``: an ISO 8601 instant (UTC when it names no offset) or a duration ago (``7d``)."""
    from .config import parse_duration

    if value is None:
        return None
    try:
        return now - parse_duration(int(value) if value.isdigit() else value)
    except ValueError:
        pass
    try:
        instant = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise _Fail(f"--since: {value!r} is neither an ISO 8601 timestamp (2026-05-01T00:00:00Z) nor a "
                    "duration (90s, 15m, 12h, 7d)", EXIT_USAGE) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


@cli.command()
@click.argument("target", metavar="[URL_OR_ID]", required=False)
@click.option("--format", "fmt", type=click.Choice(["json", "csv", "table"]), default="table", show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the newest N entries.")
@click.option("--since", default=None, metavar="WHEN",
              help="Only entries at or after WHEN: an ISO 8601 timestamp, or a duration ago (7d, 12h).")
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["vhd", "managed_disk", "snapshot"]),
              help="Only entries about this kind (repeatable): vhd (blobs), managed_disk, snapshot.")
@click.pass_context
@_guard
def audit(ctx: click.Context, fmt: str, limit: int | None, since: str | None, target: str | None = None,
          kinds: tuple[str, ...] = ()) -> None:
    """The audit log: every deletion intent and outcome, holds, with who, when, size, ETag, reason;
    with URL_OR_ID, only the entries of that blob, managed disk or snapshot."""
    from .report import days, gib, write_csv, write_table
    from .wiring import open_store

    now = datetime.now(UTC)
    select: dict = {"kinds": kinds or None}
    if target is not None:
        rid = _resource_id(target)
        if rid is not None:
            select["resource_id"] = rid.id
        else:
            select["key"] = _key(target)
    records = open_store(_config(ctx)).audit_log(limit=limit, since=_since(since, now), **select)
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
            "intent_id": r.intent_id,
        }
        for r in records
    ]
    if fmt == "json":
        click.echo(json_text(json.dumps(rows, indent=2, ensure_ascii=False)))
        return
    if fmt == "csv":
        write_csv(sys.stdout, AUDIT_FIELDS, rows)
        return
    # confirm-pass rows name no blob: their sizes are what the guard held back (blobs in billed_bytes)
    lines = [
        [_safe(r["at"]), days(now, rec.at), _safe(r["action"]), gib(r["size_bytes"]),
         gib(r["billed_bytes"]) if r["action"] != "confirm-pass" else f"{r['billed_bytes']} blobs",
         _safe(r["etag"] or "-"), str(r["pass_id"] or "-"), _safe(r["actor"]), _safe(r["url"]),
         _safe(" ".join(x for x in (r["error_code"], r["reason"]) if x))]
        for r, rec in zip(rows, records)
    ]
    if not lines:
        click.echo("no audit entries" + (f" since {_since(since, now).isoformat()}" if since else ""))
        return
    write_table(sys.stdout, ["AT", "AGE d", "ACTION", "SIZE GiB", "BILLED GiB", "ETAG", "PASS", "ACTOR", "URL", "WHY"],
                lines, left=(0, 2, 5, 7, 8, 9))


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.pass_context
@_guard
def passes(ctx: click.Context, limit: int) -> None:
    """The most recent passes and their outcomes."""
    from .report import days, gib, write_table
    from .wiring import open_store

    now = datetime.now(UTC)
    records = open_store(_config(ctx)).passes(limit)
    if not records:
        click.echo("no passes yet (run `vhd-gc scan`)")
        return
    lines = []
    for p in records:
        s = p.stats or {}
        took = f"{(p.finished_at - p.started_at).total_seconds():.1f}" if p.finished_at else "-"
        lines.append([f"#{p.id}", str(p.seq or "-"), p.outcome, p.started_at.isoformat().replace("+00:00", "Z"),
                      days(now, p.started_at), took, str(s.get("vhds", "-")), str(s.get("new_candidates", "-")),
                      gib(s.get("new_bytes")), str(s.get("deleted", "-")), _safe(p.host), _safe(p.error or "")])
    write_table(sys.stdout, ["PASS", "SEQ", "OUTCOME", "STARTED", "AGE d", "TOOK s", "VHDS", "NEW", "NEW GiB",
                             "DELETED", "HOST", "ERROR"], lines, left=(0, 2, 3, 10, 11))


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
    _warn_quick_delete(config)
    from .config import sqlite_path_problem

    database = sqlite_path_problem(config.database_url)
    if database:
        click.echo(f"error: database_url: {_safe(database)}", err=True)
    if problems:
        for problem in problems:
            click.echo(f"error: azure.storage_accounts: {problem}", err=True)
    if problems or database:
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


# -- doctor ----------------------------------------------------------------------------------


@cli.command()
@click.pass_context
@_guard
def doctor(ctx: click.Context) -> None:
    """A preflight: credential, reference reads, accounts, delete permission, database, metrics address.

    One line per check, a tick or a cross with its fix; exit 0 when every check holds, 3 otherwise.
    """
    from .doctor import render, run_checks

    config = _config(ctx)
    _warn_quick_delete(config)
    checks = run_checks(config)
    encoding = (getattr(sys.stdout, "encoding", None) or "ascii").lower()
    unicode = "utf" in encoding
    render(checks, lambda line: click.echo(_safe(line)), unicode=unicode)
    if any(c.failed for c in checks):
        ctx.exit(EXIT_INCOMPLETE)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="vhd-gc", obj={})
