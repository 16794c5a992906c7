"""Resolving what a request points at, from the thread's media log (and memory for explicit ids).

Thread-local references are answered from graph state, exactly and for free (docs/architecture.md
§7): pronouns ("it", "this one"), positions ("the very first picture", "the original", "the one
before that", "the earlier sound"), turns ("the star from turn 3", "two turns ago"), descriptions
matched against the log's captions ("the blue star", "the sound with rain", "the one in the snow"),
several sources ("combine the first picture with the last sound") and edits ("do what you did to
the star"). A follow-up that names only the change ("blue instead") edits the current subject.
Explicit ids ("@m:ab12cd…", "artifact://…") that are not in this thread are looked up in the
tenant's memory. A reference that fits several media, or none, becomes a `Clarification` naming the
candidates — never a guess. Conversation and requests outside the model's vocabulary are answered
in words (`Resolution.intent`), so they never produce media.

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
    >>> resolve("thanks!", attached=[], log=log).intent
    'chat'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from codi2_agent.media import MediaRef, Modality

from ._intent import Intent, Lexicon, Reading, read_request
from ._language import Mention, find_mentions
from ._state import Clarification, MediaRecord
from ._words import tokenize

if TYPE_CHECKING:
    from codi2_agent.model.vocabulary import Vocabulary

from ._log_view import (
    _kind,
    _label,
    _Log,
)

__all__ = ["Lookup", "Resolution", "Similar", "resolve"]

# Looks an explicit id up outside the thread (memory): a record, None if unknown; raises ValueError
# with a message for an ambiguous one.
Lookup = Callable[[str], MediaRecord | None]
# Media like a description, best first, as artifact ids (the memory's text side): used when no
# caption in the log has the words ("the bike" for "a red bicycle").
Similar = Callable[[str], Sequence[str]]


@dataclass
class Resolution:
    """What a request points at and asks for: sources in order, an example edit pair, or a question
    back; or, for conversation and out-of-vocabulary requests, a text `answer` (no media)."""

    sources: list[MediaRecord] = field(default_factory=list)
    example: tuple[MediaRecord, ...] = ()
    task: str = "generate"
    output: str = "auto"
    mentions: list[Mention] = field(default_factory=list)
    clarification: Clarification | None = None
    intent: Intent = "media"
    answer: str | None = None  # the reply when intent is "chat" or "out_of_vocabulary"
    instruction: str | None = None  # words for the model when the request had to be completed

    @property
    def makes_media(self) -> bool:
        """True when the turn goes on to the model (no question back, no text-only answer)."""
        return self.clarification is None and self.intent == "media"


class _Resolver:
    def __init__(
        self,
        media: _Log,
        *,
        lookup: Lookup | None,
        similar: Similar | None,
        turn: int,
        hint: Modality | None,
    ):
        self.media = media
        self.lookup = lookup
        self.similar = similar
        self.turn = turn
        self.hint = hint

    def question(
        self, text: str, candidates: Sequence[MediaRecord] = (), *, listed: bool = False
    ) -> Clarification:
        """A question back; it names the candidates (or, without any, what the conversation holds)."""
        pool = list(candidates) or self.media.recent(self.media.unique(self.media.everything))[:4]
        if pool and not listed:
            text += f" Media in this conversation: {'; '.join(_label(r) for r in pool[:4])}."
        return Clarification(question=text, candidates=tuple(r.ref for r in pool[:8]))

    def which(self, what: str, candidates: Sequence[MediaRecord]) -> Clarification:
        named = " or ".join(_label(r) for r in candidates[:6])
        return self.question(f"Which {what} do you mean: {named}?", candidates, listed=True)

    # --- the medium at hand -------------------------------------------------------------------
    def current(self, modality: Modality | None = None) -> MediaRecord | Clarification | None:
        """The medium being worked on: this turn's attachment, else the newest medium (of a kind).

        When the newest turn made several media that fit, that is a question, not a guess.
        """
        attached = [r for r in self.media.attached if modality is None or r.modality is modality]
        if attached:
            return attached[0]
        pool = [r for r in self.media.log if modality is None or r.modality is modality]
        if not pool:
            return None
        newest = max(r.turn for r in pool)
        same = [r for r in pool if r.turn == newest]
        outputs = [r for r in same if r.role == "output"]
        group = self.media.unique(outputs or same)
        if len(group) > 1:
            return self.which(_kind(modality) if modality else "one", group)
        return group[0]

    # --- one mention each ---------------------------------------------------------------------
    def explicit(self, m: Mention) -> MediaRecord | Clarification:
        token = m.token or ""
        matches = self.media.unique([r for r in self.media.everything if r.id.startswith(token)])
        if len(matches) == 1:
            return self.media.by_id[matches[0].id]
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

    def _pool(self, m: Mention, modality: Modality | None) -> list[MediaRecord]:
        return [
            r
            for r in self.media.everything
            if (modality is None or r.modality is modality) and (m.role is None or r.role == m.role)
        ]

    def described(self, m: Mention, pool: Sequence[MediaRecord]) -> list[MediaRecord]:
        """Records of `pool` the mention's words describe; a trailing phrase ("with rain" in "the
        original sound with rain") counts only if some medium has it, else it is the change asked for."""
        if m.optional:
            hits = self.media.matching(pool, [*m.words, *m.optional])
            if hits or not (m.words or m.index is not None or m.turn or m.turns_ago):
                return hits
        hits = self.media.matching(pool, m.words) if m.words else list(pool)
        if not hits and m.words:  # what was asked for, when the model made something else
            hits = self.media.matching(pool, m.words, asked=True)
        if not hits and self.similar is not None and m.words:
            wanted = {r.id: r for r in pool}
            hits = [wanted[i] for i in self.similar(" ".join(m.words)) if i in wanted][:1]
        return hits

    def one_subject(self, hits: Sequence[MediaRecord], what: str) -> MediaRecord | Clarification:
        """The newest of `hits` when they are versions of one subject; a question when several are."""
        newest: dict[str, MediaRecord] = {}
        for r in self.media.recent(hits):
            newest.setdefault(r.subject or r.ref.short_id, r)
        if len(newest) > 1:
            return self.which(what, list(newest.values()))
        return next(iter(newest.values()))

    def _modality(self, m: Mention) -> Modality | None:
        """The kind a mention is about: its noun's, else the words' lean ("make the second one purple")."""
        if m.modality is not None:
            return m.modality
        if m.words:
            return None
        if m.scope == "all":
            return None
        if self.hint is not None:
            return self.hint
        latest = self.current()
        return latest.modality if isinstance(latest, MediaRecord) else None

    def description(self, m: Mention) -> MediaRecord | Clarification | None:
        pool = self._pool(m, m.modality)
        if not m.words and not m.optional:  # "the picture", "the photo I sent": the newest of its kind
            if not pool:
                return self.question(f"There is no {_kind(m.modality)} in this conversation yet.")
            if m.role is None:
                return self.current(m.modality) or self.question(f"I can't find {m.text}.")
            return self.media.recent(pool)[0]
        hits = self.described(m, pool)
        if not hits:
            if m.deictic:
                return None  # "this dog": the medium at hand
            return self.question(
                f"I can't find {m.text} you mean.", self.media.recent(self.media.unique(pool))[:4]
            )
        return self.one_subject(hits, " ".join([*m.words, *m.optional][-3:]) or _kind(m.modality))

    def turn_of(self, m: Mention) -> MediaRecord | Clarification:
        number = m.turn if m.turn is not None else self.turn - (m.turns_ago or 1)
        pool = [
            r for r in self._pool(m, m.modality or (self.hint if not m.words else None)) if r.turn == number
        ]
        if m.words:
            named = self.described(m, pool)
            if not named:  # "the star from 3 turns ago" when that turn made a circle: the star as it was
                then = self.described(m, [r for r in self._pool(m, m.modality) if r.turn <= number])
                named = [r for r in then if r.turn == max(x.turn for x in then)]
            pool = named  # words no medium of then matches: ask, never a different subject
        outputs = [r for r in pool if r.role == "output"]
        pool = self.media.unique(outputs or pool)
        if not pool:
            turns = max((r.turn for r in self.media.log), default=0)
            what = _kind(m.modality) if m.modality else (" ".join(m.words) or "media")
            return self.question(
                f"Turn {number} has no {what} (this conversation has {turns} turn{'s' * (turns != 1)})."
            )
        if len(pool) > 1:
            return self.which(f"medium of turn {number}", pool)
        return pool[0]

    def position(self, m: Mention) -> MediaRecord | Clarification:
        assert m.index is not None or m.other
        modality = self._modality(m)
        if m.scope == "chain":
            return self.version(m, modality)
        pool = self._pool(m, modality)
        if m.words or m.optional:
            pool = self.described(m, pool)
        pool = self.media.unique(pool)
        kind = " ".join(m.words) or _kind(modality)
        if m.other:
            here = self.current(modality)
            others = [r for r in pool if not isinstance(here, MediaRecord) or r.id != here.id]
            if len(others) == 1:
                return others[0]
            return (
                self.which(f"other {kind}", others) if others else self.question(f"There is no other {kind}.")
            )
        index = m.index or 0
        if m.earlier and len(pool) in (1, 2):
            index = 0  # "the earlier sound" of two is the older one; of one, that one
        if -len(pool) <= index < len(pool):
            return pool[index]
        have = len(pool)
        plural = "s" if have != 1 and (m.words or modality is not None) else ""
        return self.question(
            f"There {'is' if have == 1 else 'are'} {have or 'no'} {kind}{plural} so far, so I can't tell "
            f"which one '{m.text}' is."
        )

    def version(self, m: Mention, modality: Modality | None) -> MediaRecord | Clarification:
        """ "the original", "the second version of the circle", "the previous version"."""
        anchor: MediaRecord | Clarification | None = None
        if m.words or m.optional:  # "the original star", "the second version of the circle"
            pool = self._pool(m, modality)
            hits = self.media.matching(pool, [*m.words, *m.optional])
            if not hits and m.optional and m.words:  # "the original sound with rain": the change
                hits = self.media.matching(pool, m.words)
            if hits:
                anchor = self.one_subject(hits, " ".join([*m.words, *m.optional]))
            elif m.words:
                return self.question(f"I can't find {m.text} you mean.")
        if anchor is None:
            anchor = self.current(modality)
            if anchor is None:
                return self.question(f"There is no {_kind(modality)} to go back to yet.")
        if isinstance(anchor, Clarification):
            return anchor
        chain = self.media.chain(anchor)
        index = m.index or 0
        if -len(chain) <= index < len(chain):
            return chain[index]
        return self.question(f"{_label(anchor)} has {len(chain)} version{'s' * (len(chain) != 1)} so far.")

    def reference(self, m: Mention) -> MediaRecord | Clarification | None:
        if m.kind == "explicit":
            return self.explicit(m)
        if m.kind == "turn":
            return self.turn_of(m)
        if m.kind == "position":
            return self.position(m)
        if m.kind == "description":
            return self.description(m)
        if m.kind == "pronoun":
            return self.current(self.hint) or self.question(
                f"There is no {_kind(self.hint)} to work on yet: send one, or ask me to make one."
            )
        raise ValueError(f"not a reference: {m.kind}")

    # --- edits ----------------------------------------------------------------------------------
    def edit_of(self, m: Mention) -> tuple[MediaRecord, MediaRecord] | Clarification:
        """The edit made to what `m.inner` names: the one applied to it, else the one that made it."""
        assert m.inner is not None
        what = m.inner.text
        got = self.reference(m.inner)
        if got is None or (isinstance(got, Clarification) and got.question.startswith("I can't find")):
            return self.question(f"I haven't edited {what} in this conversation.")
        if isinstance(got, Clarification):
            return got
        made = self.media.newest_child.get(got.id)
        if made is not None:
            return got, made
        parent = self.media.parent(got)
        if parent is not None:
            return parent, self.media.by_id[got.id]
        return self.question(f"I haven't edited {what} in this conversation.", [got], listed=True)

    def last_edit(self, modality: Modality | None = None) -> tuple[MediaRecord, MediaRecord] | None:
        edits = [r for r in self.media.log if r.role == "output" and r.parents]
        for prefer in (modality, None):
            for record in self.media.recent(edits):
                if prefer is not None and record.modality is not prefer:
                    continue
                parent = self.media.by_id.get(record.parents[0])
                if parent is not None:
                    return parent, record
        return None


