"""Writes that finish after the call returns ("write-behind"), with read-your-writes in this process.

A Chroma upsert spends most of its 5-40 ms waiting, not computing. Where that wait does not hold
Python's GIL (a Chroma server's HTTP client; see `ExemplarMemory.write_behind`) a session turn need
not wait for it: `BackgroundWrites` runs the write on one worker thread, in submission order, while
the caller goes on. Everything that reads or changes the memory first waits for the writes still
pending (`settle`), so this process never sees the memory without a write it was told is coming;
another process sees it when it lands, as it would any write.

A write that fails is rolled back as `Writer.commit` always does (nothing of it is stored); its
error is raised once, by the next `settle` — i.e. by the next use of the memory, or `close()`.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Concatenate, ParamSpec, Protocol, TypeVar

__all__ = ["BackgroundWrites", "after_background_writes"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


class BackgroundWrites:
    """One worker thread that runs submitted writes in order; `settle` waits for all of them."""

    def __init__(self, name: str = "codi2-memory-writer") -> None:
        self._name = f"{name}-{id(self):x}"  # this instance's worker threads, recognisable in `settle`
        self._lock = threading.Lock()
        self._pending: list[Future[object]] = []
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, write: Callable[[], R]) -> Future[R]:
        """Run `write()` after every write submitted before it."""
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self._name)
            future = self._executor.submit(write)
            self._pending.append(future)  # type: ignore[arg-type]
        return future

    def settle(self) -> None:
        """Wait for every write submitted so far; raise the first one's error if any failed (each
        error is raised once). Called from the worker thread itself, it returns at once."""
        if threading.current_thread().name.startswith(self._name):
            return
        with self._lock:
            futures, self._pending = self._pending, []
        errors = [e for e in (f.exception() for f in futures) if e is not None]
        for extra in errors[1:]:
            logger.error("a background memory write failed too: %s", extra)
        if errors:
            raise errors[0]

    def close(self) -> None:
        """`settle`, then stop the worker thread (a later `submit` starts a new one)."""
        try:
            self.settle()
        finally:
            with self._lock:
                executor, self._executor = self._executor, None
            if executor is not None:
                executor.shutdown(wait=True)


class _HasBackgroundWrites(Protocol):
    _background: BackgroundWrites


S = TypeVar("S", bound=_HasBackgroundWrites)


def after_background_writes(method: Callable[Concatenate[S, P], R]) -> Callable[Concatenate[S, P], R]:
    """Make a memory method wait for (and report) the background writes submitted before it."""

    @functools.wraps(method)
    def wrapper(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        self._background.settle()
        return method(self, *args, **kwargs)

    return wrapper
