"""Reading a request: the phrases that point at media ("mentions").

A small grammar over tokens, in generic English only: determiners, pronouns, ordinals and recency
words, media nouns ("picture", "sound"), turn phrases ("from turn 3", "two turns ago"), relative
clauses ("the one you made in turn 2", "the photo I sent"), descriptive phrases ("the one in the
snow", "the sound with rain") and references to edits ("what you did to the star", "the same
change"). Words about a model's world (which shapes or colours it knows) are never listed here:
descriptions are matched against the media log's captions by `_references`, and the model's
`Vocabulary` is read by `_intent`. Pure functions of the text, so they are easy to test.

Example:
    >>> [m.kind for m in find_mentions("go back to the star from turn 3 and make it green")]
    ['turn', 'pronoun']
    >>> m = find_mentions("combine the first picture with the last sound")
    >>> [(x.index, x.modality.value) for x in m]
    [(0, 'image'), (-1, 'audio')]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from codi2_agent.media import Modality

from ._words import (
    _CHANGE_VERBS,
    _DESCRIBING,
    _PAIRING_VERBS,
    _PLACES,
    _TURN_PREPOSITIONS,
    ABSTRACT,
    ADJECTIVES,
    ATTRIBUTE_NAMES,
    AUDIO_WORDS,
    CHAIN_HEADS,
    COLOURS,
    DEFINITE,
    DEMONSTRATIVE,
    EARLIER,
    EDIT_NOUNS,
    GENERIC_HEADS,
    IMAGE_WORDS,
    LATER,
    LATEST,
    MADE_VERBS,
    MEDIA_NOUNS,
    NOUN_MODALITY,
    NUMBERS,
    ORDINALS,
    ORIGINAL,
    PLACEMENT,
    PREVIOUS,
    PRONOUNS,
    SENT_VERBS,
    Mention,
    MentionKind,
    Token,
    _is_content,
    clean_instruction,
    is_what_changed,
    looks_like_generation,
    stem,
    tokenize,
    words,
)

__all__ = [
    "MEDIA_NOUNS",
    "Mention",
    "Token",
    "clean_instruction",
    "find_mentions",
    "is_what_changed",
    "looks_like_generation",
    "mentioned_modality",
    "modality_cues",
    "stem",
    "tokenize",
    "words",
]


# --- mentions ---------------------------------------------------------------------------------------
class _Parser:
    """One pass over the tokens, longest phrase first at each place."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.mentions: list[Mention] = []

    # --- helpers ------------------------------------------------------------------------------
    def word(self, i: int) -> str:
        return self.tokens[i].word if 0 <= i < len(self.tokens) else ""

    def seq(self, i: int, *parts: str | frozenset[str]) -> int | None:
        """The index after `parts` matched from i (a part is a word or a set of words), else None."""
        for part in parts:
            w = self.word(i)
            if not (w == part if isinstance(part, str) else w in part):
                return None
            i += 1
        return i

    def span(self, i: int, j: int) -> tuple[int, int]:
        return self.tokens[i].start, self.tokens[j - 1].end

    def make(self, kind: MentionKind, i: int, j: int, **fields: object) -> Mention:
        start, end = self.span(i, j)
        return Mention(kind, (start, end), self.text[start:end], **fields)  # type: ignore[arg-type]

    def number(self, i: int) -> int | None:
        w = self.word(i)
        if w.isdigit():
            return int(w)
        return NUMBERS.get(w)

    # --- turns --------------------------------------------------------------------------------
    def turn_phrase(self, i: int) -> tuple[int, dict[str, int]] | None:
        """ "turn 3", "the second turn", "last turn", "the turn before", "two turns ago"."""
        j = i + 1 if self.word(i) == "the" else i
        if self.word(j) == "turn" and self.word(j + 1).isdigit():
            return j + 2, {"turn": int(self.word(j + 1))}
        if self.word(j) in ORDINALS and self.word(j + 1) == "turn":
            return j + 2, {"turn": ORDINALS[self.word(j)] + 1}
        if self.word(j) in (LATEST | PREVIOUS) and self.word(j + 1) == "turn":
            return j + 2, {"turns_ago": 1}
        if self.seq(j, "turn", "before") is not None:
            return j + 2, {"turns_ago": 1}
        n = self.number(i)
        if n is not None and self.word(i + 1) in ("turn", "turns") and self.word(i + 2) in ("ago", "back"):
            return i + 3, {"turns_ago": n}
        return None

    def turn_constraint(self, i: int) -> tuple[int, dict[str, int]] | None:
        """A turn phrase, with the preposition before it: "from turn 2", "in the last turn"."""
        j = i + 1 if self.word(i) in ("from", "in", "at", "of", "during", "on") else i
        if j == i and self.word(i) != "turn" and self.number(i) is None and self.word(i) not in LATEST:
            return None
        return self.turn_phrase(j)

    # --- relative clauses and trailing phrases --------------------------------------------------
    def relative(self, i: int, fields: dict[str, object]) -> int:
        """ "(that) you made (in turn 2 | earlier | first | just)", "(that) I sent"."""
        j = i + 1 if self.word(i) in ("that", "which") else i
        if self.word(j) not in ("you", "i", "we"):
            return i
        who = self.word(j)
        j += 1
        lead = None
        while self.word(j) in ("just", "first", "originally", "last", "previously", "also"):
            lead = self.word(j)
            j += 1
        verb = self.word(j)
        if not (
            (who == "you" and verb in MADE_VERBS) or (who in ("i", "we") and verb in SENT_VERBS | MADE_VERBS)
        ):
            return i
        fields["role"] = "output" if who == "you" else "input"
        j += 1
        if self.word(j) in ("me", "you", "us"):
            j += 1
        when = lead
        turn = self.turn_constraint(j)
        if turn is not None:
            j, found = turn
            fields.update(found)
        elif self.word(j) in ("earlier", "before", "previously", "first", "last", "recently", "originally"):
            when = self.word(j)
            j += 1
        elif self.seq(j, "at", "first") or self.seq(j, "at", "the", frozenset({"start", "beginning"})):
            when = "first"
            j += 2 if self.word(j + 1) == "first" else 3
        elif self.seq(j, "just", "now") or self.seq(j, "a", "moment", "ago"):
            when = "just"
            j += 2 if self.word(j) == "just" else 3
        if when in ("first", "originally"):
            fields.setdefault("index", 0)
        elif when in ("just", "last", "recently"):
            fields.setdefault("index", -1)
        elif when in ("earlier", "before", "previously"):
            fields.setdefault("earlier", True)
            fields.setdefault("index", -2)
        return j

    def descriptive(self, i: int) -> tuple[int, tuple[str, ...]] | None:
        """ "in the snow", "with rain", "of the star": words that may describe a medium, else None."""
        if self.word(i) not in _DESCRIBING:
            return None
        j = i + 1
        while self.word(j) in ("the", "a", "an", "some", "my"):
            j += 1
        found: list[str] = []
        noun_seen = False
        while j < len(self.tokens) and _is_content(self.word(j)):
            w = self.word(j)
            if w in NOUN_MODALITY or w in ORDINALS or w in LATEST or w in ATTRIBUTE_NAMES or w == "turn":
                return None  # another reference ("with the last sound") or an attribute's name
            if noun_seen and w in ADJECTIVES:
                break  # "the triangle in the rain orange"
            found.append(stem(w))
            noun_seen = noun_seen or w not in ADJECTIVES
            j += 1
        if not found:
            return None
        return j, tuple(found)

    def position(self, j: int, fields: dict[str, object]) -> int:
        """Position words after the article: "very first", "second to last", "previous", "original"."""
        w = self.word
        if self.seq(j, "very", "first"):
            fields.update(index=0, scope="all")
            return j + 2
        if self.seq(j, "most", "recent"):
            fields["index"] = -1
            return j + 2
        if self.seq(j, frozenset({"second", "next"}), "to", "last"):
            fields["index"] = -2
            return j + 3
        if self.seq(j, "second", "last"):
            fields["index"] = -2
            return j + 2
        if w(j) in ORDINALS:
            fields["index"] = ORDINALS[w(j)]
        elif w(j) in LATEST or w(j) in LATER:
            fields["index"] = -1
        elif w(j) in PREVIOUS:
            fields["index"] = -2
        elif w(j) in EARLIER:
            fields.update(index=-2, earlier=True)
        elif w(j) in ORIGINAL:
            fields.update(index=0, scope="chain")
        elif w(j) == "other":
            fields["other"] = True
        else:
            return j
        return j + 1

    def before_that(self, j: int, head: str | None, fields: dict[str, object]) -> int:
        """ "the one before that", "the picture before last", "the one before the last one"."""
        if self.seq(j, "before", "that") or self.seq(j, "before", "last"):
            fields["index"] = -2
            j += 2
            return j + 1 if self.word(j) == "one" else j
        if self.seq(j, "before", "the", LATEST):
            fields["index"] = -2
            j += 3
            return j + 1 if self.word(j) in GENERIC_HEADS or self.word(j) in NOUN_MODALITY else j
        if self.word(j) == "before" and head in GENERIC_HEADS and not _is_content(self.word(j + 1)):
            fields["index"] = -2
            j += 1
            if self.word(j) in ("this", "it", "now"):  # "the version before this one"
                j += 1
                return j + 1 if self.word(j) in ("one", "version") else j
            return j
        return j

    # --- noun phrases ---------------------------------------------------------------------------
    def noun_phrase(self, i: int, *, determiner: bool = True) -> tuple[int, Mention] | None:
        """A definite phrase that names media: "the very first picture", "the blue star in the snow",
        "the one before that", "the sound from turn 2", "the photo I sent"."""
        start = i
        fields: dict[str, object] = {}
        j = self.position(i + 1 if determiner else i, fields)
        # Modifiers, then the head; an adjective never follows the noun ("the star blue" is "the star").
        content: list[str] = []
        head = None
        modality = None
        noun_seen = False
        while j < len(self.tokens):
            tok = self.tokens[j]
            w = tok.word
            if w in NOUN_MODALITY:
                modality, head = NOUN_MODALITY[w], w
                j += 1
                while not tok.possessive and self.word(j) in NOUN_MODALITY:  # "the sound clip"
                    j += 1
                break
            if w in GENERIC_HEADS:
                head = w
                j += 1
                break
            if w in ATTRIBUTE_NAMES or w in ABSTRACT:  # "the background sound", "the difference"
                j += 1
                continue
            if not _is_content(w) or (noun_seen and w in ADJECTIVES):
                break
            content.append(stem(w))
            noun_seen = noun_seen or w not in ADJECTIVES
            j += 1
            if tok.possessive:
                break
        if head is None and content and all(w in ADJECTIVES for w in content):
            j -= len(content)  # "make this blue": the adjective is the change, not a name
            content = []
        if head is None and content:
            head = content[-1]
        if head is None and not fields:
            return None  # "the same", "the colour": nothing that names a medium
        j = self.before_that(j, head, fields)
        if head in CHAIN_HEADS and "index" in fields:
            fields["scope"] = "chain"
        # Trailing turn phrases, relative clauses and descriptive phrases. After a content noun that
        # follows a placement verb, a phrase says where to put it: "put the star in the snow".
        prev, prev2 = self.word(start - 1), self.word(start - 2)
        placed = prev in PLACEMENT or (prev2 in PLACEMENT and prev in ("me", "us"))
        content_head = head is not None and head not in GENERIC_HEADS and head not in NOUN_MODALITY
        optional: list[str] = []
        while not self.tokens[j - 1].possessive:
            turn = self.turn_constraint(j) if self.word(j) in _TURN_PREPOSITIONS else None
            if turn is not None:
                j, found = turn
                fields.update(found)
                continue
            if self.seq(j, "from", frozenset({"earlier", "before"})):
                fields.setdefault("index", -2)
                fields["earlier"] = True
                j += 2
                continue
            if self.seq(j, "from", "the", frozenset({"start", "beginning"})):
                fields.setdefault("index", 0)
                j += 3
                continue
            k = self.relative(j, fields)
            if k != j:
                j = k
                continue
            if self.word(j) == "of" and head not in NOUN_MODALITY and head not in CHAIN_HEADS:
                break
            if content_head and placed:
                break
            described = self.descriptive(j)
            if described is None:
                break
            j, extra = described
            optional += extra
        kind: MentionKind = (
            "turn" if "turn" in fields or "turns_ago" in fields
            else "position" if "index" in fields or fields.get("other") else "description"
        )  # fmt: skip
        if not content and optional and kind == "description":
            content, optional = optional, []  # "the one in the snow": the phrase is the whole description
        det = self.word(i) if determiner else ""
        opens = start == 0 or prev in (",", ".", ";", ":", "and", "then", "take", "use")
        mention = self.make(
            kind, start, j, modality=modality, words=tuple(content), optional=tuple(optional), head=head,
            deictic=det in DEMONSTRATIVE, clause_start=opens and self.word(j) in (",", ":", "and", ""),
            **fields,
        )  # fmt: skip
        return j, mention

    # --- references to edits --------------------------------------------------------------------
    def edit_of(self, i: int) -> tuple[int, Mention] | None:
        """ "what you did to the star", "the edit you made to the cat", "the same treatment as X",
        "the edit from @m:…", "the triangle's edit"."""
        j = None
        if self.seq(
            i, "what", frozenset({"you", "we", "i"}), frozenset({"did", "made", "applied", "changed"})
        ) and (
            self.word(i + 3) in ("to", "with", "on", "for")
        ):  # "what you did to the star" (but "what you made last turn" is a medium, not an edit)
            j = i + 4
        else:
            k = i + 1 if self.word(i) == "the" else None
            if k is not None and self.word(k) == "same":
                k += 1
            if k is not None and self.word(k) in EDIT_NOUNS | {"thing"}:
                k += 1
                m = k + 1 if self.word(k) in ("that", "which") else k
                if self.word(m) in ("you", "we", "i") and self.word(m + 1) in MADE_VERBS | {"applied"}:
                    j = m + 2
                    if self.word(j) in ("to", "on", "for", "with"):
                        j += 1
                elif self.word(k) in ("as", "from", "of") and self.word(k - 1) != "thing":
                    j = k + 1
        if j is not None:
            inner = self.reference(j)
            if inner is not None:
                end, ref = inner
                return end, self.make("edit_of", i, end, inner=ref)
        # "the triangle's edit": a possessive noun phrase
        if self.word(i) == "the":
            np = self.noun_phrase(i)
            if np is not None and self.tokens[np[0] - 1].possessive and self.word(np[0]) in EDIT_NOUNS:
                end = np[0] + 1
                return end, self.make("edit_of", i, end, inner=np[1])
        return None

    def reference(self, i: int) -> tuple[int, Mention] | None:
        """Whatever names one medium at i: an id, a noun phrase, a turn, or a pronoun."""
        return (
            self.explicit(i)
            or self.turn_alone(i)
            or (self.noun_phrase(i) if self.word(i) in DEFINITE else None)
            or self.pronoun(i)
        )

    def last_edit(self, i: int) -> tuple[int, Mention] | None:
        """ "do the same", "the same edit", "same for …", "likewise", "do it again", "once more",
        "repeat the last edit", "the last sound edit", "apply that to …"."""
        w = self.word
        j = None
        again = False
        modality = None
        if self.seq(i, "the", "same") or w(i) == "same":
            k = i + 2 if w(i) == "the" else i + 1
            if w(k) in EDIT_NOUNS | {"thing", "way", "again"}:
                j = k + 1
                again = w(k) == "again"
            elif (w(k) in ("for", "to", "with", "on") and w(i) == "same") or w(i - 1) == "do":
                j = k
        elif w(i) == "likewise":
            j = i + 1
        elif w(i) in ("do", "repeat", "apply") and w(i + 1) in ("it", "that", "this"):
            if w(i + 2) == "again":
                j, again = i + 3, True
            elif w(i + 2) in ("to", "on", "for") or w(i) == "repeat":
                j = i + 2
        elif self.seq(i, "once", "more") or self.seq(i, "one", "more", "time"):
            j, again = i + (2 if w(i) == "once" else 3), True
        elif w(i) in ("that", "this") and w(i + 1) in EDIT_NOUNS:
            j = i + 2
        elif w(i) == "the" and w(i + 1) in LATEST | PREVIOUS:
            k = i + 2
            if w(k) in NOUN_MODALITY:
                modality = NOUN_MODALITY[w(k)]
                k += 1
            if w(k) in EDIT_NOUNS:
                j = k + 1
        if j is None:
            return None
        if w(j) == "again":
            j, again = j + 1, True
        return j, self.make("last_edit", i, j, again=again, modality=modality)

    # --- the rest -------------------------------------------------------------------------------
    def explicit(self, i: int) -> tuple[int, Mention] | None:
        w = self.word(i)
        if w.startswith("@m:") and len(w) >= 9:
            return i + 1, self.make("explicit", i, i + 1, token=w[3:])
        if w.startswith("artifact://") and len(w) == 75:
            return i + 1, self.make("explicit", i, i + 1, token=w[11:])
        return None

    def turn_alone(self, i: int) -> tuple[int, Mention] | None:
        found = self.turn_constraint(i)
        if found is None:
            return None
        j, fields = found
        return j, self.make("turn", i, j, **fields)

    def pronoun(self, i: int) -> tuple[int, Mention] | None:
        w = self.word(i)
        if w in ("this", "that", "these", "those") and self.word(i + 1) in ("one", "ones"):
            return i + 2, self.make("pronoun", i, i + 2)
        if w in PRONOUNS:
            return i + 1, self.make("pronoun", i, i + 1)
        return None

    def step_back(self, i: int) -> tuple[int, Mention] | None:
        """ "go back one step", "one step back": the version before the current one."""
        for parts in (
            ("back", "one", "step"),
            ("one", "step", "back"),
            ("a", "step", "back"),
            ("back", "a", "step"),
        ):
            j = self.seq(i, *parts)
            if j is not None:
                return j, self.make("position", i, j, index=-2, scope="chain")
        return None

    def parse(self) -> list[Mention]:
        i = 0
        found: list[Mention] = []
        while i < len(self.tokens):
            w = self.word(i)
            got = self.explicit(i) or self.edit_of(i) or self.last_edit(i) or self.step_back(i)
            if got is None and (
                w in _TURN_PREPOSITIONS or w in LATEST or w == "turn" or w[0].isdigit() or w in NUMBERS
            ):
                got = self.turn_alone(i)
            if got is None and w in DEFINITE:
                got = self.noun_phrase(i)
                if got is not None and self.place_not_medium(i, got[1], found):
                    i = got[0]
                    continue
                if got is not None and got[1].generic and self.explicit(got[0]) is not None:
                    i = got[0]  # "the picture @m:ab12…": the id says which
                    continue
            if (
                got is None
                and found
                and self.word(i - 1) in ("and", "or", "to", "with", "than", "vs")
                and (w in ORDINALS or w in LATEST or w in PREVIOUS)
            ):  # "the first and last sound": a second phrase without its article
                got = self.noun_phrase(i, determiner=False)
            if got is None and w == "what" and self.word(i + 1) in ("you", "i", "we"):
                got = self._free_relative(i)
            if got is None and w in DEMONSTRATIVE and self.word(i + 1) in ABSTRACT:
                i += 2  # "this time", "that way": not a medium
                continue
            if got is None:
                got = self.pronoun(i)
            if got is None:
                i += 1
                continue
            j, mention = got
            if found and self._joined(found[-1], mention):
                mention = replace(mention, coordinated=True)
            found.append(mention)
            i = max(j, i + 1)
        return found

    def place_not_medium(self, i: int, mention: Mention, found: Sequence[Mention]) -> bool:
        """ "put it in the snow", "move it to the desert", "use it as the background": a place or a
        part, not a medium.

        A phrase that only describes content, after a preposition of place (or after "to" in a
        clause that changes something), says where or what to change to; media nouns, positions
        and turns still point at media ("with the last sound", "to the first picture"). After an
        edit is named ("the same edit, but on the triangle"), "on / for / to / with" name its target.
        """
        before = self.word(i - 1)
        if mention.kind != "description":
            return False
        if before == "as":
            return True  # "as the sound for …": a role, not a medium
        if mention.head in NOUN_MODALITY or mention.head in GENERIC_HEADS:
            return False
        if before in ("on", "for", "to", "with") and any(m.kind in ("edit_of", "last_edit") for m in found):
            return False
        if before in ("with", "to") and self._in_clause(i, _PAIRING_VERBS):
            return False  # "compare the square with the star": the second medium
        if before in _PLACES:
            return True
        return before == "to" and self._in_clause(i, _CHANGE_VERBS)

    def _in_clause(self, i: int, verbs: frozenset[str]) -> bool:
        """True when one of `verbs` comes before token i in its clause."""
        k = i - 1
        while k >= 0 and self.word(k) not in (",", ".", ";", ":", "and", "then"):
            if self.word(k) in verbs:
                return True
            k -= 1
        return False

    def _free_relative(self, i: int) -> tuple[int, Mention] | None:
        """ "what you made last turn", "what I sent": the medium a clause describes."""
        fields: dict[str, object] = {}
        j = self.relative(i + 1, fields)
        if j == i + 1:
            return None
        turn = self.turn_phrase(j)
        if turn is not None:
            j, extra = turn
            fields.update(extra)
        kind: MentionKind = "turn" if "turn" in fields or "turns_ago" in fields else "position"
        fields.setdefault("index", -1)
        return j, self.make(kind, i, j, **fields)

    def _joined(self, before: Mention, after: Mention) -> bool:
        between = self.text[before.span[1] : after.span[0]]
        return [w for w in words(between)] in (["and"], ["or"], ["to"], ["with"], ["than"], ["and", "the"])


def find_mentions(text: str) -> list[Mention]:
    """Every media-pointing phrase in `text`, in text order."""
    return _Parser(text).parse()


def mentioned_modality(text: str) -> Modality | None:
    """The media kind a request names ("picture", "sound"), if exactly one."""
    kinds = {NOUN_MODALITY[w] for w in words(text) if w in NOUN_MODALITY}
    return kinds.pop() if len(kinds) == 1 else None


def modality_cues(
    tokens: Sequence[str], known: Callable[[str], Modality | None] | None = None
) -> Modality | None:
    """The media kind the words lean to ("louder" -> audio, "bluer" -> image), if only one.

    `known` maps a word to the modality a model's vocabulary gives it (None: neither or both).
    """
    seen: set[Modality] = set()
    for w in tokens:
        got = known(w) if known is not None else None
        if got is not None:
            seen.add(got)
        elif w in NOUN_MODALITY:
            seen.add(NOUN_MODALITY[w])
        elif w in AUDIO_WORDS:
            seen.add(Modality.AUDIO)
        elif w in IMAGE_WORDS or w in COLOURS:
            seen.add(Modality.IMAGE)
    return seen.pop() if len(seen) == 1 else None
