"""Fixtures for the adversarial suite: a seeded random tiny model on disk (subprocesses load the very
same weights), small diffusion steps, real SQLite checkpoints and real embedded Chroma."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

from pathlib import Path

import pytest

from codi2_agent.model import CoDi2Config, CoDi2Model

STEPS = 2


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-random")
    CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> CoDi2Model:
    return CoDi2Model.from_pretrained(tiny_model_dir)
