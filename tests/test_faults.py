"""The fault matrix: every reference source and the blob listing, under every kind of failure, with
the state database locked or away and the clock stepping backwards.

For each fault: the pass fails closed (incomplete, exit 3; a database fault: exit 1) or completes
correctly (a fault the client retries away); no blob in use is deleted (ground truth: Azurite); no
state is lost (tracked rows, audit log and sequence identical before and after a failed pass); and
the next healthy pass converges (deletes the leftovers, keeps the blobs in use).

The reference-source matrix shares one estate (module scope) for speed. Its fault passes are
"armed": grace 0s and min_sightings 1, so anything a wrongly complete pass took for an orphan would
be deleted at once and show up as a wrongful deletion in Azurite. Every case is counted in the
session tally (tests/support/tally.py), printed as one line at the end of the run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gc_daemon.config import parse_config
from gc_daemon.passes import Collector, PassResult
from gc_daemon.state import db as state_db
from gc_daemon.wiring import build_accounts, build_credential, build_references, configure_logging, open_store
from sandbox import arm as a
from sandbox import seed
from sandbox.faultproxy import Drop, FaultProxy, Forward, Rule
from tests.support import tally
from tests.support.estate import ACCOUNTS, SUB, Harness
from tests.support.faults import (
    SOURCES,
    Estate,
    PrivateAzurite,
    build_estate,
    lost_records,
    snapshot_state,
    sqlite_write_locked,
)


@pytest.fixture(scope="module", autouse=True)
def _tally_plugin(request):
    tally.ensure_registered(request.config)




# --------------------------------------------------------------------------------------------------
# The shared estate of the reference-source matrix
# --------------------------------------------------------------------------------------------------

# Fault kinds that must fail the pass closed: (id, Fault options). The client retries once
# (retry_total 1), so a fault that keeps firing outlasts the retry.
PERSISTENT = [
    ("5xx", dict(kind="error", status=503)),
    ("403", dict(kind="error", status=403)),
    ("429-retry-after", dict(kind="error", status=429, retry_after=0.2)),
    ("429", dict(kind="error", status=429)),
    ("timeout", dict(kind="delay", delay=1.6)),
    ("malformed-json", dict(kind="malformed")),
    ("truncated", dict(kind="truncate")),
    ("nextlink-5xx", dict(kind="error", status=500, on_next_link=True)),
    ("nextlink-truncated", dict(kind="truncate", on_next_link=True)),
    ("no-value-list", dict(kind="body", body={"nextLink": None})),
    ("item-without-id", dict(kind="body", body={"value": [{"name": "ghost"}]})),
]
# Faults the client retries away (they fire once): the pass completes, and correctly.
TRANSIENT = [
    ("5xx-once", dict(kind="error", status=500, times=1)),
    ("429-retry-after-once", dict(kind="error", status=429, retry_after=0.2, times=1)),
    ("429-once", dict(kind="error", status=429, times=1)),
]
CONVERGE = "then-a-healthy-pass-converges"
# The source label vhd-gc names in a pass's errors ("<subscription>/<label>: ...") is the read's own.
LABELS = {label: label for label, _ in SOURCES}


@dataclass
class Matrix:
    gc: Harness
    estate: Estate
    store: Any
    collectors: dict[str, Collector] = field(default_factory=dict)
    leftovers: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # source -> (container, blob)
    marked: set[str] = field(default_factory=set)  # sources whose leftovers are tracked candidates
    counter: int = 0

    PROFILES = {
        # marks (sighting 1) without deleting: leftovers become tracked candidates
        "mark": dict(min_sightings=2, azure={"retry_total": 1, "timeout": "2s"}),
        # anything orphaned is due at once: a wrongly complete pass deletes, and Azurite shows it
        "armed": dict(min_sightings=1, azure={"retry_total": 1, "timeout": "2s"}),
        "armed-timeout": dict(min_sightings=1, azure={"retry_total": 0, "timeout": "1s"}),
        # what a pass would delete, without deleting: due in the report
        "dry": dict(mode="dry-run", min_sightings=1, azure={"retry_total": 1, "timeout": "2s"}),
    }

    def collector(self, profile: str) -> Collector:
        if profile not in self.collectors:
            overrides = self.PROFILES[profile]
            settings = dict(self.gc.settings)
            settings["azure"] = {**settings["azure"], **overrides["azure"]}
            settings.update({k: v for k, v in overrides.items() if k != "azure"})
            config = parse_config(settings)
            credential = build_credential(config)
            self.collectors[profile] = Collector(
                config=config, store=self.store, references=build_references(config, credential),
                accounts=build_accounts(config, credential),
            )
        return self.collectors[profile]

    def run(self, profile: str) -> PassResult:
        return self.collector(profile).run_pass()

    def seed_leftovers(self, source: str, n: int) -> None:
        names = []
        for _ in range(n):
            self.counter += 1
            names.append(("leftovers", f"left-{self.counter:04d}.vhd"))
            self.gc.page(*names[-1])
        self.leftovers.setdefault(source, []).extend(names)

    def existing(self, names) -> list[tuple[str, str]]:
        return [n for n in names if self.gc.exists(*n)]

    def check_in_use(self, case: str) -> int:
        """Wrongful deletions: in-use blobs gone. Restores them so later cases start alike."""
        missing = self.estate.missing(self.gc)
        if missing:
            self.estate.restore(self.gc, missing)
        return len(missing)


@pytest.fixture(scope="module")
def matrix(arm_server, azurite_server, tmp_path_factory) -> Iterator[Matrix]:
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("fault-matrix")
    arm_server.page_size = 2
    arm_server.reset()
    for account in azurite_server.accounts:
        with azurite_server.service_client(account) as service:
            seed.wipe(service)
    for acct in ACCOUNTS:
        mp.setenv(f"{acct.upper()}_KEY", azurite_server.key(acct))
    mp.setenv("REQUESTS_CA_BUNDLE", str(arm_server.cert_path))
    gc = Harness(arm_server, azurite_server, tmp, f"sqlite:///{tmp / 'state.db'}")
    gc.configure(mode="delete", grace_period="0s", log_level="warning")
    estate = build_estate(gc)
    config = parse_config(gc.settings)
    configure_logging(config)
    m = Matrix(gc, estate, open_store(config))
    try:
        yield m
    finally:
        for c in m.collectors.values():
            c.references.close()
        mp.undo()
        arm_server.reset()


def _prepare_source(m: Matrix, index: int) -> None:
    """The source's leftovers exist and are tracked candidates (sighting 1), each case one of them."""
    source = SOURCES[index][0]
    if source in m.marked:
        return
    m.seed_leftovers(source, len(PERSISTENT))
    result = m.run("mark")
    assert result.outcome == "complete", result.errors
    m.marked.add(source)


