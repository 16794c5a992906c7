"""Words of a request: generic English word classes, tokens, and the request-level phrases
("draw …", "what changed?") that the mention grammar (`_language`) is built from.

Generic English only: what a particular model knows (its shapes, colours, instruments) comes from its
`Vocabulary` (`_intent`), never from here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from codi2_agent.media import Modality


def _set(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- word classes (generic English) ----------------------------------------------------------------
MEDIA_NOUNS: dict[Modality, tuple[str, ...]] = {
    Modality.IMAGE: (
        "image", "picture", "photo", "photograph", "drawing", "painting", "pic", "render", "illustration",
        "artwork", "snapshot", "shot", "portrait", "frame",
    ),
    Modality.AUDIO: (
        "sound", "audio", "clip", "recording", "tone", "note", "song", "melody", "track", "tune", "noise",
        "sample", "soundscape",
    ),
}  # fmt: skip
NOUN_MODALITY: dict[str, Modality] = {
    form: m for m, nouns in MEDIA_NOUNS.items() for noun in nouns for form in (noun, noun + "s")
}
DEFINITE = _set("the my your our this that these those")
DEMONSTRATIVE = _set("this that these those")
INDEFINITE = _set("a an some another any")
PRONOUNS = _set("it its them they their this that these those")
GENERIC_HEADS = _set("one ones version versions result results output outputs thing things item items medium")
CHAIN_HEADS = _set("version versions")
ORDINALS: dict[str, int] = {
    "first": 0, "1st": 0, "second": 1, "2nd": 1, "third": 2, "3rd": 2, "fourth": 3, "4th": 3, "fifth": 4,
    "5th": 4, "sixth": 5, "6th": 5, "seventh": 6, "7th": 6, "eighth": 7, "8th": 7, "ninth": 8, "9th": 8,
    "tenth": 9, "10th": 9,
}  # fmt: skip
NUMBERS: dict[str, int] = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}  # fmt: skip
LATEST = _set("last latest newest final current recent")
PREVIOUS = _set("previous prior penultimate")
EARLIER = _set("earlier older")
LATER = _set("later newer")
ORIGINAL = _set("original initial")
# Words for what an edit changes, not for what a medium shows ("the colour", "the background").
ATTRIBUTE_NAMES = _set(
    "colour color colours colors shape shapes size sizes scene scenes background backgrounds setting "
    "settings pitch instrument instruments ambience ambiance style mood atmosphere volume tempo key"
)
# Nouns about the request, never a medium ("the difference between …", "the same way").
ABSTRACT = _set(
    "difference differences way ways rest idea point problem moment time times end start beginning"
)
# English adjectives and comparatives that describe rather than name ("the red dog" names a dog).
COLOURS = _set(
    "red green blue yellow purple violet orange pink brown black white grey gray cyan magenta teal gold "
    "golden silver beige turquoise maroon navy crimson indigo lavender lime olive scarlet"
)
SIZES = _set("small large big little tiny huge giant massive medium mid sized")
COMPARATIVES = _set(
    "bigger smaller larger tinier higher lower louder quieter softer darker lighter brighter dimmer "
    "deeper warmer cooler faster slower longer shorter wider narrower taller"
)
ADJECTIVES = COLOURS | SIZES | COMPARATIVES | _set("high low loud quiet soft deep bright dark pale")
PREPOSITIONS = _set(
    "in at on with from of over under among behind near by beside during without into onto to for as "
    "like than between inside against through across around about after before"
)
CONJUNCTIONS = _set("and or but then so because while instead plus")
# Verbs that end a noun phrase ("the star looks", "the cat should be").
VERBS = _set(
    "make makes made turn turns put place move show give take use change swap replace add remove apply "
    "do did does be is are was were been look looks become becomes get go set paint draw play let try keep "
    "bring compare combine describe render generate create shrink enlarge raise recolour recolor transpose "
    "switch fit fits match matches mix merge should could would can will must might please want like "
    "sounds seems seem feel repeat undo caption tell hear see find recall search remember"
)
# Verbs after which a phrase says where a medium goes, what replaces it, or what it goes with, not
# which medium it is ("put the star in the snow", "replace the star with a circle", "compare the
# square with the star").
PLACEMENT = _set(
    "put place move show set bring send drop replace swap substitute exchange trade compare combine mix "
    "merge contrast pair"
)
# A relative clause's verb: what the assistant made, or what the user brought.
MADE_VERBS = _set(
    "made drew created generated played painted rendered produced did had edited changed composed "
    "got gave showed"
)
SENT_VERBS = _set("sent uploaded attached shared posted gave showed brought added")
EDIT_NOUNS = _set("edit edits change changes treatment transformation")
_DESCRIBING = _set("in at on with among under over near without of from")
_TURN_PREPOSITIONS = _set("from in at of during on")
_PLACES = _set(
    "in at on among under over near into onto behind inside around through across from with beside"
)
_CHANGE_VERBS = _set("change changes turn switch set move take bring send put")
_PAIRING_VERBS = _set("compare combine mix merge contrast pair")
_STOP = (
    PREPOSITIONS
    | CONJUNCTIONS
    | VERBS
    | DEFINITE
    | INDEFINITE
    | PRONOUNS
    | _set(
        "again too also instead now then please just very really not no yes here there ago what which who "
        "same other more less you i we me us he she"
    )
)
AUDIO_WORDS = _set(
    "sound sounds audio hear listen play playing played pitch tone note hz melody song tune octave "
    "louder quieter loud volume higher lower instrument noise bass treble"
)
IMAGE_WORDS = _set(
    "picture image photo see look draw drawing paint painting colour color bigger smaller larger shrink "
    "enlarge shape darker brighter"
)


# --- tokens -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    """One word of a request: lower case, contractions expanded ("what's" -> "what" "is")."""

    word: str
    start: int
    end: int
    possessive: bool = False  # "the triangle's edit"


_TOKEN = re.compile(r"@m:[0-9a-f]+|artifact://[0-9a-f]+|[a-z0-9]+(?:'[a-z]+)?|[,.;:!?]")
_IS_AFTER = _set("what that it there here who how where he she everything")
_SUFFIXES = {"d": "would", "m": "am", "re": "are", "ll": "will", "ve": "have"}


def tokenize(text: str) -> list[Token]:
    """The request's tokens, each with its character span in `text`."""
    out: list[Token] = []
    for m in _TOKEN.finditer(text.lower().replace("\u2019", "'")):
        word, start, end = m.group(0), m.start(), m.end()
        if "'" not in word or word.startswith(("@", "artifact")):
            out.append(Token(word, start, end))
            continue
        base, suffix = word.split("'", 1)
        if suffix == "s":
            if base == "let":
                out += [Token("let", start, end), Token("us", start, end)]
            elif base in _IS_AFTER:
                out += [Token(base, start, end), Token("is", start, end)]
            else:
                out.append(Token(base, start, end, possessive=True))
        elif suffix == "t":  # don't, can't, won't
            root = {"won": "will", "can": "can", "ca": "can"}.get(
                base, base[:-1] if base.endswith("n") else base
            )
            out += [Token(root, start, end), Token("not", start, end)]
        else:
            out += [Token(base, start, end), Token(_SUFFIXES.get(suffix, suffix), start, end)]
    return out


