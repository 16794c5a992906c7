"""Drafts for greedy decoding: the tokens an answer probably copies from texts the caller knows.

The model's caption of an image it has just edited mostly repeats the caption of the image it came
from ("a small red star in the snow" -> "a small blue star in the snow"), and an LM call of the tiny
model costs about the same few milliseconds for one token as for ten: its time is per call, not per
token. So `generate(..., draft_texts=[...])` proposes the tokens that follow in those texts, feeds
them with the token just chosen, and keeps each proposed token only where it is the greedy choice
(prompt lookup decoding, as transformers' `prompt_lookup_num_tokens`, with the caller's texts as the
source). A draft never changes what is chosen, only how many LM calls it takes; the answers equal
plain greedy decoding up to float rounding between a one-token and a many-token forward pass (a tie
within rounding is the only way they can differ; tests compare both paths on many inputs).

Proposals (`TextDrafts.propose`):

1. nothing decoded yet: the first text from its start;
2. otherwise, for n = 3, 2, 1 (the most context first): if the last n decoded tokens occur in a text,
   what follows them there (a copy); else if the n tokens before the last one do, what follows the
   token after them there (the last word was a substitution: after "a small red star in the snow",
   "a small *blue*" continues " star in the snow").

Tokens are matched by their word, so "a" at the start of a sentence matches " a" inside one
(byte-level BPE gives them different ids). Every text ends in </s>, so a fully copied answer ends in
the same call; special tokens (markers, placeholders) are never proposed.

Example:
    >>> from codi2_agent.model import load_model
    >>> model = load_model("tiny")
    >>> tokenizer = model.tokenizer
    >>> drafts = TextDrafts.from_texts(tokenizer, ["a small red star in the snow"])
    >>> so_far = tokenizer("a small blue", add_special_tokens=False).input_ids
    >>> tokenizer.decode(drafts.propose(so_far, limit=8))
    ' star in the snow</s>'
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["MAX_DRAFT_TOKENS", "TextDrafts"]

# Longest draft fed in one call: captions and short answers of the tiny world are under 16 tokens, and a
# longer rejected draft only costs attention over positions that are then dropped.
MAX_DRAFT_TOKENS = 16
_NGRAM = 3  # longest run of decoded tokens looked up in the texts


class TextDrafts:
    """Token runs to propose while decoding greedily (see the module docstring)."""

    def __init__(self, runs: Sequence[Sequence[int]], word: Callable[[int], str]) -> None:
        self._runs = [list(r) for r in runs if r]
        self._word = word  # token id -> its word (the token without a leading-space mark)
        self._keys = [[word(t) for t in run] for run in self._runs]

    @classmethod
    def from_texts(cls, tokenizer: Any, texts: Sequence[str]) -> TextDrafts:
        """Drafts from `texts`, most likely source first; each text ends in </s>."""
        special = set(tokenizer.all_special_ids)
        eos = tokenizer.eos_token_id
        runs: list[list[int]] = []
        for text in texts:
            if not text or not text.strip():
                continue
            run: list[int] = []
            # As inside a sentence (" a small"): an answer's first word follows the prompt's text
            for t in tokenizer(" " + text.strip(), add_special_tokens=False).input_ids:
                if t in special:  # a marker typed as text must never be proposed: split the run there
                    runs.append(run)
                    run = []
                else:
                    run.append(t)
            runs.append([*run, eos] if eos is not None else run)
        return cls(runs, _words_of(tokenizer))

    def __bool__(self) -> bool:
        return bool(self._runs)

    def propose(self, decoded: Sequence[int], limit: int) -> list[int]:
        """At most `limit` token ids likely to follow `decoded` (the answer so far); [] when none."""
        limit = min(limit, MAX_DRAFT_TOKENS)
        if limit <= 0 or not self._runs:
            return []
        if not decoded:
            return self._runs[0][:limit]
        keys = [self._word(t) for t in decoded[-_NGRAM - 1 :]]
        for n in range(_NGRAM, 0, -1):
            copied = self._after(keys[-n:], skip=0, limit=limit) if n <= len(keys) else []
            if copied:
                return copied
            substituted = self._after(keys[-n - 1 : -1], skip=1, limit=limit) if n < len(keys) else []
            if substituted:
                return substituted
        return []

    def _after(self, pattern: list[str], *, skip: int, limit: int) -> list[int]:
        """The tokens after the first occurrence of `pattern` in a text (and `skip` more)."""
        n = len(pattern)
        for run, keys in zip(self._runs, self._keys, strict=True):
            for start in range(len(keys) - n - skip):
                if keys[start : start + n] == pattern:
                    return run[start + n + skip : start + n + skip + limit]
        return []


def _words_of(tokenizer: Any) -> Callable[[int], str]:
    """token id -> its word: byte-level BPE ('Ġa') and sentencepiece ('▁a') mark a leading space,
    which is dropped; a special token keeps its own mark, so it matches only itself."""
    special = set(tokenizer.all_special_ids)
    words: dict[int, str] = {}

    def word(token: int) -> str:
        if token not in words:
            piece = str(tokenizer.convert_ids_to_tokens(token))
            words[token] = "\0" + piece if token in special else piece.lstrip("Ġ▁")
        return words[token]

    return word
