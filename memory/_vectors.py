"""Vectors in the memory's encoder space: computing them, and refusing ones Chroma should never see.

Computed and precomputed vectors pass the same checks — the encoder's dimension, finite values, no
all-zero rows (a zero vector has no cosine distance to anything) — so a caller that embedded a medium
itself gets the same guarantees as one that let the memory embed it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from codi2_agent.media import Media, Modality

from ._chroma_ef import CoDi2EmbeddingFunction
from ._embedding import Embedder
from ._errors import EmbeddingDimensionError

__all__ = ["Vectors"]


class Vectors:
    """The memory's encoder, wrapped with the shape and value checks every vector goes through."""

    def __init__(self, embedder: Embedder, ef: CoDi2EmbeddingFunction):
        self.embedder = embedder
        self._ef = ef  # the text side, exactly as Chroma's own text queries see it

    def embed_media(self, media: Sequence[Media]) -> np.ndarray:
        """(N, dim) vectors for media (unchecked: see `check`); text media go through the text side."""
        out = np.zeros((len(media), self.embedder.dim), dtype=np.float32)
        text_idx = [i for i, m in enumerate(media) if m.modality is Modality.TEXT]
        media_idx = [i for i, m in enumerate(media) if m.modality is not Modality.TEXT]
        if text_idx:
            out[text_idx] = self._encoder_output(
                self.embedder.embed_text([media[i].text for i in text_idx]), len(text_idx)
            )
        if media_idx:
            out[media_idx] = self._encoder_output(
                self.embedder.embed_media([media[i] for i in media_idx]), len(media_idx)
            )
        return out

    def embed_query_text(self, text: str) -> np.ndarray:
        """One text query's vector, through the registered Chroma embedding function."""
        if not text.strip():
            raise ValueError("query text is empty")
        return np.asarray(self._ef.embed_query([text])[0], dtype=np.float32)

    def precomputed(self, vectors: Any, n: int, *, what: str) -> np.ndarray:
        """A caller's (n, dim) vectors as float32, checked like computed ones."""
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[0] != n:
            raise ValueError(f"{what} must be ({n}, {self.embedder.dim}); got shape {vecs.shape}")
        self.check(vecs, what=what)
        return vecs

    def check(self, vecs: np.ndarray, *, what: str) -> None:
        """Raise for vectors of the wrong dimension, with NaN / infinite values, or all zeros."""
        if vecs.shape[1] != self.embedder.dim:
            raise EmbeddingDimensionError(
                f"{what} have {vecs.shape[1]} dimensions, but this memory's encoder {self.embedder.name!r} "
                f"gives {self.embedder.dim}-d vectors"
            )
        if not np.isfinite(vecs).all():
            bad = np.where(~np.isfinite(vecs).all(axis=1))[0].tolist()
            raise ValueError(f"{what} contain NaN or infinite values (rows {bad})")
        zero = np.where(np.linalg.norm(vecs, axis=1) == 0)[0]
        if zero.size:
            raise ValueError(f"{what} rows {zero.tolist()} are all zeros")

    def _encoder_output(self, vecs: np.ndarray, n: int) -> np.ndarray:
        arr = np.asarray(vecs, dtype=np.float32)
        if arr.shape != (n, self.embedder.dim):
            raise EmbeddingDimensionError(
                f"encoder {self.embedder.name!r} returned shape {arr.shape}; "
                f"expected ({n}, {self.embedder.dim})"
            )
        return arr
