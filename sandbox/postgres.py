"""A throwaway PostgreSQL server in a temporary directory: for tests, CI and the bench.

``initdb`` with trust authentication, ``pg_ctl start`` on 127.0.0.1 with ``fsync=off``, and
``pg_ctl stop -m immediate`` followed by removing the directory. PostgreSQL refuses to run as root,
so as root the binaries run through ``runuser -u postgres --`` and the directory is handed to the
``postgres`` user.

    python -m sandbox.postgres --dir DIR [--port P]

prints ``READY <url of the postgres database>``, then serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

POLL_INTERVAL = 0.05
SERVICE_USER = "postgres"
# Unix socket paths are capped at 107 bytes; ".s.PGSQL.NNNNN" takes 15 of them.
MAX_SOCKET_DIR = 90


class PostgresError(RuntimeError):
    """PostgreSQL could not be found, started or reached."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out and (Path(out) / "initdb").exists() and (Path(out) / "pg_ctl").exists():
            return Path(out)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")],
        reverse=True,
    )
    for cand in candidates:
        if (Path(cand) / "initdb").exists() and (Path(cand) / "pg_ctl").exists():
            return Path(cand)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_DBNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class PostgresServer:
    """One PostgreSQL cluster in ``basedir`` (created if missing, removed by :meth:`stop`).

    Nothing runs until :meth:`start`; use it as a context manager to be sure it is stopped.
    """

    def __init__(self, basedir: str | os.PathLike[str], port: int = 0, *, start_timeout: float = 60.0):
        self.basedir = Path(basedir).resolve()
        self.port = port
        self.start_timeout = start_timeout
        self.bindir: Path | None = None
        self._started = False

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def logfile(self) -> Path:
        return self.basedir / "postgres.log"

    @property
    def running(self) -> bool:
        return self._started and self._postmaster_alive()

    # -- URLs ---------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        if not self.port:
            raise PostgresError("PostgreSQL has no port yet: call start() first")
        return f"postgresql+psycopg://{SERVICE_USER}@127.0.0.1:{self.port}/{dbname}"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SERVICE_USER} dbname={dbname} connect_timeout=5"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL."""
        if not _DBNAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        if not _DBNAME.match(name):
            raise ValueError(f"not a plain database name: {name!r}")
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- process ------------------------------------------------------------------------------

    def _as_service_user(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", SERVICE_USER, "--", *cmd]
        return cmd

    def _run(self, cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._as_service_user(cmd),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.basedir,  # runuser keeps the cwd; the service user must be able to enter it
        )

    def _prepare_dir(self) -> None:
        if len(str(self.basedir)) > MAX_SOCKET_DIR:
            raise PostgresError(
                f"{self.basedir} is too long for a Unix socket directory (max {MAX_SOCKET_DIR} chars)"
            )
        self.basedir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.basedir, user=SERVICE_USER, group=None)
            os.chmod(self.basedir, 0o700)
            probe = subprocess.run(
                ["runuser", "-u", SERVICE_USER, "--", "test", "-w", str(self.basedir)],
                capture_output=True,
            )
            if probe.returncode != 0:
                raise PostgresError(
                    f"the {SERVICE_USER} user cannot reach {self.basedir}: "
                    "put it somewhere every user can traverse (e.g. under /tmp)"
                )

    def start(self) -> PostgresServer:
        if self.running:
            return self
        self.bindir = find_bindir()
        if self.bindir is None:
            raise PostgresError(
                "PostgreSQL is not installed: no pg_config, /usr/lib/postgresql/*/bin or initdb on PATH"
            )
        self._prepare_dir()
        if not self.port:
            self.port = free_port()
        deadline = time.monotonic() + self.start_timeout
        try:
            if not (self.datadir / "PG_VERSION").exists():
                init = self._run(
                    [
                        str(self.bindir / "initdb"),
                        "-D", str(self.datadir),
                        "-A", "trust",
                        "-U", SERVICE_USER,
                        "-E", "UTF8",
                        "--locale=C",
                        "--no-sync",
                    ],
                    timeout=self.start_timeout,
                )  # fmt: skip
                if init.returncode != 0:
                    raise PostgresError(f"initdb failed ({init.returncode}): {init.stderr.strip()[-2000:]}")
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c fsync=off "
                f"-c synchronous_commit=off -c full_page_writes=off "
                f"-c unix_socket_directories={self.basedir}"
            )
            remaining = max(1, int(deadline - time.monotonic()))
            ctl = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D", str(self.datadir),
                    "-l", str(self.logfile),
                    "-o", options,
                    "-w", "-t", str(remaining),
                    "start",
                ],
                timeout=remaining + 10,
            )  # fmt: skip
            self._started = True
            if ctl.returncode != 0:
                raise PostgresError(
                    f"pg_ctl start failed ({ctl.returncode}): {ctl.stderr.strip()} {self._log()}"
                )
            self._wait_ready(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, deadline: float) -> None:
        import psycopg

        last_error: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as exc:  # up but not accepting connections yet
                last_error = exc
            time.sleep(POLL_INTERVAL)
        raise PostgresError(
            f"PostgreSQL on port {self.port} not ready after {self.start_timeout}s "
            f"(last error: {last_error!r}; log: {self._log()})"
        )

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _postmaster_alive(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server at once (``-m immediate``: it is throwaway) and remove its directory."""
        if self._started or self._postmaster_alive():
            if self.bindir is not None and self.datadir.exists():
                try:
                    self._run(
                        [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
                        timeout=60,
                    )
                except subprocess.TimeoutExpired:
                    pass
            pid = self._postmaster_pid()
            if pid is not None and self._postmaster_alive():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._started = False
        shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"PostgresServer(basedir={str(self.basedir)!r}, port={self.port}, running={self.running})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.postgres", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, help="directory for the cluster (removed at exit)")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = PostgresServer(args.dir, args.port)
    try:
        server.start()
        print(f"READY {server.url('postgres')}", flush=True)
        while not stop.is_set():
            if not server.running:
                print("PostgreSQL exited unexpectedly", file=sys.stderr, flush=True)
                return 1
            stop.wait(0.5)
        return 0
    except PostgresError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
