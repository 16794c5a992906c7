"""The server's model service loads the model as its settings say, and reports what it loaded (read
from the parameters, not echoed from the settings) on ``GET /v1/info``."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from codi2_agent.serving.service import ModelService, ServerSettings


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_dtype_setting_reaches_every_parameter(tiny_model_dir: Path, tmp_path: Path, dtype: str) -> None:
    service = ModelService(
        ServerSettings(model=str(tiny_model_dir), artifacts=str(tmp_path / "artifacts"), dtype=dtype)
    )
    assert {str(p.dtype) for p in service.backend.model.parameters()} == {f"torch.{dtype}"}
    assert service.info()["parameters"] == {"dtypes": [dtype], "devices": ["cpu"]}


def test_settings_take_the_short_names_and_refuse_unknown_ones() -> None:
    assert ServerSettings(dtype="bf16", device="cuda:1").model_dump(include={"dtype", "device"}) == {
        "dtype": "bfloat16",
        "device": "cuda:1",
    }
    with pytest.raises(ValidationError, match="unknown dtype 'fp8'"):
        ServerSettings(dtype="fp8")
    with pytest.raises(ValidationError, match="gpu0"):
        ServerSettings(device="gpu0")
