"""Clear errors: encoder dimension / identity mismatch, corrupted metadata, contradictory arguments."""

from __future__ import annotations

import numpy as np
import pytest

from codi2_agent.media import Media
from codi2_agent.memory import (
    CorruptMetadataError,
    EmbeddingDimensionError,
    EncoderMismatchError,
    ExemplarMemory,
    HashingEmbedder,
    NewItem,
    item_id,
)


def _reopen(memory: ExemplarMemory, embedder) -> ExemplarMemory:
    """Another ExemplarMemory on the same Chroma and namespace, with a different encoder."""
    return ExemplarMemory(client=memory._collections.client, embedder=embedder, namespace=memory.namespace)


@pytest.fixture
def stored(memory, store):
    ref = store.put(Media.from_text("a note about a blue star"), turn=1)
    return memory.add("alice", "t1", ref)


def test_collection_records_its_encoder(memory, stored):
    col = memory._collections.open("alice")
    assert col.metadata["encoder"] == memory.embedder.name and col.metadata["dim"] == memory.embedder.dim
    assert col.configuration_json["embedding_function"] == {
        "type": "known",
        "name": "codi2_agent",
        "config": {"encoder": memory.embedder.name, "dim": memory.embedder.dim},
    }


def test_dimension_mismatch_is_a_clear_error(memory, stored):
    other = _reopen(memory, HashingEmbedder(dim=48))
    for call in (
        lambda: other.search("alice", "blue star"),
        lambda: other.items("alice"),
        lambda: other.reference("alice", stored.ref),
        lambda: other.add("alice", "t1", stored.ref, embedding=np.ones(48)),
    ):
        with pytest.raises(EmbeddingDimensionError, match=r"\(32-d vectors\).*\(48-d\)"):
            call()
    # A query vector of the wrong length, on the right memory.
    with pytest.raises(EmbeddingDimensionError, match="the query vector have 7 dimensions"):
        memory.search("alice", np.ones(7))
    with pytest.raises(EmbeddingDimensionError, match="vectors have 7 dimensions"):
        memory.add("alice", "t1", stored.ref, turn=2, embedding=np.ones(7))
    assert memory.count("alice") == 1
    # A fresh tenant is fine for the other encoder: collections are per tenant.
    other.add("bob", "t1", stored.ref, embedding=np.ones(48))


def test_same_dimension_other_encoder_is_refused(memory, stored):
    other = _reopen(memory, HashingEmbedder(dim=memory.embedder.dim, seed=99))
    with pytest.raises(EncoderMismatchError, match="distances between them mean nothing"):
        other.search("alice", "blue star")


def _raw_upsert(memory, tenant, rid, meta, dim):
    col = memory._collections.create(tenant)
    col.upsert(ids=[rid], embeddings=[np.ones(dim, np.float32)], metadatas=[meta])


def test_corrupted_item_metadata_is_reported_not_returned(memory, stored):
    good = stored.to_metadata()
    bad_turn = {**good, "turn": "3"}
    _raw_upsert(memory, "alice", stored.id, bad_turn, memory.embedder.dim)
    with pytest.raises(CorruptMetadataError, match=f"memory item '{stored.id}'.*turn"):
        memory.items("alice")
    with pytest.raises(CorruptMetadataError, match=f"memory item '{stored.id}'.*turn"):
        memory.reference("alice", "@m:" + stored.artifact_id[:8])
    missing = {**good, "role": None}  # Chroma merges metadata on upsert; None deletes a key
    _raw_upsert(memory, "alice", stored.id, missing, memory.embedder.dim)
    with pytest.raises(CorruptMetadataError, match=r"lacks metadata field\(s\) \['role'\]"):
        memory.get("alice", stored.id)
    with pytest.raises(CorruptMetadataError):
        memory.search("alice", "blue star", k=1)
    # Metadata that claims to be somewhere else than its id says (moved or forged).
    _raw_upsert(memory, "alice", stored.id, {**good, "thread": "t9"}, memory.embedder.dim)
    with pytest.raises(CorruptMetadataError, match="hashes to"):
        memory.get("alice", stored.id)
    # Another tenant's record smuggled into alice's collection is refused, never returned.
    forged = {**good, "tenant": "mallory"}
    fid = item_id("mallory", "t1", 1, "input", stored.artifact_id)
    _raw_upsert(memory, "alice", fid, forged, memory.embedder.dim)
    with pytest.raises(CorruptMetadataError, match="claims tenant 'mallory'"):
        memory.get("alice", fid)
    # compact reports corrupt items, and drops them only when asked.
    report = memory.compact("alice")
    assert sorted(report.corrupt) == sorted([stored.id, fid]) and memory.count("alice") == 2
    report = memory.compact("alice", drop_corrupt=True)
    assert sorted(report.dropped_corrupt) == sorted([stored.id, fid]) and memory.count("alice") == 0


def test_corrupted_collection_metadata(memory, stored):
    col = memory._collections.open("alice")
    col.modify(metadata={"tenant": "alice"})  # replaces everything: encoder and dim are gone
    fresh = _reopen(memory, memory.embedder)
    with pytest.raises(CorruptMetadataError, match=r"lacks metadata \['codi2_memory', 'encoder', 'dim'\]"):
        fresh.search("alice", "x")
    col.modify(metadata={"codi2_memory": 1, "tenant": "alice", "encoder": "e", "dim": "32"})
    with pytest.raises(CorruptMetadataError, match="invalid dim"):
        _reopen(memory, memory.embedder).items("alice")
    col.modify(
        metadata={
            "codi2_memory": 1,
            "tenant": "alice",
            "encoder": memory.embedder.name,
            "dim": 32,
            "shared_threads": "{oops",
        }
    )
    with pytest.raises(CorruptMetadataError, match="shared_threads"):
        _reopen(memory, memory.embedder).search("alice", "x", thread="t1")


def test_contradictory_or_missing_arguments(tmp_path, memory, store, stored):
    with pytest.raises(ValueError, match="exactly one of path="):
        ExemplarMemory()
    with pytest.raises(ValueError, match="exactly one of path="):
        ExemplarMemory(tmp_path / "db", host="127.0.0.1")
    with pytest.raises(ValueError, match="namespace"):
        ExemplarMemory(tmp_path / "db", namespace="bad name!")
    with pytest.raises(ConnectionError, match="cannot reach a Chroma server"):
        ExemplarMemory(host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="tenant must be a non-empty string"):
        memory.add("", "t", stored.ref)
    with pytest.raises(ValueError, match="role must be"):
        memory.add("alice", "t", stored.ref, role="assistant")
    with pytest.raises(ValueError, match=r"embeddings must be \(2, 32\)"):
        memory.add_many(
            "alice", [NewItem("t", stored.ref), NewItem("t", stored.ref, turn=2)], embeddings=np.ones((3, 32))
        )
    with pytest.raises(ValueError, match="all zeros"):
        memory.add("alice", "t", stored.ref, embedding=np.zeros(32))
    memory.artifacts = None
    with pytest.raises(ValueError, match="pass vectors= or media="):
        memory.add("alice", "t", stored.ref, turn=4)
    with pytest.raises(ValueError, match="query text is empty"):
        memory.search("alice", "  ")
