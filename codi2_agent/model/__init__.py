"""The CoDi-2 model family: config presets, processor, model, and `load_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

from codi2_agent.model.assemble import assemble_paper_model
from codi2_agent.model.configuration_codi2 import (
    CoDi2Config,
    ConfigError,
    DecoderConfig,
    EncoderConfig,
    ModelLoadError,
)
from codi2_agent.model.integrity import CorruptWeightsError, IncompleteWeightsError
from codi2_agent.model.modeling_codi2 import (
    MAX_REPLY_TOKENS,
    CoDi2Model,
    CoDi2Output,
    GenerationOutput,
    PlaceholderMismatchError,
    WeightsNotFoundError,
)
from codi2_agent.model.placement import FLOAT32_BUFFERS, DeviceUnavailableError, Placement
from codi2_agent.model.processing_codi2 import IGNORE_INDEX, CoDi2Processor, Turn, build_tokenizer
from codi2_agent.model.vocabulary import Vocabulary

__all__ = [
    "FLOAT32_BUFFERS",
    "IGNORE_INDEX",
    "MAX_REPLY_TOKENS",
    "SHIPPED_MODELS",
    "CoDi2Config",
    "CoDi2Model",
    "CoDi2Output",
    "CoDi2Processor",
    "ConfigError",
    "CorruptWeightsError",
    "DecoderConfig",
    "DeviceUnavailableError",
    "EncoderConfig",
    "GenerationOutput",
    "IncompleteWeightsError",
    "ModelLoadError",
    "PlaceholderMismatchError",
    "Placement",
    "Turn",
    "Vocabulary",
    "WeightsNotFoundError",
    "assemble_paper_model",
    "build_tokenizer",
    "load_model",
    "shipped_model_path",
]

WEIGHTS_ROOT = Path(__file__).resolve().parent.parent / "weights"
SHIPPED_MODELS = ("tiny",)


def shipped_model_path(name: str) -> Path:
    """Where a model shipped inside the package lives."""
    return WEIGHTS_ROOT / name


def load_model(
    name_or_path: str | Path = "tiny",
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload: bool | None = None,
    verify: bool | Literal["strict"] = True,
    merge_adapters: bool = False,
) -> CoDi2Model:
    """Load a shipped model by name (`"tiny"`) or a model folder by path. Never touches the network.

    A training checkpoint of the paper preset (a folder with `codi2_adapter.json`, written by
    `codi2_agent.training.paper`) loads its base model, then its LoRA adapter and trained modules:
    attached (`model.lm` is a peft model), or merged into the LM with `merge_adapters=True`.

    Placement and precision apply to every component (LM, encoders, projectors, output heads,
    decoders and, for the paper preset, the diffusers pipelines and CLIP/CLAP):
    `device` ("cpu", "cuda", "cuda:N", "mps", "auto"), `dtype` ("float32", "bfloat16", "float16", a
    torch.dtype, or "auto" = the LM checkpoint's dtype), `device_map` (the LM through accelerate:
    "auto", "balanced", ... or a dict) and `offload` (diffusers' model CPU offload for the pipelines).
    Unset ones come from `CODI2_DEVICE`, `CODI2_DTYPE`, `CODI2_DEVICE_MAP`, `CODI2_OFFLOAD`
    (`codi2_agent.settings`), then cpu / float32 / none / off. `verify` checks the folder against its
    sha256 manifest first (see `CoDi2Model.from_pretrained`).

    Example:
        >>> model = load_model("tiny", dtype="bfloat16")  # doctest: +SKIP
    """
    options: dict[str, Any] = dict(
        device=device, dtype=dtype, device_map=device_map, offload=offload, verify=verify
    )
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_MODELS:
        path = shipped_model_path(name_or_path)
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(
                f"the shipped {name_or_path!r} weights are not at {path}; reproduce them with "
                f"`codi2-agent train --preset {name_or_path} --out {path}`"
            )
        return CoDi2Model.from_pretrained(path, **options)
    path = Path(name_or_path).expanduser()
    if (path / "codi2_adapter.json").is_file():  # a paper training checkpoint: base model + adapter
        from codi2_agent.training.paper.checkpoint import load_adapter_checkpoint

        return load_adapter_checkpoint(path, merge_adapters=merge_adapters, **options)
    if not path.exists() and "/" not in str(name_or_path) and not str(name_or_path).startswith("."):
        raise WeightsNotFoundError(
            f"{name_or_path!r} is neither a shipped model {list(SHIPPED_MODELS)} nor a local folder "
            "(models load from local paths only; nothing is downloaded)"
        )
    return CoDi2Model.from_pretrained(path, **options)
