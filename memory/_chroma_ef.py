"""The Chroma embedding function that turns text queries into vectors with *our* encoder.

Chroma persists a collection's embedding function as ``{"name": ..., "config": ...}`` and rebuilds it
from its registry whenever the collection is opened. An embedding function that does not implement
the whole protocol (``__call__``, ``name``, ``get_config``, ``build_from_config``) or is not registered
makes Chroma fall back to its default ONNX model, which downloads at run time — so this class
implements all of it and registers itself on import.

The config holds only the encoder's name and dimension; ``build_from_config`` finds the live encoder
in this process's embedder registry (`register_embedder`) lazily, at first call, so that merely
listing or opening a collection never fails in a process that has not loaded the model.

Example:
    >>> from codi2_agent.memory import HashingEmbedder
    >>> ef = CoDi2EmbeddingFunction(HashingEmbedder(dim=16))
    >>> ef.get_config()
    {'encoder': 'hashing-v1:d16:s0', 'dim': 16}
    >>> len(ef(["a red circle"])[0])
    16
"""

from __future__ import annotations

from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
from chromadb.utils.embedding_functions import register_embedding_function

from ._embedding import Embedder, get_embedder, register_embedder
from ._errors import EmbeddingDimensionError

__all__ = ["CoDi2EmbeddingFunction"]

EF_NAME = "codi2_agent"


@register_embedding_function
class CoDi2EmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma embedding function over `Embedder.embed_text` (the model's text side).

    Media are never embedded through here: they arrive with precomputed vectors. This function only
    serves text — ``collection.query(query_texts=[...])`` and our own text queries.

    Setup:
        Part of codi2-agent; importing ``codi2_agent.memory`` registers it with Chroma.

    Instantiate:
        .. code-block:: python

            from codi2_agent.memory import CoDi2EmbeddingFunction, HashingEmbedder
            ef = CoDi2EmbeddingFunction(HashingEmbedder(dim=64))

    Use:
        .. code-block:: python

            collection = client.get_or_create_collection("notes", embedding_function=ef)
            collection.query(query_texts=["the picture with the blue star"], n_results=3)
    """

    def __init__(
        self, embedder: Embedder | None = None, *, encoder: str | None = None, dim: int | None = None
    ):
        if embedder is None and (encoder is None or dim is None):
            raise ValueError("CoDi2EmbeddingFunction needs an embedder, or both encoder= and dim=")
        if embedder is not None:
            register_embedder(embedder)
            if (encoder, dim) != (None, None) and (encoder, dim) != (embedder.name, embedder.dim):
                raise ValueError(
                    f"encoder={encoder!r}, dim={dim!r} contradict the embedder "
                    f"({embedder.name!r}, {embedder.dim})"
                )
            encoder, dim = embedder.name, embedder.dim
        assert encoder is not None and dim is not None
        self._embedder = embedder
        self.encoder: str = encoder
        self.dim: int = int(dim)

    @property
    def embedder(self) -> Embedder:
        """The live encoder, looked up by name on first use (raises `EncoderUnavailableError`)."""
        if self._embedder is None:
            self._embedder = get_embedder(self.encoder)
        return self._embedder

    def __call__(self, input: Documents) -> Embeddings:
        texts = [input] if isinstance(input, str) else list(input)
        vecs = np.asarray(self.embedder.embed_text(texts), dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape != (len(texts), self.dim):
            raise EmbeddingDimensionError(
                f"encoder {self.encoder!r} returned text vectors of shape {vecs.shape}; "
                f"expected ({len(texts)}, {self.dim})"
            )
        return list(vecs)

    @staticmethod
    def name() -> str:
        return EF_NAME

    def get_config(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "dim": self.dim}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> CoDi2EmbeddingFunction:
        CoDi2EmbeddingFunction.validate_config(config)
        return CoDi2EmbeddingFunction(encoder=config["encoder"], dim=int(config["dim"]))

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        if not isinstance(config.get("encoder"), str) or not config["encoder"]:
            raise ValueError(f"{EF_NAME} embedding function config needs a non-empty 'encoder': {config}")
        dim = config.get("dim")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise ValueError(f"{EF_NAME} embedding function config needs a positive int 'dim': {config}")

    def validate_config_update(self, old_config: dict[str, Any], new_config: dict[str, Any]) -> None:
        # Swapping the encoder under existing vectors would make every stored distance meaningless.
        if (old_config.get("encoder"), old_config.get("dim")) != (
            new_config.get("encoder"),
            new_config.get("dim"),
        ):
            raise ValueError(
                f"cannot change a collection's encoder from {old_config.get('encoder')!r} "
                f"to {new_config.get('encoder')!r}; re-embed into a new collection instead"
            )

    def default_space(self) -> Space:
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        return ["cosine", "l2", "ip"]

    def __repr__(self) -> str:
        return f"CoDi2EmbeddingFunction(encoder={self.encoder!r}, dim={self.dim})"
