"""A turn's media -> the exemplar memory, written behind the turn, and repaired after a crash.

A Chroma write takes 5-40 ms; a turn need not wait for it. When the memory's writes can overlap the
turn (`ExemplarMemory.write_behind`: a Chroma server) the graph uses `submit_many` — checked and
embedded now, written on the memory's writer thread, every later read waiting for it — and the turn
returns without waiting. The thread log notes each write in flight
(`ThreadLog.expect_remembered`), so a process that dies before a write lands leaves its note, and
the next `Session` on the thread writes the records the memory lacks (`restore_memory`).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from codi2_agent.artifacts import ArtifactStore

from ._log import ThreadLog
from ._state import MediaRecord

__all__ = ["MemoryWriter", "memory_entries", "restore_memory"]


def memory_entries(thread: str, records: Sequence[MediaRecord]) -> list[Any]:
    """The memory's `NewItem` of each record of a thread's log."""
    from codi2_agent.memory import NewItem

    return [
        NewItem(
            thread,
            r.ref,
            turn=r.turn,
            role=r.role,
            parents=r.parents,
            task=r.task,
            subject=r.subject,
            caption=r.caption,
            instruction=r.instruction,
        )
        for r in records
    ]


class MemoryWriter:
    """Writes a thread's records to the memory, behind the turn when that overlaps (`write_behind`).

    Each write behind a turn is noted in the thread log first; the notes of writes that landed are
    dropped at the thread's next write, from the graph's own thread (the memory's writer thread never
    touches the graph's store). So at most the last turn's notes are left when a process stops, and
    `restore_memory` tells the landed ones (in the memory) from the lost ones.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str], list[tuple[Future[Any], list[str]]]] = {}

    def remember(
        self,
        memory: Any,
        log: ThreadLog,
        store: ArtifactStore,
        tenant: str,
        thread: str,
        records: Sequence[MediaRecord],
    ) -> None:
        if not records:
            return
        entries = memory_entries(thread, records)
        media = [store.get(r.ref) for r in records]  # decoded once per turn: the store's cache
        if not getattr(memory, "write_behind", False):
            memory.add_many(tenant, entries, media=media)
            return
        self._drop_landed_notes(log, tenant, thread)
        rows = log.expect_remembered(tenant, thread, records)
        future = memory.submit_many(tenant, entries, media=media)  # bad input raises here, at once
        with self._lock:
            self._in_flight.setdefault((tenant, thread), []).append((future, rows))

    def _drop_landed_notes(self, log: ThreadLog, tenant: str, thread: str) -> None:
        with self._lock:
            flying = self._in_flight.get((tenant, thread), [])
            done: list[tuple[Future[Any], list[str]]] = []
            still: list[tuple[Future[Any], list[str]]] = []
            for item in flying:  # one look at each future: one that finishes meanwhile waits a turn
                (done if item[0].done() else still).append(item)
            if still:
                self._in_flight[(tenant, thread)] = still
            else:  # a long-running server sees many threads: keep only those with writes in flight
                self._in_flight.pop((tenant, thread), None)
        # A failed write keeps its notes (its error reaches the memory's next caller).
        log.remembered(tenant, thread, [row for f, rows in done if f.exception() is None for row in rows])


def restore_memory(
    memory: Any, log: ThreadLog, store: ArtifactStore, tenant: str, thread: str, upto: int
) -> int:
    """Write the noted records the memory lacks — writes behind a turn that a crash (or a failure)
    kept out — and drop the notes; returns how many were written. Notes of turns after `upto`
    (rewound, or cut short) are dropped without a write: their records are not in the log."""
    notes = log.unremembered(tenant, thread)
    if not notes:
        return 0
    live = {(r.id, r.turn, r.role) for r in log.media(tenant, thread, upto)}
    held = {(i.artifact_id, i.turn, i.role) for i in memory.items(tenant, thread=thread)}
    lost = [
        r
        for r in notes.values()
        if (r.id, r.turn, r.role) in live and (r.id, r.turn, r.role) not in held and r.id in store
    ]
    if lost:
        memory.add_many(tenant, memory_entries(thread, lost), media=[store.get(r.ref) for r in lost])
    log.remembered(tenant, thread, notes)
    return len(lost)
