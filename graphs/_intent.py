"""What a request is for, before any medium is generated: a conversation, something outside what the
model knows, or a medium to make, edit, combine or describe — and which of those.

The model's own `Vocabulary` (its config's ``"vocabulary"``) says which attribute words it knows;
nothing about a particular model's world is written here. With an open vocabulary (the paper
preset's language model reads any words) nothing is ever out of vocabulary.

Example:
    >>> from codi2_agent.model.vocabulary import Vocabulary
    >>> shapes = {"image": {"shape": ("star", "circle"), "colour": ("red", "blue")}}
    >>> closed = Lexicon(Vocabulary(attributes=shapes))
    >>> read_request("hello, how are you?", [], lexicon=closed).intent
    'chat'
    >>> r = read_request("draw a dog", [], lexicon=closed)
    >>> r.intent, r.unknown
    ('out_of_vocabulary', ('dog',))
    >>> read_request("draw a red star", [], lexicon=closed).task
    'generate'
    >>> read_request("blue instead", [], lexicon=closed).instruction
    'make it blue'
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from codi2_agent.media import Modality

from ._language import Mention, modality_cues
from ._words import (
    ADJECTIVES,
    COLOURS,
    COMPARATIVES,
    GENERIC_HEADS,
    NOUN_MODALITY,
    PREPOSITIONS,
    SIZES,
    VERBS,
    Token,
    is_what_changed,
    looks_like_generation,
    stem,
    tokenize,
)

if TYPE_CHECKING:
    from codi2_agent.model.vocabulary import Vocabulary

__all__ = ["Intent", "Lexicon", "Reading", "chat_answer", "read_request"]

Intent = Literal["media", "chat", "out_of_vocabulary"]


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- the model's words ------------------------------------------------------------------------------
class Lexicon:
    """The attribute words a model knows, per modality, read from its `Vocabulary`.

    None or an open vocabulary: the model reads any words, so every word is known.
    """

    def __init__(self, vocabulary: Vocabulary | None = None):
        attributes: Mapping[str, Mapping[str, tuple[str, ...]]] = (
            vocabulary.attributes if vocabulary is not None else {}
        )
        self.attributes = {m: dict(attrs) for m, attrs in attributes.items()}
        self.closed = bool(self.attributes)
        # word -> {(modality, attribute)}
        self._where: dict[str, set[tuple[str, str]]] = {}
        for modality, attrs in self.attributes.items():
            for name, values in attrs.items():
                for value in values:
                    for w in value.lower().split():
                        self._where.setdefault(stem(w), set()).add((modality, name))

    def _lookup(self, word: str) -> set[tuple[str, str]]:
        w = stem(word.lower())
        found = self._where.get(w)
        if found:
            return found
        # "plucked" ~ "pluck", "snowy" ~ "snow", "daylight" ~ "day": a known word plus a short ending.
        for known, where in self._where.items():
            if len(known) >= 3 and w.startswith(known) and len(w) - len(known) <= 5:
                return where
        return set()

    def knows(self, word: str) -> bool:
        """True when the model knows `word` (always, for an open vocabulary)."""
        return not self.closed or bool(self._lookup(word))

    def modality_of(self, word: str) -> Modality | None:
        """The one modality whose attributes have `word`, else None."""
        kinds = {m for m, _ in self._lookup(word)}
        return Modality(kinds.pop()) if len(kinds) == 1 else None

    def attributes_of(self, word: str) -> set[tuple[str, str]]:
        """(modality, attribute) pairs that have `word` among their values."""
        return self._lookup(word)

    def values_like(self, english: frozenset[str]) -> list[tuple[str, str, tuple[str, ...]]]:
        """The attributes whose values are words of an English class (the colours it knows)."""
        return [
            (m, name, values)
            for m, attrs in self.attributes.items()
            for name, values in attrs.items()
            if any(v in english for v in values)
        ]

    def describe(self) -> str:
        """What the model can make, in its own words."""
        if not self.closed:
            return (
                "I can make pictures and sounds from a description, edit them, describe them, combine "
                "a picture with a sound, and repeat an edit on another medium."
            )
        kinds = {"image": "pictures", "audio": "sounds"}
        parts = []
        for modality in ("image", "audio"):
            attrs = self.attributes.get(modality)
            if attrs:
                listed = "; ".join(f"{name}: {', '.join(values)}" for name, values in sorted(attrs.items()))
                parts.append(f"{kinds[modality]} ({listed})")
        return f"I can make and edit {' and '.join(parts)}, describe them, and repeat an edit on another one."


# --- conversation -----------------------------------------------------------------------------------
_CHAT: dict[str, tuple[str, ...]] = {
    "greeting": (
        r"hi+", r"hello+", r"hey+(?: there)?", r"hiya", r"howdy", r"yo", r"greetings",
        r"good (?:morning|afternoon|evening|day)", r"nice to meet you",
    ),
    "how": (
        r"how are you(?: doing)?(?: today)?", r"how is it going", r"how are things", r"what is up", r"sup",
        r"how do you do",
    ),
    "thanks": (
        r"thanks?(?: you)?(?: so much| very much| a lot| a bunch| again)?", r"thx", r"ty", r"cheers",
        r"much appreciated", r"appreciate it",
    ),
    "farewell": (
        r"bye+", r"goodbye", r"good bye", r"good night", r"see you(?: later| soon)?", r"see ya", r"later",
        r"take care", r"have a (?:nice|good|great) (?:day|night|one|evening)", r"i am done",
        r"that is all(?: for now)?", r"nothing(?: else)?(?: for now)?",
    ),
    "who": (
        r"what can you (?:do|make|draw|play|create|generate)", r"what are you able to do",
        r"what (?:kinds?|sorts?|types?) of \w+ (?:can|do) you (?:\w+ )?(?:make|draw|play|create|generate|do)",
        r"what (?:colou?rs|shapes|sounds|pictures|things) (?:can|do) you (?:\w+ )?(?:make|draw|play|know|do)",
        r"what do you know", r"who are you", r"what are you", r"what is your name", r"help(?: me)?",
        r"how does this work",
    ),
    "reaction": (
        r"ok(?:ay)?", r"k", r"cool", r"nice(?: one| work)?", r"great(?: job| work)?", r"good (?:job|work)",
        r"well done", r"awesome", r"amazing", r"perfect", r"lovely", r"beautiful", r"wonderful",
        r"fantastic", r"excellent", r"brilliant", r"neat", r"wow+", r"lol", r"ha(?:ha)+", r"hehe",
        r"yes", r"yeah", r"yep", r"no", r"nope", r"sure", r"alright", r"fine", r"sounds good", r"looks good",
        r"got it", r"i see", r"interesting", r"fun", r"sorry", r"no worries", r"no problem", r"never ?mind",
        r"(?:that|this|it) (?:is|was|looks|sounds)(?: \w+)? (?:great|good|nice|cool|awesome|amazing|"
        r"perfect|lovely|beautiful|fun|wonderful|fantastic|excellent|brilliant|neat|funny|pretty|cute|"
        r"interesting|fine|ok|okay|right)",
        r"i (?:really )?(?:love|like) (?:it|this|that)(?: one)?", r"love it", r"all good",
        r"(?:that|this|it) is (?:exactly |just )?what i (?:wanted|needed|meant|asked for|had in mind)",
        r"exactly", r"just right", r"spot on",
    ),
}  # fmt: skip
_CHAT_RE = {kind: re.compile(r"\b(?:" + "|".join(ps) + r")\b") for kind, ps in _CHAT.items()}
_FILLER = _set(
    "so very much really a lot you too again all for now that is it this one oh ah um uh hmm well then and "
    "just the me my friend there everyone buddy today please thank"
)
_CHAT_ANSWERS = {
    "greeting": "Hello! {can} What shall I make?",
    "how": "I'm doing well, thank you! {can}",
    "thanks": "You're welcome!",
    "farewell": "Goodbye!",
    "who": "I'm a CoDi-2 assistant. {can}",
    "reaction": "Glad you like it. Tell me what to change, or ask for something new.",
}


def chat_kind(tokens: Sequence[Token]) -> str | None:
    """The kind of conversational message this is ("greeting", "thanks", …), or None for a request."""
    text = " ".join(t.word for t in tokens if t.word[0].isalnum())
    if not text:
        return None
    kinds = []
    for kind, pattern in _CHAT_RE.items():
        if pattern.search(text):
            kinds.append(kind)
            text = pattern.sub(" ", text)
    left = [w for w in text.split() if w not in _FILLER]
    return kinds[0] if kinds and not left else None


def chat_answer(kind: str, lexicon: Lexicon) -> str:
    """A short text answer to a conversational message (no media)."""
    return _CHAT_ANSWERS.get(kind, _CHAT_ANSWERS["reaction"]).format(can=lexicon.describe())


# --- what is asked --------------------------------------------------------------------------------
_RECALL = re.compile(
    r"^\s*(?:please\s+)?(?:find|recall|search(?:\s+for)?|look\s+(?:up|for)|remember)\b", re.IGNORECASE
)
_DESCRIBE = re.compile(
    r"\b(?:describe|caption)\b|\bwhat(?:'s| is| was| are| were)\s+(?:in|on)\b"
    r"|\bwhat(?:'s| is| was)\s+(?:this|that|it|@m:|artifact://|the\s)|\bwhat do you (?:see|hear)\b"
    r"|\bwhat did you (?:make|draw|play|create|generate|paint|render|do|show|give|send)\b"
    r"|\bwhat does (?:it|this|that) (?:show|look|sound)|\btell me (?:what|about)\b",
    re.IGNORECASE,
)
_MORE_GENERATE = re.compile(
    r"\bnew (?:one|picture|image|photo|sound|clip|drawing|tone)\b|^\s*start over\b"
    r"|^\s*(?:can|could|may) (?:i|we) (?:get|have|see|hear) an?\b"
    r"|^\s*i (?:would|'d) like an?\b|^\s*i want an?\b",
    re.IGNORECASE,
)
_GENERATE_END = re.compile(
    r"(?:draw|paint|sketch|render|generate|create|compose|synthesi[sz]e|play|make|show|give|see|hear|like|"
    r"get|have|want|over with|new (?:one|picture|image|photo|sound|clip|drawing|tone))\b(?:\s+(?:me|us))?",
    re.IGNORECASE,
)
# Leads and trails of an elliptical follow-up: "and now bigger", "blue instead", "what about red?"
_LEADS = (
    ("what", "about"), ("how", "about"), ("let", "us", "try"), ("and", "now"), ("same", "but"),
    ("instead",), ("now",), ("try",), ("and",), ("ok",), ("okay",), ("so",), ("but",), ("hmm",), ("maybe",),
    ("perhaps",), ("then",), ("actually",), ("no",), ("well",), ("also",), ("just",), ("same",), ("um",),
    ("please",), ("oh",),
)  # fmt: skip
_MARKERS = frozenset(
    {"what about", "how about", "let us try", "and now", "same but", "instead", "now", "try", "same"}
)
_TRAILS = (
    ("this", "time"), ("for", "a", "change"), ("as", "well"), ("instead",), ("please",), ("again",), ("too",),
    ("then",), ("now",), ("maybe",), ("perhaps",),
)  # fmt: skip
_TRAIL_MARKERS = frozenset({"this time", "instead", "now", "for a change"})
_AMOUNTS = _set("bit little lot touch tad notch step octave octaves half semitone")
_LOCATIVE = _set("in on at among under over near behind beside inside around across through")
_GENERIC = (
    _set(
        "something anything thing things one new nice pretty cool beautiful simple random another different "
        "same me please again now also just very really middle mid some kind sort type cute lovely"
    )
    | _AMOUNTS
)
_ANALOGY_ALONE = _set("again please once more one time repeat do it that same")


@dataclass(frozen=True)
class Reading:
    """What a request asks for, read from its words (before any medium is looked up).

    Attributes:
        intent: media (make, edit, describe …), chat (a text answer), or out_of_vocabulary.
        task / output: what to do and what comes out ("generate" / "image", "edit" / "auto" …).
        answer: the text reply for chat and out-of-vocabulary requests.
        ellipsis: only the change was named ("blue instead"): it applies to the current subject.
        instruction: the words for the model when they had to be completed ("make it blue").
        modality: the kind of media the words lean to, if only one.
        compare: "what changed …": a description of the difference between two media.
        again: "do it again": an edit may be repeated on its own result.
        content: mentions that are what to make, not media to find ("a picture of the eiffel tower").
        unknown: out-of-vocabulary words.
    """

    intent: Intent = "media"
    task: str = "generate"
    output: str = "auto"
    answer: str | None = None
    ellipsis: bool = False
    instruction: str | None = None
    modality: Modality | None = None
    compare: bool = False
    again: bool = False
    content: tuple[Mention, ...] = ()
    unknown: tuple[str, ...] = ()


def _strip(ws: list[str], options: Sequence[tuple[str, ...]], at_end: bool) -> tuple[list[str], set[str]]:
    """Drop leading (or trailing) words of `options` as long as one matches; return what was dropped."""
    dropped: set[str] = set()
    changed = True
    while changed and ws:
        changed = False
        for phrase in options:
            n = len(phrase)
            part = tuple(ws[-n:]) if at_end else tuple(ws[:n])
            if len(ws) >= n and part == phrase:
                ws = ws[:-n] if at_end else ws[n:]
                dropped.add(" ".join(phrase))
                changed = True
                break
    return ws, dropped


def _ellipsis(tokens: Sequence[Token]) -> str | None:
    """The instruction a change-only follow-up stands for ("blue instead" -> "make it blue"), or None."""
    ws = [t.word for t in tokens if t.word[0].isalnum()]
    ws, lead = _strip(ws, _LEADS, at_end=False)
    ws, trail = _strip(ws, _TRAILS, at_end=True)
    if not ws or any(w in VERBS or w in ("it", "its", "them", "this", "that") for w in ws):
        return None
    marked = bool(lead & _MARKERS or trail & _TRAIL_MARKERS)
    phrase = " ".join(ws)
    if ws[0] in ("in", "at", "on", "with", "among", "under", "over", "near", "without", "into", "inside"):
        return f"put it {phrase}"
    if ws[0] in ("a", "an", "some"):
        if ws[1:2] and ws[1] in _AMOUNTS and ws[2:3] and ws[2] in COMPARATIVES:
            return f"make it {phrase}"  # "an octave higher", "a bit smaller" (not "a little yellow circle")
        return f"make it {phrase}" if marked else None  # "a circle this time"; a bare "a circle" is new
    if any(w in PREPOSITIONS and w not in ("than", "to") for w in ws[:-1]):
        return None  # "blue with a red border": more than a change of one thing
    return f"make it {phrase}"


def _object_words(text: str, tokens: Sequence[Token]) -> list[str]:
    """The words of what a generation request asks to make: "draw a red dog in the snow" -> red, dog."""
    start = 0
    colons = [i for i, t in enumerate(tokens) if t.word == ":"]
    if colons:
        start = colons[-1] + 1
    else:
        m = _GENERATE_END.search(text)
        if m is not None:
            start = next((i for i, t in enumerate(tokens) if t.start >= m.end()), len(tokens))
    out: list[str] = []
    i = start
    while i < len(tokens):
        w = tokens[i].word
        if w in ("a", "an", "some", "the", "any", "my", "me", "us", "to", "see", "hear") and not out:
            i += 1
            continue
        if w in NOUN_MODALITY:  # "a picture of …", "an audio clip of …"
            if i + 1 < len(tokens) and tokens[i + 1].word == "of":
                out.clear()
                i += 2
                continue
            i += 1
            continue
        if (
            not w[0].isalnum()
            or w in PREPOSITIONS
            or w in ("and", "or", "but", "please", "with", "that", "which")
        ):
            break
        out.append(w)
        i += 1
    return out


def _unknown_in_object(words: Sequence[str], lexicon: Lexicon) -> list[str]:
    """Words of a noun phrase the model does not know; an unknown head is fine after a known word of a
    kind ("a plucked string", "a saw wave"), not after a colour or a size ("a red dog")."""
    kept = [w for w in words if w not in _GENERIC and not w.isdigit() and w not in ("hz", "khz")]
    kept = [w for w in kept if not (w in ADJECTIVES and w not in COLOURS)]
    unknown = [w for w in kept if not lexicon.knows(w)]
    if not unknown:
        return []
    licensing = [w for w in kept if lexicon.knows(w) and w not in COLOURS and w not in SIZES]
    if unknown == [kept[-1]] and licensing:
        return []
    return unknown


def _unknown_in_edit(tokens: Sequence[Token], mentions: Sequence[Mention], lexicon: Lexicon) -> list[str]:
    """Colours and new things an edit asks for that the model does not know ("make it pink", "turn it
    into a dog"); words inside references ("the blue star") are names, not requests."""
    inside = [m.span for m in mentions]
    free = [t for t in tokens if not any(a <= t.start < b for a, b in inside)]
    played = any(t.word in ("play", "played", "playing") for t in tokens)
    unknown: list[str] = []
    for i, t in enumerate(free):
        if t.word in COLOURS and not lexicon.knows(t.word):
            unknown.append(t.word)
        before = free[i - 1].word if i else ""
        if before in _LOCATIVE and not (before == "on" and played):
            continue  # "on a sunny day" says where; "play it on a guitar" asks for an instrument
        if t.word in ("a", "an"):
            phrase = []
            for u in free[i + 1 :]:
                if not u.word[0].isalnum() or u.word in PREPOSITIONS or u.word in VERBS or u.word in (
                    "and", "or", "but", "instead", "please", "this", "again", "too", "now"
                ):  # fmt: skip
                    break
                phrase.append(u.word)
            if phrase and phrase[-1] not in NOUN_MODALITY and phrase[-1] not in GENERIC_HEADS:
                unknown += [w for w in _unknown_in_object(phrase, lexicon) if w not in unknown]
            elif phrase:
                unknown += [w for w in _unknown_in_object(phrase[:-1], lexicon) if w not in unknown]
    return unknown


def oov_answer(unknown: Sequence[str], lexicon: Lexicon, task: str) -> str:
    """An honest answer for a request the model cannot make: the words it does not know, and what
    it can make instead."""
    quoted = ", ".join(f"'{w}'" for w in unknown)
    what = "make that" if task == "generate" else "make that change"
    answer = f"I can't {what}: this model doesn't know {quoted}."
    colours = [w for w in unknown if w in COLOURS]
    for _, name, values in lexicon.values_like(COLOURS) if colours else ():
        answer += f" The {name}s it knows: {', '.join(values)}."
    return f"{answer} {lexicon.describe()}"


def read_request(
    text: str,
    mentions: Sequence[Mention],
    *,
    lexicon: Lexicon,
    attached: bool = False,
    tokens: Sequence[Token] | None = None,
) -> Reading:
    """What `text` asks for, given the media phrases found in it.

    Args:
        mentions: `find_mentions(text)`.
        lexicon: the model's words.
        attached: media came with the message (they are its subject).
    """
    tokens = list(tokens) if tokens is not None else tokenize(text)
    ws = [t.word for t in tokens if t.word[0].isalnum()]
    modality = modality_cues(ws, lexicon.modality_of if lexicon.closed else None)
    if not ws:
        return Reading(task="describe" if attached else "generate", output="text" if attached else "image")
    if _RECALL.search(text):
        return Reading(task="recall", output="text")
    kind = None if attached else chat_kind(tokens)
    if kind is not None:
        return Reading(intent="chat", output="text", answer=chat_answer(kind, lexicon))
    compare = is_what_changed(text)
    if compare or _DESCRIBE.search(text):
        return Reading(task="describe", output="text", modality=modality, compare=compare)
    edits = [m for m in mentions if m.kind in ("edit_of", "last_edit")]
    bare_again = "again" in ws or ("once" in ws and "more" in ws)
    if edits or (bare_again and all(w in _ANALOGY_ALONE for w in ws)):
        return Reading(
            task="analogy", modality=modality, again=any(m.again for m in edits) or (bare_again and not edits)
        )
    references = [m for m in mentions if m.kind != "pronoun"]
    pronouns = [m for m in mentions if m.kind == "pronoun"]
    generate = looks_like_generation(text) or bool(_MORE_GENERATE.search(text))
    content = tuple(
        m for m in references if m.kind == "description" and text[: m.span[0]].rstrip().endswith(" of")
    )
    if generate and not pronouns and len(content) == len(references):
        return _generation(text, tokens, lexicon, modality, content)
    if not mentions and not attached:
        instruction = _ellipsis(tokens)
        if instruction is not None:  # only the change: "blue instead" edits the current subject
            reading = Reading(task="edit", ellipsis=True, instruction=instruction, modality=modality)
            return _checked(reading, tokens, mentions, lexicon)
        if ws[0] in ("a", "an", "some", "another") or not any(w in VERBS for w in ws):
            return _generation(text, tokens, lexicon, modality, ())  # "a blue circle at night"
    return _checked(Reading(task="edit", modality=modality), tokens, mentions, lexicon)


def _generation(
    text: str,
    tokens: Sequence[Token],
    lexicon: Lexicon,
    modality: Modality | None,
    content: tuple[Mention, ...],
) -> Reading:
    """New media, unless they are made of words the model does not know."""
    output = "audio" if modality is Modality.AUDIO else "image"
    reading = Reading(task="generate", output=output, modality=modality, content=content)
    if lexicon.closed:
        unknown = _unknown_in_object(_object_words(text, tokens), lexicon)
        if unknown:
            return Reading(
                intent="out_of_vocabulary", task="generate", output="text", unknown=tuple(unknown),
                answer=oov_answer(unknown, lexicon, "generate"),
            )  # fmt: skip
    return reading


def _checked(
    reading: Reading, tokens: Sequence[Token], mentions: Sequence[Mention], lexicon: Lexicon
) -> Reading:
    """An edit, unless it asks for something the model does not know."""
    if not lexicon.closed:
        return reading
    unknown = _unknown_in_edit(tokens, mentions, lexicon)
    if not unknown:
        return reading
    return Reading(
        intent="out_of_vocabulary", task="edit", output="text", unknown=tuple(unknown),
        answer=oov_answer(unknown, lexicon, "edit"),
    )  # fmt: skip
