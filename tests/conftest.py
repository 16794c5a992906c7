"""Shared fixtures. Tests run offline: no hub calls, no Chroma telemetry, 1 torch thread per worker."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from codi2_agent.local_services import ChromaServer, start_chroma
from codi2_agent.model import CoDi2Config, CoDi2Model, load_model, shipped_model_path

torch.set_num_threads(1)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def model_arg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """``--model`` for commands and examples: "tiny" when its weights are shipped, else the folder of
    a seeded random tiny model (same architecture and cost), so those tests pass either way."""
    if (shipped_model_path("tiny") / "config.json").is_file():
        return "tiny"
    folder = tmp_path_factory.mktemp("tiny-random")
    CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def model(model_arg: str) -> CoDi2Model:
    """The same model, loaded in this process."""
    return load_model(model_arg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random tiny model, saved once, so subprocesses load the very same weights."""
    folder = tmp_path_factory.mktemp("tiny-random")
    CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> CoDi2Model:
    """That model, loaded in this process."""
    return CoDi2Model.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A `chroma run` server on a free loopback port for the whole session, stopped afterwards."""
    server = start_chroma(tmp_path_factory.mktemp("chroma-server"), timeout=60)
    try:
        yield server
    finally:
        server.stop()
