"""Resolving what a request points at, from the thread's media log (and memory for explicit ids).

Thread-local references ("it", "the last image", "the sound from turn 2", "the star", "the edit you
made to the cat") are answered from graph state: exact and free (docs/architecture.md §7). Explicit
ids ("@m:ab12cd…", "artifact://…") that are not in this thread are looked up in the tenant's memory,
so an agent can point at media from another thread. Whatever cannot be resolved becomes a
`Clarification` — a question back — never a guess.

Example:
    >>> from codi2_agent.graphs import MediaRecord, resolve
    >>> from codi2_agent.media import MediaRef, Modality
    >>> ref = MediaRef(id="a" * 64, uri="artifact://" + "a" * 64, modality=Modality.IMAGE,
    ...                mime="image/png", caption="a small red star in the snow", turn=1)
    >>> log = [MediaRecord(ref=ref, role="output", turn=1)]
    >>> resolve("make the star blue", attached=[], log=log).sources[0].id == "a" * 64
    True
    >>> resolve("make the cat blue", attached=[], log=log).clarification is not None
    True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from codi2_agent.media import MediaRef, Modality

from ._language import Mention, find_mentions, infer_task, mentioned_modality, needs_source, words
from ._state import Clarification, MediaRecord

__all__ = ["Lookup", "Resolution", "resolve"]

# Looks an explicit id up outside the thread (memory): a record, None if unknown; raises ValueError
# with a message for an ambiguous one.
Lookup = Callable[[str], MediaRecord | None]


@dataclass
class Resolution:
    """What a request points at: sources in order, an example edit pair, or a question back."""

    sources: list[MediaRecord] = field(default_factory=list)
    example: tuple[MediaRecord, ...] = ()
    task: str = "generate"
    output: str = "auto"
    mentions: list[Mention] = field(default_factory=list)
    clarification: Clarification | None = None


def _caption_words(record: MediaRecord) -> set[str]:
    return {
        w[:-1] if len(w) > 3 and w.endswith("s") and not w.endswith("ss") else w
        for w in words(record.caption or "")
    }


def _recent(records: Sequence[MediaRecord], modality: Modality | None = None) -> list[MediaRecord]:
    """Records newest first (outputs after inputs within a turn), optionally of one modality."""
    pool = [r for r in records if modality is None or r.modality is modality]
    return sorted(pool, key=lambda r: (r.turn, r.role == "output"), reverse=True)


def _unique(records: Sequence[MediaRecord]) -> list[MediaRecord]:
    """First occurrence of each artifact, in log order (a medium shown twice is one medium)."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.id not in seen:
            seen.add(r.id)
            out.append(r)
    return out


def _describe(records: Sequence[MediaRecord], limit: int = 4) -> str:
    shown = []
    for r in _recent(records)[:limit]:
        caption = f", {r.caption!r}" if r.caption else ""
        shown.append(f"@m:{r.ref.short_id} ({r.modality.value}, turn {r.turn}{caption})")
    return "; ".join(shown) if shown else "none yet"


# Common English adjectives of colour and size: "the red dog" names a dog, not a red.
_ADJECTIVES = frozenset(
    (
        *("red", "green", "blue", "yellow", "purple", "violet", "orange", "pink", "brown", "black"),
        *("white", "grey", "gray", "small", "large", "big", "little", "tiny", "huge"),
    )
)


def _noun_phrase(subject: Sequence[str]) -> str:
    """ "red star blue" -> "red star": adjectives, then the first noun."""
    out = []
    for w in subject:
        out.append(w)
        if w not in _ADJECTIVES:
            break
    return " ".join(out)


def _kind(modality: Modality | None) -> str:
    return {Modality.IMAGE: "image", Modality.AUDIO: "sound"}.get(modality, "image or sound")  # type: ignore[arg-type]


