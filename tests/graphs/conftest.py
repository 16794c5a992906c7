"""Fixtures for the session-graph tests: one seeded random tiny model per run, real Chroma, real SQLite."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.model import CoDi2Model

STEPS = 2  # diffusion steps in tests: enough to exercise the decoder and its progress events


@pytest.fixture(autouse=True)
def _no_default_embedding_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything reaches Chroma's default (downloading) ONNX embedding model."""
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Chroma's default ONNX embedding function was used")

    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__init__", refuse)
    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__call__", refuse)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture
def memory(tmp_path: Path, tiny_model: CoDi2Model, store: ArtifactStore) -> Iterator[Any]:
    """A real embedded Chroma memory in the model's own feature space."""
    from codi2_agent.backends import ModelEmbedder
    from codi2_agent.memory import ExemplarMemory

    mem = ExemplarMemory(tmp_path / "memory", embedder=ModelEmbedder(tiny_model), artifacts=store)
    yield mem
    mem.close()


@pytest.fixture
def make_graph(
    tiny_model: CoDi2Model, memory: Any, store: ArtifactStore, tmp_path: Path
) -> Iterator[Callable[..., Any]]:
    """Build session graphs over the shared memory and store, with SQLite checkpoints in tmp_path."""
    from langgraph.types import RetryPolicy

    from codi2_agent.graphs import build_session_graph, is_transient

    graphs: list[Any] = []

    def make(backend: Any = None, **options: Any) -> Any:
        options.setdefault("num_inference_steps", STEPS)
        fast_retry = RetryPolicy(max_attempts=3, initial_interval=0.01, retry_on=is_transient)
        options.setdefault("retry_policy", fast_retry)
        options.setdefault("checkpointer", tmp_path / "checkpoints.sqlite")
        graph = build_session_graph(backend or tiny_model, memory, store, **options)
        graphs.append(graph)
        return graph

    yield make
    for graph in graphs:
        graph.checkpointer.conn.close()