def _matrix_cases():
    for i, (source, path) in enumerate(SOURCES):
        for kind, opts in PERSISTENT:
            yield pytest.param(i, kind, opts, id=f"{source}-{kind}")
        yield pytest.param(i, CONVERGE, None, id=f"{source}-{CONVERGE}")


@pytest.mark.parametrize("index, kind, opts", list(_matrix_cases()))
def test_reference_source_fault_fails_closed(matrix: Matrix, index: int, kind: str, opts: dict | None):
    m, gc = matrix, matrix.gc
    source, path = SOURCES[index]
    case = f"arm {source}: {kind}"
    _prepare_source(m, index)
    leftovers = m.leftovers[source]

    if kind == CONVERGE:
        # Before it: the next source's leftovers, so this pass marks them (and they need no pass of their own).
        if index + 1 < len(SOURCES):
            nxt = SOURCES[index + 1][0]
            m.seed_leftovers(nxt, len(PERSISTENT))
        result = m.run("armed")
        assert result.outcome == "complete", result.errors
        if index + 1 < len(SOURCES):
            m.marked.add(SOURCES[index + 1][0])
        assert m.check_in_use(case) == 0, "a healthy pass deleted a blob in use"
        assert m.existing(leftovers) == [], "the healthy pass after the faults left leftovers behind"
        report = gc.report()
        assert all(report[gc.url(*n)]["state"] == "deleted" for n in leftovers)
        return

    before = snapshot_state(gc.db_url)
    present = m.existing(leftovers)
    gc.arm.clear_faults()
    gc.arm.add_fault(path=path, **opts)
    try:
        result = m.run("armed-timeout" if kind == "timeout" else "armed")
    finally:
        fired = sum(f.fired for f in gc.arm.faults)
        gc.arm.clear_faults()
    after = snapshot_state(gc.db_url)
    wrongful = m.check_in_use(case)
    lost = lost_records(before, after) if result.outcome != "complete" else 0
    early = len(present) - len(m.existing(present)) if result.outcome != "complete" else 0
    ok_closed = result.outcome == "incomplete" and not lost and not early and not wrongful
    tally.record(case, tally.FAILED_CLOSED if ok_closed else tally.WRONG,
                 wrongful_deletions=wrongful, lost_records=lost + early)

    assert fired, f"the fault on {path} never fired"
    assert wrongful == 0, f"{case}: {wrongful} blob(s) in use deleted"
    assert result.outcome == "incomplete", f"{case}: the pass came out {result.outcome}, not incomplete"
    assert any(f"/{LABELS[source]}:" in e for e in result.errors), result.errors
    assert lost == 0, f"{case}: the incomplete pass changed {lost} record(s)"
    assert early == 0, f"{case}: the incomplete pass deleted {early} leftover(s)"


