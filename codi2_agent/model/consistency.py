"""Answers that never contradict themselves: no "changed from forest to forest".

Greedy decoding commits to each token before it sees where the sentence goes. Asked what changed
between two pictures, a model can pick the wrong attribute first ("the scene …") and then, reading
the pictures correctly, name the same value on both sides ("… from forest to forest"). The
contradiction shows that an earlier choice was wrong, so patching only the last word would trade
it for a wrong answer ("from forest to night").

So when a finished answer names the same thing on both sides of "from X to X", it is decoded again by
a beam search over the LM's own log-probabilities in which a hypothesis that makes the contradiction
is dropped as soon as it does: the answer becomes the most probable one that does not contradict
itself. It runs only when the greedy answer contradicts itself (other answers are untouched), and a
final guard cuts the contradicting clause should the search find nothing. A stream holds its text
back from the word "from" on, and its repair keeps what it already sent (`clause_start`).

Example:
    >>> contradiction("the scene changed from forest to forest") is not None
    True
    >>> contradiction("the colour changed from red to blue") is None
    True
    >>> contradiction("from forest to forest", finished=False) is None  # "forestry" may still follow
    True
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "BEAM_WIDTH",
    "Hypothesis",
    "clause_start",
    "contradiction",
    "cut_before_contradiction",
    "opens_clause",
    "search",
]

# Wide enough to keep the runner-up choices of an early word (an attribute among a handful) alive
# until the end of a one-sentence answer.
BEAM_WIDTH = 8
# "from X to X" with X one to four words (digits count: "from 440 to 440 Hz").
_SAME_BOTH_SIDES = re.compile(r"\bfrom\s+(\w+(?:[ \t]+\w+){0,3})\s+to\s+\1\b", re.IGNORECASE)
_FROM = re.compile(r"\bfrom\b", re.IGNORECASE)


def contradiction(text: str, *, finished: bool = True) -> re.Match[str] | None:
    """The first "from X to X" in `text`, or None. An unfinished text's last word may still grow
    ("forest" -> "forestry"), so there a match must be followed by something else."""
    for match in _SAME_BOTH_SIDES.finditer(text):
        if finished or match.end() < len(text):
            return match
    return None


def cut_before_contradiction(decode: Callable[[Sequence[int]], str], ids: Sequence[int]) -> list[int]:
    """`ids` up to the token where their first contradicting clause begins (the last resort: the
    clause is dropped)."""
    match = contradiction(decode(ids))
    if match is None:
        return list(ids)
    return next((list(ids[:j]) for j in range(len(ids)) if len(decode(ids[: j + 1])) > match.start()), [])


def opens_clause(text: str) -> bool:
    """Does `text` contain the word "from", where a contradicting clause could begin?"""
    return _FROM.search(text) is not None


def clause_start(decode: Callable[[Sequence[int]], str], ids: Sequence[int]) -> int:
    """How many of `ids` come before the token that completes the first word "from" (all: none does).

    A stream holds text back from there on, so a repair can still rewrite the clause."""
    return next((j for j in range(len(ids)) if opens_clause(decode(ids[: j + 1]))), len(ids))


@dataclass(frozen=True)
class Hypothesis:
    """A decoded answer: its token ids (without the end token), how it ended, its log-probability."""

    ids: tuple[int, ...]
    end: int | None  # the token that ended it (</s> or a generation marker); None: the budget ran out
    score: float


LogProbs = Callable[[Sequence[Sequence[int]]], torch.Tensor]  # answers so far -> (B, V) next-token log-probs


def search(
    log_probs: LogProbs,
    decode: Callable[[Sequence[int]], str],
    *,
    prefix: Sequence[int] = (),
    budget: int,
    banned: Sequence[int],
    ends: Sequence[int],
    width: int = BEAM_WIDTH,
) -> Hypothesis | None:
    """The most probable answer (after the fixed `prefix`) that never names the same value on both
    sides of "from … to …", by beam search; None if every hypothesis was dropped.

    `log_probs(answers)` gives the LM's next-token log-probabilities after each answer so far;
    `banned` tokens are never chosen; a token of `ends` finishes an answer; an answer `budget`
    tokens long finishes there (as greedy decoding stops). Scores are summed log-probabilities, so
    a longer answer never outranks its own prefix: the search stops once the best finished answer
    is ahead of every open one.
    """
    beams = [Hypothesis(tuple(prefix), None, 0.0)]
    finished: list[Hypothesis] = []
    end_set = set(ends)
    for _ in range(max(budget - len(prefix), 0)):
        scores = log_probs([b.ids for b in beams]).float()
        scores[:, list(banned)] = float("-inf")
        top = scores.topk(min(width, scores.shape[-1]), dim=-1)
        grown: list[Hypothesis] = []
        for beam, values, tokens in zip(beams, top.values.tolist(), top.indices.tolist(), strict=True):
            for value, token in zip(values, tokens, strict=True):
                if value == float("-inf"):
                    continue
                if token in end_set:
                    if contradiction(decode(beam.ids)) is None:
                        finished.append(Hypothesis(beam.ids, token, beam.score + value))
                    continue
                ids = (*beam.ids, token)
                if contradiction(decode(ids), finished=False) is None:
                    grown.append(Hypothesis(ids, None, beam.score + value))
        beams = sorted(grown, key=lambda h: -h.score)[:width]
        best = max(finished, key=lambda h: h.score, default=None)
        if not beams or (best is not None and best.score >= beams[0].score):
            return best
    # the budget ran out: open answers end here, as a greedy answer would
    finished += [b for b in beams if contradiction(decode(b.ids)) is None]
    return max(finished, key=lambda h: h.score, default=None)
