"""The thread log: every medium of a thread and every answered turn, kept in the LangGraph store.

A checkpoint holds what one turn needs (its request, prompt and result) and a short window of
messages; the parts of a thread that grow with its length — the media log that references resolve
against, and the transcript that `Session.history` shows — live here, one store item per medium or
turn. So checkpoint bytes and state loads stay flat however long a thread runs (docs/architecture.md
§10), and a thread-local lookup reads an in-process copy of the log that is refreshed by the rows
added since, not reloaded.

Rows are keyed by turn number, and only rows up to the thread's current turn count: a rewound turn
or one a crash cut short leaves rows that are ignored, then replaced when that turn number is used
again (`start_turn`). Every write also bumps the thread's version row, so a process that finds the
version changed by another writer reloads the log once.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph.store.base import BaseStore

from ._state import MediaRecord

__all__ = ["ThreadLog", "TurnEntry"]

_ALL = 1_000_000  # a search limit above any thread's row count
ROOT = "codi2"


@dataclass(frozen=True)
class TurnEntry:
    """One answered turn: the request's words and the answer message (content blocks + metadata)."""

    turn: int
    request: str
    content: list[Any]
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "request": self.request,
            "content": self.content,
            "metadata": self.metadata,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> TurnEntry:
        return cls(int(value["turn"]), str(value["request"]), list(value["content"]), dict(value["metadata"]))


@dataclass
class _Copy:
    """This process's copy of one thread's log."""

    version: str | None = None
    media: dict[str, MediaRecord] = field(default_factory=dict)  # store key -> record
    turns: dict[int, TurnEntry] = field(default_factory=dict)


def _text(message: Any) -> str:
    from codi2_agent.messages import message_text

    return message_text(message)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]  # namespace labels may not hold "." or NUL


def _row(i: int, r: MediaRecord) -> str:
    """The store key of the `i`-th record of one `add_media` call (turn, role, position: log order)."""
    return f"{r.turn:09d}-{0 if r.role == 'input' else 1}-{i:03d}-{r.id[:16]}"


