"""Process-wide defaults read from the environment (`CODI2_*`), validated by pydantic-settings.

- `CODI2_MODEL` (tiny): the model servers load (the LangGraph Agent Server's graph): `tiny` (the
  shipped weights), `paper`, or a model folder.
- `CODI2_DEVICE` (unset): where the model runs: `cpu`, `cuda`, `cuda:N`, `mps` or `auto`. Unset means
  `cpu`, or, with a device map, the LM's first device.
- `CODI2_DTYPE` (float32): `float32`, `bfloat16`, `float16` (or `fp32` / `bf16` / `fp16`), or `auto`
  (the LM checkpoint's own dtype, then used for every component).
- `CODI2_DEVICE_MAP` (unset): an accelerate device map for the LM: `auto`, `balanced`,
  `balanced_low_0`, `sequential`, or one device.
- `CODI2_OFFLOAD` (false): diffusers' model CPU offload for the paper preset's pipelines (each model
  moves to the accelerator only while it runs).

Arguments given to `load_model` win over these. A bad value raises `SettingsError` naming the variable.

Example:
    >>> CoDi2Settings(dtype="bf16").dtype
    'bfloat16'
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "DEVICE_MAP_STRATEGIES",
    "DTYPE_ALIASES",
    "ENV_PREFIX",
    "CoDi2Settings",
    "SettingsError",
    "check_device_name",
    "check_dtype_name",
    "load_settings",
]

ENV_PREFIX = "CODI2_"
# Canonical dtype names (torch's) and the short spellings people also write.
DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "auto": "auto",
}
# accelerate's named strategies for `device_map`
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE_PATTERN = re.compile(r"^(cpu|mps|auto|cuda(:\d+)?)$")


class SettingsError(ValueError):
    """A `CODI2_*` environment variable (or a placement argument) has a value we cannot use."""


def check_dtype_name(value: str) -> str:
    """'bf16' -> 'bfloat16'; an unknown name raises ValueError listing the accepted ones."""
    name = DTYPE_ALIASES.get(value.strip().lower())
    if name is None:
        raise ValueError(f"unknown dtype {value!r}; expected one of {sorted(set(DTYPE_ALIASES.values()))}")
    return name


def check_device_name(value: str) -> str:
    """A device string torch understands and we support: cpu, mps, auto, cuda or cuda:N."""
    name = value.strip().lower()
    if not _DEVICE_PATTERN.match(name):
        raise ValueError(f"unknown device {value!r}; expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
    return name


class CoDi2Settings(BaseSettings):
    """Placement defaults for `load_model` and the model servers load, read from `CODI2_*` variables."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    model: str = "tiny"
    device: str | None = None
    dtype: str = "float32"
    device_map: str | None = None
    offload: bool = False

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected 'tiny', 'paper' or a model folder, got an empty value")
        return value.strip()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        return None if value is None or not value.strip() else check_device_name(value)

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str) -> str:
        return check_dtype_name(value)

    @field_validator("device_map")
    @classmethod
    def _device_map(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        name = value.strip().lower()
        if name in DEVICE_MAP_STRATEGIES:
            return name
        try:
            return check_device_name(name)  # one device holds the whole LM
        except ValueError:
            raise ValueError(
                f"unknown device map {value!r}; expected one of {list(DEVICE_MAP_STRATEGIES)} or a device"
            ) from None


def load_settings(**overrides: Any) -> CoDi2Settings:
    """Read the environment (plus `overrides`); a bad value raises `SettingsError` naming the variable.

    Example:
        >>> load_settings(offload=True).offload
        True
    """
    try:
        return CoDi2Settings(**overrides)
    except ValidationError as e:
        problems = []
        for error in e.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            source = "argument" if field in overrides else "environment variable"
            name = field if field in overrides else f"{ENV_PREFIX}{field.upper()}"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{source} {name}={error.get('input')!r}: {message}")
        raise SettingsError("invalid CoDi-2 setting: " + "; ".join(problems)) from None
