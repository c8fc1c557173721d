"""One pass: gather references and blobs, decide, persist, execute.

The order is what makes it safe:
1. read every reference source; any error, or any URI we cannot place, ends the pass as incomplete;
2. list every account, deciding blob by blob as the listing streams, inside ONE database
   transaction; any listing error rolls it back, so an incomplete pass changes nothing;
3. in delete mode with blobs due, read the references again (every source, once more), while the
   blobs to be deleted first are read again: the executor checks against both reference reads;
4. commit, then hand the due blobs to the executor (no delete is sent before then).
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Protocol

import structlog

from .config import Config, format_duration
from .decide import ReferenceIndex, decide_stream
from .domain import BlobKey, BlobSeen, Change, Forget, PassStats, ServiceTime, State, Tracked
from .disk_pass import DiskInventory, OwnershipReadFailed, decide_all, expired_quarantine, read_ownership
from .execute import Execution, Executor, daemon_actor, resolve_intents
from .measure import Measurer
from .measure import PassStopped as MeasureStopped
from .state.store import UPSERT_BATCH

log = structlog.get_logger("vhd-gc.pass")

BATCH = 1000


def utcnow() -> datetime:
    return datetime.now(UTC)


class ReferenceSource(Protocol):
    def read(self): ...  # -> gc_daemon.sources.base.ReferenceRead


class BlobSource(Protocol):
    """A storage account. A source whose ``reports_service_time`` is true takes
    ``list_blobs(on_service_time=...)`` and calls it once, before its first blob, with the service's
    time (AccountStorage does); the others (the bench's in-process sources) are measured on the
    pass's clock."""

    def list_blobs(self) -> Iterable[BlobSeen]: ...

    def read_blob(self, key: BlobKey) -> BlobSeen | None: ...

    def billed_bytes(self, key: BlobKey) -> int: ...

    def delete_if_match(self, key: BlobKey, etag: str) -> None: ...


class Progress(Protocol):
    """Where a pass reports how far it is (gc_daemon.progress.PassProgress draws it)."""

    def attach(self, stats: PassStats, accounts: int) -> None: ...

    def measuring(self, measurer: "Measurer") -> None: ...

    def phase(self, text: str) -> None: ...


class _NoProgress:
    def attach(self, stats: PassStats, accounts: int) -> None:
        pass

    def measuring(self, measurer: "Measurer") -> None:
        pass

    def phase(self, text: str) -> None:
        pass


NO_PROGRESS = _NoProgress()


class PassStopped(Exception):
    """A stop (SIGTERM/SIGINT) was asked for before the pass committed: it changes nothing."""


class PassIncomplete(Exception):
    """A source failed or was incomplete: the pass changes nothing."""

    def __init__(self, errors: list[str], sources: list[str] | None = None) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors
        self.sources = sources or []


@dataclass
class PassResult:
    pass_id: int
    outcome: str  # complete | incomplete | failed | stopped
    started_at: datetime
    finished_at: datetime
    seq: int | None = None
    errors: list[str] = field(default_factory=list)
    sources_failed: list[str] = field(default_factory=list)  # labels for vhdgc_inventory_errors_total
    stats: PassStats = field(default_factory=PassStats)
    execution: Execution | None = None

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


@dataclass
class DiskPhase:
    """What the disk half of a pass hands the executor."""

    inventory: DiskInventory = field(default_factory=DiskInventory)
    due: list = field(default_factory=list)  # DiskRows due and deletable by the policy
    holds: dict = field(default_factory=dict)  # operator holds of disks, read with the pass
    expire: list = field(default_factory=list)  # (SnapshotSeen, disk id): quarantine snapshots past their time


_COUNTING = (State.CANDIDATE, State.DUE)  # the states a new streak counts in (the blast-radius guard)


@dataclass
class _PassRun:
    """What one pass's steps hand each other, up to its commit."""

    pass_id: int
    now: datetime
    t0: float  # with ``now``: maps a monotonic stamp onto the pass's (injected) clock
    stats: PassStats
    should_stop: Callable[[], bool]
    plog: object  # the pass's logger, bound once: a filtered-out level costs nothing per blob
    log_changes: bool = field(init=False)  # nor do the fields of its lines
    accounts: Mapping[str, BlobSource] = field(default_factory=dict)
    listing: "Listing | None" = None
    measurer: Measurer | None = None
    reads: list = field(default_factory=list)  # the first reference read itself (its disks, groups, locks)
    refs: ReferenceIndex | None = None
    holds: dict = field(default_factory=dict)
    policy: object | None = None  # gc_daemon.decide.Policy, built once a pass
    seq: int | None = None
    due: list[Tracked] = field(default_factory=list)
    disk: DiskPhase | None = None
    prefetch: object | None = None  # the blobs read again before deleting (execute.Prefetch)
    evidence: dict = field(default_factory=dict)  # BlobKey -> last_owner from metadata, of the rows written

    def __post_init__(self) -> None:
        enabled = getattr(self.plog, "is_enabled_for", None)
        self.log_changes = enabled is None or enabled(logging.INFO)


@dataclass
class Collector:
    """Everything one pass needs, wired by the CLI or the daemon. Constructing it does no I/O."""

    config: Config
    store: object  # gc_daemon.state.store.Store
    references: ReferenceSource
    # The accounts to collect, or a callable that discovers them at each pass.
    accounts: Mapping[str, BlobSource] | Callable[[], Mapping[str, BlobSource]]
    clock: Callable[[], datetime] = utcnow
    host: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    progress: Progress = field(default_factory=lambda: NO_PROGRESS)  # a PassProgress for interactive scans
    # Managed disks (gc_daemon.azure.disks.DiskGateway): the GETs of ownership times, the executor's
    # re-reads and writes. None: disks are decided only on what is recorded (never deleted).
    disks: object | None = None
    current_pass: int | None = field(default=None, init=False)  # the id of the pass running now, if any
    _prefetched: object | None = field(default=None, init=False, repr=False)  # the pass's blob re-reads (Prefetch)

    def run_pass(self, should_stop: Callable[[], bool] = lambda: False) -> PassResult:
        """One pass. Its story, in the order the code follows it:

        - ``_run_pass``: a pass a dead process left "running" is abandoned; this one is begun;
        - ``_inventory_and_decide``: the listing started, every reference read, earlier deletions in
          doubt resolved, the holds read, then in ONE transaction every blob, disk and snapshot
          decided, the blast radius checked and, before deleting, the references read again; any
          error, incomplete source or stop before the commit changes nothing (``PassIncomplete``,
          ``PassStopped``);
        - ``_execute``: only after the commit, the executor re-verifies and deletes what is due
          (conditional, audited before and after, within ``max_deletes_per_pass``);
        - ``_end``: the outcome recorded and logged with the pass's stats.
        """
        # A pass allocates millions of small objects and makes no reference cycles: the cyclic
        # collector would only rescan them (a fifth of a large pass). It runs again afterwards.
        collecting = gc.isenabled()
        gc.disable()
        try:
            return self._run_pass(should_stop)
        finally:
            if collecting:
                gc.enable()

    def _run_pass(self, should_stop: Callable[[], bool]) -> PassResult:
        now = self.clock()
        t0 = time.monotonic()  # with `now`: maps a monotonic stamp onto the pass's (injected) clock
        # Only the lock holder runs passes: a pass still "running" is one whose process died.
        self.store.abandon_running(now)
        pass_id = self.current_pass = self.store.begin_pass(now, self.config.mode, self.host)
        try:
            return self._run_begun(pass_id, now, t0, should_stop)
        finally:
            self.current_pass = None

    def _run_begun(self, pass_id: int, now: datetime, t0: float, should_stop: Callable[[], bool]) -> PassResult:
        stats = PassStats()
        progress = self.progress
        progress.attach(stats, 0)
        progress.phase(f"pass {pass_id}: reading references and listing")
        log.info("pass_started", pass_id=pass_id, mode=self.config.mode)
        try:
            seq, due, refs, holds, accounts, disk = self._inventory_and_decide(pass_id, now, t0, stats, should_stop)
        except PassStopped as exc:  # a clean stop: the transaction rolled back, nothing changed
            return self._end(pass_id, "stopped", now, t0, stats,
                             errors=[f"stopped by a signal {exc}: nothing was changed, no sighting counted"])
        except PassIncomplete as exc:
            result = self._end(pass_id, "incomplete", now, t0, stats, errors=exc.errors)
            result.sources_failed = exc.sources
            return result
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            log.exception("pass_failed", pass_id=pass_id)
            return self._end(pass_id, "failed", now, t0, stats, errors=[f"{type(exc).__name__}: {exc}"])

        execution = None
        if due or disk.due or disk.expire:
            execution = self._execute(pass_id, now, seq, due, refs, holds, accounts, disk, stats, should_stop)
            if execution.skipped_stopped:
                # The inventory was complete and is committed (its sightings count: the pass keeps
                # its seq); the deletions not started stay due for the next pass.
                result = self._end(pass_id, "stopped", now, t0, stats, seq=seq, errors=[
                    f"stopped by a signal before {execution.skipped_stopped} of {len(due) + len(disk.due)} due deletions: "
                    "the inventory was complete and is recorded; those not started stay due for the next pass"])
                result.execution = execution
                return result
        result = self._end(pass_id, "complete", now, t0, stats, seq=seq)
        result.execution = execution
        return result

    def _execute(self, pass_id: int, now: datetime, seq: int, due: list[Tracked], refs: ReferenceIndex, holds,
                 accounts: Mapping[str, BlobSource], disk: "DiskPhase", stats: PassStats,
                 should_stop: Callable[[], bool]) -> Execution:
        """Hand what is due to the executor, after the pass committed; record its changes in a
        transaction of their own and count them into ``stats``."""
        from .execute_disks import DiskContext

        executor = Executor(
            mode=self.config.mode,
            max_deletes=self.config.max_deletes_per_pass,
            storage=accounts,
            audit=self.store,
            policy=self.config.policy_rules,
            holds=self.store,  # read again before each delete: a hold taken during the pass counts
            should_stop=should_stop,
            actor=daemon_actor(self.config),
            clock=self.clock,  # each audit row at the moment of its own event
            disks=self.disks,
            disk_policy=self.config.disk_policy,
            disk_context=DiskContext(disk.inventory.disks, disk.inventory.snapshots),
            concurrency=self.config.max_concurrent_deletes,
            prefetched=self._prefetched,
        )
        self._prefetched = None
        self.progress.phase(f"pass {pass_id}: {len(due) + len(disk.due)} due ({self.config.mode})")
        # The executor re-verifies on the pass clock, not the service's: it deletes only a blob
        # whose ETag is the one recorded when it was marked, and an unchanged ETag means an
        # unchanged last_modified, which this pass (or an earlier one) already found old enough
        # on the service's time. A local clock behind the service can only refuse more.
        execution = executor.execute(due, refs, holds, now, seq, pass_id, disk_due=disk.due,
                                     disk_holds=disk.holds, expire=disk.expire)
        if execution.changes:
            with self.store.transaction() as tx:
                tx.apply(execution.changes)
        _count_execution(stats, execution)
        return execution

    # -- steps -------------------------------------------------------------------------------

    def _read_references(self, accounts: Mapping[str, object], stats: PassStats | None = None,
                         should_stop: Callable[[], bool] = lambda: False, reads: list | None = None) -> ReferenceIndex:
        """The reference index of one complete read (``reads``, when given, receives the read itself:
        its disks, snapshots, groups and locks)."""
        from .sources.base import ReadStopped

        try:
            read = self.references.read(should_stop=should_stop) if _takes_should_stop(self.references.read) \
                else self.references.read()
        except ReadStopped:
            raise PassStopped("during the reference read") from None
        if should_stop():
            raise PassStopped("after the reference read")
        errors = [f"{e.source}: {e.message}" for e in read.errors]
        if errors:
            raise PassIncomplete(errors, sorted({e.source.split("/", 1)[-1] for e in read.errors}))
        if reads is not None:
            reads.append(read)
        self._check_placement(read, accounts)
        index, parse_errors = ReferenceIndex.build(read.references, accounts)
        if parse_errors:
            raise PassIncomplete([f"unparseable reference: {e}" for e in parse_errors], ["references"])
        if stats is not None:
            stats.references = len(index)
            stats.references_foreign = index.foreign
            # Counted by kind (first seen first, as before), named once per kind.
            by_kind = Counter(map(attrgetter("kind"), read.references))
            stats.references_by_kind = {kind.value: n for kind, n in by_kind.items()}
            if index.foreign:
                log.info("references_foreign", count=index.foreign, examples=index.foreign_sample,
                         detail="on hosts that can be no collected account: ignored for matching")
        return index

    def _check_placement(self, read, accounts: Mapping[str, object]) -> None:
        """Every collected account must belong to a configured subscription: otherwise the VMs and
        images of its own subscription, which use its VHDs, were never read."""
        placed = getattr(read, "accounts", None)
        if placed is None:
            return  # discovered accounts come from the configured subscriptions
        from .sources.storage_accounts import placement_problems

        problems = placement_problems(placed, accounts, getattr(self.references, "locate", None))
        if problems:
            raise PassIncomplete(problems, ["storageAccounts"])

    def _inventory_and_decide(self, pass_id: int, now: datetime, t0: float, stats: PassStats, should_stop):
        """The pass up to its commit, as a sequence of steps, each keeping one safety rule:

        1. ``_start_listing``: the listing starts at once, bounded, and only ever runs ahead of the
           decision; nothing is decided from it before every reference is read.
        2. ``_read_references``: every reference source is read completely; any error, or any
           account no configured subscription places, ends the pass incomplete.
        3. ``_resolve_intents``: deletions an earlier pass left in doubt are resolved, before the
           pass transaction (they write on their own).
        4. ``_read_holds``: the operator holds, read with the pass.
        5. Inside ONE transaction (``_decide_and_record``): an incomplete, failed or stopped pass
           rolls all of it back, and a stop asked for until the commit changes nothing.
        6. The transaction commits; only then does the caller hand what is due to the executor,
           which re-verifies each deletion against both reference reads.
        """
        run = _PassRun(pass_id, now, t0, stats, should_stop, log.bind(pass_id=pass_id))
        run.accounts = self._resolve_accounts()
        self.progress.attach(stats, len(run.accounts))
        self._start_listing(run)
        try:
            self._prefetch_pending(run.measurer, run.accounts)
            run.refs = self._read_references(run.accounts, stats, should_stop, run.reads)
            self._resolve_intents(run.accounts, now)  # before the pass transaction: it writes on its own
            if should_stop():
                raise PassStopped("before the listing")
            self._read_holds(run)
            try:
                with self.store.transaction() as tx, Writer(tx) as writer:
                    self._decide_and_record(run, tx, writer)
            finally:
                run.measurer.close(wait=not should_stop())
        except BaseException:
            if run.prefetch is not None:
                run.prefetch.close()
            raise
        finally:
            run.measurer.close(wait=not should_stop())  # a pass that failed before its decision
            run.listing.stop(wait=not should_stop())
        self._prefetched = run.prefetch
        return run.seq, run.due, run.refs, run.holds, run.accounts, run.disk

    def _start_listing(self, run: "_PassRun") -> None:
        """Listing starts now, concurrently (bounded) and ahead of the decision (bounded): it overlaps
        the reference read and the other accounts. Deciding needs every reference first."""
        run.listing = Listing(run.accounts, self.config.azure.max_concurrency, self.config.azure.listing_prefetch,
                              run.should_stop)
        run.listing.start()
        # Billed bytes an earlier pass left pending are measured from now, overlapping the reference read.
        run.measurer = Measurer(self.config.azure.max_concurrency, self.config.billed_bytes, run.should_stop)

    def _resolve_intents(self, accounts: Mapping[str, BlobSource], now: datetime) -> None:
        """Settle the deletions earlier passes began and never recorded the end of (blobs, then
        disks), each from what the service says now."""
        resolve_intents(self.store, accounts, now, actor=daemon_actor(self.config), clock=self.clock)
        if self.disks is not None and hasattr(self.store, "unresolved_disk_intents"):
            from .execute_disks import resolve_disk_intents

            resolve_disk_intents(self.store, self.disks, now, actor=daemon_actor(self.config), clock=self.clock)

    def _read_holds(self, run: "_PassRun") -> None:
        """The operator holds and the policy the pass decides with."""
        run.holds = self.store.holds()
        run.policy = self.config.policy_rules
        self.progress.measuring(run.measurer)
        self.progress.phase(f"pass {run.pass_id}: listing and deciding")

    def _decide_and_record(self, run: "_PassRun", tx, writer: "Writer") -> None:
        """Everything the pass transaction holds, in order, up to recording the pass complete:

        - ``_decide_blobs``: each account's blobs decided as its listing streams (a listing that
          fails fails the pass closed), billed bytes measured within the budget (the rest written
          pending), every change written;
        - ``_decide_disks``: the managed disks and snapshots the reference read listed;
        - ``_check_blast_radius``: an implausible share of new candidates changes nothing;
        - ``_reread_before_delete`` (delete mode, something due): every reference read again, and
          the blobs to delete first read again, before the pass is recorded;
        - the pass recorded complete: its sightings count from the commit.
        """
        stats, should_stop = run.stats, run.should_stop
        run.seq = tx.seq
        self._decide_blobs(run, tx, writer)
        run.disk = self._decide_disks(tx, run.reads[0] if run.reads else None, run.now, run.seq, stats, should_stop)
        self._record_owners(run, tx)
        self._check_blast_radius(stats)
        if (run.due or run.disk.due or run.disk.expire) and self.config.mode == "delete":
            self._reread_before_delete(run)
        if should_stop():  # the last moment a stop can still leave everything as it was
            raise PassStopped("before the pass was recorded")
        tx.complete_pass(run.pass_id, self.clock(), asdict(stats))

    def _decide_blobs(self, run: "_PassRun", tx, writer: "Writer") -> None:
        """Every account's blobs, in order, then their billed bytes; waits for every write."""
        stats = run.stats
        for name, account in run.accounts.items():
            self._decide_account(run, tx, writer, name, account)
        self._finish_measuring(run, writer)
        stats.changes += writer.finish()
        stats.due = len(run.due)

    def _decide_account(self, run: "_PassRun", tx, writer: "Writer", name: str, account: BlobSource) -> None:
        """Decide one account's blobs as its listing streams; its changes go to the measurer, then
        the writer. A listing that fails fails the pass closed."""
        stats, seq, plog, log_changes, measurer, due = run.stats, run.seq, run.plog, run.log_changes, run.measurer, run.due
        counting = _COUNTING
        evidence = run.evidence
        batch: list[Change | Forget] = []
        tracked = tx.stored_rows(name)
        new_before = (stats.new_candidates, stats.new_bytes)
        try:
            service_now = self._service_now(name, run.listing.service_time(name), run.now, run.t0)
            if service_now is not None:  # recorded with the pass: what its blobs were aged at
                stats.service_time_by_account[name] = service_now.isoformat()
            blobs = run.listing.blobs(name, stats, run.should_stop)
            for d in decide_stream(blobs, tracked, run.refs, run.holds, run.policy, run.now, seq,
                                   service_now=service_now):
                if type(d) is Forget:
                    batch.append(d)
                    stats.vanished += 1
                    continue
                change = d.change
                if change is not None:
                    batch.append(change)
                    event = change.event  # counted inline: the progress line reads them live
                    if event == "marked" or event == "restarted":
                        stats.marked += 1
                    elif event == "released":
                        stats.released += 1
                    elif event == "kept":
                        stats.kept += 1
                    row = change.row
                    owner = row.last_owner
                    if owner is not None and owner[:3] == "vm:":  # metadata: for its owner record
                        evidence[row.key] = owner
                    if row.streak_start == seq and row.state in counting:
                        stats.new_candidates += 1
                        stats.new_bytes += row.size_bytes
                    if log_changes:
                        plog.info(
                            "blob_" + event, url=row.url, state=row.state.value,
                            hold=row.hold.value if row.hold else None, reason=row.reason,
                        )
                if d.due is not None:
                    due.append(d.due)
                if len(batch) >= BATCH:
                    measurer.submit(account, batch)
                    batch = []
                    for ready in measurer.ready():
                        writer.submit(ready)
        except ListingFailed as failed:  # a listing that fails fails the pass closed
            exc = failed.cause
            raise PassIncomplete([f"storage/{name}: {_short(exc)}"], [f"storage/{name}"]) from exc
        measurer.submit(account, batch)
        if stats.new_candidates > new_before[0]:  # per account, for the blast-radius guard
            stats.new_by_account[name] = {"blobs": stats.new_candidates - new_before[0],
                                          "bytes": stats.new_bytes - new_before[1]}

    def _record_owners(self, run: "_PassRun", tx) -> None:
        """Who owned what (gc_daemon.owners.OwnerPlan): the owner records that changed, from the
        references, tags and listings this pass read anyway, written in the pass's transaction."""
        if not hasattr(tx, "owner_fingerprints"):
            return
        from .owners import OwnerPlan

        plan = OwnerPlan(self.config.owners.names, run.refs, run.reads[0] if run.reads else None, run.now,
                         tx.last_complete_started(), run.evidence)
        try:
            revisit = plan.scan(tx.owner_fingerprints())
        except Exception:  # noqa: BLE001 - who owned what is information: it never fails the collection
            log.exception("owner_records_failed", pass_id=run.pass_id,
                          detail="owner records not updated by this pass; the rest of it goes on")
            return
        written = tx.put_owner_records(plan.records(tx.owner_records_of(revisit)), run.now)
        if written:
            log.debug("owner_records_written", pass_id=run.pass_id, rows=written)

    def _finish_measuring(self, run: "_PassRun", writer: "Writer") -> None:
        """Wait for the billed bytes within the budget; what is not measured by then is written
        pending: the next pass measures it."""
        stats, measurer = run.stats, run.measurer
        self.progress.phase(f"pass {run.pass_id}: measuring billed bytes")
        budget, waited = self.config.billed_bytes, time.monotonic()
        deadline = None if budget.max_wait_share is None else waited + max(
            budget.min_wait.total_seconds(), budget.max_wait_share * (waited - run.t0))
        try:
            for ready in measurer.drain(deadline):
                writer.submit(ready)
        except MeasureStopped as exc:
            raise PassStopped(str(exc)) from None
        stats.billed_measured, stats.billed_pending = measurer.measured, measurer.pending
        if measurer.pending:
            log.info("billed_bytes_pending", pass_id=run.pass_id, pending=measurer.pending,
                     by_account=measurer.pending_by_account,
                     detail="marked before their billed bytes were measured: the next pass measures them")

    def _reread_before_delete(self, run: "_PassRun") -> None:
        """Deleting is the one irreversible step: check against references read just now too.
        Meanwhile the blobs to delete first are read again (nothing is deleted before this read is
        complete and the pass recorded)."""
        disk = run.disk
        run.prefetch = self._reread_blobs(run.accounts, run.due, disk.due, run.now)
        again: list = []
        run.refs = run.refs.union(self._read_references(run.accounts, should_stop=run.should_stop, reads=again))
        if disk.due and again:  # the disks' holds, locks and references as they are now
            disk.inventory = DiskInventory.join(again[0])

    def _prefetch_pending(self, measurer: "Measurer", accounts: Mapping[str, BlobSource]) -> None:
        """Start measuring the rows earlier passes left pending, before the reference read ends."""
        pending = getattr(self.store, "billed_pending_rows", None)
        if pending is None:
            return
        for name, rows in pending(list(accounts)).items():
            if name in accounts:
                measurer.prefetch(accounts[name], rows)

    def _reread_blobs(self, accounts, due, disk_due, now: datetime):
        """Start reading again the blobs the executor tries first (as many as one pass may delete),
        on ``max_concurrent_deletes`` workers, so those reads overlap the second reference read."""
        from .execute import Prefetch, deletion_order

        first = [row.key for _, _, what, row in deletion_order(due, disk_due, now)[:self.config.max_deletes_per_pass]
                 if what == "blob"]
        return Prefetch(accounts, first, self.config.max_concurrent_deletes) if first else None

    def _decide_disks(self, tx, read, now: datetime, seq: int, stats: PassStats, should_stop) -> "DiskPhase":
        """Decide the managed disks and snapshots the reference read listed, inside the pass's
        transaction (an incomplete pass writes none of it)."""
        phase = DiskPhase()
        # A reference source that lists no disks (the bench's in-process ones) leaves disk rows alone.
        if read is None or getattr(read, "disks", None) is None or not hasattr(tx, "disk_rows"):
            return phase
        inv = DiskInventory.join(read)
        phase.inventory = inv
        stored = tx.disk_rows()
        if not inv.disks and not inv.snapshots and not stored:
            return phase
        self.progress.phase(f"pass {self.current_pass}: deciding {len(inv.disks)} disks, {len(inv.snapshots)} snapshots")
        md = self.config.managed_disks
        get_disk = getattr(self.disks, "get_disk", None)
        try:
            read_ownership(inv, stored, get_disk, md.max_ownership_reads, self.config.azure.max_concurrency, stats,
                           should_stop)
        except OwnershipReadFailed as exc:
            raise PassIncomplete(exc.errors, ["disks/get"]) from exc
        phase.holds = self.store.disk_holds()
        # The read is complete (else the pass has ended): every configured subscription was listed.
        decisions = decide_all(inv, stored, phase.holds, self.config.disk_policy, now, seq, stats,
                               listed_subscriptions=self.config.azure.subscriptions)
        if decisions.changes:
            stats.changes += tx.apply_disks(decisions.changes)
        stats.new_by_account.update(decisions.new_by_subscription)
        phase.due = decisions.due
        made = self.store.quarantine_snapshots() if hasattr(self.store, "quarantine_snapshots") else {}
        phase.expire = [(snap, made[snap.key]) for snap in expired_quarantine(inv, made, now)]
        return phase

    def _service_now(self, name: str, st: ServiceTime | None, now: datetime, t0: float) -> datetime | None:
        """The instant an account's blobs are aged at (``min_age``): the storage service's own time,
        from the first answer of its listing (blobs listed later can only look younger). A pass whose
        clock disagrees with the service by more than ``azure.max_clock_skew`` is refused: its grace
        periods and sightings would be counted on a wrong clock. The local time compared is the pass
        clock when that answer arrived (a monotonic stamp mapped onto it), so a slow machine or a
        long reference read does not look like skew.

        None (age on the pass clock, as before) for a source that gives no service time, and for an
        answer without a Date header: HTTP requires the header of a server with a clock and Azure
        Storage always sends it, so a missing one means something in between (a proxy) strips it;
        the pass then has no better clock than its own, which is today's behaviour, and says so in
        a warning. A Date header that is not a date is a malformed answer: the reader fails it."""
        if st is None:
            return None
        if st.date is None:
            log.warning("service_time_missing", account=name,
                        detail="the listing's first answer had no Date header: min_age is measured on the "
                               "local clock and the clock is not checked against the service")
            return None
        local = now + timedelta(seconds=st.received - t0)
        skew = local - st.date
        limit = self.config.azure.max_clock_skew
        if abs(skew) > limit:
            direction = "ahead of" if skew > timedelta(0) else "behind"
            raise PassIncomplete(
                [f"storage/{name}: clock skew: the storage service's time was {st.date.isoformat()} (the Date "
                 f"of its listing's first answer), the local clock said {local.isoformat()} when that answer "
                 f"arrived: {format_duration(abs(skew))} {direction} the service, over azure.max_clock_skew "
                 f"{format_duration(limit)}; fix the clock (NTP) of this machine"],
                [f"storage/{name}"],
            )
        return st.date

    def _check_blast_radius(self, stats: PassStats) -> None:
        """Refuse to mark an implausible share of the estate at once (a missing subscription makes
        its disks look orphaned): the pass changes nothing and waits for `vhd-gc confirm-pass`."""
        rules = self.config.blast_radius
        # Disks and snapshots count with the VHDs: a missing subscription makes them look orphaned too.
        n = stats.new_candidates + stats.new_disk_candidates
        size = stats.new_bytes + stats.new_disk_bytes
        seen = stats.vhds + stats.disks_unattached + stats.snapshots
        what = "VHDs" if not (stats.disks_unattached or stats.snapshots) else "VHDs, unattached disks and snapshots"
        why = None
        if n > rules.min_new and n / max(seen, 1) > rules.max_new_share:
            why = (f"this pass would newly mark {n} of {seen} {what} ({n / max(seen, 1):.0%}), over "
                   f"blast_radius.max_new_share {rules.max_new_share:.0%}")
        elif rules.max_new_bytes is not None and size > rules.max_new_bytes:
            why = (f"this pass would newly mark {size} bytes, over blast_radius.max_new_bytes "
                   f"{rules.max_new_bytes}")
        if why is None:
            return
        why += "; held back: " + held_back(stats.new_by_account)
        confirmed = self.store.pass_confirmation()
        if confirmed is not None and n <= confirmed["new"] * 1.1 + 1 and size <= confirmed["bytes"] * 1.1 + 1:
            log.warning("blast_radius_confirmed", new=n, bytes=size, confirmed_by=confirmed.get("actor"))
            return
        stats.blocked = why
        log.warning("blast_radius_blocked", new=n, bytes=size, held_back=stats.new_by_account)
        raise PassIncomplete(
            [f"blast radius: {why}; nothing was marked. If this is expected (a first pass over an estate "
             "full of leftovers), run `vhd-gc confirm-pass`; if not, check the subscriptions and accounts "
             "in the configuration"],
            [],  # not an inventory error: vhdgc_blast_radius_blocked says it
        )

    def _resolve_accounts(self) -> Mapping[str, BlobSource]:
        if not callable(self.accounts):
            return self.accounts
        try:
            return self.accounts()
        except Exception as exc:  # discovery failed: an account we did not see must not look empty
            errors = getattr(exc, "errors", None) or [f"storageAccounts: {_short(exc)}"]
            raise PassIncomplete(list(errors), list(getattr(exc, "sources", ["storageAccounts"]))) from exc

    def _end(self, pass_id, outcome, started, t0, stats, *, errors=(), seq=None) -> PassResult:
        finished = self.clock()
        self.progress.phase(f"pass {pass_id} {outcome}")
        errors = list(errors)
        try:
            self.store.finish_pass(
                pass_id, outcome, finished, error="; ".join(errors) or None, stats=asdict(stats)
            )
        except Exception as exc:  # noqa: BLE001 - the database may be what failed; the next pass cleans up
            log.error("pass_record_failed", pass_id=pass_id, error=_short(exc))
        result = PassResult(pass_id, outcome, started, finished, seq=seq, errors=errors, stats=stats)
        event = {"complete": "pass_complete", "incomplete": "pass_incomplete", "failed": "pass_failed_end",
                 "stopped": "pass_stopped"}[outcome]
        fields = {k: v for k, v in asdict(stats).items() if not k.endswith("_by_kind") and not k.endswith("_by_account")}
        (log.info if outcome in ("complete", "stopped") else log.error)(
            event, pass_id=pass_id, seq=seq, seconds=round(time.monotonic() - t0, 3), errors=errors, **fields
        )
        return result


def _count_execution(stats: PassStats, execution: Execution) -> None:
    """What the executor did, into the pass's stats."""
    stats.deleted = len(execution.deleted)
    stats.disks_deleted = sum(1 for r in execution.deleted_disks if r.kind.value == "managed_disk")
    stats.snapshots_deleted = len(execution.deleted_disks) - stats.disks_deleted
    stats.quarantine_snapshots = execution.quarantined
    stats.quarantine_expired = execution.quarantine_expired
    stats.refused = sum(execution.refused.values())
    stats.failed = execution.failed


def held_back(by_account: Mapping[str, Mapping[str, int]]) -> str:
    """What the blast-radius guard held back, per account, largest first:
    ``gcacct1 12 blobs (34.00 GiB), gcacct2 3 blobs (1.50 GiB)``."""
    if not by_account:
        return "nothing"
    ordered = sorted(by_account.items(), key=lambda item: (-item[1]["bytes"], -item[1]["blobs"], item[0]))
    def what(name: str, n: int) -> str:
        noun = name.rsplit(" ", 1)[-1] if name.endswith((" disks", " snapshots")) else "blobs"
        label = name.rsplit(" ", 1)[0] if noun != "blobs" else name
        return f"{label} {n} {noun if n != 1 else noun[:-1]}"

    return ", ".join(f"{what(name, n['blobs'])} ({n['bytes'] / 1024**3:.2f} GiB)" for name, n in ordered)


def _takes_should_stop(read: Callable) -> bool:
    """Whether a reference source's read() can be stopped (the bench's in-process sources cannot)."""
    import inspect

    try:
        return "should_stop" in inspect.signature(read).parameters
    except (TypeError, ValueError):
        return False


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {text[:limit]}"


_END = object()


def _vhds(chunk: list[BlobSeen]) -> int:
    """VHDs in a chunk (counted by the listing thread, while the decision waits for references)."""
    return sum(1 for b in chunk if b.blob_type == "PageBlob" and b.key[2][-4:].lower() == ".vhd")


class ListingFailed(Exception):
    """The listing of an account failed (the cause is the storage error)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Listing:
    """Lists accounts on worker threads (at most ``concurrency`` at once), each into a bounded
    queue, so the listing runs ahead of the decision by at most ``prefetch`` blobs an account."""

    CHUNK = 500

    def __init__(self, accounts: Mapping[str, BlobSource], concurrency: int, prefetch: int,
                 should_stop: Callable[[], bool] = lambda: False) -> None:
        self.accounts = accounts
        self.should_stop = should_stop
        self.concurrency = max(1, concurrency)
        self.prefetch = prefetch
        self.queues = {name: queue.Queue(maxsize=max(2, prefetch // self.CHUNK)) for name in accounts}
        self._fetching = threading.BoundedSemaphore(self.concurrency)  # listing reads in flight, all accounts
        self._stop = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, object] = {}
        self._pending: dict[str, object] = {}  # an item service_time() took that was not a time

    def start(self) -> None:
        if not self.accounts:
            return
        self._pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(self.accounts)),
                                        thread_name_prefix="list")
        for name, account in self.accounts.items():  # in order: the decision consumes them in order
            self._futures[name] = self._pool.submit(self._list, account, self.queues[name])

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _list(self, account: BlobSource, q: queue.Queue) -> None:
        if self._stop.is_set():
            return
        try:
            chunk: list[BlobSeen] = []
            kwargs = {}
            if getattr(account, "reports_service_time", False):
                kwargs["on_service_time"] = lambda st: self._put(q, st)  # the first item of the queue
            if getattr(account, "lists_containers_at_once", False):
                kwargs["fan_out"] = self._fan_out  # its containers listed at once, within the bound
            for blob in account.list_blobs(**kwargs):
                chunk.append(blob)
                if len(chunk) >= self.CHUNK:
                    if not self._put(q, (chunk, _vhds(chunk))):
                        return
                    chunk = []
            if chunk and not self._put(q, (chunk, _vhds(chunk))):
                return
            self._put(q, _END)
        except BaseException as exc:  # noqa: BLE001 - handed to the decision, which fails the pass
            self._put(q, _Failed(exc))

    def _fan_out(self, names: list[str], list_one: Callable[[str], Iterable[BlobSeen]]) -> Iterator[BlobSeen]:
        """The blobs of an account's containers, listed at once (each on a thread of this account,
        into a queue of its own) and handed on in container order: the same blobs in the same order
        as one listing after the other. The account's ``list_blobs(fan_out=...)`` calls it with its
        containers. The listing requests of all accounts in flight stay within ``concurrency``: a
        thread holds a share while it reads a chunk (its pages come in then), never while it waits
        to hand one on. A container whose listing fails fails the account's listing."""
        if not names:
            return
        size = max(2, self.prefetch // self.CHUNK // min(len(names), self.concurrency))
        parts = [queue.Queue(maxsize=size) for _ in names]
        pool = ThreadPoolExecutor(max_workers=min(len(names), self.concurrency), thread_name_prefix="list-container")
        try:
            for name, part in zip(names, parts):  # in order, as they are handed on: the first is never starved
                pool.submit(self._list_container, list_one, name, part)
            for part in parts:
                while True:
                    item = self._get(part)
                    if item is None or item is _END:  # stopped, or this container is done
                        break
                    if isinstance(item, _Failed):
                        raise item.exc
                    yield from item
                if item is None:
                    return
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _list_container(self, list_one: Callable[[str], Iterable[BlobSeen]], name: str, q: queue.Queue) -> None:
        try:
            blobs = iter(list_one(name))
            while not self._stop.is_set():
                with self._fetching:  # a share of the bound while reading
                    chunk = list(islice(blobs, self.CHUNK))
                if chunk and not self._put(q, chunk):
                    return
                if len(chunk) < self.CHUNK:
                    break
            self._put(q, _END)
        except BaseException as exc:  # noqa: BLE001 - handed on in order: it fails the account's listing
            self._put(q, _Failed(exc))

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue
        return None

    def _next(self, name: str):
        """The next item of an account's queue: a ServiceTime, a (chunk, vhds) pair, _END or _Failed."""
        pending = self._pending.pop(name, None)
        if pending is not None:
            return pending
        q = self.queues[name]
        while True:
            try:
                return q.get(timeout=1.0)
            except queue.Empty:
                if self.should_stop():  # a listing call in flight is not waited for
                    raise PassStopped("during the listing") from None
                future = self._futures.get(name)
                if future is not None and future.done() and q.empty():
                    # The worker ended without saying how: never wait for it forever.
                    raise ListingFailed(RuntimeError("the listing worker stopped without finishing")) from None

    def service_time(self, name: str) -> ServiceTime | None:
        """The service's time of an account's listing (waits for its first answer), or None when the
        source gives none or its listing failed first (blobs() then raises the failure)."""
        item = self._next(name)
        if type(item) is ServiceTime:
            return item
        self._pending[name] = item
        return None

    def blobs(self, name: str, stats: PassStats, should_stop: Callable[[], bool]) -> Iterator[BlobSeen]:
        """One account's blobs in listing order; counts them (and its VHDs) into ``stats``."""
        stats.blobs_by_account[name] = 0
        while True:
            item = self._next(name)
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise ListingFailed(item.exc) from item.exc
            if type(item) is ServiceTime:  # only ever first (service_time() takes it): nothing to list
                continue
            if should_stop():
                raise PassStopped("during the listing")
            chunk, vhds = item
            stats.blobs += len(chunk)
            stats.vhds += vhds
            stats.blobs_by_account[name] += len(chunk)
            yield from chunk

    def stop(self, wait: bool = True) -> None:
        """Stop the workers (a failed pass leaves them blocked on full queues) and free the queues.
        ``wait=False`` (a stop was asked for): a worker inside a call ends with its timeout, unwaited."""
        self._stop.set()
        for q in self.queues.values():
            try:
                while True:
                    q.get_nowait()
            except queue.Empty:
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)