class _Resolver:
    def __init__(self, attached: Sequence[MediaRecord], log: Sequence[MediaRecord], lookup: Lookup | None):
        self.attached = list(attached)
        self.log = list(log)
        self.everything = self.log + self.attached
        self.lookup = lookup
        self.by_id = {r.id: r for r in self.everything}

    def question(self, text: str, candidates: Sequence[MediaRecord] = ()) -> Clarification:
        pool = candidates or self.everything
        listing = f" Media in this conversation: {_describe(pool)}." if pool else ""
        return Clarification(question=text + listing, candidates=tuple(r.ref for r in _recent(pool)[:4]))

    # --- one mention each ---------------------------------------------------------------------
    def explicit(self, m: Mention) -> MediaRecord | Clarification:
        token = m.token or ""
        matches = _unique([r for r in self.everything if r.id.startswith(token)])
        if len(matches) == 1:
            return _recent([r for r in self.everything if r.id == matches[0].id])[0]
        if len(matches) > 1:
            return self.question(f"'{m.text}' matches {len(matches)} media; give more digits.", matches)
        if self.lookup is not None:
            try:
                found = self.lookup(token)
            except ValueError as e:
                return self.question(f"'{m.text}' is ambiguous ({e}).")
            if found is not None:
                return found
        return self.question(f"I can't find '{m.text}' in this conversation or in memory.")

    def turn(self, m: Mention) -> MediaRecord | Clarification:
        assert m.turn is not None
        pool = [r for r in self.log if r.turn == m.turn and (m.modality is None or r.modality is m.modality)]
        if m.words:
            named = self._named(pool, m.words)
            pool = named if named else pool
        if not pool:
            turns = max((r.turn for r in self.log), default=0)
            what = _kind(m.modality) if m.modality else (" ".join(m.words) or "media")
            plural = "s" * (turns != 1)
            return self.question(f"Turn {m.turn} has no {what} (this conversation has {turns} turn{plural}).")
        return _recent(pool)[0]  # outputs of a turn win over its inputs

    def ordinal(self, m: Mention, hint: Modality | None) -> MediaRecord | Clarification:
        modality = m.modality or hint
        pool = _unique([r for r in self.everything if modality is None or r.modality is modality])
        assert m.index is not None
        if not pool or m.index >= len(pool):
            have = len(pool)
            return self.question(
                f"There {'is' if have == 1 else 'are'} {have or 'no'} {_kind(modality)}{'s' * (have != 1)} "
                f"so far, so I can't tell which one '{m.text}' is."
            )
        return pool[m.index]

    def _named(self, pool: Sequence[MediaRecord], subject: tuple[str, ...]) -> list[MediaRecord]:
        """Records of `pool` named by the longest matching prefix of `subject`'s words.

        A record is named when its caption has the words, or when it continues an edit chain whose
        earlier media had them and it has no caption of its own ("the star" after "make it blue").
        """
        for n in range(len(subject), 0, -1):
            want = set(subject[:n])
            named = [r for r in self.everything if want <= _caption_words(r)]
            chains = {r.subject for r in named if r.subject} | {r.ref.short_id for r in named}
            named_ids = {r.id for r in named}
            hits = [r for r in pool if r.id in named_ids or (r.caption is None and r.subject in chains)]
            if hits:
                return hits
        return []

    def subject(self, m: Mention) -> MediaRecord | None:
        hits = self._named(self.everything, m.words)
        return _recent(hits)[0] if hits else None

    def edit_of(self, m: Mention) -> tuple[MediaRecord, MediaRecord] | Clarification:
        edits = [r for r in self.log if r.role == "output" and r.parents]
        for record in _recent(edits):
            parent = self.by_id.get(record.parents[0])
            named = [x for x in (record, parent) if x is not None]
            if not m.words or self._named(named, m.words):
                if parent is None:
                    break
                return parent, record
        what = " ".join(m.words) or "that"
        return self.question(f"I haven't edited {('the ' + what) if m.words else what} in this conversation.")

    def last_edit(self) -> tuple[MediaRecord, MediaRecord] | None:
        for record in _recent([r for r in self.log if r.role == "output" and r.parents]):
            parent = self.by_id.get(record.parents[0])
            if parent is not None:
                return parent, record
        return None

    def latest(self, modality: Modality | None) -> MediaRecord | None:
        if self.attached:
            pool = [r for r in self.attached if modality is None or r.modality is modality]
            if pool:
                return pool[0]
        pool = _recent(self.log, modality) or (_recent(self.log) if modality is not None else [])
        return pool[0] if pool else None