@pytest.mark.parametrize(
    "index, kind, opts",
    [pytest.param(i, kind, opts, id=f"{source}-{kind}") for i, (source, _) in enumerate(SOURCES) for kind, opts in TRANSIENT],
)
def test_reference_source_fault_retried_away_completes_correctly(matrix: Matrix, index: int, kind: str, opts: dict):
    """A fault that fires once is retried (retry_total 1): the pass completes, and its result is
    right: the new leftover is due, nothing in use is tracked as an orphan. (Dry-run: the last test
    of the matrix deletes them all.)"""
    m, gc = matrix, matrix.gc
    source, path = SOURCES[index]
    case = f"arm {source}: {kind}"
    key = f"transient-{source}-{kind}"
    m.seed_leftovers(key, 1)
    gc.arm.clear_faults()
    gc.arm.add_fault(path=path, **opts)
    try:
        result = m.run("dry")
    finally:
        fired = sum(f.fired for f in gc.arm.faults)
        gc.arm.clear_faults()
    wrongful = m.check_in_use(case)
    report = gc.report()
    in_use_urls = {gc.url(b.container, b.blob, b.account) for b in m.estate.in_use}
    would_delete = sorted(u for u, r in report.items() if u in in_use_urls and r["state"] in ("candidate", "due", "deleted"))
    leftover_due = report.get(gc.url(*m.leftovers[key][0]), {}).get("state") == "due"
    correct = result.outcome == "complete" and not wrongful and not would_delete and leftover_due
    closed = result.outcome == "incomplete" and not wrongful
    tally.record(case, tally.COMPLETED if correct else (tally.FAILED_CLOSED if closed else tally.WRONG),
                 wrongful_deletions=wrongful + len(would_delete))
    assert fired == 1
    assert wrongful == 0 and not would_delete, f"{case}: in-use blobs taken for orphans: {would_delete}"
    assert result.outcome == "complete", f"{case}: a fault retried away should not fail the pass: {result.errors}"
    assert leftover_due, f"{case}: the new leftover is not due"


def test_the_matrix_estate_covers_every_registered_read(matrix: Matrix):
    """Every read every registered source declares is in the matrix, with blobs in use behind its
    pages: registering a source without giving it an estate here fails."""
    from gc_daemon.sources import reads

    assert {r.label for r in reads()} == {label for label, _ in SOURCES} == matrix.estate.covered
    kinds = {b.why for b in matrix.estate.in_use}
    for why in ("site recovery disk", "azure migrate seed", "image builder output", "devtest lab custom image",
                "gallery application"):
        assert why in kinds, why


def test_matrix_ends_converged(matrix: Matrix):
    """After every fault: one more healthy pass, and the estate is exactly right."""
    m, gc = matrix, matrix.gc
    result = m.run("armed")
    assert result.outcome == "complete", result.errors
    assert m.check_in_use("final") == 0
    every = [n for names in m.leftovers.values() for n in names]
    assert m.existing(every) == []
    report = gc.report()
    in_use_urls = {gc.url(b.container, b.blob, b.account) for b in m.estate.in_use}
    assert not {u for u, r in report.items() if u in in_use_urls and r["state"] in ("candidate", "due", "deleted")}
    from gc_daemon.state.store import Store

    assert Store(m.store.engine).unresolved_intents() == []


# --------------------------------------------------------------------------------------------------
# Blob listing faults (they cannot be injected in Azurite: the account itself fails)
# --------------------------------------------------------------------------------------------------


