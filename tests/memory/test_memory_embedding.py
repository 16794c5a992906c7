"""HashingEmbedder, the embedder registry, and our registered Chroma embedding function."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from codi2_agent.media import Media
from codi2_agent.memory import (
    CoDi2EmbeddingFunction,
    Embedder,
    EncoderUnavailableError,
    HashingEmbedder,
    get_embedder,
    register_embedder,
)


def test_hashing_embedder_is_deterministic_normalised_float32(shape_image):
    a, b = HashingEmbedder(dim=48, seed=3), HashingEmbedder(dim=48, seed=3)
    media = [shape_image("red"), shape_image("blue", square=True), Media.from_text("hello there")]
    va, vb = a.embed_media(media), b.embed_media(media)
    assert va.shape == (3, 48) and va.dtype == np.float32
    np.testing.assert_array_equal(va, vb)
    np.testing.assert_allclose(np.linalg.norm(va, axis=1), 1.0, rtol=1e-5)
    assert isinstance(a, Embedder)
    assert not np.allclose(HashingEmbedder(dim=48, seed=4).embed_text(["x"]), a.embed_text(["x"]))


def test_text_vectors_agree_across_processes():
    # Python's str hash is salted per process; our token hashing must not be.
    code = (
        "from codi2_agent.memory import HashingEmbedder as H; "
        "print(H(16).embed_text(['blue star'])[0].tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    np.testing.assert_allclose(eval(out), HashingEmbedder(16).embed_text(["blue star"])[0], rtol=1e-6)


def test_captions_align_media_with_text_queries(shape_image):
    emb = HashingEmbedder(dim=64)
    blue = shape_image("blue", caption="a blue star at night")
    red = shape_image("red", caption="a red circle on snow")
    vecs = emb.embed_media([blue, red])
    q = emb.embed_text(["the picture with the blue star"])[0]
    assert vecs[0] @ q > vecs[1] @ q


def test_audio_features_ignore_sample_rate_roughly():
    emb = HashingEmbedder(dim=64)
    t16, t32 = np.arange(16000) / 16000, np.arange(32000) / 32000
    tone16 = Media.from_audio(np.sin(2 * np.pi * 440 * t16).astype(np.float32), 16000)
    tone32 = Media.from_audio(np.sin(2 * np.pi * 440 * t32).astype(np.float32), 32000)
    low = Media.from_audio(np.sin(2 * np.pi * 110 * t16).astype(np.float32), 16000)
    v = emb.embed_media([tone16, tone32, low])
    assert v[0] @ v[1] > 0.9 > v[0] @ v[2]


def test_registry_rebuilds_hashing_embedders_and_refuses_unknown_names():
    assert get_embedder("hashing-v1:d24:s7").dim == 24
    with pytest.raises(EncoderUnavailableError, match="no embedder named 'codi2-tiny@nope'"):
        get_embedder("codi2-tiny@nope")

    class Custom:
        name, dim = "custom-test-encoder", 5

        def embed_media(self, media):
            return np.ones((len(media), 5), np.float32)

        def embed_text(self, texts):
            return np.ones((len(texts), 5), np.float32)

    custom = register_embedder(Custom())
    assert get_embedder("custom-test-encoder") is custom
    with pytest.raises(TypeError):
        register_embedder(object())


def test_embedding_function_implements_and_registers_the_full_protocol():
    from chromadb.utils.embedding_functions import config_to_embedding_function, known_embedding_functions

    ef = CoDi2EmbeddingFunction(HashingEmbedder(dim=16))
    assert known_embedding_functions[CoDi2EmbeddingFunction.name()] is CoDi2EmbeddingFunction
    assert not ef.is_legacy()
    assert ef.get_config() == {"encoder": "hashing-v1:d16:s0", "dim": 16}
    rebuilt = config_to_embedding_function({"name": "codi2_agent", "config": ef.get_config()})
    assert isinstance(rebuilt, CoDi2EmbeddingFunction)
    np.testing.assert_allclose(rebuilt(["a blue star"])[0], ef(["a blue star"])[0])
    assert ef.default_space() == "cosine"
    with pytest.raises(ValueError, match="encoder"):
        CoDi2EmbeddingFunction.build_from_config({"dim": 3})
    with pytest.raises(ValueError, match="cannot change"):
        ef.validate_config_update(ef.get_config(), {"encoder": "other", "dim": 16})


def test_embedding_function_from_config_fails_clearly_without_the_encoder():
    ef = CoDi2EmbeddingFunction.build_from_config(
        {"encoder": "codi2-tiny@missing", "dim": 8}
    )  # lazy: no error yet
    with pytest.raises(EncoderUnavailableError, match="codi2-tiny@missing"):
        ef(["hello"])


def test_raw_chroma_collection_with_our_function_never_touches_the_default(tmp_path):
    import chromadb
    from chromadb.config import Settings

    emb = HashingEmbedder(dim=16)
    client = chromadb.PersistentClient(str(tmp_path / "raw"), settings=Settings(anonymized_telemetry=False))
    col = client.create_collection("raw", embedding_function=CoDi2EmbeddingFunction(emb))
    col.add(ids=["a", "b"], documents=["a blue star", "a red circle"])  # embedded by our function
    assert col.query(query_texts=["blue star"], n_results=1)["ids"] == [["a"]]
    # Reopened without passing a function: Chroma rebuilds ours from the stored config.
    again = client.get_collection("raw")
    assert again.configuration_json["embedding_function"]["name"] == "codi2_agent"
    assert again.query(query_texts=["red circle"], n_results=1)["ids"] == [["b"]]
    client.close()  # type: ignore[attr-defined]
