"""Pure selection logic behind the retrieval policies (no Chroma here, so it is easy to test).

- `recency_key`: the order "latest" means — later turn, then output after input, then write time.
- `select_budgeted`: choose up to k exemplars for a prompt by maximal marginal relevance (relevant,
  but not five near-copies of one image) under a token budget, since every media exemplar expands
  into N placeholder tokens in the model's context.

Example:
    >>> import numpy as np
    >>> vecs = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    >>> select_budgeted(["a", "a-copy", "b"], vecs, np.array([0.9, 0.9, 0.5]), k=2, diversity=0.5)
    ['a', 'b']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from codi2_agent.media import Modality

from ._item import EditPair, MemoryItem

__all__ = ["DEFAULT_MEDIA_TOKENS", "default_token_cost", "recency_key", "select_budgeted"]

T = TypeVar("T")

# Placeholder tokens one medium takes in the prompt. The model's processor knows the true numbers;
# pass them via `media_tokens=` (or a whole `token_cost=` function) to `select_exemplars`.
DEFAULT_MEDIA_TOKENS: Mapping[str, int] = {
    Modality.IMAGE.value: 32,
    Modality.AUDIO.value: 32,
    Modality.TEXT.value: 0,
}


def recency_key(item: MemoryItem) -> tuple[int, bool, float, str]:
    """Sort key for "latest": turn, then outputs after inputs of the same turn, then write time."""
    return (item.turn, item.role == "output", item.created_at, item.id)


def default_token_cost(
    item: MemoryItem | EditPair, media_tokens: Mapping[str, int] = DEFAULT_MEDIA_TOKENS
) -> int:
    """Rough prompt cost: the media placeholders plus ~4/3 tokens per word of caption and instruction."""
    if isinstance(item, EditPair):
        return default_token_cost(item.source, media_tokens) + default_token_cost(item.target, media_tokens)
    words = len(((item.caption or "") + " " + (item.instruction or "")).split())
    text_tokens = math.ceil(words * 4 / 3)
    if item.modality is Modality.TEXT:
        return max(text_tokens, 1)
    return media_tokens.get(item.modality.value, 0) + text_tokens


def select_budgeted(
    candidates: Sequence[T],
    vectors: np.ndarray,
    relevance: np.ndarray,
    *,
    k: int,
    max_tokens: int | None = None,
    cost: Callable[[T], int] | None = None,
    diversity: float = 0.3,
) -> list[T]:
    """Greedy maximal-marginal-relevance selection of at most `k` candidates within `max_tokens`.

    Args:
        candidates: items in any order.
        vectors: (N, D) unit vectors of the candidates (for redundancy between picks).
        relevance: (N,) similarity to the request, higher is better (cosine similarity).
        k: most candidates to return.
        max_tokens: total budget of `cost` over the picks; None means unlimited.
        cost: tokens one candidate takes (required with `max_tokens`).
        diversity: 0 ranks by relevance alone; towards 1 penalises similarity to earlier picks.

    Returns:
        The picks in the order chosen (most useful first). A candidate that does not fit the budget
        left is skipped, and a cheaper later one may still be taken.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not 0.0 <= diversity <= 1.0:
        raise ValueError(f"diversity must be in [0, 1], got {diversity}")
    if max_tokens is not None and cost is None:
        raise ValueError("max_tokens needs a cost function")
    n = len(candidates)
    if vectors.shape[0] != n or relevance.shape[0] != n:
        raise ValueError(f"{n} candidates but {vectors.shape[0]} vectors and {relevance.shape[0]} scores")
    costs = np.array([cost(c) for c in candidates] if cost else [0] * n, dtype=np.int64)
    left = np.inf if max_tokens is None else float(max_tokens)
    available = np.ones(n, dtype=bool)
    redundancy = np.full(n, -np.inf if n else 0.0)  # max similarity to any pick so far
    picks: list[int] = []
    while len(picks) < k:
        available &= costs <= left
        if not available.any():
            break
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = (1.0 - diversity) * relevance - diversity * penalty
        best = int(np.argmax(np.where(available, score, -np.inf)))
        picks.append(best)
        available[best] = False
        left -= costs[best]
        redundancy = np.maximum(redundancy, vectors @ vectors[best])
    return [candidates[i] for i in picks]
