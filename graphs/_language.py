"""Reading a request: which media it points at ("mentions") and what it asks for (task, output).

Deliberately a small, explicit grammar rather than a guess: every phrase it understands is listed
here, and what it does not understand is left to `_references.resolve`, which asks the user instead
of guessing. Pure functions of the text, so they are easy to test.

Example:
    >>> [m.kind for m in find_mentions("go back to the star from turn 3 and make it green")]
    ['turn', 'pronoun']
    >>> infer_task("draw a small red star in the snow", has_source=False)
    ('generate', 'image')
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from codi2_agent.media import Modality

__all__ = [
    "MEDIA_NOUNS",
    "Mention",
    "clean_instruction",
    "find_mentions",
    "infer_task",
    "looks_like_generation",
    "mentioned_modality",
    "words",
]

MentionKind = Literal["explicit", "turn", "ordinal", "edit_of", "last_edit", "subject", "pronoun"]


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


MEDIA_NOUNS: dict[Modality, tuple[str, ...]] = {
    Modality.IMAGE: ("image", "picture", "photo", "drawing", "painting", "pic", "render"),
    Modality.AUDIO: ("sound", "audio", "clip", "recording", "tone", "note", "song", "melody"),
}
_NOUN_TO_MODALITY = {
    form: m for m, nouns in MEDIA_NOUNS.items() for noun in nouns for form in (noun, noun + "s")
}
_MEDIA_NOUN_RE = "|".join(sorted(_NOUN_TO_MODALITY, key=len, reverse=True))
ORDINALS: dict[str, int] = {
    "first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3,
    "fifth": 4, "5th": 4, "last": -1, "latest": -1, "previous": -1, "most recent": -1, "newest": -1,
    "final": -1,
}  # fmt: skip
_ORDINAL_RE = "|".join(sorted(ORDINALS, key=len, reverse=True))
# Words after "the" that never name a subject: attributes, settings, and words about the request.
_NOT_SUBJECTS = _wordset(
    "same edit edits change changes colour color shape size scene background setting sound pitch "
    "instrument ambience way one ones example examples rest end left right top bottom middle centre "
    "center front back thing things result results version output input request turn time moment snow "
    "rain night day desert forest woods trees sand dunes daylight daytime silence wind crickets "
    "cicadas birds birdsong birdsong weather sky ground floor light dark other new old original"
) | frozenset(_NOUN_TO_MODALITY)
_STOP = _wordset("a an the of in on at to from with and or it its this that my your our")

_EXPLICIT = re.compile(r"@m:([0-9a-fA-F]{6,64})\b|artifact://([0-9a-f]{64})")
_TURN = re.compile(
    rf"\b(?:the\s+)?(?:(?P<noun>[a-z]+)\s+)?(?:(?:from|in|of|at|made in|you made in)\s+)turn\s+(?P<n>\d+)\b"
    rf"|\bturn\s+(?P<n2>\d+)(?:'s)?\s+(?P<noun2>{_MEDIA_NOUN_RE})\b",
    re.IGNORECASE,
)
_ORDINAL = re.compile(rf"\bthe\s+(?P<ord>{_ORDINAL_RE})\s+(?P<noun>{_MEDIA_NOUN_RE}|one)\b", re.IGNORECASE)
_EDIT_OF = re.compile(
    r"\bthe\s+(?:edit|change)\s+(?:that\s+)?(?:you|we|i)\s+(?:made|did|applied)\s+(?:to|on)\s+"
    r"(?:the\s+|my\s+)?(?P<noun>[a-z]+(?:\s+[a-z]+)?)",
    re.IGNORECASE,
)
_LAST_EDIT = re.compile(
    r"\bthe\s+(?:last|latest|previous|same)\s+(?:edit|change)\b|\bdo\s+the\s+same\b|\bapply\s+the\s+same\b"
    r"|\bthe\s+same\s+(?:edit|change|thing|transformation)\b",
    re.IGNORECASE,
)
_PHRASE_STOP = (
    r"(?:the|a|an|and|or|it|its|this|that|to|from|in|on|at|of|with|into|for|as|than|then|instead)\b"
)
_SUBJECT = re.compile(
    rf"\b(?P<det>the|my|your|this|that|these|those)\s+(?P<phrase>(?!{_PHRASE_STOP})[a-z]+(?:\s+(?!{_PHRASE_STOP})[a-z]+){{0,2}})",
    re.IGNORECASE,
)
_PRONOUN = re.compile(r"\b(?:it|its|this one|that one|this|that|them)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Mention:
    """A phrase that points at media: where it is, and what it constrains."""

    kind: MentionKind
    span: tuple[int, int]
    text: str
    modality: Modality | None = None
    turn: int | None = None
    index: int | None = None  # ordinal: 0-based, -1 for the last
    words: tuple[str, ...] = ()  # subject words ("red", "star")
    token: str | None = None  # explicit id
    deictic: bool = False  # "this dog": when no dog is known, it still points at the medium at hand

    @property
    def removable(self) -> bool:
        """Pure references, taken out of the instruction the model reads."""
        return self.kind in ("explicit", "turn", "ordinal", "edit_of")


@dataclass
class _Spans:
    taken: list[tuple[int, int]] = field(default_factory=list)

    def free(self, span: tuple[int, int]) -> bool:
        return all(span[1] <= a or span[0] >= b for a, b in self.taken)

    def take(self, span: tuple[int, int]) -> None:
        self.taken.append(span)


def words(text: str) -> list[str]:
    """Lower-case words and numbers."""
    return re.findall(r"[a-z]+|\d+", text.lower())


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def _subject_words(phrase: str) -> tuple[str, ...]:
    out = []
    for w in words(phrase):
        if w in _STOP:
            break
        out.append(_singular(w))
    return tuple(out)


def find_mentions(text: str) -> list[Mention]:
    """Every media-pointing phrase in `text`, in text order; overlapping phrases keep the most specific."""
    spans = _Spans()
    found: list[Mention] = []

    def add(m: re.Match[str], mention: Mention) -> None:
        if spans.free(m.span()):
            spans.take(m.span())
            found.append(mention)

    for m in _EXPLICIT.finditer(text):
        token = (m.group(1) or m.group(2)).lower()
        add(m, Mention("explicit", m.span(), m.group(0), token=token))
    for m in _TURN.finditer(text):
        noun = (m.group("noun") or m.group("noun2") or "").lower()
        n = int(m.group("n") or m.group("n2"))
        modality = _NOUN_TO_MODALITY.get(noun)
        subject: tuple[str, ...] = (
            () if modality or not noun or noun in _STOP or noun in _NOT_SUBJECTS else (_singular(noun),)
        )
        add(m, Mention("turn", m.span(), m.group(0), modality=modality, turn=n, words=subject))
    for m in _EDIT_OF.finditer(text):
        add(m, Mention("edit_of", m.span(), m.group(0), words=_subject_words(m.group("noun"))))
    for m in _LAST_EDIT.finditer(text):
        add(m, Mention("last_edit", m.span(), m.group(0)))
    for m in _ORDINAL.finditer(text):
        noun = m.group("noun").lower()
        index = ORDINALS[m.group("ord").lower()]
        add(m, Mention("ordinal", m.span(), m.group(0), modality=_NOUN_TO_MODALITY.get(noun), index=index))
    for m in _SUBJECT.finditer(text):
        subject = tuple(_singular(w) for w in words(m.group("phrase")))
        if subject and subject[0] not in _NOT_SUBJECTS and subject[0] not in _STOP:
            # Words after the noun ("the star blue") are dropped at resolution: the longest prefix
            # that matches a caption wins.
            deictic = m.group("det").lower() in ("this", "that", "these", "those")
            add(m, Mention("subject", m.span(), m.group(0), words=subject, deictic=deictic))
    for m in _PRONOUN.finditer(text):
        add(m, Mention("pronoun", m.span(), m.group(0)))
    return sorted(found, key=lambda x: x.span)


def mentioned_modality(text: str) -> Modality | None:
    """The media kind a request names ("picture", "sound"), if exactly one."""
    kinds = {_NOUN_TO_MODALITY[w] for w in words(text) if w in _NOUN_TO_MODALITY}
    return kinds.pop() if len(kinds) == 1 else None


# --- what is asked --------------------------------------------------------------------------------
_DESCRIBE = re.compile(
    r"\b(?:describe|caption|what(?:'s| is| was)\s+(?:in|on|this|that|it)|what do you (?:see|hear)"
    r"|what changed|what is different|what was edited|what does it (?:show|sound)|tell me (?:what|about))\b",
    re.IGNORECASE,
)
_WHAT_CHANGED = re.compile(r"\bwhat (?:changed|is different|was edited)\b", re.IGNORECASE)
_RECALL = re.compile(
    r"^\s*(?:please\s+)?(?:find|recall|search(?:\s+for)?|look\s+(?:up|for)|remember)\b", re.I
)
_ANALOGY = re.compile(
    r"\b(?:same\s+(?:edit|change|thing|transformation)|do the same|apply the same|likewise"
    r"|the (?:edit|change) (?:that )?(?:you|we|i) (?:made|did|applied))\b",
    re.IGNORECASE,
)
_COMPOSE = re.compile(
    r"\b(?:ambience|match(?:es)? the sound|fit the sound|setting this sound|sound belongs|in the setting)\b",
    re.IGNORECASE,
)
_GENERATE = re.compile(
    r"^\s*(?:please\s+|now\s+|and\s+)?(?:can you\s+|could you\s+)?(?:draw|paint|sketch|render|generate|create"
    r"|compose|synthesi[sz]e|play|make (?:me )?(?:an? |some )?(?:image|picture|photo|sound|clip|audio)"
    r"|show me an?\b|i want to (?:see|hear)|let me (?:see|hear))\b",
    re.IGNORECASE,
)
_EDIT = re.compile(
    r"^\s*(?:please\s+|now\s+|and now\s+|next,?\s+|then\s+)?(?:make|change|turn|replace|swap|recolou?r|paint"
    r"|enlarge|shrink|raise|lower|transpose|move|put|place|add|remove|take out|use|switch|show it|play it"
    r"|edit|set)\b",
    re.IGNORECASE,
)
_AUDIO_CUES = _wordset(
    "play hear sound sounds audio clip tone note hz melody song pitch instrument sine saw sawtooth "
    "pluck plucked wave"
)
_NEEDS_SOURCE = frozenset({"edit", "analogy", "compose", "describe"})


def infer_task(
    text: str, *, has_source: bool, source_modalities: tuple[Modality, ...] = ()
) -> tuple[str, str]:
    """(task, output) for a request: generate / edit / analogy / compose / describe / recall.

    `has_source`: the request points at media (mentions or attachments).
    """
    if not text.strip():  # media without words: say what they are
        return ("describe", "text") if has_source else ("generate", "image")
    if _RECALL.search(text):
        return "recall", "text"
    if _DESCRIBE.search(text):
        return "describe", "text"
    if _ANALOGY.search(text):
        target = source_modalities[-1].value if source_modalities else "auto"
        return "analogy", target
    kinds = set(source_modalities)
    if {Modality.IMAGE, Modality.AUDIO} <= kinds and (_COMPOSE.search(text) or len(source_modalities) == 2):
        return "compose", "image"
    if has_source and not (_GENERATE.search(text) and not source_modalities):
        return "edit", source_modalities[0].value if source_modalities else "auto"
    if _EDIT.search(text) and not _GENERATE.search(text):  # "change the background to snow": edit "it"
        return "edit", "auto"
    audio = any(w in _AUDIO_CUES for w in words(text))
    return "generate", "audio" if audio else "image"


def looks_like_generation(text: str) -> bool:
    """True when `text` already asks to make something ("draw …", "play …", "show me …")."""
    return bool(_GENERATE.search(text))


def needs_source(task: str) -> bool:
    return task in _NEEDS_SOURCE


def is_what_changed(text: str) -> bool:
    return bool(_WHAT_CHANGED.search(text))


_LEADS = re.compile(
    r"^(?:(?:ok(?:ay)?|so|now|then|please|and|go back to|back to|take|use|for|with|on)\s*[,:]?\s*)+", re.I
)
_DANGLING = re.compile(r"^(?:it\s*)?(?:,|and then|and|then)\s+", re.IGNORECASE)


def clean_instruction(text: str, mentions: list[Mention]) -> str:
    """The request's words for the model: pure references replaced by "it", lead-ins dropped.

    >>> clean_instruction("go back to the star from turn 3 and make it green",
    ...                   find_mentions("go back to the star from turn 3 and make it green"))
    'make it green'
    """
    out, pos = [], 0
    for m in mentions:
        if m.removable:
            out.append(text[pos : m.span[0]])
            out.append("it")
            pos = m.span[1]
    out.append(text[pos:])
    cleaned = re.sub(r"\s+", " ", "".join(out)).strip()
    for _ in range(3):  # "go back to it and make it green" -> "make it green"
        before = cleaned
        cleaned = _LEADS.sub("", cleaned).strip()
        cleaned = _DANGLING.sub("", cleaned).strip()
        if cleaned == before:
            break
    return cleaned.rstrip(" .!") or text.strip()