class Writer:
    """Writes one pass's changes into its transaction on a thread of its own, in the order they are
    submitted, so the database's own work (SQLite and psycopg release the GIL in it) overlaps the
    decision instead of following it. Batches that wait are written together, in fewer statements.

    The transaction stays the pass's: :meth:`finish` waits for every write and returns the rows
    written, or raises the first error, after which nothing more is written. Leaving the ``with``
    block always stops and joins the thread first, so a failing pass rolls back a connection that
    nothing is writing on.
    """

    PENDING = 8  # batches queued before submit() waits: memory stays bounded when the database is slower
    GATHER = UPSERT_BATCH  # rows written by one apply() at most: one upsert of the store's

    def __init__(self, tx) -> None:
        self._tx = tx
        self._queue: queue.Queue = queue.Queue(maxsize=self.PENDING)
        self._error: BaseException | None = None
        self._written = 0
        self._discard = False
        self._thread = threading.Thread(target=self._run, name="write", daemon=True)

    def __enter__(self) -> "Writer":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if exc_type is not None:
            self._discard = True  # the pass failed: what still waits is not written (it rolls back)
        self._stop()

    def submit(self, batch: list[Change | Forget]) -> None:
        self._raise_error()
        if batch:
            self._queue.put(batch)

    def finish(self) -> int:
        """Wait for every submitted batch to be written; the rows written, or the first error."""
        self._stop()
        self._raise_error()
        return self._written

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_END)  # the thread drains the queue even after an error, so this returns
            self._thread.join()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        end = False
        while not end:
            batch = self._queue.get()
            if batch is _END:
                return
            while len(batch) < self.GATHER:  # whatever else waits goes in the same write
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _END:
                    end = True
                    break
                batch = batch + more
            if self._error is not None or self._discard:
                continue  # after an error nothing more is written; the pass rolls back
            try:
                self._written += self._tx.apply(batch)
            except BaseException as exc:  # noqa: BLE001 - raised in the pass by submit() or finish()
                self._error = exc
