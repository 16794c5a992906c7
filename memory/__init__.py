"""Exemplar memory: every turn's media embeddings in Chroma, retrievable as in-context exemplars.

What keeps multi-round editing and analogy consistent beyond the model's context window: each medium
that enters or leaves a session is embedded in the model's own encoder space and stored with its
place and lineage (tenant, thread, turn, role, parents). The memory answers what needs vectors or
crosses threads — similarity search, analogous edits, explicit references — while thread-local
lookups ("the last image", "turn 3", an edit chain) are resolved by the session graph from its own
media log. `Memory` is the protocol the graph relies on; `ExemplarMemory` implements it over Chroma.

Setup:
    Part of codi2-agent (``chromadb`` is a core dependency). Chroma's default ONNX embedding model is
    never used; telemetry is off. Several processes share one memory through a server:
    ``chroma run --path ./memory-db --host 127.0.0.1 --port 8765``.

Instantiate:
    .. code-block:: python

        from codi2_agent.memory import ExemplarMemory, HashingEmbedder
        memory = ExemplarMemory("./memory-db", embedder=HashingEmbedder(64))       # embedded
        memory = ExemplarMemory(host="127.0.0.1", port=8765, embedder=embedder)    # server

Use:
    .. code-block:: python

        memory.add("alice", "t1", ref, role="output", parents=[src_ref], instruction="make it blue")
        memory.add_many("alice", entries, vectors=vecs)            # already embedded: no encoder call
        memory.analogous_edits("alice", "make the circle blue")   # A -> A' exemplars
        memory.search("alice", "the picture with the blue star")  # free text
        memory.reference("alice", "@m:ab12cd34")                  # explicit reference, any thread

`ExemplarMemory` (and the Chroma embedding function) import chromadb on first use, so importing this
package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._embedding import Embedder, HashingEmbedder, get_embedder, register_embedder
from ._errors import (
    AmbiguousReferenceError,
    CorruptMemoryError,
    CorruptMetadataError,
    EmbeddingDimensionError,
    EncoderMismatchError,
    EncoderUnavailableError,
    ExemplarMemoryError,
    UnknownReferenceError,
)
from ._index_check import IndexReport
from ._item import SHARED_TENANT, EditPair, MemoryItem, NewItem, Role, item_id
from ._protocol import Memory, QueryLike

if TYPE_CHECKING:
    from ._chroma_ef import CoDi2EmbeddingFunction
    from ._lifecycle import CompactReport
    from ._store import ExemplarMemory

__all__ = [
    "SHARED_TENANT",
    "AmbiguousReferenceError",
    "CoDi2EmbeddingFunction",
    "CompactReport",
    "CorruptMemoryError",
    "CorruptMetadataError",
    "EditPair",
    "Embedder",
    "EmbeddingDimensionError",
    "EncoderMismatchError",
    "EncoderUnavailableError",
    "ExemplarMemory",
    "ExemplarMemoryError",
    "HashingEmbedder",
    "IndexReport",
    "Memory",
    "MemoryItem",
    "NewItem",
    "QueryLike",
    "Role",
    "UnknownReferenceError",
    "get_embedder",
    "item_id",
    "register_embedder",
]

# chromadb takes ~0.7 s to import; only the parts that talk to Chroma need it.
_LAZY = {
    "ExemplarMemory": "._store",
    "CompactReport": "._lifecycle",
    "CoDi2EmbeddingFunction": "._chroma_ef",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
