"""A real Azurite blob server in a child process: for tests, the demo and the bench.

Azurite is started directly (never through npx, which leaves the server orphaned), with
``--skipApiVersionCheck`` (azure-storage-blob 12.31 sends an API version Azurite 3.37 does not know)
and stopped with SIGKILL (after SIGTERM it can linger for minutes). Several accounts live side by side
at ``http://127.0.0.1:PORT/<account>`` through ``AZURITE_ACCOUNTS``.

    python -m sandbox.azurite --accounts a,b --location DIR [--port P]

prints ``READY <port>`` and ``ACCOUNT <name> <endpoint> <key>`` per account, then serves until
SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

from azure.core.exceptions import AzureError
from azure.storage.blob import BlobServiceClient

REPO_ROOT = Path(__file__).resolve().parent.parent
AZURITE_BIN = REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"

POLL_INTERVAL = 0.05


class AzuriteError(RuntimeError):
    """Azurite could not be started or did not become ready."""


def random_key() -> str:
    """A random account key in the shape Azure uses (64 bytes, base64)."""
    return base64.b64encode(secrets.token_bytes(64)).decode("ascii")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Azurite:
    """One Azurite blob server with a fixed set of accounts.

    ``accounts`` is either ``{name: base64 key}`` or a list of names (keys are then generated).
    Nothing runs until :meth:`start`; use it as a context manager to be sure it is killed.
    """

    def __init__(
        self,
        accounts: dict[str, str] | list[str] | tuple[str, ...],
        location: str | os.PathLike[str],
        port: int = 0,
        *,
        start_timeout: float = 30.0,
    ) -> None:
        if isinstance(accounts, dict):
            self._keys = dict(accounts)
        else:
            self._keys = {name: random_key() for name in accounts}
        if not self._keys:
            raise ValueError("Azurite needs at least one account")
        self.location = Path(location)
        self.port = port
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # -- accounts ---------------------------------------------------------------------------

    @property
    def accounts(self) -> list[str]:
        return list(self._keys)

    def key(self, account: str) -> str:
        return self._keys[account]

    def blob_endpoint(self, account: str) -> str:
        if account not in self._keys:
            raise KeyError(account)
        if not self.port:
            raise AzuriteError("Azurite has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}/{account}"

    def service_client(self, account: str, **kwargs: object) -> BlobServiceClient:
        kwargs.setdefault("retry_total", 0)
        kwargs.setdefault("connection_timeout", 5)
        kwargs.setdefault("read_timeout", 30)
        return BlobServiceClient(
            account_url=self.blob_endpoint(account),
            credential={"account_name": account, "account_key": self.key(account)},
            **kwargs,
        )

    def accounts_env(self) -> str:
        return ";".join(f"{name}:{key}" for name, key in self._keys.items())

    # -- process ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Azurite:
        if self.running:
            return self
        if not AZURITE_BIN.exists():
            raise AzuriteError(
                f"Azurite is not installed: {AZURITE_BIN} is missing (run `npm ci` in {REPO_ROOT})"
            )
        if not self.port:
            self.port = free_port()
        self.location.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["AZURITE_ACCOUNTS"] = self.accounts_env()
        cmd = [
            str(AZURITE_BIN),
            "--blobHost", "127.0.0.1",
            "--blobPort", str(self.port),
            "--location", str(self.location),
            "--silent",
            "--skipApiVersionCheck",
        ]  # fmt: skip
        self._stderr_path = self.location / "azurite.stderr"
        with open(self._stderr_path, "wb") as stderr:
            self._proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # a Ctrl-C in the terminal is ours to relay, not Azurite's
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        account = self.accounts[0]
        client = None
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise AzuriteError(
                    f"Azurite exited with status {self._proc.returncode} at start: {self._stderr()}"
                )
            if _port_open(self.port):
                if client is None:
                    client = self.service_client(account, connection_timeout=1, read_timeout=2)
                try:
                    next(iter(client.list_containers(results_per_page=1)), None)
                    client.close()
                    return
                except AzureError as exc:  # up but not answering yet
                    last_error = exc
            time.sleep(POLL_INTERVAL)
        raise AzuriteError(
            f"Azurite on port {self.port} not ready after {self.start_timeout}s "
            f"(last error: {last_error!r}; stderr: {self._stderr()})"
        )

    def _stderr(self) -> str:
        try:
            return self._stderr_path.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Kill Azurite (SIGKILL: after SIGTERM it lingers) and reap it."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: node and any child it forked
            except ProcessLookupError:
                pass
            except PermissionError:
                proc.kill()
        proc.wait()

    kill = stop

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Azurite(port={self.port}, accounts={self.accounts}, running={self.running})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.azurite", description=__doc__.split("\n")[0])
    parser.add_argument("--accounts", required=True, help="comma-separated account names")
    parser.add_argument("--location", required=True, help="directory for Azurite's data")
    parser.add_argument("--port", type=int, default=0, help="blob port (default: a free one)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.accounts.split(",") if n.strip()]
    if not names:
        parser.error("--accounts: at least one account name")

    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    server = Azurite(names, args.location, args.port)
    try:
        server.start()
        print(f"READY {server.port}", flush=True)
        for name in names:
            print(f"ACCOUNT {name} {server.blob_endpoint(name)} {server.key(name)}", flush=True)
        while not stop.is_set():
            if not server.running:
                print("Azurite exited unexpectedly", file=sys.stderr, flush=True)
                return 1
            stop.wait(0.5)
        return 0
    except AzuriteError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
