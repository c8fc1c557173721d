"""A loopback TCP proxy that delays data in flight, for ``python -m bench latency``.

Every chunk read from one side is written to the other ``delay`` seconds after it arrived, in order,
in both directions: a request/response exchange costs 2 x ``delay`` more, per exchange, whatever
carries it (a keep-alive connection with many requests pays it for each; a TLS handshake pays it for
each flight). Bytes pass unchanged, so TLS (the ARM stand-in) goes through untouched. What is not
delayed: the TCP handshake itself (the kernel accepts the connection before the proxy sees it), and
bandwidth is unlimited.

Plain-HTTP listeners (Azurite) also count the requests they carry, by kind (List Blobs, List
Containers, Get Page Ranges, ...), read from the request lines in the client's stream. TLS listeners
count nothing (the stream is ciphertext): the ARM stand-in's own request log does that.

In-process (a thread runs the event loop)::

    with LatencyProxy({"storage": ("127.0.0.1", 10000)}, http={"storage"}) as proxy:
        proxy.set_delay(0.025)
        port = proxy.ports["storage"]
        ...
        proxy.counts()  # {"storage": {"List Blobs": 12, ...}}

As its own process (what the bench does: its CPU is not the measured process's)::

    python -m bench.latency_proxy --upstream storage=127.0.0.1:10000 --http storage --upstream arm=127.0.0.1:8443

prints ``READY storage=PORT arm=PORT`` and then reads commands on stdin, one a line, answering each with
one line on stdout: ``delay SECONDS`` -> ``ok``, ``counts`` -> a JSON object, ``reset`` -> ``ok``
(the counts back to zero), ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, urlsplit

CHUNK = 256 * 1024


# --------------------------------------------------------------------------------------------------
# What a storage request is
# --------------------------------------------------------------------------------------------------


def storage_kind(method: str, target: str) -> str:
    """The Blob service operation of a request line (path-style: ``/<account>/<container>/<blob>``)."""
    split = urlsplit(target)
    query = parse_qs(split.query, keep_blank_values=True)
    comp = (query.get("comp") or [""])[0].lower()
    restype = (query.get("restype") or [""])[0].lower()
    depth = len([s for s in split.path.split("/") if s])  # 1 account, 2 container, 3+ blob
    if method == "GET" and comp == "list":
        if depth <= 1:
            return "List Containers"
        return "List Blobs"
    if depth >= 3:
        if method == "GET" and comp in ("pagelist", "pagelistdiff"):
            return "Get Page Ranges"
        if method == "HEAD" and not comp:
            return "Get Blob Properties"
        if method == "DELETE" and not comp:
            return "Delete Blob"
    detail = comp or restype or "-"
    return f"other: {method} {detail}"


class HttpRequestCounter:
    """Reads a client's HTTP/1.1 byte stream as it passes and counts its requests by kind.

    Only request heads are parsed; bodies are skipped by Content-Length (or chunked encoding). A
    stream it cannot follow is counted once under ``"unparsed stream"`` and not read further."""

    def __init__(self, counts: Counter, lock: threading.Lock) -> None:
        self._counts = counts
        self._lock = lock
        self._buf = bytearray()
        self._skip = 0  # body bytes still to pass over
        self._chunked = False
        self._lost = False

    def feed(self, data: bytes) -> None:
        if self._lost:
            return
        self._buf += data
        try:
            while self._step():
                pass
        except ValueError:
            self._lost = True
            self._buf.clear()
            with self._lock:
                self._counts["unparsed stream"] += 1

    def _step(self) -> bool:
        if self._skip:
            n = min(self._skip, len(self._buf))
            del self._buf[:n]
            self._skip -= n
            return bool(self._buf) and not self._skip
        if self._chunked:
            return self._chunk()
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 64 * 1024:
                raise ValueError("no end of request head")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError(f"not a request line: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        with self._lock:
            self._counts[storage_kind(parts[0], parts[1])] += 1
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        else:
            self._skip = int(headers.get("content-length") or 0)
        return bool(self._buf)

    def _chunk(self) -> bool:
        end = self._buf.find(b"\r\n")
        if end < 0:
            return False
        size = int(bytes(self._buf[:end]).split(b";")[0], 16)
        if size == 0:  # last chunk; no trailers from the SDK's clients
            if len(self._buf) < end + 4:
                return False
            del self._buf[: end + 4]
            self._chunked = False
            return bool(self._buf)
        if len(self._buf) < end + 2 + size + 2:
            return False
        del self._buf[: end + 2 + size + 2]
        return bool(self._buf)


# --------------------------------------------------------------------------------------------------
# The proxy
# --------------------------------------------------------------------------------------------------


class LatencyProxy:
    """One listener on 127.0.0.1 per upstream, all on one event loop in a thread of their own."""

    def __init__(self, upstreams: dict[str, tuple[str, int]], http: Iterable[str] = (), delay: float = 0.0,
                 listen: dict[str, int] | None = None) -> None:
        self.upstreams = dict(upstreams)
        self.listen = dict(listen or {})  # a fixed port per upstream (default: any free port)
        self.http = set(http)
        self.delay = float(delay)
        self.ports: dict[str, int] = {}
        self._counts: dict[str, Counter] = {name: Counter() for name in self.upstreams}
        self._connections: Counter = Counter()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- control (any thread) --------------------------------------------------------------------

    def set_delay(self, seconds: float) -> None:
        """The one-way delay from now on (data already in flight keeps the delay it was given)."""
        self.delay = max(0.0, float(seconds))

    def counts(self) -> dict[str, dict[str, int]]:
        """Requests per kind, per plain-HTTP upstream; and ``"connections"``, per upstream."""
        with self._lock:
            out = {name: dict(c) for name, c in self._counts.items() if name in self.http}
            out["connections"] = dict(self._connections)
            return out

    def reset(self) -> None:
        with self._lock:
            for c in self._counts.values():
                c.clear()
            self._connections.clear()

    def start(self) -> "LatencyProxy":
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError(f"the latency proxy did not start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> "LatencyProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            for name in self.upstreams:
                server = loop.run_until_complete(
                    asyncio.start_server(lambda r, w, n=name: self._connection(n, r, w), "127.0.0.1",
                                         self.listen.get(name, 0))
                )
                self._servers.append(server)
                self.ports[name] = server.sockets[0].getsockname()[1]
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            for server in self._servers:
                server.close()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.close()

    async def _connection(self, name: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            await self._relay(name, client_r, client_w)
        except asyncio.CancelledError:  # the proxy stops: the connection ends with it
            client_w.close()

    async def _relay(self, name: str, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        host, port = self.upstreams[name]
        try:
            server_r, server_w = await asyncio.open_connection(host, port)
        except OSError:
            client_w.close()
            return
        with self._lock:
            self._connections[name] += 1
        counter = HttpRequestCounter(self._counts[name], self._lock) if name in self.http else None
        try:
            await asyncio.gather(
                self._pipe(client_r, server_w, counter),
                self._pipe(server_r, client_w, None),
                return_exceptions=True,
            )
        finally:
            for w in (client_w, server_w):
                w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    counter: HttpRequestCounter | None) -> None:
        """One direction: a reader that stamps each chunk with its delivery time, a writer that
        delivers it then. Reading goes on while earlier chunks wait, as on a wire."""
        loop = asyncio.get_running_loop()
        flight: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            try:
                while True:
                    due, data = await flight.get()
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        if writer.can_write_eof():
                            writer.write_eof()
                        return
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                return

        sender = asyncio.ensure_future(deliver())
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    data = b""
                flight.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
                if counter is not None:
                    counter.feed(data)
            await sender
        finally:
            sender.cancel()


class ProxyProcess:
    """``python -m bench.latency_proxy`` in a session of its own, steered through its stdin."""

    def __init__(self, upstreams: dict[str, tuple[str, int]], http: Iterable[str] = (), log_path: str | None = None,
                 listen: dict[str, int] | None = None) -> None:
        self.upstreams = dict(upstreams)
        self.http = list(http)
        self.listen = dict(listen or {})
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.ports: dict[str, int] = {}
        self.delay = 0.0

    def start(self) -> "ProxyProcess":
        from bench.common import REPO_ROOT

        cmd = [sys.executable, "-m", "bench.latency_proxy"]
        for name, (host, port) in self.upstreams.items():
            cmd += ["--upstream", f"{name}={host}:{port}"]
        for name in self.http:
            cmd += ["--http", name]
        for name, port in self.listen.items():
            cmd += ["--listen", f"{name}={port}"]
        stderr = open(self.log_path, "w") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr, text=True, start_new_session=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"the latency proxy did not start: {line!r}")
        self.ports = {k: int(v) for k, v in (item.split("=") for item in line.split()[1:])}
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _ask(self, command: str) -> str:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer or answer.startswith("error"):
            raise RuntimeError(f"latency proxy: {command!r} -> {answer!r}")
        return answer

    def set_delay(self, seconds: float) -> None:
        self._ask(f"delay {seconds!r}")
        self.delay = seconds

    def counts(self) -> dict[str, dict[str, int]]:
        return json.loads(self._ask("counts"))

    def reset(self) -> None:
        self._ask("reset")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
            proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------------------------------
# python -m bench.latency_proxy
# --------------------------------------------------------------------------------------------------


def _address(text: str) -> tuple[str, tuple[str, int]]:
    name, _, hostport = text.partition("=")
    host, _, port = hostport.rpartition(":")
    if not name or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {text!r}")
    return name, (host, int(port))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency_proxy", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", type=_address, action="append", required=True, metavar="NAME=HOST:PORT")
    parser.add_argument("--http", action="append", default=[], metavar="NAME",
                        help="count the requests of this upstream (plain HTTP)")
    parser.add_argument("--listen", action="append", default=[], metavar="NAME=PORT",
                        help="listen on this port for that upstream (default: any free port)")
    parser.add_argument("--delay", type=float, default=0.0, help="one-way delay in seconds (default 0)")
    args = parser.parse_args(argv)
    listen = {n: int(p) for n, _, p in (item.partition("=") for item in args.listen)}
    proxy = LatencyProxy(dict(args.upstream), http=args.http, delay=args.delay, listen=listen).start()
    try:
        print("READY " + " ".join(f"{n}={p}" for n, p in proxy.ports.items()), flush=True)
        for line in sys.stdin:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "delay":
                proxy.set_delay(float(arg))
                print("ok", flush=True)
            elif cmd == "counts":
                print(json.dumps(proxy.counts()), flush=True)
            elif cmd == "reset":
                proxy.reset()
                print("ok", flush=True)
            elif cmd == "quit":
                break
            else:
                print(f"error: unknown command {cmd!r}", flush=True)
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
