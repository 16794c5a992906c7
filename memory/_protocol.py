"""`Memory`: what the session graph needs from an exemplar memory, and nothing more.

The graph keeps its own thread's media log and resolves "the last image" or "turn 3" from it; it
asks a memory only for what needs vectors or crosses threads: similarity search, analogous edits,
explicit references (``@m:`` prefixes, artifact ids) and writing a turn's media. A thread reopened
after a crash trims the memory back to its log (`reconcile_thread`), since the memory write and the
checkpoint are two stores. `ExemplarMemory` implements this; another store (a test double, a remote
service) can too. A memory whose `write_behind` is True also offers `submit_many` (`add_many` whose
write lands behind the call, every later read waiting for it): the graph then writes that way, and
a turn does not wait for the memory.

Example:
    >>> class NoMemory:  # a class without `analogous_edits`, `search`, ... is not a Memory
    ...     def close(self) -> None: ...
    >>> isinstance(NoMemory(), Memory)
    False
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from codi2_agent.media import Media, MediaRef, Modality

from ._item import EditPair, MemoryItem, NewItem, Role

__all__ = ["Memory", "QueryLike"]

QueryLike = str | Media | MemoryItem | Sequence[float] | np.ndarray
"""What a similarity query may be: free text, a medium, a stored item ("more like this"), a vector."""


@runtime_checkable
class Memory(Protocol):
    """The memory operations the session graph calls (``isinstance`` checks that they exist)."""

    def search(
        self,
        tenant: str,
        query: QueryLike,
        *,
        k: int = 4,
        role: Role | None = None,
        modality: Modality | str | None = None,
    ) -> list[MemoryItem]:
        """The `k` items of `tenant` most similar to `query`, nearest first."""
        ...

    def analogous_edits(
        self, tenant: str, request: QueryLike | None = None, *, source: MediaRef | None = None, k: int = 2
    ) -> list[EditPair]:
        """Recorded edits (A -> A') most like `request` and/or `source`, best first."""
        ...

    def reference(self, tenant: str, ref: str | MediaRef) -> MemoryItem:
        """The item an explicit reference names (``@m:`` prefix, artifact id or uri, `MediaRef`), in
        any thread of `tenant`; raises `UnknownReferenceError` / `AmbiguousReferenceError`."""
        ...

    def add_many(
        self,
        tenant: str,
        entries: Sequence[NewItem],
        *,
        media: Sequence[Media | None] | None = None,
        vectors: np.ndarray | None = None,
    ) -> list[MemoryItem]:
        """Remember a batch of media (embedding `media`, or taking precomputed `vectors`)."""
        ...

    def reconcile_thread(self, tenant: str, thread: str, keep: Iterable[tuple[str, int]]) -> int:
        """Delete `thread`'s items whose (artifact id, turn) is not in `keep` (the thread's media log);
        returns how many."""
        ...

    def close(self) -> None:
        """Release what the memory holds open."""
        ...