def _coordinate(mentions: list[Mention]) -> list[Mention]:
    """ "the first and the last picture", "the first triangle and the red one": a phrase without a
    noun shares its neighbour's (as words to try first, see `Mention.optional`)."""
    out = list(mentions)
    for k in range(1, len(out)):
        m, prev = out[k], out[k - 1]
        if not m.coordinated or m.kind not in ("position", "description", "turn"):
            continue
        if prev.kind not in ("position", "description", "turn"):
            continue
        if m.modality is None and m.head in (None, "one", "ones", "version", "versions"):
            # Only the noun is shared: "the red star and the large one" is a large star, not a red one.
            scope = prev.scope if m.scope == "log" and prev.scope != "all" else m.scope
            out[k] = replace(m, modality=prev.modality, optional=(*prev.words[-1:], *m.optional), scope=scope)
        if prev.modality is None and prev.head is None and not prev.words:
            out[k - 1] = replace(prev, modality=m.modality, optional=m.words)
    return out


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
    vocabulary: Vocabulary | None = None,
    similar: Similar | None = None,
    turn: int | None = None,
) -> Resolution:
    """Resolve the media a request points at, and what it asks for.

    Args:
        text: the request's words.
        attached: media that came with this message (already stored).
        log: the thread's earlier media (live: not undone, not rejected), oldest first.
        lookup: finds an explicit id outside the thread (memory); None to stay in the thread.
        task, output: given by the caller (tools), instead of inferred from the words.
        extra_sources, example: references given as data (tool arguments); resolved like words.
        example_fallback: an analogy with no edit in the thread is left without `example` (the
            caller looks in memory) instead of answered with a question.
        vocabulary: the model's `Vocabulary`; its attribute words decide what is out of vocabulary
            and which kind of medium a word is about. None (or an open one): any words.
        similar: artifact ids of media like a description, best first (memory's text search), for
            descriptions no caption in the log has.
        turn: the current turn's number (default: this turn's attachments', else one after the log).
    """
    lexicon = Lexicon(vocabulary)
    media = _Log(attached, log, lexicon)
    current_turn = turn or (attached[0].turn if attached else max((r.turn for r in log), default=0) + 1)
    tokens = tokenize(text)
    mentions = _coordinate(find_mentions(text))
    res = Resolution(mentions=mentions)
    reading = read_request(text, mentions, lexicon=lexicon, attached=bool(attached), tokens=tokens)
    if task is not None and reading.intent == "chat":
        reading = Reading(task=task)  # a tool said what it wants: never small talk
    r = _Resolver(media, lookup=lookup, similar=similar, turn=current_turn, hint=reading.modality)

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
        sub = resolve(phrase, attached=(), log=[*log, *attached], lookup=lookup, task="describe",
                      vocabulary=vocabulary, turn=current_turn)  # fmt: skip
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
            parent = media.parent(pair[0])
            if parent is None:
                return fail(r.question(f"@m:{pair[0].ref.short_id} is not the result of an edit I know of."))
            pair = [parent, media.by_id.get(pair[0].id, pair[0])]
        res.example = tuple(pair[:2])

    # 2. Conversation and out-of-vocabulary requests are answered in words.
    if reading.intent != "media" and (task is None or task == reading.task):
        res.intent, res.answer = reading.intent, reading.answer
        res.task, res.output = "generate", "text"
        return res
    res.task, res.output = reading.task, reading.output
    if task is not None:
        res.task = task
    if output is not None:
        res.output = output
    res.instruction = reading.instruction
    if res.task in ("generate", "recall") and task is None:
        return res  # nothing to look up: new media, or a search of memory

    # 3. References in the words, in order.
    pronouns: list[Mention] = []
    repeat: Mention | None = None
    for m in mentions:
        if m in reading.content:
            continue
        if m.kind == "edit_of":
            pair_ = r.edit_of(m)
            if isinstance(pair_, Clarification):
                return fail(pair_)
            res.example = pair_
            continue
        if m.kind == "last_edit":
            repeat = m  # chosen once the target is known: "do the same to the circle" repeats a picture edit
            continue
        if m.kind == "pronoun":
            pronouns.append(m)
            continue
        got = r.reference(m)
        if isinstance(got, Clarification):
            return fail(got)
        if got is None:  # "this dog" with no dog: the medium at hand
            pronouns.append(m)
            continue
        if all(s.id != got.id for s in res.sources):
            res.sources.append(got)

    # 4. Attached media are sources too (after those the words name, unless named already).
    seen = {s.id for s in res.sources}
    res.sources += [a for a in attached if a.id not in seen]
    if repeat is not None and not res.example:
        last = r.last_edit(repeat.modality or (res.sources[0].modality if res.sources else None))
        if last is not None:
            res.example = last
    return _complete(res, r, media, reading, pronouns, task, output, example_fallback)