def resolve(
    text: str,
    *,
    attached: Sequence[MediaRecord],
    log: Sequence[MediaRecord],
    lookup: Lookup | None = None,
    task: str | None = None,
    output: str | None = None,
    extra_sources: Sequence[str] = (),
    example: Sequence[str] = (),
    example_fallback: bool = False,
) -> Resolution:
    """Resolve the media a request points at, and what it asks for.

    Args:
        text: the request's words.
        attached: media that came with this message (already stored).
        log: the thread's earlier media (live: not undone, not rejected).
        lookup: finds an explicit id outside the thread (memory); None to stay in the thread.
        task, output: given by the caller (tools), instead of inferred from the words.
        extra_sources, example: references given as data (tool arguments); resolved like words.
        example_fallback: an analogy with no edit in the thread is left without `example` (the
            caller looks in memory) instead of answered with a question.
    """
    r = _Resolver(attached, log, lookup)
    res = Resolution()
    hint = mentioned_modality(text)

    def fail(c: Clarification) -> Resolution:
        res.clarification = c
        return res

    # 1. Structured references first (tool arguments): each must resolve.
    def from_phrase(phrase: str) -> list[MediaRecord] | Clarification:
        if not find_mentions(phrase):
            return r.question(
                f"I don't know which medium {phrase!r} is: use an id like '@m:ab12cd', an artifact:// url, "
                "or words like 'the last image'."
            )
        # This turn's attachments count as known media here, not as extra sources.
        sub = resolve(phrase, attached=(), log=[*log, *attached], lookup=lookup, task="describe")
        return sub.clarification if sub.clarification is not None else sub.sources[:1]

    for phrase in extra_sources:
        named = from_phrase(phrase)
        if isinstance(named, Clarification):
            return fail(named)
        res.sources += named
    if example:
        pair: list[MediaRecord] = []
        for phrase in example:
            named = from_phrase(phrase)
            if isinstance(named, Clarification):
                return fail(named)
            pair += named[:1]
        if len(pair) == 1:  # only the edited result: its recorded source is the "before"
            # The medium may also have been shown again as an input later (no parents there): the
            # record of it as an edit's output is the one that knows its source.
            shown = _recent([x for x in r.everything if x.id == pair[0].id])
            made = next((x for x in shown if x.parents), pair[0])
            parent = r.by_id.get(made.parents[0]) if made.parents else None
            if parent is None:
                return fail(r.question(f"@m:{made.ref.short_id} is not the result of an edit I know of."))
            pair = [parent, made]
        res.example = tuple(pair[:2])

    # 2. References in the words, in order.
    res.mentions = find_mentions(text)
    pronouns: list[Mention] = []
    unknown: list[Mention] = []
    for m in res.mentions:
        got: MediaRecord | tuple[MediaRecord, MediaRecord] | Clarification | None
        if m.kind == "explicit":
            got = r.explicit(m)
        elif m.kind == "turn":
            got = r.turn(m)
        elif m.kind == "ordinal":
            got = r.ordinal(m, hint)
        elif m.kind == "edit_of":
            got = r.edit_of(m)
        elif m.kind == "last_edit":
            last = r.last_edit() if not res.example else None
            if last is not None:
                res.example = last
            continue
        elif m.kind == "subject":
            got = r.subject(m)
            if got is None:
                (pronouns if m.deictic else unknown).append(m)
                continue
        else:
            pronouns.append(m)
            continue
        if isinstance(got, Clarification):
            return fail(got)
        if isinstance(got, tuple):
            res.example = got
        else:
            res.sources.append(got)

    # 3. Attached media are sources too (after those the words name, unless named already).
    seen = {s.id for s in res.sources}
    res.sources += [a for a in attached if a.id not in seen]

    # 4. What is asked; "it" and friends fill a missing source with the latest medium.
    modalities = tuple(s.modality for s in res.sources)
    res.task, res.output = infer_task(
        text, has_source=bool(res.sources or pronouns), source_modalities=modalities
    )
    if task is not None:
        res.task = task
    if output is not None:
        res.output = output
    if res.task == "analogy" and not res.example:
        pair_ = r.last_edit()
        if pair_ is not None:
            res.example = pair_
        elif not example_fallback:
            return fail(r.question("I haven't made an edit yet, so I don't know which edit to repeat."))
    wants_source = needs_source(res.task) or bool(pronouns)
    if wants_source and not res.sources:
        if unknown:
            what = _noun_phrase(unknown[0].words)
            return fail(r.question(f"I can't find the {what} you mean."))
        modality = hint or (res.example[0].modality if res.example else None)
        latest = r.latest(modality)
        if latest is None or (res.example and latest.id == res.example[1].id and res.task == "analogy"):
            kind = _kind(modality)
            return fail(
                r.question(f"There is no {kind} to work on yet: send one, or ask me to make one.")
                if latest is None
                else r.question(f"Which {kind} should I apply that edit to?")
            )
        res.sources.append(latest)
    if res.task in ("edit", "analogy") and res.output == "auto" and res.sources:
        res.output = res.sources[-1 if res.task == "analogy" else 0].modality.value
    if res.task == "describe":
        res.output = "text"
    return res


def records_for(refs: Sequence[MediaRef], *, turn: int) -> list[MediaRecord]:
    """Input records for media attached to this turn."""
    return [MediaRecord(ref=ref, role="input", turn=turn, subject=ref.short_id) for ref in refs]
