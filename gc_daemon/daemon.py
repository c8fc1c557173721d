"""`vhd-gc run`: the scheduler, the signals, leadership among replicas, metrics and health over HTTP.

A pass runs at start and then every ``interval`` (with jitter; coalesced; never two at once). Only
the replica holding the lock runs passes; the others check every few seconds and take over when
the leader goes. SIGTERM/SIGINT set a flag that a pass honours between blobs and between deletions,
never inside one: the pass ends as ``stopped`` (logged at info; a clean stop is not an incident) and
the process exits 0. Waits of a pass (the reference read, the listing, measuring) give up on a stop
at once, leaving calls in flight to end with their per-request timeout (``azure.timeout``); only a
deletion in flight is waited for, up to ``shutdown_grace``, after which the process exits anyway and
the next pass settles that deletion as after a crash.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import structlog
from apscheduler.executors.pool import ThreadPoolExecutor as ApsThreadPool
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger
from prometheus_client import make_wsgi_app

from .config import Config
from .locks import FileLock, replica_lock
from .metrics import Metrics

log = structlog.get_logger("vhd-gc.daemon")

PASS_JOB = "pass"
LEASE_JOB = "leadership"


class StopRequest:
    """SIGTERM/SIGINT received: the signal, for the log and the exit status (128 + its number)."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None

    def is_set(self) -> bool:
        return self.event.is_set()

    def ask(self, signum: int) -> None:
        self.signum = signum
        self.event.set()

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "stop"

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGTERM)


@contextmanager
def stop_on_signals():
    """For `scan` and `run --once`: SIGTERM/SIGINT ask the pass to stop (it ends as ``stopped``)
    instead of killing the process; a second one ends the process at once."""
    stop = StopRequest()

    def on_signal(signum, _frame):
        if stop.is_set():
            log.warning("stop_forced", signal=signal.Signals(signum).name)
            exit_now(128 + signum)
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.ask(signum)

    before = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _lingering_threads() -> list[threading.Thread]:
    # Daemon threads count too: the interpreter's exit joins every thread of a concurrent.futures
    # pool, daemon or not (the reference read's workers are daemons, as the scheduler's thread is).
    main = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main and t.is_alive()]