def _in_use_estate(gc: Harness) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A referenced blob, a leased blob, and three leftovers in gcacct1."""
    ref = gc.page("vhds", "referenced.vhd")
    gc.page("vhds", "leased.vhd", lease=True)
    gc.compute(a.vm(SUB, "rg1", "vm1", os_vhd=ref))
    left = [("vhds", f"left{i}.vhd") for i in range(3)]
    for n in left:
        gc.page(*n)
    return [("vhds", "referenced.vhd"), ("vhds", "leased.vhd")], left


def _fault_scan(gc: Harness, case: str, *, in_use, leftovers, expect_exit=3, run=None):
    """Run a scan (``run``, default ``vhd-gc scan``) under a fault; check it and count it in the tally.
    Returns (exit code, wrongful deletions, lost records, leftovers deleted early, what ``run`` returned)."""
    before = snapshot_state(gc.db_url)
    present = [n for n in leftovers if gc.exists(*n)]
    out = run() if run else gc.cli("scan")
    code = out.code if hasattr(out, "code") else out
    after = snapshot_state(gc.db_url)
    wrongful = sum(1 for n in in_use if not gc.exists(*n))
    early = sum(1 for n in present if not gc.exists(*n))
    lost = lost_records(before, after)
    expected = expect_exit if isinstance(expect_exit, tuple) else (expect_exit,)
    closed = code in expected and not wrongful and not early and not lost
    tally.record(case, tally.FAILED_CLOSED if closed else tally.WRONG, wrongful_deletions=wrongful,
                 lost_records=lost + early)
    return code, wrongful, lost, early, out


def _converges(gc: Harness, in_use, leftovers, **configure) -> None:
    gc.configure(**configure)
    run = gc.cli("scan")
    assert run.code == 0, run.err
    assert all(gc.exists(*n) for n in in_use)
    assert not any(gc.exists(*n) for n in leftovers)


def test_blob_endpoint_unreachable_fails_closed(gc):
    in_use, left = _in_use_estate(gc)
    gc.configure(mode="delete", min_sightings=2, azure={"retry_total": 0, "timeout": "2s"})
    assert gc.cli("scan").code == 0  # leftovers marked (sighting 1)
    dead = f"http://127.0.0.1:{_closed_port()}/gcacct2"
    accounts = [
        {"name": "gcacct1", "blob_endpoint": gc.azurite.blob_endpoint("gcacct1"), "key_env": "GCACCT1_KEY"},
        {"name": "gcacct2", "blob_endpoint": dead, "key_env": "GCACCT2_KEY"},
    ]
    gc.configure(mode="delete", min_sightings=1, azure={"retry_total": 0, "timeout": "2s", "storage_accounts": accounts})
    code, wrongful, lost, early, run = _fault_scan(gc, "blob listing: endpoint unreachable", in_use=in_use, leftovers=left)
    assert (code, wrongful, lost, early) == (3, 0, 0, 0), run.err
    assert "gcacct2" in run.err
    _converges(gc, in_use, left, mode="delete", min_sightings=1, azure={"retry_total": 0, "timeout": "2s"})


def test_wrong_account_key_fails_closed(gc, monkeypatch):
    in_use, left = _in_use_estate(gc)
    gc.configure(mode="delete", min_sightings=2, azure={"retry_total": 0, "timeout": "2s"})
    assert gc.cli("scan").code == 0
    gc.configure(mode="delete", min_sightings=1, azure={"retry_total": 0, "timeout": "2s"})
    good = gc.azurite.key("gcacct2")
    from sandbox.azurite import random_key

    monkeypatch.setenv("GCACCT2_KEY", random_key())
    code, wrongful, lost, early, run = _fault_scan(gc, "blob listing: wrong account key (403)", in_use=in_use, leftovers=left)
    assert (code, wrongful, lost, early) == (3, 0, 0, 0), run.err
    assert "gcacct2" in run.err
    monkeypatch.setenv("GCACCT2_KEY", good)
    _converges(gc, in_use, left, mode="delete", min_sightings=1, azure={"retry_total": 0, "timeout": "2s"})


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed as soon as the block ends: nothing listens there


# -- a private Azurite, SIGKILLed -------------------------------------------------------------------


@pytest.fixture
def private_azurite(tmp_path) -> Iterator[PrivateAzurite]:
    p = PrivateAzurite(["privacct"], tmp_path / "private-azurite")
    p.start()
    try:
        yield p
    finally:
        p.kill()


def _collector(gc: Harness, **configure) -> Collector:
    gc.configure(**configure)
    from gc_daemon.config import load_config
    from gc_daemon.wiring import build_collector

    return build_collector(load_config(gc.config_path))


def test_azurite_killed_during_listing_and_during_deletion(gc, private_azurite, monkeypatch):
    p = private_azurite
    svc = p.svc("privacct")
    # The private account: 40 leftovers, a referenced blob and a leased one; listed 10 a page.
    leftovers = [("pdisks", f"p{i:02d}.vhd") for i in range(40)]
    for c, b in leftovers:
        seed.page_blob(svc, c, b, size=512 * 8, written=[(0, 512)])
    seed.page_blob(svc, "pinuse", "pref.vhd", size=512 * 8)
    seed.page_blob(svc, "pinuse", "pleased.vhd", size=512 * 8, lease=True)
    p_in_use = [("pinuse", "pref.vhd"), ("pinuse", "pleased.vhd")]
    ref = f"{p.endpoint('privacct')}/pinuse/pref.vhd"
    in_use, left = _in_use_estate(gc)
    gc.compute(a.vm(SUB, "rg1", "vm1", os_vhd=gc.url("vhds", "referenced.vhd")), a.vm(SUB, "rg1", "pvm", os_vhd=ref))
    monkeypatch.setenv("PRIVACCT_KEY", p.key("privacct"))
    accounts = [
        {"name": "privacct", "blob_endpoint": p.endpoint("privacct"), "key_env": "PRIVACCT_KEY"},
        {"name": "gcacct1", "blob_endpoint": gc.azurite.blob_endpoint("gcacct1"), "key_env": "GCACCT1_KEY"},
    ]
    base = dict(mode="delete", grace_period="0s", max_deletes_per_pass=100,
                azure={"retry_total": 0, "timeout": "2s", "storage_accounts": accounts})
    p.settle()  # Azurite's autosave: what a SIGKILL keeps

    def p_exists(names):
        s = p.svc("privacct")
        return [n for n in names if seed.exists(s, *n)]

    # (1) Killed after the first page of the listing, in an armed pass (everything due at once).
    c = _collector(gc, min_sightings=1, **base)
    c.accounts["privacct"].results_per_page = 10
    killed = threading.Event()
    # The listing of one container (the pass lists an account's containers at once, each ahead of the
    # decision: a container's pages come in here).
    original = c.accounts["privacct"].container_blobs

    def listing_that_kills(*args, **kwargs):
        for n, blob in enumerate(original(*args, **kwargs), 1):
            if n == 10 and not killed.is_set():  # the first page is in: SIGKILL from another thread
                t = threading.Thread(target=lambda: (p.kill(), killed.set()))
                t.start()
                t.join()
            yield blob

    c.accounts["privacct"].container_blobs = listing_that_kills
    code, wrongful, lost, early, result = _fault_scan(
        gc, "blob listing: Azurite SIGKILLed during the listing", in_use=in_use, leftovers=left,
        run=lambda: _outcome_code(c.run_pass()),
    )
    assert killed.is_set()
    assert (code, wrongful, lost, early) == (3, 0, 0, 0)
    p.start()
    assert p_exists(p_in_use + leftovers) == p_in_use + leftovers  # nothing deleted there either

    # (2) Killed between passes: a pass marks (sighting 1), Azurite dies, a delete-mode pass runs.
    c = _collector(gc, min_sightings=2, **base)
    assert c.run_pass().outcome == "complete"
    assert all(gc.exists(*n) for n in left)  # sighting 1 of 2: marked only
    p.kill()
    code, wrongful, lost, early, result = _fault_scan(
        gc, "blob listing: Azurite SIGKILLed between passes, then a delete-mode pass", in_use=in_use,
        leftovers=left, run=lambda: _outcome_code(_collector(gc, min_sightings=2, **base).run_pass()),
    )
    assert (code, wrongful, lost, early) == (3, 0, 0, 0)
    p.start()
    assert p_exists(p_in_use + leftovers) == p_in_use + leftovers

    # (3) Killed after the listing, before the deletions: the executor cannot re-read, deletes nothing there.
    c = _collector(gc, min_sightings=2, **base)
    original = c.accounts["privacct"].list_blobs

    def listing_then_kill(*args, **kwargs):
        yield from original(*args, **kwargs)
        p.kill()

    c.accounts["privacct"].list_blobs = listing_then_kill
    before = snapshot_state(gc.db_url)
    result = c.run_pass()
    wrongful = sum(1 for n in in_use if not gc.exists(*n))
    p.start()
    wrongful += len(p_in_use) - len(p_exists(p_in_use))
    survived = p_exists(leftovers)
    audit = [r for r in snapshot_state(gc.db_url)["audit"] if r not in before["audit"]]
    ok = result.outcome == "complete" and result.stats.failed == len(leftovers) and not wrongful \
        and survived == leftovers and not any(r[4] == "delete-intent" and r[5] == "privacct" for r in audit)
    tally.record("storage: Azurite SIGKILLed between listing and deletion", tally.COMPLETED if ok else tally.WRONG,
                 wrongful_deletions=wrongful)
    assert result.outcome == "complete", result.errors
    assert result.stats.failed == len(leftovers)  # each re-read failed: nothing deleted there
    assert not any(gc.exists(*n) for n in left)  # the healthy account's leftovers went
    assert wrongful == 0 and survived == leftovers

    # The next healthy pass converges.
    result = _collector(gc, min_sightings=2, **base).run_pass()
    assert result.outcome == "complete", result.errors
    assert result.stats.deleted == len(leftovers)
    assert p_exists(p_in_use + leftovers) == p_in_use
    assert all(gc.exists(*n) for n in in_use)


def _outcome_code(result: PassResult) -> int:
    return {"complete": 0, "incomplete": 3}.get(result.outcome, 1)


# --------------------------------------------------------------------------------------------------
# The state database: locked, unreachable
# --------------------------------------------------------------------------------------------------


def test_state_database_locked_before_the_pass_fails_cleanly(gc, monkeypatch):
    in_use, left = _in_use_estate(gc)
    gc.configure(mode="delete", min_sightings=2)
    assert gc.cli("scan").code == 0  # marked
    gc.configure(mode="delete", min_sightings=1)
    monkeypatch.setattr(state_db, "SQLITE_BUSY_TIMEOUT_MS", 300)  # SQLite's busy timeout, short for the test
    t0 = time.monotonic()
    code, wrongful, lost, early, run = _fault_scan(
        gc, "state database locked (BEGIN EXCLUSIVE elsewhere)", in_use=in_use, leftovers=left,
        expect_exit=1, run=lambda: _locked_scan(gc),
    )
    # Under the default 30 s busy timeout: the short one was used (a loaded machine stretches the
    # scan around it, not by 25 s).
    assert time.monotonic() - t0 < 25
    assert code == 1, (run.code, run.out, run.err)
    assert "locked" in run.err
    assert (wrongful, lost, early) == (0, 0, 0)
    _converges(gc, in_use, left, mode="delete", min_sightings=1)


def _locked_scan(gc: Harness):
    with sqlite_write_locked(gc.db_url):
        return gc.cli("scan")


def test_state_database_locked_in_the_middle_of_the_pass_deletes_nothing(gc, monkeypatch):
    """The write lock is taken by someone else while the pass lists the blobs."""
    in_use, left = _in_use_estate(gc)
    gc.configure(mode="delete", min_sightings=2)
    assert gc.cli("scan").code == 0
    monkeypatch.setattr(state_db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    c = _collector(gc, mode="delete", min_sightings=1)
    original = c.accounts["gcacct1"].list_blobs
    holder: dict[str, Any] = {}

    def listing_under_lock(*args, **kwargs):
        cm = sqlite_write_locked(gc.db_url)
        holder["conn"] = cm.__enter__()
        holder["cm"] = cm
        yield from original(*args, **kwargs)

    c.accounts["gcacct1"].list_blobs = listing_under_lock

    def run() -> int:
        try:
            result = c.run_pass()
            return _outcome_code(result)
        except Exception:  # noqa: BLE001 - the CLI maps this to exit 1
            return 1
        finally:
            if "cm" in holder:
                holder["cm"].__exit__(None, None, None)

    code, wrongful, lost, early, _ = _fault_scan(
        gc, "state database locked during the pass", in_use=in_use, leftovers=left, expect_exit=(1, 3), run=run,
    )
    assert code in (1, 3)
    assert (wrongful, lost, early) == (0, 0, 0)
    _converges(gc, in_use, left, mode="delete", min_sightings=1)


def test_state_database_unreachable_fails_cleanly(gc, tmp_path):
    in_use, left = _in_use_estate(gc)
    gc.configure(mode="delete", min_sightings=2)
    assert gc.cli("scan").code == 0
    good = gc.db_url
    gc.configure(mode="delete", min_sightings=1, database_url=f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/gc")
    code, wrongful, lost, early, run = _fault_scan(
        gc, "state database unreachable (closed PostgreSQL port)", in_use=in_use, leftovers=left, expect_exit=1)
    assert code == 1, (run.out, run.err)
    assert "OperationalError" in run.err or "connect" in run.err.lower()
    assert (wrongful, lost, early) == (0, 0, 0)
    _converges(gc, in_use, left, mode="delete", min_sightings=1, database_url=good)


# --------------------------------------------------------------------------------------------------
# The clock steps backwards
# --------------------------------------------------------------------------------------------------


def test_clock_stepping_backwards_makes_nothing_due_or_deleted_early(gc):
    in_use, _ = _in_use_estate(gc)
    gc.configure(mode="delete", grace_period="1h", min_sightings=1)
    t0 = datetime.now(UTC)
    first_seen: dict[tuple[str, str], datetime] = {}  # the latest clock when each leftover was first seen
    latest = t0
    passes = [timedelta(0), timedelta(hours=-2), timedelta(minutes=-30), timedelta(minutes=30),
              timedelta(minutes=-90), timedelta(minutes=61), timedelta(hours=2), timedelta(hours=4)]
    new_each = {timedelta(hours=-2): ("vhds", "born-in-the-past.vhd"), timedelta(minutes=30): ("vhds", "late.vhd")}
    violations = []
    for offset in passes:
        if offset in new_each:
            gc.page(*new_each[offset])
        at = t0 + offset
        present = {n for n in [("vhds", f"left{i}.vhd") for i in range(3)] + list(new_each.values()) if gc.exists(*n)}
        for n in present:
            first_seen.setdefault(n, latest)
        result = gc.scan(at=at)
        latest = max(latest, at)
        assert result.outcome == "complete", result.errors
        for n in present:
            if not gc.exists(*n):
                # Deleted at clock `at`: the grace period must have passed since it was first seen,
                # on the latest clock ever shown (a clock that stepped back does not count twice).
                if at < first_seen[n] + timedelta(hours=1):
                    violations.append((n, offset))
        assert all(gc.exists(*n) for n in in_use)
        if offset < timedelta(0):
            report = gc.report()
            due = [u for u, r in report.items() if r["state"] == "due"]
            assert not due, f"due with the clock at {offset}: {due}"
    ok = not violations
    tally.record("clock steps backwards", tally.COMPLETED if ok else tally.WRONG, wrongful_deletions=len(violations))
    assert not violations, f"deleted before grace_period on the latest clock: {violations}"
    assert not any(gc.exists(*n) for n in [("vhds", f"left{i}.vhd") for i in range(3)] + list(new_each.values()))


# --------------------------------------------------------------------------------------------------
# The reply to a delete is lost (a fault proxy between vhd-gc and Azurite)
# --------------------------------------------------------------------------------------------------
#
# The DELETE reaches the service and is executed, but vhd-gc never hears so: the connection drops,
# or a 5xx comes back. vhd-gc retries; the retry of a conditional delete of a blob that is gone is
# answered 404 BlobNotFound by Azure and 412 ConditionNotMet by Azurite 3.37 (it checks If-Match
# first). Either answer, after an attempt whose outcome is unknown, must be settled by looking at
# the blob: gone means vhd-gc deleted it, and that must be recorded (audit, report, counters).

LOST = ("left", "lost.vhd")


@dataclass
class DeleteFault:
    id: str
    arm: Any  # (proxy, gc) -> None: installs the proxy's rules
    outcome: str  # what the audit must record for the leftover: deleted | refused | failed | unresolved
    deletes: list  # the DELETEs the proxy saw: (action, upstream status, client status)
    settled: bool = True  # the outcome was settled by looking at the blob
    error_code: str | None = None
    retry_total: int = 1


def _recreate(gc: Harness):
    def hook(request, reply):
        seed.page_blob(gc.svc(), *LOST, written=[(0, 512)])  # someone writes a new blob under the name
    return hook


def _drop_container(gc: Harness):
    def hook(request, reply):
        gc.svc().get_container_client(LOST[0]).delete_container()
    return hook


def _touch(gc: Harness):
    def hook(request):  # just before the DELETE reaches the service: the blob changes
        gc.svc().get_blob_client(*LOST).set_blob_metadata({"touched": "1"})
    return hook


DELETE_FAULTS = [
    DeleteFault("reply-lost-then-412", lambda p, gc: p.drop_reply("DELETE"), "deleted",
                [("drop-reply", 202, None), ("forward", 412, 412)]),
    DeleteFault("reply-lost-container-removed-then-404",
                lambda p, gc: p.drop_reply("DELETE", on_upstream_reply=_drop_container(gc)), "deleted",
                [("drop-reply", 202, None), ("forward", 404, 404)]),
    DeleteFault("reply-reset-then-412", lambda p, gc: p.drop_reply("DELETE", reset=True), "deleted",
                [("drop-reply", 202, None), ("forward", 412, 412)]),
    DeleteFault("executed-but-500-then-412", lambda p, gc: p.replace_reply(500, "DELETE"), "deleted",
                [("replace-reply", 202, 500), ("forward", 412, 412)]),
    DeleteFault("every-reply-lost", lambda p, gc: p.drop_reply("DELETE", times=None), "deleted",
                [("drop-reply", 202, None), ("drop-reply", 412, None)]),
    DeleteFault("reply-lost-no-retry", lambda p, gc: p.drop_reply("DELETE"), "deleted",
                [("drop-reply", 202, None)], retry_total=0),
    DeleteFault("503-not-executed-then-202", lambda p, gc: p.respond(503, "DELETE"), "deleted",
                [("respond", None, 503), ("forward", 202, 202)], settled=False),
    # The blob is re-created between the lost reply and the retry: the retry's If-Match keeps the
    # new blob safe, and it starts over (the lost reply's delete did take the old one: see
    # docs/operations.md, "When the reply to a delete is lost").
    DeleteFault("reply-lost-blob-recreated-then-412",
                lambda p, gc: p.drop_reply("DELETE", on_upstream_reply=_recreate(gc)), "refused",
                [("drop-reply", 202, None), ("forward", 412, 412)], error_code="etag_changed"),
    # Never executed, never answered: the blob is still there, and the next pass deletes it.
    DeleteFault("dropped-before-the-service-every-time",
                lambda p, gc: p.add(Rule(Drop(), method="DELETE", times=None)), "failed",
                [("drop", None, None), ("drop", None, None)], error_code="ServiceResponseError"),
    # The reply is lost and the blob cannot be read either: the intent stays open; the next pass
    # settles it as an interrupted one.
    DeleteFault("reply-lost-and-the-blob-unreadable",
                lambda p, gc: p.drop_reply("DELETE", on_upstream_reply=lambda rq, rp: p.respond(503, "HEAD")),
                "unresolved", [("drop-reply", 202, None)], retry_total=0),
    # A 412 with no attempt before it is the service's refusal, as always: someone changed the blob.
    DeleteFault("first-attempt-412-is-a-refusal",
                lambda p, gc: p.add(Rule(Forward(), method="DELETE", on_request=_touch(gc))), "refused",
                [("forward", 412, 412)], settled=False, error_code="ConditionNotMet"),
]


@pytest.fixture
def proxy(gc) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", gc.azurite.port)) as p:
        yield p


def _proxied(gc: Harness, proxy: FaultProxy, retry_total: int = 1) -> Collector:
    """A delete-mode collector whose gcacct1 traffic goes through the proxy (delete retries at once)."""
    accounts = [{"name": "gcacct1", "blob_endpoint": proxy.endpoint("gcacct1"), "key_env": "GCACCT1_KEY"}]
    c = _collector(gc, mode="delete", min_sightings=1,
                   azure={"retry_total": retry_total, "timeout": "5s", "storage_accounts": accounts})
    for account in c.accounts.values():
        account.delete_backoff = 0
    return c


def _records(store, url: str):
    """The leftover's deletion records (intent and outcomes), oldest first."""
    from gc_daemon.urls import parse_blob_url

    return [r for r in store.audit_log(parse_blob_url(url)) if r.action.startswith("delete")]


