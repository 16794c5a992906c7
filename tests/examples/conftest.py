"""Fixtures for the example tests: the model the examples run on.

The shipped ``tiny`` once its weights exist, else a seeded random tiny model saved to a folder (same
architecture and cost), so every example runs either way.
"""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere

import pytest

from codi2_agent.model import CoDi2Config, CoDi2Model, load_model, shipped_model_path


@pytest.fixture(scope="session")
def model_arg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """'tiny' when its weights are shipped, else the folder of a saved random tiny model."""
    if (shipped_model_path("tiny") / "config.json").is_file():
        return "tiny"
    folder = tmp_path_factory.mktemp("tiny-random")
    CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def model(model_arg: str) -> CoDi2Model:
    return load_model(model_arg)