def exit_now(status: int) -> None:
    """End the process with ``status`` now, not after the calls a stop left in flight (their pool
    threads would hold the interpreter's exit until their timeouts and retries ran out)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed stream has nothing to flush
            pass
    os._exit(status)


def finish_stopped(status: int) -> int:
    """The exit status of a process whose pass was stopped; exits at once when calls linger."""
    deadline = time.monotonic() + 2.0  # threads that are only winding down get a moment
    for t in _lingering_threads():
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    if _lingering_threads():
        exit_now(status)
    return status


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the access log would drown the events
        pass


def health(store, config: Config, started_at: datetime, now: datetime) -> tuple[bool, dict]:
    """Healthy while the last complete pass (by any replica) is no older than three intervals."""
    limit = 3 * config.interval
    last = store.last_complete_pass()
    finished = last.finished_at if last and last.finished_at else None
    reference = finished or started_at  # a daemon that just started has three intervals to succeed
    healthy = now - reference <= limit
    return healthy, {
        "healthy": healthy,
        "last_complete_pass": finished.isoformat() if finished else None,
        "limit_seconds": limit.total_seconds(),
    }


def make_app(metrics: Metrics, store, config: Config, started_at: datetime):
    metrics_app = make_wsgi_app(metrics.registry)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain")])
            return [b"method not allowed\n"]
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if path == "/healthz":
            try:
                ok, body = health(store, config, started_at, datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - an unreadable database is unhealthy
                ok, body = False, {"healthy": False, "error": type(exc).__name__}
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps(body).encode() + b"\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    return app


class Daemon:
    def __init__(self, config: Config, store, collector, lock, metrics: Metrics) -> None:
        self.config = config
        self.store = store
        self.collector = collector
        self.lock = lock
        self.metrics = metrics
        self.stop_request = StopRequest()
        self.stop = self.stop_request.event
        self.idle = threading.Event()  # set while no pass runs in this process
        self.idle.set()
        self.leader = False
        self.started_at = datetime.now(UTC)
        self.scheduler = BackgroundScheduler(
            timezone=UTC,
            executors={"default": ApsThreadPool(max_workers=2)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
        )

    # -- jobs --------------------------------------------------------------------------------

    def check_leadership(self) -> None:
        if self.stop.is_set():
            return
        try:
            was = self.leader
            self.leader = self.lock.held() or self.lock.try_acquire()
        except Exception as exc:  # noqa: BLE001 - the database may be away for a while
            log.warning("leadership_check_failed", error=str(exc)[:200])
            self.leader = False
            was = True
        self.metrics.leader.set(1 if self.leader else 0)
        if self.leader and not was:
            log.info("leadership_acquired", lock=self.lock.describe())
            self._schedule_pass_if_overdue()
        elif was and not self.leader:
            log.warning("leadership_lost")

    def _schedule_pass_if_overdue(self) -> None:
        try:
            last = self.store.last_complete_pass()
        except Exception:  # noqa: BLE001
            last = None
        due_at = (last.started_at + self.config.interval) if last else datetime.now(UTC)
        if due_at <= datetime.now(UTC) + timedelta(seconds=1):
            job = self.scheduler.get_job(PASS_JOB)
            if job is not None:
                job.modify(next_run_time=datetime.now(UTC))

    def run_pass(self) -> None:
        if self.stop.is_set():
            return
        if not self.lock.held():
            self.leader = False
            self.metrics.leader.set(0)
            log.info("pass_skipped_standby", lock=self.lock.describe())
            return
        self.idle.clear()
        try:
            result = self.collector.run_pass(should_stop=self.stop.is_set)
            self.metrics.observe(result)
        except Exception:  # noqa: BLE001 - nothing crashes the loop
            log.exception("pass_crashed")
        finally:
            self.idle.set()

    # -- life ------------------------------------------------------------------------------------

    def serve(self) -> int:
        host, port = self.config.listen_address
        server = make_server(host, port, make_app(self.metrics, self.store, self.config, self.started_at),
                             server_class=_Server, handler_class=_QuietHandler)
        http = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        http.start()
        log.info("daemon_started", listen=f"{host}:{server.server_port}", interval=self.config.interval.total_seconds(),
                 mode=self.config.mode, lock=self.lock.describe())

        def on_signal(signum, _frame):
            if self.stop.is_set():
                log.warning("stop_forced", signal=signal.Signals(signum).name)
                self._record_stop_cut_short("a second signal")
                exit_now(0)
            log.info("stopping", signal=signal.Signals(signum).name)
            self.stop_request.ask(signum)

        # Before the first pass can start: a signal in between must not kill the process.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        interval = self.config.interval.total_seconds()
        self.check_leadership()
        self.scheduler.add_job(
            self.run_pass,
            IntervalTrigger(seconds=interval, jitter=min(interval * 0.05, 120)),
            id=PASS_JOB,
            next_run_time=datetime.now(UTC) if self.leader else None,
        )
        if self.scheduler.get_job(PASS_JOB).next_run_time is None:
            # Standby: no pass until leadership comes; then the pass is rescheduled.
            self.scheduler.get_job(PASS_JOB).modify(next_run_time=datetime.now(UTC) + timedelta(seconds=interval))
        self.scheduler.add_job(
            self.check_leadership,
            IntervalTrigger(seconds=max(1.0, min(interval / 4, 15.0))),
            id=LEASE_JOB,
        )
        self.scheduler.start()

        # Woken now and then: a signal that a thread other than this one received runs its handler
        # only once this thread runs Python code again; an untimed wait could sleep through it.
        while not self.stop.wait(timeout=0.5):
            pass
        # A running pass stops at its next boundary, at once in its waits (for references, the
        # listing, measurements). A deletion in flight is not waited for past the grace: its intent
        # is settled by the next pass, as after a crash, and systemd would SIGKILL us anyway.
        self.scheduler.shutdown(wait=False)
        grace = self.config.shutdown_grace.total_seconds()
        finished = self.idle.wait(timeout=grace)
        if not finished:
            self._record_stop_cut_short(f"shutdown_grace ({grace:g}s)")
        server.shutdown()
        self.lock.release()
        log.info("daemon_stopped", signal=self.stop_request.name)
        return finish_stopped(0)

    def _record_stop_cut_short(self, what: str) -> None:
        """The pass did not reach a boundary before ``what`` ran out: record it as stopped (from a
        thread of its own: the database may be what it waits for) and say so."""
        pass_id = getattr(self.collector, "current_pass", None)
        log.warning("stop_timeout", pass_id=pass_id, limit=what,
                    detail="the pass was inside a call when the stop came; a deletion it was making "
                           "is settled by the next pass")
        if pass_id is None:
            return

        def record() -> None:
            try:
                self.store.finish_pass(
                    pass_id, "stopped", datetime.now(UTC),
                    error=f"stopped by {self.stop_request.name} inside a call, after {what}: a deletion "
                          "in flight is settled by the next pass",
                )
            except Exception as exc:  # noqa: BLE001 - then the next pass records it as interrupted
                log.warning("pass_record_failed", pass_id=pass_id, error=str(exc)[:200])

        t = threading.Thread(target=record, name="record-stop", daemon=True)
        t.start()
        t.join(timeout=10)


def run_daemon(config: Config, once: bool = False) -> int:
    from .wiring import build_collector, configure_logging, open_store

    configure_logging(config)
    store = open_store(config)
    lock = replica_lock(store.engine)
    if isinstance(lock, FileLock) and not lock.try_acquire():
        log.error("refused_second_daemon", lock=lock.describe())
        raise SystemExit(
            f"vhd-gc: another vhd-gc process is using this SQLite database: lock {lock.describe()}; "
            "use PostgreSQL to run several replicas"
        )
    collector = build_collector(config, store)
    if once:
        if not lock.try_acquire():
            raise SystemExit(f"vhd-gc: another vhd-gc process holds {lock.describe()}")
        try:
            with stop_on_signals() as stop:
                result = collector.run_pass(should_stop=stop.is_set)
        finally:
            lock.release()
        if result.outcome == "stopped":
            return finish_stopped(stop.exit_status)
        return {"complete": 0, "incomplete": 3}.get(result.outcome, 1)
    return Daemon(config, store, collector, lock, Metrics(store, config)).serve()
