"""Precomputed vectors: `add_many(vectors=...)` stores them as given and never runs the encoder."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from codi2_agent.media import Media
from codi2_agent.memory import EmbeddingDimensionError, ExemplarMemory, HashingEmbedder, NewItem

DIM = 32


class CountingEmbedder:
    """A real `HashingEmbedder` that counts how often each side is asked to embed."""

    def __init__(self) -> None:
        self._inner = HashingEmbedder(dim=DIM, seed=7)
        self.name = "counting-" + self._inner.name
        self.dim = DIM
        self.calls: Counter[str] = Counter()

    def embed_media(self, media: Sequence[Media]) -> np.ndarray:
        self.calls["media"] += 1
        return self._inner.embed_media(media)

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        self.calls["text"] += 1
        return self._inner.embed_text(texts)


@pytest.fixture
def counting() -> CountingEmbedder:
    return CountingEmbedder()


@pytest.fixture
def shapes(store, shape_image):
    """Two stored images and their decoded media."""
    media = [
        shape_image("red", caption="a red circle"),
        shape_image("blue", square=True, caption="a blue square"),
    ]
    refs = [store.put(m, caption=m.caption, turn=i + 1) for i, m in enumerate(media)]
    return refs, media


def test_precomputed_vectors_are_stored_without_calling_the_encoder(tmp_path, store, counting, shapes):
    refs, media = shapes
    vecs = counting._inner.embed_media(media)  # what a caller that already embedded them holds
    memory = ExemplarMemory(tmp_path / "db", embedder=counting, artifacts=store)
    try:
        items = memory.add_many("vic", [NewItem("t", r) for r in refs], vectors=vecs)
        assert counting.calls == Counter()  # neither side of the encoder ran
        stored = {item.id: vec for item, vec in memory.records("vic")}
        for item, vec in zip(items, vecs, strict=True):
            np.testing.assert_allclose(stored[item.id], vec, rtol=1e-6)
        assert memory.search("vic", vecs[1], k=1)[0].id == items[1].id  # a vector query embeds nothing
        assert counting.calls == Counter()
        # The counter does count: letting the memory embed calls the encoder once per batch.
        other = [NewItem("t2", r) for r in refs]
        memory.add_many("vic", other, media=media)
        assert counting.calls == Counter({"media": 1})
    finally:
        memory.close()


def test_precomputed_vectors_need_neither_media_nor_an_artifact_store(tmp_path, counting, shapes):
    refs, media = shapes
    vecs = counting._inner.embed_media(media)
    memory = ExemplarMemory(tmp_path / "db", embedder=counting)  # no store to load media from
    try:
        with pytest.raises(ValueError, match="pass vectors= or media="):
            memory.add_many("vic", [NewItem("t", r) for r in refs])
        items = memory.add_many("vic", [NewItem("t", r) for r in refs], vectors=vecs.tolist())
        assert [it.artifact_id for it in items] == [r.id for r in refs] and memory.count("vic") == 2
        assert counting.calls == Counter()
    finally:
        memory.close()


@pytest.mark.parametrize(
    ("broken", "error", "match"),
    [
        (lambda v: v[:1], ValueError, r"vectors must be \(2, 32\); got shape \(1, 32\)"),
        (lambda v: v[0], ValueError, r"vectors must be \(2, 32\); got shape \(32,\)"),
        (lambda v: v[:, :16], EmbeddingDimensionError, "vectors have 16 dimensions"),
        (lambda v: np.where(np.arange(2)[:, None] == 1, np.nan, v), ValueError, r"NaN or infinite.*\[1\]"),
        (lambda v: np.where(np.arange(2)[:, None] == 0, np.inf, v), ValueError, r"NaN or infinite.*\[0\]"),
        (lambda v: np.where(np.arange(2)[:, None] == 1, 0.0, v), ValueError, r"rows \[1\] are all zeros"),
    ],
    ids=["too-few-rows", "one-dimensional", "wrong-dim", "nan", "inf", "zero-row"],
)
def test_bad_precomputed_vectors_are_refused_before_any_write(
    tmp_path, store, counting, shapes, broken, error, match
):
    refs, media = shapes
    vecs = broken(counting._inner.embed_media(media))
    memory = ExemplarMemory(tmp_path / "db", embedder=counting, artifacts=store)
    try:
        with pytest.raises(error, match=match):
            memory.add_many("vic", [NewItem("t", r) for r in refs], vectors=vecs)
        assert memory.count("vic") == 0 and counting.calls == Counter()
    finally:
        memory.close()


def test_vectors_and_the_older_embeddings_keyword_are_one_argument(tmp_path, store, counting, shapes):
    refs, media = shapes
    vecs = counting._inner.embed_media(media)
    memory = ExemplarMemory(tmp_path / "db", embedder=counting, artifacts=store)
    try:
        entries = [NewItem("t", r) for r in refs]
        with pytest.raises(ValueError, match="not both"):
            memory.add_many("vic", entries, vectors=vecs, embeddings=vecs)
        assert [it.id for it in memory.add_many("vic", entries, embeddings=vecs)] == [
            it.id for it in memory.add_many("vic", entries, vectors=vecs)
        ]
        assert memory.count("vic") == 2 and counting.calls == Counter()
    finally:
        memory.close()