def _complete(
    res: Resolution,
    r: _Resolver,
    media: _Log,
    reading: Reading,
    pronouns: list[Mention],
    task: str | None,
    output: str | None,
    example_fallback: bool,
) -> Resolution:
    """Fill what the words left implicit: the task's missing source, the example, the output kind."""

    def fail(c: Clarification) -> Resolution:
        res.clarification = c
        return res

    modalities = {s.modality for s in res.sources}
    if task is None and res.task == "edit" and {Modality.IMAGE, Modality.AUDIO} <= modalities:
        res.task = "compose"
    if res.task == "analogy":
        if not res.example:
            last = r.last_edit(res.sources[0].modality if res.sources else None)
            if last is not None:
                res.example = last
            elif not example_fallback:
                return fail(r.question("I haven't made an edit yet, so I don't know which edit to repeat."))
        if not res.sources:
            modality = r.hint or (res.example[0].modality if res.example else None)
            target = r.current(modality)
            if isinstance(target, Clarification):
                return fail(target)
            if target is None:
                return fail(r.question(f"There is no {_kind(modality)} to apply that edit to yet."))
            if res.example and target.id == res.example[1].id and not (reading.again or pronouns):
                return fail(r.question(f"Which {_kind(modality)} should I apply that edit to?"))
            res.sources.append(target)
    elif res.task == "describe" and reading.compare:
        compared = _compared(res.sources, r, media)
        if isinstance(compared, Clarification):
            return fail(compared)
        res.sources = compared
    elif res.task in ("edit", "describe", "compose") and not res.sources:
        target = r.current(r.hint)
        if isinstance(target, Clarification):
            return fail(target)
        if target is None:
            return fail(
                r.question(f"There is no {_kind(r.hint)} to work on yet: send one, or ask me to make one.")
            )
        res.sources.append(target)
    if res.task == "compose" and output is None:
        res.output = "image"
    if res.task in ("edit", "analogy") and res.output == "auto" and res.sources:
        res.output = res.sources[-1 if res.task == "analogy" else 0].modality.value
    if res.task == "describe":
        res.output = "text"
    return res


def _compared(sources: list[MediaRecord], r: _Resolver, media: _Log) -> list[MediaRecord] | Clarification:
    """ "what changed?": two media. One named: it against its subject's newest version (or, if it is
    the newest, against its source); none named: the newest medium against its source."""
    if len(sources) >= 2:
        return sources[:2]
    if sources:
        named = sources[0]
    else:
        got = r.current(r.hint)
        if got is None or isinstance(got, Clarification):
            return got or r.question("There is nothing to compare yet.")
        named = got
    newest = media.chain(named)[-1] if media.chain(named) else named
    if newest.id != named.id:
        return [named, newest]
    parent = media.parent(named)
    if parent is None:
        return r.question(
            f"{_label(named)} was not made from another medium; which one should I compare it with?"
        )
    return [parent, named]


def records_for(refs: Sequence[MediaRef], *, turn: int) -> list[MediaRecord]:
    """Input records for media attached to this turn."""
    return [MediaRecord(ref=ref, role="input", turn=turn, subject=ref.short_id) for ref in refs]
