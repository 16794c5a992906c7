"""The media log as the resolver reads it: records newest first, edit chains, and the words each
record answers to (its caption, and the words its chain's captions carry).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from codi2_agent.media import Modality

from ._intent import Lexicon
from ._state import MediaRecord
from ._words import COLOURS, SIZES, stem


def _kind(modality: Modality | None, plural: bool = False) -> str:
    name = {Modality.IMAGE: "image", Modality.AUDIO: "sound"}.get(modality, "image or sound")  # type: ignore[arg-type]
    return name + "s" if plural and modality is not None else name


def _label(r: MediaRecord) -> str:
    caption = f", {r.caption!r}" if r.caption else ""
    return f"@m:{r.ref.short_id} ({r.modality.value}, turn {r.turn}{caption})"


_CAPTION_STOP = frozenset(
    {"a", "an", "the", "of", "in", "on", "at", "with", "and", "or", "to", "from", "over", "under", "among"}
    | {"by", "its", "it", "is", "this", "that", "very"}
)


class _Log:
    """The thread's media (and this turn's attachments), indexed once per request."""

    def __init__(self, attached: Sequence[MediaRecord], log: Sequence[MediaRecord], lexicon: Lexicon):
        self.attached = list(attached)
        self.log = list(log)
        self.everything = self.log + self.attached
        self.lexicon = lexicon
        # One pass, no container per record (a long log would otherwise keep the collector busy).
        self.by_id: dict[str, MediaRecord] = {}
        self.newest_child: dict[str, MediaRecord] = {}  # artifact id -> the newest edit made from it
        for r in self.everything:
            if r.id not in self.by_id or r.parents:  # the record that knows its source wins
                self.by_id[r.id] = r
            if r.parents and r.role == "output":
                self.newest_child[r.parents[0]] = r
        self._words: dict[int, frozenset[str]] = {}
        self._asked: dict[int, frozenset[str]] = {}

    # --- order ----------------------------------------------------------------------------------
    @staticmethod
    def recent(records: Sequence[MediaRecord]) -> list[MediaRecord]:
        """Newest first (outputs after inputs within a turn, later in the log first).

        `records` are in log order."""
        return sorted(reversed(records), key=lambda r: (r.turn, r.role == "output"), reverse=True)

    @staticmethod
    def unique(records: Sequence[MediaRecord]) -> list[MediaRecord]:
        """First occurrence of each artifact, in order (a medium shown twice is one medium)."""
        seen: set[str] = set()
        out = []
        for r in records:
            if r.id not in seen:
                seen.add(r.id)
                out.append(r)
        return out

    def chain(self, record: MediaRecord) -> list[MediaRecord]:
        """The versions of `record`'s subject, oldest first."""
        subject = record.subject or record.ref.short_id
        return self.unique([r for r in self.everything if (r.subject or r.ref.short_id) == subject])

    def parent(self, record: MediaRecord) -> MediaRecord | None:
        made = self.by_id.get(record.id, record)
        return self.by_id.get(made.parents[0]) if made.parents else None

    # --- what a medium shows --------------------------------------------------------------------
    def words(self, r: MediaRecord) -> frozenset[str]:
        """A medium's description words: its caption's; without a caption, its source's as changed
        by the instruction that made it ("make it green" turns a red star's "red" into "green")."""
        return self._described(r, self._words, captions=True)

    def asked(self, r: MediaRecord) -> frozenset[str]:
        """The words the medium was asked for: the request that made its subject, as changed by each
        edit since — what the user remembers ("the cross") even when the model drew something else."""
        return self._described(r, self._asked, captions=False)

    def _described(
        self, r: MediaRecord, cache: dict[int, frozenset[str]], *, captions: bool
    ) -> frozenset[str]:
        got = cache.get(id(r))
        if got is not None:
            return got
        # Walk up to a captioned (or known) ancestor, then come back down: no recursion, so a long
        # chain of uncaptioned edits costs one pass.
        path: list[MediaRecord] = []
        seen: set[str] = set()
        node: MediaRecord | None = r
        while (
            node is not None
            and id(node) not in cache
            and not (captions and node.caption)
            and node.id not in seen
        ):
            seen.add(node.id)
            path.append(node)
            node = self.parent(node)
        if node is not None and id(node) not in cache:
            cache[id(node)] = _caption_words(node.caption or "")
        inherited = cache[id(node)] if node is not None else frozenset()
        for record in reversed(path):
            said = _caption_words(record.instruction or "")
            kept = {old for old in inherited if not any(self._same_attribute(old, new) for new in said)}
            inherited = frozenset(kept | said)
            cache[id(record)] = inherited
        return cache[id(r)]

    def _same_attribute(self, a: str, b: str) -> bool:
        if a == b:
            return False
        for english in (COLOURS, SIZES):
            if a in english and b in english:
                return True
        return bool(self.lexicon.attributes_of(a) & self.lexicon.attributes_of(b))

    def matching(
        self, pool: Sequence[MediaRecord], wanted: Sequence[str], *, asked: bool = False
    ) -> list[MediaRecord]:
        """Records of `pool` whose description has every wanted word ("snowy" finds "snow"); with
        `asked`, the words each was asked for instead of what its caption says.

        Each wanted word is compared with the log's distinct description words once, not with every
        record's: a long log repeats few words.
        """
        describe = self.asked if asked else self.words
        described = [(r, describe(r)) for r in pool]
        distinct = frozenset().union(*(d for _, d in described)) if described else frozenset()
        fits = [frozenset(d for d in distinct if _alike(d, w)) for w in wanted]
        return [r for r, d in described if all(not d.isdisjoint(f) for f in fits)]


_WORD = re.compile(r"[a-z0-9]+")


@lru_cache(maxsize=8192)
def _caption_words(caption: str) -> frozenset[str]:
    return frozenset(stem(w) for w in _WORD.findall(caption.lower()) if w not in _CAPTION_STOP)


def _alike(a: str, b: str) -> bool:
    """The same word, or one a longer form of the other ("snow" / "snowy", "bird" / "birdsong")."""
    if a == b:
        return True
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    return len(short) >= 4 and long.startswith(short)