def _lost_record(gc: Harness, url: str, audit, open_intent_counts: bool = False) -> int:
    """1 if the leftover is gone from Azurite and vhd-gc's records do not say it deleted it (a
    `deleted` outcome tied to its intent, and `deleted` in the report); an intent still open counts
    as a record where the next pass is to settle it."""
    if gc.exists(*LOST):
        return 0
    if open_intent_counts and audit and audit[-1].action == "delete-intent":
        return 0
    recorded = gc.state(url) == "deleted" and any(r.action == "deleted" and r.intent_id for r in audit)
    return 0 if recorded else 1


@pytest.mark.parametrize("fault", DELETE_FAULTS, ids=[f.id for f in DELETE_FAULTS])
def test_a_delete_whose_reply_is_lost_is_recorded_as_what_happened(gc, proxy, fault: DeleteFault):
    in_use = [("vhds", "referenced.vhd"), ("vhds", "leased.vhd")]
    gc.page(*in_use[0])
    gc.page(*in_use[1], lease=True)
    gc.page(*LOST, written=[(0, 512)])
    gc.compute(a.vm(SUB, "rg1", "vm1", os_vhd=gc.url(*in_use[0])))
    original_etag = gc.svc().get_blob_client(*LOST).get_blob_properties().etag
    collector = _proxied(gc, proxy, fault.retry_total)
    url = collector.accounts["gcacct1"].blob_url(collector.accounts["gcacct1"].key_for(*LOST))
    case = f"delete: {fault.id}"

    fault.arm(proxy, gc)
    result = collector.run_pass()
    deletes = [(e.action, e.upstream_status, e.client_status) for e in proxy.requests("DELETE")]
    proxy.clear()
    wrongful = sum(1 for n in in_use if not gc.exists(*n))
    store = collector.store
    audit = _records(store, url)
    report = gc.report()
    there = gc.exists(*LOST)
    etag_now = gc.svc().get_blob_client(*LOST).get_blob_properties().etag if there else None
    lost = _lost_record(gc, url, audit, open_intent_counts=fault.outcome == "unresolved")

    # The next healthy pass converges: the leftover (or what replaced it) is deleted, and recorded.
    again = _proxied(gc, proxy).run_pass()
    audit_after = _records(store, url)
    lost_after = _lost_record(gc, url, audit_after)
    converged = again.outcome == "complete" and not gc.exists(*LOST) and gc.state(url) == "deleted" \
        and store.unresolved_intents() == [] and all(gc.exists(*n) for n in in_use)
    wrongful += sum(1 for n in in_use if not gc.exists(*n))
    correct = result.outcome == "complete" and not wrongful and not lost and not lost_after and converged
    tally.record(case, tally.COMPLETED if correct else tally.WRONG, wrongful_deletions=wrongful,
                 lost_records=lost + lost_after)

    assert deletes == fault.deletes, deletes
    assert result.outcome == "complete", result.errors
    assert wrongful == 0
    actions = [r.action for r in audit]
    intent = audit[0]
    assert intent.action == "delete-intent" and intent.etag == original_etag
    if fault.outcome == "deleted":
        assert actions == ["delete-intent", "deleted"]
        assert audit[1].intent_id == intent.id
        assert audit[1].reason.startswith("settled after a lost reply") == fault.settled, audit[1].reason
        assert not there
        assert report[url]["state"] == "deleted"
        assert (result.stats.deleted, result.stats.refused, result.stats.failed) == (1, 0, 0)
        assert store.audit_totals("deleted") == [("gcacct1", 1, intent.size_bytes)]  # vhdgc_deleted_blobs_total
    elif fault.outcome == "refused":
        assert actions == ["delete-intent", "delete-refused"] and audit[1].intent_id == intent.id
        assert audit[1].error_code == fault.error_code
        assert audit[1].reason.startswith("settled after a lost reply") == fault.settled, audit[1].reason
        assert there and etag_now != original_etag  # the re-created (or changed) blob, untouched
        # It starts over: a candidate again, or released when it was written in a later second than
        # the pass began (modified after the pass's instant: too young for that pass). Which one
        # depends on where a second boundary falls, so both are right; neither is deleted.
        assert report[url]["state"] in ("candidate", "due", "released")
        assert (result.stats.deleted, result.stats.refused) == (0, 1)
    elif fault.outcome == "failed":
        assert actions == ["delete-intent", "delete-failed"] and audit[1].intent_id == intent.id
        assert audit[1].error_code == fault.error_code
        assert audit[1].reason.startswith("settled after a lost reply (ServiceResponseError: ")
        assert audit[1].reason.endswith("): the blob is still there")
        assert there and etag_now == original_etag
        assert report[url]["state"] == "due"  # tried again at the next pass
        assert (result.stats.deleted, result.stats.failed) == (0, 1)
    else:  # unresolved: nothing guessed; the next pass settles it
        assert actions == ["delete-intent"]
        assert not there
        assert (result.stats.deleted, result.stats.failed) == (0, 1)
        assert [r.action for r in audit_after] == ["delete-intent", "deleted"]
        assert audit_after[1].intent_id == intent.id
        assert audit_after[1].reason == "settled after an interruption: the blob is gone"
    assert lost == 0 and lost_after == 0
    assert converged, (again.outcome, again.errors, gc.exists(*LOST), gc.state(url))
