"""One writer per thread, across processes: a lock per thread key.

Two kinds, one behaviour. `FileThreadLocks` takes an advisory file lock under a folder (a session
folder on one host: SQLite checkpoints). `PostgresThreadLocks` takes a Postgres session-level
advisory lock on the thread key (checkpoints in Postgres: workers on several hosts). Either way the
second writer waits up to `timeout` seconds, then gets `ThreadBusyError`, and a writer that dies
releases its lock with it (the kernel closes its descriptor; Postgres ends its connection).

Light on purpose: `codi2_agent.session` imports this module at start-up, so psycopg is imported
only when a Postgres lock is made.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from psycopg import Connection

__all__ = [
    "LOCKS_FOLDER",
    "FileThreadLocks",
    "PostgresThreadLocks",
    "ThreadBusyError",
    "ThreadLocks",
    "advisory_key",
    "describe_postgres",
    "thread_lock",
]

logger = logging.getLogger(__name__)

LOCKS_FOLDER = "locks"  # under a session folder: one lock file per thread key


class ThreadBusyError(RuntimeError):
    """Another writer (another process, or another session object) holds the thread."""


def _busy(key: str, name: str | None, timeout: float) -> ThreadBusyError:
    return ThreadBusyError(f"thread {name or key!r} is busy: another writer has held it for {timeout:g} s")


class ThreadLocks(Protocol):
    """Where the one-writer locks of a set of threads live."""

    def hold(
        self, key: str, *, timeout: float = 30.0, name: str | None = None
    ) -> AbstractContextManager[None]:
        """Hold thread `key`'s lock for the block; `ThreadBusyError` after `timeout` seconds."""
        ...

    def close(self) -> None: ...


@contextmanager
def thread_lock(
    folder: str | Path, key: str, *, timeout: float = 30.0, name: str | None = None
) -> Iterator[None]:
    """Hold the one-writer lock of thread `key` (an advisory file lock under `folder`).

    A turn is a read-modify-write of the thread's checkpoints and memory, so two writers would
    interleave: duplicated turn numbers, lost messages. The second writer waits up to `timeout`
    seconds, then gets `ThreadBusyError` (naming the thread as `name`). The lock is released when
    the block ends or the process dies (the kernel drops it with the descriptor), so a crash never
    leaves a thread locked.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise _busy(key, name, timeout) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


class FileThreadLocks:
    """File locks under `folder` (``<session folder>/locks``): writers on one host."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"FileThreadLocks({str(self.folder)!r})"

    def hold(
        self, key: str, *, timeout: float = 30.0, name: str | None = None
    ) -> AbstractContextManager[None]:
        return thread_lock(self.folder, key, timeout=timeout, name=name)

    def close(self) -> None:
        """Nothing to release: each hold opens and closes its own descriptor."""


def advisory_key(key: str) -> int:
    """The signed 64-bit Postgres advisory-lock key of thread key `key` (which names its tenant)."""
    digest = hashlib.sha256(b"codi2-agent/thread\x00" + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def describe_postgres(url: str) -> str:
    """`url` without its password, for messages and logs."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # not parseable: say nothing of what it holds
        return "postgresql://<unparseable url>"
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{info.get('host', '')}:{info.get('port', 5432)}/{info.get('dbname', '')}"


class PostgresThreadLocks:
    """Postgres advisory locks: the one-writer rule for workers that share Postgres checkpoints.

    Each hold takes a session-level ``pg_advisory_lock`` on a connection of its own (kept open and
    reused by later holds, never shared by two holds at once: an advisory lock is re-entrant within
    one connection, so sharing one would let two writers in). The wait is Postgres's own queue,
    bounded by ``lock_timeout``. If the writer's process dies, Postgres ends its connection and the
    lock goes with it. If the connection itself is lost mid-turn, so is the lock: the release then
    logs an error naming the thread.
    """

    def __init__(self, url: str, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self._idle: list[Connection[Any]] = []
        self._guard = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresThreadLocks({describe_postgres(self.url)!r})"

    def _connection(self, *, reuse: bool = True) -> Connection[Any]:
        import psycopg

        with self._guard:
            if self._closed:
                raise RuntimeError("these thread locks are closed")
            while reuse and self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout)))

    def _give_back(self, conn: Connection[Any]) -> None:
        with self._guard:
            if self._closed or conn.closed or conn.broken:
                conn.close()
            else:
                self._idle.append(conn)

    @contextmanager
    def hold(self, key: str, *, timeout: float = 30.0, name: str | None = None) -> Iterator[None]:
        import psycopg

        lock_id = advisory_key(key)
        conn = self._connection()
        try:
            try:
                self._acquire(conn, lock_id, timeout)
            except psycopg.OperationalError as exc:
                if isinstance(exc, psycopg.errors.LockNotAvailable):
                    raise
                # An idle connection the server has since dropped (a restart, an idle timeout): once
                # more, on a new one.
                conn.close()
                conn = self._connection(reuse=False)
                self._acquire(conn, lock_id, timeout)
        except psycopg.errors.LockNotAvailable:
            self._give_back(conn)
            raise _busy(key, name, timeout) from None
        except BaseException:
            self._give_back(conn)
            raise
        try:
            yield
        finally:
            self._release(conn, lock_id, name or key)

    @staticmethod
    def _acquire(conn: Connection[Any], lock_id: int, timeout: float) -> None:
        """Take the lock; `psycopg.errors.LockNotAvailable` when another holds it past `timeout`."""
        import psycopg

        if timeout <= 0:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock_id,)).fetchone()
            if not (got and got[0]):
                raise psycopg.errors.LockNotAvailable("held by another writer")
            return
        # lock_timeout bounds this statement's wait for the lock (0 would mean forever).
        conn.execute(f"SET lock_timeout = {max(1, round(timeout * 1000))}")
        conn.execute("SELECT pg_advisory_lock(%s)", (lock_id,))

    def _release(self, conn: Connection[Any], lock_id: int, name: str) -> None:
        import psycopg

        try:
            row = conn.execute("SELECT pg_advisory_unlock(%s)", (lock_id,)).fetchone()
            if not (row and row[0]):
                logger.error("thread %r: its Postgres advisory lock was lost while the turn ran", name)
        except psycopg.Error as exc:  # the connection is gone, and the lock with it
            logger.error("thread %r: lost the Postgres connection holding its lock: %s", name, exc)
            conn.close()
        self._give_back(conn)

    def close(self) -> None:
        """Close the idle lock connections (a hold in progress closes its own when it ends)."""
        with self._guard:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
