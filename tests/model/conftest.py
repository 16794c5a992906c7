from __future__ import annotations

import pytest

from codi2_agent.model import CoDi2Config, CoDi2Model


@pytest.fixture(scope="session")
def tiny_model() -> CoDi2Model:
    """Seeded random tiny model, shared read-only across a worker's tests (do not train it)."""
    return CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).eval()


@pytest.fixture
def make_model():
    def make(seed: int = 0, **overrides) -> CoDi2Model:
        return CoDi2Model.from_config(CoDi2Config.tiny(**overrides), seed=seed)

    return make
