"""The requests a deleting pass makes (issue 14, item 3): blob deletions run concurrently, bounded;
the blobs about to be deleted are read again while the references are read a second time, and no
delete is sent before that second read is complete; the containers of one account are listed at
once. Every guarantee of a deletion stays: the limit counted exactly, the hold re-read right before
the delete, the audit intent before it and the outcome after.

The events are real and need no timing: the ARM stand-in holds the second reference read at a gate
(sandbox/arm.py) while the test looks at what reached Azurite, through a fault proxy that logs every
request (sandbox/faultproxy.py) and whose rules act at exact points."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from gc_daemon.config import load_config
from gc_daemon.state.db import make_engine
from gc_daemon.state.store import Store
from gc_daemon.urls import parse_blob_url
from gc_daemon.wiring import build_collector
from sandbox.faultproxy import FaultProxy, Forward, Respond, Rule
from tests.support.faults import env_with_keys

HANG = 60  # seconds: a bound that only catches a hang
VM_LIST = r"/providers/Microsoft\.Compute/virtualMachines$"
BACKENDS = [pytest.param(None, id="sqlite"), pytest.param("postgres", id="postgres", marks=pytest.mark.postgres)]


@pytest.fixture
def proxy(gc) -> Iterator[FaultProxy]:
    with FaultProxy(("127.0.0.1", gc.azurite.port)) as p:
        yield p


def _collector(gc, proxy: FaultProxy, **overrides):
    """A collector whose gcacct1 traffic goes through the proxy."""
    accounts = [{"name": "gcacct1", "blob_endpoint": proxy.endpoint("gcacct1"), "key_env": "GCACCT1_KEY"}]
    gc.configure(**{"mode": "delete", "grace_period": "0s", "min_sightings": 1, **overrides},
                 azure={"storage_accounts": accounts})
    return build_collector(load_config(gc.config_path))


def _gate_second_reference_read(gc) -> tuple[threading.Event, list]:
    """Let the first VM list through and hold the second (the re-read before deleting) at a gate:
    the event is set once that gate exists (the first list has arrived)."""
    gates: list = []
    made = threading.Event()

    def make_gate(method, path) -> bool:
        gates.append(gc.arm.gate(VM_LIST, "GET"))
        made.set()
        return False  # the first list itself is served

    gc.arm.on_request(VM_LIST, "GET", make_gate)
    return made, gates


def _count(proxy: FaultProxy, method: str, n: int, path: str | None = None) -> threading.Event:
    """An event set once ``n`` requests of ``method`` (and ``path``) have reached the proxy."""
    seen, reached = [], threading.Event()

    def on_request(request):
        seen.append(request.path)
        if len(seen) >= n:
            reached.set()

    proxy.add(Rule(Forward(), method=method, path=path, times=None, on_request=on_request))
    return reached


def _run(collector) -> tuple[threading.Thread, list]:
    results: list = []
    thread = threading.Thread(target=lambda: results.append(collector.run_pass()), name="pass")
    thread.start()
    return thread, results


def _states(gc) -> dict[str, str]:
    """The report's state of each blob of container left, by name (the rows name the proxy's address)."""
    return {u.rsplit("/", 1)[-1]: r["state"] for u, r in gc.report().items() if "/left/" in u}


def _deletes(proxy: FaultProxy) -> list[str]:
    return [e.path.split("?")[0].rsplit("/", 1)[-1] for e in proxy.requests("DELETE")]


def test_no_delete_is_sent_before_the_second_reference_read_is_complete(gc, proxy):
    names = [f"left-{i}.vhd" for i in range(6)]
    urls = {n: gc.page("left", n) for n in names}
    collector = _collector(gc, proxy, max_concurrent_deletes=4)
    made, gates = _gate_second_reference_read(gc)
    reread = _count(proxy, "HEAD", len(names))  # the re-read of each due blob's properties

    thread, results = _run(collector)
    try:
        assert made.wait(HANG) and gates[0].wait(HANG), "the pass never read the references again"
        # Held there: every due blob was read again meanwhile, and nothing was deleted.
        assert reread.wait(HANG), "the due blobs were not read again while the references were"
        assert _deletes(proxy) == []
        assert all(gc.exists("left", n) for n in names)
        heads_at_gate = len(proxy.requests("HEAD"))
    finally:
        for gate in gates:
            gate.release(serve=True)
        thread.join(HANG)
    assert not thread.is_alive()
    result = results[0]
    assert result.outcome == "complete", result.errors
    assert result.stats.deleted == len(names) and not any(gc.exists("left", n) for n in names)
    assert heads_at_gate == len(proxy.requests("HEAD")) == len(names)  # each read again once, all ahead
    store = collector.store
    for n in names:
        actions = [(r.action, r.intent_id is not None) for r in store.audit_log(parse_blob_url(urls[n]))]
        assert actions == [("delete-intent", False), ("deleted", True)], (n, actions)
    # The second read is every source once more, and nothing else.
    counts = Counter(gc.arm.requests)
    assert counts and set(counts.values()) == {2}, counts


@pytest.mark.parametrize("gc", BACKENDS, indirect=True)
def test_a_keep_taken_while_deletions_run_at_once_wins_for_every_deletion_that_starts_after_it(gc, proxy):
    names = [f"left-{i}.vhd" for i in range(6)]  # tried in name order; 4 at once
    urls = {n: gc.page("left", n) for n in names}
    collector = _collector(gc, proxy, max_concurrent_deletes=4)
    kept: list[subprocess.CompletedProcess] = []
    done = threading.Event()
    lock = threading.Lock()

    def on_delete(request):
        # The first delete to arrive runs a real `vhd-gc keep` on the last due blob; every delete
        # waits for it to return, so no running deletion ends (and frees a worker) before it has.
        with lock:
            first = not kept and not done.is_set()
            if first:
                kept.append(None)
        if first:
            kept[0] = subprocess.run(
                [sys.executable, "-m", "gc_daemon", "-c", str(gc.config_path), "keep", urls["left-5.vhd"],
                 "--reason", "INC-14 forensics"],
                env=env_with_keys(gc), capture_output=True, text=True, timeout=120)
            done.set()
        assert done.wait(HANG)

    proxy.add(Rule(Forward(), method="DELETE", times=None, on_request=on_delete))
    result = collector.run_pass()

    run = kept[0]
    assert run.returncode == 0 and run.stdout.startswith("kept "), (run.stdout, run.stderr)
    assert result.outcome == "complete", result.errors
    assert result.stats.deleted == 5 and result.execution.refused == {"operator": 1}
    assert {n: gc.exists("left", n) for n in names} == {n: n == "left-5.vhd" for n in names}
    assert sorted(_deletes(proxy)) == names[:5]
    store = Store(make_engine(gc.db_url))
    audit = store.audit_log(parse_blob_url(urls["left-5.vhd"]))
    assert [(r.action, r.error_code) for r in audit] == [("keep", None), ("delete-refused", "operator")]
    for n in names[:5]:
        actions = [(r.action, r.intent_id is not None) for r in store.audit_log(parse_blob_url(urls[n]))]
        assert actions == [("delete-intent", False), ("deleted", True)], (n, actions)
    assert _states(gc)["left-5.vhd"] == "kept"


def test_a_failing_second_reference_read_deletes_nothing_although_the_blobs_were_read_again(gc, proxy):
    names = [f"left-{i}.vhd" for i in range(4)]
    for n in names:
        gc.page("left", n)
    collector = _collector(gc, proxy)
    reread = _count(proxy, "HEAD", len(names))
    waited: list[bool] = []

    def fail_the_rest(method, path) -> bool:
        # Every later VM list (the second read, its retries) waits for the blobs' re-reads, then is
        # dropped unanswered: the second read fails.
        waited.append(reread.wait(HANG))
        return True

    gc.arm.on_request(VM_LIST, "GET", lambda m, p: gc.arm.on_request(VM_LIST, "GET", fail_the_rest, times=None)
                      and False)
    result = collector.run_pass()

    assert waited and all(waited)
    assert result.outcome == "incomplete", result.errors
    assert _deletes(proxy) == [] and all(gc.exists("left", n) for n in names)
    assert result.execution is None
    assert gc.report() == {}  # the pass changed nothing


def test_the_limit_counts_deletions_exactly_when_they_run_at_once(gc, proxy):
    names = [f"left-{i}.vhd" for i in range(10)]  # due at one instant: tried in name order
    for n in names:
        gc.page("left", n)
    collector = _collector(gc, proxy, max_deletes_per_pass=3, max_concurrent_deletes=8)

    def touch(name):
        def hook(request):  # just before its re-read: it changes, and is not deleted (no delete call)
            gc.svc().get_blob_client("left", name).set_blob_metadata({"touched": "1"})
        return hook

    for n in ("left-0.vhd", "left-1.vhd"):
        proxy.add(Rule(Forward(), method="HEAD", path=f"/left/{n}", on_request=touch(n)))
    result = collector.run_pass()

    assert result.outcome == "complete", result.errors
    ex = result.execution
    assert (result.stats.deleted, dict(ex.refused), ex.skipped_over_limit) == (3, {"etag_changed": 2}, 5)
    # The first three deletable ones, as one deletion after the other would have chosen.
    assert sorted(_deletes(proxy)) == ["left-2.vhd", "left-3.vhd", "left-4.vhd"]
    assert {n: gc.exists("left", n) for n in names} == {n: n not in ("left-2.vhd", "left-3.vhd", "left-4.vhd")
                                                        for n in names}
    # Read again: the three the limit allows ahead of the reference read, then one for each refusal.
    assert sorted(e.path.split("?")[0].rsplit("/", 1)[-1] for e in proxy.requests("HEAD")) == \
        [f"left-{i}.vhd" for i in range(5)]


def test_a_stop_lets_the_deletions_started_finish_and_starts_no_more(gc, proxy):
    names = [f"left-{i}.vhd" for i in range(8)]
    for n in names:
        gc.page("left", n)
    collector = _collector(gc, proxy, max_concurrent_deletes=2)
    stop = threading.Event()
    # The first delete to arrive asks for a stop and is then answered: the two running finish.
    proxy.add(Rule(Forward(), method="DELETE", times=1, on_request=lambda r: stop.set()))

    result = collector.run_pass(should_stop=stop.is_set)

    assert result.outcome == "stopped", result.errors
    ex = result.execution
    started = len(_deletes(proxy))
    # Those running when it was asked (at most the two workers) finished and recorded; none started after.
    assert 1 <= started <= 2 and result.stats.deleted == started
    assert ex.skipped_stopped == len(names) - started
    assert sum(not gc.exists("left", n) for n in names) == started
    store = collector.store
    intents = [r for n in names for r in store.audit_log(parse_blob_url(gc.url("left", n)))]
    assert Counter(r.action for r in intents) == {"delete-intent": started, "deleted": started}


def test_the_containers_of_one_account_are_listed_at_once_with_the_same_results(gc, proxy):
    for c in ("alpha", "beta", "gamma"):
        gc.page(c, "left.vhd")
    collector = _collector(gc, proxy, mode="dry-run")
    beta_listed = threading.Event()
    waited: list[bool] = []
    # alpha's listing is answered only once beta's has been asked for: one container after the
    # other would wait here until HANG, and find beta unasked.
    proxy.add(Rule(Forward(), method="GET", path=r"/beta\?restype=container&comp=list", times=None,
                   on_request=lambda r: beta_listed.set()))
    proxy.add(Rule(Forward(), method="GET", path=r"/alpha\?restype=container&comp=list", times=None,
                   on_request=lambda r: waited.append(beta_listed.wait(HANG))))

    result = collector.run_pass()

    assert waited == [True]
    assert result.outcome == "complete", result.errors
    assert result.stats.blobs_by_account["gcacct1"] == 3
    report = gc.report()
    assert sorted(u.split("/gcacct1/", 1)[1] for u, r in report.items() if r["state"] in ("candidate", "due")) == \
        [f"{c}/left.vhd" for c in ("alpha", "beta", "gamma")]


def test_a_failing_container_listing_fails_the_pass_closed(gc, proxy):
    for c in ("alpha", "beta", "gamma"):
        gc.page(c, "left.vhd")
    collector = _collector(gc, proxy)
    proxy.add(Rule(Respond(403, "AuthorizationPermissionMismatch"), method="GET",
                   path=r"/beta\?restype=container&comp=list", times=None))

    result = collector.run_pass()

    assert result.outcome == "incomplete"
    assert result.sources_failed == ["storage/gcacct1"]
    assert "AuthorizationPermissionMismatch" in "; ".join(result.errors)
    assert all(gc.exists(c, "left.vhd") for c in ("alpha", "beta", "gamma"))
    assert _deletes(proxy) == []
    assert gc.report() == {}


def test_audit_entries_written_at_once_from_many_threads_are_each_committed_with_their_own_id(tmp_path):
    """The executor's workers write their intents and outcomes at the same moment: they are committed
    together (one SQLite writer), each caller back with the id of its own entry."""
    from datetime import UTC, datetime

    from gc_daemon.domain import BlobKey
    from gc_daemon.state import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'state.db'}")
    db.upgrade(engine)
    store = Store(engine)
    start = threading.Barrier(16)
    ids: dict[str, int] = {}

    def write(i: int) -> None:
        key = BlobKey("gcacct1", "left", f"left-{i}.vhd")
        start.wait(HANG)
        ids[key.blob] = store.audit(action="delete-intent", key=key, url=f"https://x/left/{key.blob}",
                                    at=datetime.now(UTC), actor="test", reason=f"entry {i}")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANG)
    assert len(set(ids.values())) == 16
    for blob, entry_id in ids.items():
        (record,) = store.audit_log(BlobKey("gcacct1", "left", blob))
        assert (record.id, record.reason) == (entry_id, f"entry {blob[5:-4]}")
