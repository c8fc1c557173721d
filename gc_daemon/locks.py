"""Who may run passes: one process at a time per state database.

PostgreSQL (several replicas): a session-level advisory lock held on a dedicated connection for as
long as the process leads; when the process or its connection dies, the server releases it and a
standby takes it. SQLite (one host): an exclusive ``flock`` on ``<database>.lock``; a second daemon
on the same file is refused.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import structlog
from sqlalchemy import text
from sqlalchemy.engine import Engine

log = structlog.get_logger("vhd-gc.lock")

# pg advisory lock key: "vhdgc" as an integer, so operators can find it in pg_locks.
ADVISORY_KEY = int.from_bytes(b"vhdgc", "big")


class LockHeld(Exception):
    """Another vhd-gc process holds the lock."""


class ReplicaLock:
    def try_acquire(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def held(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def release(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class FileLock(ReplicaLock):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def describe(self) -> str:
        return f"{self.path} (held by pid {self.holder()})"


class AdvisoryLock(ReplicaLock):
    def __init__(self, engine: Engine, key: int = ADVISORY_KEY) -> None:
        self.engine = engine
        self.key = key
        self._conn = None

    def try_acquire(self) -> bool:
        if self.held():
            return True
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar()
            conn.commit()
        except Exception:
            conn.close()
            raise
        if not got:
            conn.close()
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        """Still ours? The lock lives and dies with its connection: check that it is alive."""
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1")).scalar()
            self._conn.commit()
            return True
        except Exception as exc:  # noqa: BLE001
            log.warning("leadership_lost", error=str(exc)[:200])
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # noqa: BLE001
                pass
            self._conn = None
            return False

    def release(self) -> None:
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                self._conn.commit()
            finally:
                self._conn.close()
                self._conn = None

    def describe(self) -> str:
        return f"PostgreSQL advisory lock {self.key}"


class NoLock(ReplicaLock):
    """An in-memory SQLite database is private to its process."""

    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass

    def describe(self) -> str:
        return "none (in-memory database)"


def replica_lock(engine: Engine) -> ReplicaLock:
    url = engine.url
    if url.get_backend_name() == "postgresql":
        return AdvisoryLock(engine)
    if not url.database or url.database == ":memory:":
        return NoLock()
    return FileLock(Path(url.database + ".lock"))
