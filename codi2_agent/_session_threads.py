"""`Session`'s thread operations (mixed in): the thread's history, rewinding and copying it, and what
the session's folder holds — its threads and where each part lives.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.backends import Backend
    from codi2_agent.memory import Memory
    from codi2_agent.session import Session, TurnResult

__all__ = ["ThreadOperationsMixin"]


class ThreadOperationsMixin:
    """The history and thread operations of `Session` (see the module docstring)."""

    # Provided by `Session`.
    thread: str
    tenant: str

    if TYPE_CHECKING:

        @property
        def graph(self) -> Any: ...
        @property
        def config(self) -> dict[str, Any]: ...
        @property
        def turn(self) -> int: ...
        @property
        def root(self) -> Path: ...
        @property
        def artifacts(self) -> ArtifactStore: ...
        @property
        def memory(self) -> Memory | None: ...
        @property
        def backend(self) -> Backend: ...
        def open_thread(self, thread: str, *, tenant: str | None = None) -> Session: ...
        def _writing(
            self, review: Literal["refuse", "require", "ignore"] = "refuse"
        ) -> AbstractContextManager[None]: ...
        def _latest(self) -> TurnResult | None: ...
        def _results(self) -> list[TurnResult]: ...

    # --- what the folder holds ------------------------------------------------------------------
    def threads(self) -> list[str]:
        """This tenant's threads in this session's checkpoints."""
        from codi2_agent.graphs import thread_ids

        return thread_ids(self.graph.checkpointer, self.tenant)

    def where(self) -> dict[str, str]:
        """Where this session's parts live: folder, artifacts, memory, checkpoints, model."""
        checkpointer = self.graph.checkpointer
        conn = getattr(checkpointer, "conn", None)
        database = _sqlite_path(conn) if conn is not None else None
        memory = self.memory
        return {
            "root": str(self.root),
            "artifacts": str(self.artifacts.root),
            "memory": "off" if memory is None else repr(memory),
            "checkpoints": database or type(checkpointer).__name__,
            "model": self.backend.name,
            "thread": self.thread,
            "tenant": self.tenant,
        }

    # --- history and thread operations ----------------------------------------------------------
    def history(self) -> list[TurnResult]:
        """Every answered turn of the thread, oldest first."""
        return self._results()

    def __iter__(self) -> Iterator[TurnResult]:
        return iter(self.history())

    def rewind(self, turn: int) -> TurnResult | None:
        """Make the thread end after `turn` turns (0: empty); later turns stop counting — their media
        are no longer references or exemplars — but stay in the checkpoint history. Returns the new
        last turn, or None when the thread is empty."""
        from codi2_agent.graphs import rewind_thread

        with self._writing():
            rewind_thread(self.graph, self.config, turn)
        return self._latest()

    def undo(self) -> TurnResult | None:
        """Forget the last turn; returns the new last turn, or None when the thread is empty again."""
        turn = self.turn
        if turn == 0:
            raise ValueError("nothing to undo: the thread has no turns")
        return self.rewind(turn - 1)

    def copy(self, thread: str, *, at_turn: int | None = None) -> Session:
        """Make `thread` a copy of this thread (as it was after `at_turn` turns; default now), sharing
        this session's parts. Any turns `thread` had stop counting; use `fork` to refuse that."""
        from codi2_agent.graphs import copy_thread

        if thread == self.thread:
            raise ValueError("a copy needs another thread id")
        other = self.open_thread(thread)
        with other._writing(review="ignore"):
            copy_thread(self.graph, self.config, other.config, at_turn=at_turn)
        return other

    def fork(self, thread: str) -> Session:
        """A new thread that starts as a copy of this one (same model, memory and store)."""
        if thread == self.thread:
            raise ValueError("a fork needs a new thread id")
        if self.open_thread(thread).turn:
            raise ValueError(f"thread {thread!r} already has turns")
        return self.copy(thread)


def _sqlite_path(conn: Any) -> str | None:
    try:
        row = conn.execute("PRAGMA database_list").fetchone()
    except Exception:  # not a sqlite3 connection
        return None
    return str(row[2]) if row and row[2] else None