def words(text: str) -> list[str]:
    """Lower-case words and numbers."""
    return [t.word for t in tokenize(text) if t.word[0].isalnum()]


def stem(word: str) -> str:
    """A crude singular: "stars" -> "star", "crosses" -> "cross", "berries" -> "berry"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _is_content(word: str) -> bool:
    return word[0].isalnum() and word not in _STOP


# --- what is asked, in words ------------------------------------------------------------------------
_GENERATE = re.compile(
    r"^\s*(?:(?:ok(?:ay)?|so|now|and|then|please|next|also)[,\s]+)*"
    r"(?:can you\s+|could you\s+|would you\s+|please\s+)?"
    r"(?:draw|paint|sketch|render|generate|create|compose|synthesi[sz]e|play"
    r"|make (?:me )?(?:an?|some|another)\b"
    r"|show me an?\b|give me an?\b|i want to (?:see|hear)|let me (?:see|hear)|i'?d like an?\b)",
    re.IGNORECASE,
)
_WHAT_CHANGED = re.compile(
    r"\bwhat(?:'s| is| has)?\s+(?:changed|different|the difference)|\bdifference between\b|\bcompare\b"
    r"|\bhow (?:is|are|does|do) .* differ",
    re.IGNORECASE,
)


def looks_like_generation(text: str) -> bool:
    """True when `text` already asks to make something ("draw …", "play …", "show me a …")."""
    return bool(_GENERATE.search(text))


def is_what_changed(text: str) -> bool:
    """True for "what changed?", "what's different between …", "compare …"."""
    return bool(_WHAT_CHANGED.search(text))


_LEADS = re.compile(
    r"^(?:(?:ok(?:ay)?|so|now|then|please|and|go back to|back to|take|use|for|with|on|but)\s*[,:]?\s*)+", re.I
)
_DANGLING = re.compile(r"^(?:it\s*)?(?:,|:|and then|and|then|but)\s+", re.IGNORECASE)


def clean_instruction(text: str, mentions: Sequence[Mention]) -> str:
    """The request's words for the model: pure references replaced by "it", lead-ins dropped.

    >>> from codi2_agent.graphs._language import find_mentions
    >>> clean_instruction("go back to the star from turn 3 and make it green",
    ...                   find_mentions("go back to the star from turn 3 and make it green"))
    'make it green'
    >>> text = "the one in the snow, make it yellow"
    >>> clean_instruction(text, find_mentions(text))
    'make it yellow'
    """
    out, pos = [], 0
    for m in mentions:
        if m.removable:
            out.append(text[pos : m.span[0]])
            out.append("it")
            pos = m.span[1]
    out.append(text[pos:])
    cleaned = re.sub(r"\s+", " ", "".join(out)).strip()
    for _ in range(4):  # "go back to it and make it green" -> "make it green"
        before = cleaned
        cleaned = _LEADS.sub("", cleaned).strip()
        cleaned = _DANGLING.sub("", cleaned).strip()
        cleaned = re.sub(r"^it\s*(?:,|:)\s*", "", cleaned)
        if cleaned == before:
            break
    return cleaned.rstrip(" .!") or text.strip()


# --- a phrase that points at media (found by `_language`) -------------------------------------------
MentionKind = Literal["explicit", "turn", "position", "description", "pronoun", "edit_of", "last_edit"]
Scope = Literal["log", "chain", "all"]


@dataclass(frozen=True)
class Mention:
    """A phrase that points at media: where it is, and what it constrains.

    Attributes:
        kind: explicit (an id), turn (a turn's media), position (first / last / previous /
            original …), description (words to find in captions), pronoun ("it", "this one"),
            edit_of (an edit, named by what it was applied to: `inner`), last_edit ("the same").
        index: for positions, 0-based from the start, negative from the end (-1 the latest,
            -2 the one before); with `scope` "chain" counted along one subject's versions, "all"
            over every medium whatever its kind ("the very first one").
        words: description words, singular ("blue", "star"); `head` the phrase's noun.
        role: "output" (what you made) or "input" (what I sent), from a relative clause.
        turn / turns_ago: an absolute turn, or one counted back from the current turn.
        coordinated: joined to the mention before it ("the first and the last picture"), so a
            phrase without a noun of its own shares that mention's.
        again: "do it again": the edit may be applied to its own result.
    """

    kind: MentionKind
    span: tuple[int, int]
    text: str
    modality: Modality | None = None
    turn: int | None = None
    turns_ago: int | None = None
    index: int | None = None
    scope: Scope = "log"
    words: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()  # words of a trailing phrase that may be the change instead
    head: str | None = None
    token: str | None = None
    role: Literal["input", "output"] | None = None
    other: bool = False
    earlier: bool = False  # "the earlier one": the older of two, else the one before the latest
    deictic: bool = False  # "this dog": when no dog is known, it still points at the medium at hand
    coordinated: bool = False
    again: bool = False
    inner: Mention | None = None
    clause_start: bool = False  # the phrase opens its clause ("the one in the snow, make it blue")

    @property
    def generic(self) -> bool:
        """The phrase names no content of its own ("the picture", "the one before that")."""
        return not self.words

    @property
    def removable(self) -> bool:
        """Pure references, replaced by "it" in the instruction the model reads."""
        if self.kind in ("explicit", "turn", "position", "edit_of"):
            return True
        return self.kind == "description" and (
            self.generic or self.head in GENERIC_HEADS or self.clause_start
        )