class ThreadLog:
    """The media logs and transcripts of a graph's threads, in a LangGraph `BaseStore`."""

    def __init__(self, store: BaseStore) -> None:
        self.store = store
        self._copies: dict[tuple[str, str], _Copy] = {}
        self._lock = threading.RLock()

    # --- namespaces -------------------------------------------------------------------------------
    @staticmethod
    def _ns(tenant: str, key: str, kind: str) -> tuple[str, ...]:
        return (ROOT, "threads", _digest(tenant), _digest(key), kind)

    def _bump(self, tenant: str, key: str, copy: _Copy) -> None:
        copy.version = uuid.uuid4().hex
        self.store.put(self._ns(tenant, key, "meta"), "version", {"version": copy.version})

    def _fresh(self, tenant: str, key: str) -> _Copy:
        """The thread's copy, reloaded when another writer changed the log since we read it."""
        with self._lock:
            copy = self._copies.setdefault((tenant, key), _Copy())
            stored = self.store.get(self._ns(tenant, key, "meta"), "version")
            version = stored.value["version"] if stored is not None else None
            if copy.version is not None and (version or "empty") == copy.version:
                return copy
            copy.media = {
                item.key: MediaRecord.model_validate(item.value["record"])
                for item in self.store.search(self._ns(tenant, key, "media"), limit=_ALL)
            }
            copy.turns = {
                int(item.value["turn"]): TurnEntry.from_json(item.value)
                for item in self.store.search(self._ns(tenant, key, "turns"), limit=_ALL)
            }
            copy.version = version or "empty"
            return copy

    # --- reading ----------------------------------------------------------------------------------
    def media(self, tenant: str, key: str, upto: int) -> list[MediaRecord]:
        """The thread's media up to turn `upto`, in order (turn, then inputs before outputs)."""
        copy = self._fresh(tenant, key)
        return [copy.media[k] for k in sorted(copy.media) if copy.media[k].turn <= upto]

    def turns(self, tenant: str, key: str, upto: int) -> list[TurnEntry]:
        """The thread's answered turns up to `upto`, oldest first."""
        copy = self._fresh(tenant, key)
        return [copy.turns[n] for n in sorted(copy.turns) if n <= upto]

    def last_answered(self, tenant: str, key: str, upto: int) -> int:
        """The last turn up to `upto` that has an answer (0 if none)."""
        return max((n for n in self._fresh(tenant, key).turns if n <= upto), default=0)

    # --- writing ----------------------------------------------------------------------------------
    def start_turn(self, tenant: str, key: str, turn: int) -> bool:
        """Forget rows of `turn` and later (left by a rewound or crashed turn): the turn starts clean.
        Returns True when there were such rows."""
        copy = self._fresh(tenant, key)
        with self._lock:
            stale_media = [k for k, r in copy.media.items() if r.turn >= turn]
            stale_turns = [n for n in copy.turns if n >= turn]
            if not stale_media and not stale_turns:
                return False
            for k in stale_media:
                self.store.delete(self._ns(tenant, key, "media"), k)
                del copy.media[k]
            for n in stale_turns:
                self.store.delete(self._ns(tenant, key, "turns"), f"{n:09d}")
                del copy.turns[n]
            self._bump(tenant, key, copy)
        return True

    def add_media(self, tenant: str, key: str, records: Sequence[MediaRecord]) -> None:
        if not records:
            return
        copy = self._fresh(tenant, key)
        with self._lock:
            for i, r in enumerate(records):  # one call per turn and role: keys keep their order
                row = _row(i, r)
                self.store.put(
                    self._ns(tenant, key, "media"),
                    row,
                    {"turn": r.turn, "record": r.model_dump(mode="json")},
                    index=False,
                )
                copy.media[row] = r
            self._bump(tenant, key, copy)

    def add_turn(self, tenant: str, key: str, entry: TurnEntry) -> None:
        copy = self._fresh(tenant, key)
        with self._lock:
            self.store.put(self._ns(tenant, key, "turns"), f"{entry.turn:09d}", entry.to_json(), index=False)
            copy.turns[entry.turn] = entry
            self._bump(tenant, key, copy)

    def copy(self, tenant: str, source: str, dest: str, upto: int) -> None:
        """Make `dest`'s log a copy of `source`'s up to turn `upto`."""
        self.start_turn(tenant, dest, 1)
        self.add_media(tenant, dest, self.media(tenant, source, upto))
        for entry in self.turns(tenant, source, upto):
            self.add_turn(tenant, dest, entry)

    def adopt(self, tenant: str, key: str, values: dict[str, Any]) -> None:
        """Move a thread written before the log existed (its checkpoint state held the whole media
        log and conversation) into the log. A no-op once the log has rows, or for a new thread."""
        copy = self._fresh(tenant, key)
        legacy = values.get("media") or []
        messages = values.get("messages") or []
        if copy.media or copy.turns or not (legacy or messages):
            return
        self.add_media(tenant, key, [MediaRecord.model_validate(r) for r in legacy])
        request = ""
        for m in messages:
            if m.type == "human":
                request = _text(m)
            elif m.type == "ai" and m.response_metadata.get("turn"):
                meta = dict(m.response_metadata)
                content = m.content if isinstance(m.content, list) else [{"type": "text", "text": m.content}]
                self.add_turn(tenant, key, TurnEntry(int(meta["turn"]), request, list(content), meta))

    # --- exemplar-memory writes in flight -----------------------------------------------------------
    def expect_remembered(self, tenant: str, key: str, records: Sequence[MediaRecord]) -> list[str]:
        """Note that `records` are on their way to the exemplar memory (written behind the turn).
        Returns the notes' keys, for `remembered` once the write landed; a note a crash left behind
        is what `unremembered` lists for the next opener of the thread to write again."""
        rows = [_row(i, r) for i, r in enumerate(records)]
        for row, r in zip(rows, records, strict=True):
            self.store.put(self._ns(tenant, key, "unremembered"), row, {"record": r.model_dump(mode="json")},
                           index=False)  # fmt: skip
        return rows

    def remembered(self, tenant: str, key: str, rows: Iterable[str]) -> None:
        """The memory holds these records now: drop their notes."""
        for row in rows:
            self.store.delete(self._ns(tenant, key, "unremembered"), row)

    def unremembered(self, tenant: str, key: str) -> dict[str, MediaRecord]:
        """Notes of memory writes that never finished, by key (see `expect_remembered`)."""
        return {
            item.key: MediaRecord.model_validate(item.value["record"])
            for item in self.store.search(self._ns(tenant, key, "unremembered"), limit=_ALL)
        }

    def records(self, tenant: str, key: str, ids: Iterable[str], upto: int) -> list[MediaRecord]:
        """The log's records of the given artifact ids (every time each was shown), in order."""
        wanted = set(ids)
        return [r for r in self.media(tenant, key, upto) if r.id in wanted]
