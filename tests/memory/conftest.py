"""Fixtures for the memory tests: real Chroma, embedded and as a `chroma run` server on loopback."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere

import uuid
from pathlib import Path

import numpy as np
import pytest

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.local_services import ChromaServer
from codi2_agent.media import Media
from codi2_agent.memory import HashingEmbedder

DIM = 32
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}


@pytest.fixture(autouse=True)
def _no_default_embedding_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything reaches Chroma's default (downloading) ONNX embedding model."""
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Chroma's default ONNX embedding function was used")

    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__init__", refuse)
    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__call__", refuse)


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder(dim=DIM)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture(params=["embedded", "server"])
def memory(request: pytest.FixtureRequest, tmp_path: Path, embedder: HashingEmbedder, store: ArtifactStore):
    """An ExemplarMemory in each mode; server tests get their own namespace on the shared server."""
    from codi2_agent.memory import ExemplarMemory

    if request.param == "embedded":
        mem = ExemplarMemory(tmp_path / "db", embedder=embedder, artifacts=store)
    else:
        server: ChromaServer = request.getfixturevalue("chroma_server")
        mem = ExemplarMemory(
            host=server.host,
            port=server.port,
            embedder=embedder,
            artifacts=store,
            namespace="n" + uuid.uuid4().hex[:12],
        )
    yield mem
    mem.close()


def _shape_image(color: str, *, size: int = 16, square: bool = False, caption: str | None = None) -> Media:
    arr = np.full((size, size, 3), 128, dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    if square:
        mask = (np.abs(yy - c) < size / 3) & (np.abs(xx - c) < size / 3)
    else:
        mask = (yy - c) ** 2 + (xx - c) ** 2 < (size / 3) ** 2
    arr[mask] = COLORS[color]
    return Media.from_image(arr, caption=caption)


@pytest.fixture
def shape_image():
    """Factory of tiny synthetic images: a coloured disc or square on grey."""
    return _shape_image
