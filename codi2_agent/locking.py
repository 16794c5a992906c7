"""One writer per thread, across processes: an advisory file lock per thread key.

Light on purpose (standard library only): `codi2_agent.session` imports it at start-up.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["ThreadBusyError", "thread_lock"]


class ThreadBusyError(RuntimeError):
    """Another writer (another process, or another session object) holds the thread."""


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
                    raise ThreadBusyError(
                        f"thread {name or key!r} is busy: another writer has held it for {timeout:g} s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)
