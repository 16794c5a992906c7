"""The CoDi-2 model family: config presets, processor, model, and `load_model`."""

from __future__ import annotations

from pathlib import Path

from codi2_agent.model.assemble import assemble_paper_model
from codi2_agent.model.configuration_codi2 import CoDi2Config, DecoderConfig, EncoderConfig
from codi2_agent.model.modeling_codi2 import (
    MAX_REPLY_TOKENS,
    CoDi2Model,
    CoDi2Output,
    GenerationOutput,
    PlaceholderMismatchError,
    WeightsNotFoundError,
)
from codi2_agent.model.processing_codi2 import IGNORE_INDEX, CoDi2Processor, Turn, build_tokenizer

__all__ = [
    "IGNORE_INDEX",
    "MAX_REPLY_TOKENS",
    "SHIPPED_MODELS",
    "CoDi2Config",
    "CoDi2Model",
    "CoDi2Output",
    "CoDi2Processor",
    "DecoderConfig",
    "EncoderConfig",
    "GenerationOutput",
    "PlaceholderMismatchError",
    "Turn",
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


def load_model(name_or_path: str | Path = "tiny", *, device: str = "cpu") -> CoDi2Model:
    """Load a shipped model by name (`"tiny"`) or a model folder by path. Never touches the network.

    Example:
        >>> model = load_model("tiny")  # doctest: +SKIP
    """
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_MODELS:
        path = shipped_model_path(name_or_path)
        if not (path / "config.json").is_file():
            raise WeightsNotFoundError(
                f"the shipped {name_or_path!r} weights are not at {path}; reproduce them with "
                f"`codi2-agent train --preset {name_or_path} --out {path}`"
            )
        return CoDi2Model.from_pretrained(path, device=device)
    path = Path(name_or_path).expanduser()
    if not path.exists() and "/" not in str(name_or_path) and not str(name_or_path).startswith("."):
        raise WeightsNotFoundError(
            f"{name_or_path!r} is neither a shipped model {list(SHIPPED_MODELS)} nor a local folder "
            "(models load from local paths only; nothing is downloaded)"
        )
    return CoDi2Model.from_pretrained(path, device=device)
