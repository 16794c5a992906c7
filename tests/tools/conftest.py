"""Fixtures for the LangChain-surface tests: one seeded random tiny model and one shared toolkit."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere

import functools

import pytest

from codi2_agent.model import CoDi2Config, CoDi2Model

STEPS = 2


@functools.cache
def tiny() -> CoDi2Model:
    """Seeded random tiny model, built once per process."""
    return CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).eval()


@pytest.fixture(scope="session")
def tiny_model() -> CoDi2Model:
    return tiny()


@pytest.fixture(autouse=True)
def _no_default_embedding_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything reaches Chroma's default (downloading) ONNX embedding model."""
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Chroma's default ONNX embedding function was used")

    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__init__", refuse)
    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__call__", refuse)
