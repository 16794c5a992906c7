"""Trained paper checkpoints: what training writes, what `load_model` serves, what `export` merges.

A checkpoint holds only what training changed, next to a reference to the assembled model it
started from (the frozen 7B LM, CLIP, CLAP, unCLIP and AudioLDM-2 stay where they are):

    codi2_adapter.json         format, version, the base model folder and its manifest's sha256
    config.json                the assembled CoDi2Config (must equal the base folder's)
    adapter/                   peft LoRA adapter (adapter_config.json + adapter_model.safetensors),
                               with the trainable rows of CoDi-2's new tokens
    codi2_trainable.safetensors  projectors and output heads (trained in full), and the CLAP audio
                               encoder's `expand` (trained by the `bridge` stage) where it has one
    manifest.json              sha256 and size of every file above (`codi2_agent.model.integrity`)

Checkpoint files are untrusted input: before any tensor is loaded the folder is checked against its
manifest, the base model against the sha256 recorded at save time, the config against the base's,
and every tensor's name and shape against the model it goes into. A mismatch is a
`CheckpointMismatchError` naming the file and the tensors; a missing file a `WeightsNotFoundError`.

Example:
    >>> from codi2_agent.model import load_model
    >>> model = load_model("runs/paper/instruct/final", device="cuda")  # doctest: +SKIP
    >>> export_merged("runs/paper/instruct/final", "models/codi2-paper-trained")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from codi2_agent.model.configuration_codi2 import CONFIG_NAME, CoDi2Config
from codi2_agent.model.integrity import (
    MANIFEST_NAME,
    CorruptWeightsError,
    WeightsNotFoundError,
    file_sha256,
    verify_folder,
    write_manifest,
)
from codi2_agent.model.modeling_codi2 import CoDi2Model
from codi2_agent.model.placement import cast_floating

__all__ = [
    "ADAPTER_FOLDER",
    "CHECKPOINT_INFO",
    "TRAINABLE_WEIGHTS",
    "CheckpointMismatchError",
    "export_merged",
    "is_adapter_checkpoint",
    "load_adapter_checkpoint",
    "load_trainable_weights",
    "save_adapter_checkpoint",
    "trainable_state_dict",
]

logger = logging.getLogger(__name__)

CHECKPOINT_INFO = "codi2_adapter.json"
ADAPTER_FOLDER = "adapter"
TRAINABLE_WEIGHTS = "codi2_trainable.safetensors"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# CoDi-2's own trained modules, saved in full (the LM's changes are the adapter); the audio
# encoder's expansion only where the encoder has one (CLAP: C_x's last layer, see `paper.bridge`)
TRAINED_MODULES = ("projectors", "output_heads")
AUDIO_EXPAND = "encoders.audio.expand"


class CheckpointMismatchError(CorruptWeightsError):
    """A checkpoint that does not fit the model it is loaded into: tensors missing, unexpected or of
    another shape, another config, or another base model than the one it was trained from."""


class CheckpointInfo(BaseModel):
    """``codi2_adapter.json``."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    format: Literal["codi2-adapter"] = "codi2-adapter"
    version: Literal[1] = 1
    base_model: str  # the assembled model folder training started from (absolute)
    base_manifest_sha256: str | None  # sha256 of its manifest.json (None: the base had none)
    stage: str
    step: int


def is_adapter_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT_INFO).is_file()


def _base_fingerprint(base: Path) -> str | None:
    manifest = base / MANIFEST_NAME
    return file_sha256(manifest) if manifest.is_file() else None


# --- writing -----------------------------------------------------------------------------------------
def trained_modules(model: CoDi2Model) -> dict[str, torch.nn.Module]:
    """{name in the checkpoint: module} of every module a checkpoint holds in full."""
    modules = {name: model.get_submodule(name) for name in TRAINED_MODULES}
    if isinstance(getattr(model.encoders["audio"], "expand", None), torch.nn.Module):
        modules[AUDIO_EXPAND] = model.get_submodule(AUDIO_EXPAND)
    return modules


def trainable_state_dict(model: CoDi2Model) -> dict[str, torch.Tensor]:
    """Projectors, output heads (and the CLAP expansion), float32 on the CPU (the part saved in full)."""
    return {
        f"{name}.{key}": value.detach().float().cpu().contiguous()
        for name, module in trained_modules(model).items()
        for key, value in module.state_dict().items()
    }


def save_adapter_checkpoint(
    model: CoDi2Model,
    folder: str | Path,
    *,
    base_model: str | Path,
    stage: str,
    step: int,
    lm_state_dict: dict[str, torch.Tensor] | None = None,
    trainable: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model`'s adapter, trained modules, config and manifest to `folder` (replaced whole).

    `model.lm` must be a peft model. `lm_state_dict` / `trainable`: the LM's and the trained modules'
    full state, when they must be gathered first (FSDP); default: read from `model`.
    """
    from safetensors.torch import save_file

    folder, base = Path(folder), Path(base_model).resolve()
    partial = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.lm.save_pretrained(partial / ADAPTER_FOLDER, state_dict=lm_state_dict, save_embedding_layers=False)
    save_file(
        trainable if trainable is not None else trainable_state_dict(model),
        partial / TRAINABLE_WEIGHTS,
        metadata={"format": "pt", "stage": stage, "step": str(step)},
    )
    model.config.to_json_file(partial / CONFIG_NAME)
    info = CheckpointInfo(
        base_model=str(base), base_manifest_sha256=_base_fingerprint(base), stage=stage, step=step
    )
    (partial / CHECKPOINT_INFO).write_text(json.dumps(info.model_dump(), indent=2) + "\n")
    write_manifest(partial)
    if folder.exists():
        shutil.rmtree(folder)
    partial.replace(folder)
    return folder


# --- reading -----------------------------------------------------------------------------------------
def _read_info(folder: Path) -> CheckpointInfo:
    path = folder / CHECKPOINT_INFO
    try:
        return CheckpointInfo.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as e:
        raise CorruptWeightsError(path, f"not a valid CoDi-2 adapter description ({e})") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint is incomplete: missing {path}")
    try:
        return load_file(path)
    except SafetensorError as e:
        raise CorruptWeightsError(path, f"not a readable safetensors file ({e})") from None


def _check_tensors(path: Path, found: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Same names, same shapes, floating point, or a `CheckpointMismatchError` naming the first few."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [
        f"{k} {tuple(found[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(set(found) & set(expected))
        if found[k].shape != expected[k].shape
    ]
    not_float = [k for k, v in found.items() if not v.is_floating_point()]
    problems = []
    for what, names in (
        ("lacks", missing),
        ("has tensors the model does not have:", unexpected),
        ("has tensors of the wrong shape:", wrong),
        ("has non-float tensors:", not_float),
    ):
        if names:
            problems.append(f"{what} {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
    if problems:
        raise CheckpointMismatchError(path, "; ".join(problems))


def load_trainable_weights(model: CoDi2Model, folder: str | Path) -> None:
    """Load a checkpoint's adapter and trained modules into `model` (whose `lm` is a peft model with
    the same adapter layout), after checking every tensor's name and shape."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    folder = Path(folder)
    trained = _read_tensors(folder / TRAINABLE_WEIGHTS)
    _check_tensors(folder / TRAINABLE_WEIGHTS, trained, trainable_state_dict(model))
    adapter_path = folder / ADAPTER_FOLDER / PEFT_WEIGHTS
    adapter = _read_tensors(adapter_path)
    _check_tensors(adapter_path, adapter, get_peft_model_state_dict(model.lm))
    set_peft_model_state_dict(model.lm, adapter)
    for name, module in trained_modules(model).items():
        prefix = f"{name}."
        state = {k[len(prefix) :]: v for k, v in trained.items() if k.startswith(prefix)}
        module.load_state_dict(state)  # copies into the existing tensors: their dtype and device stay


def _peft_config(folder: Path) -> Any:
    from peft import LoraConfig

    path = folder / ADAPTER_FOLDER / PEFT_CONFIG
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint {folder} is incomplete: missing {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("peft_type") != "LORA":
            raise ValueError("not a LoRA adapter config")
        return LoraConfig.from_peft_type(**data)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise CorruptWeightsError(path, f"not a valid LoRA adapter config ({e})") from None


def load_adapter_checkpoint(
    folder: str | Path,
    *,
    merge_adapters: bool = False,
    base_model: str | Path | None = None,
    verify: bool | Literal["strict"] = True,
    **placement: Any,
) -> CoDi2Model:
    """Load the base model a checkpoint names, then its adapter and trained modules.

    `merge_adapters=False`: `model.lm` is a peft model with the LoRA adapter attached (switch it off
    with `model.lm.disable_adapter()`); True: the adapter and token rows are merged into the LM's
    weights and `model.lm` is the plain transformers model. `base_model` overrides the base folder
    recorded in the checkpoint (moved since); it must still be the same files. `placement`:
    `device`, `dtype`, `device_map`, `offload`, as `load_model` takes them.

    Raises:
        WeightsNotFoundError: the checkpoint or its base model lacks a file.
        CorruptWeightsError: a file differs from its manifest or cannot be read.
        CheckpointMismatchError: another base model, config, or tensor names/shapes than the model's.
    """
    from peft import get_peft_model

    folder = Path(folder).expanduser()
    if not is_adapter_checkpoint(folder):
        raise WeightsNotFoundError(f"{folder} is not a CoDi-2 training checkpoint (no {CHECKPOINT_INFO})")
    verify_folder(folder, verify)
    info = _read_info(folder)
    base = Path(base_model).expanduser() if base_model is not None else Path(info.base_model)
    if not base.is_dir():
        raise WeightsNotFoundError(
            f"the base model {base} that checkpoint {folder} was trained from does not exist "
            "(moved? pass base_model=)"
        )
    if info.base_manifest_sha256 is not None and _base_fingerprint(base) != info.base_manifest_sha256:
        raise CheckpointMismatchError(
            base / MANIFEST_NAME,
            f"is not the base model checkpoint {folder} was trained from (its manifest's sha256 differs)",
        )
    config = CoDi2Config.from_json_file(folder / CONFIG_NAME)
    model = CoDi2Model.from_pretrained(base, verify=verify, **placement)
    if config != model.config:
        differ = sorted(k for k, v in config.to_dict().items() if model.config.to_dict().get(k) != v)
        raise CheckpointMismatchError(
            folder / CONFIG_NAME, f"differs from the base model's config in {differ}"
        )
    dtype_before = model.lm.dtype
    try:
        model.lm = get_peft_model(model.lm, _peft_config(folder))
    except (ValueError, IndexError, KeyError, RuntimeError) as e:  # modules or token ids the LM lacks
        raise CheckpointMismatchError(
            folder / ADAPTER_FOLDER / PEFT_CONFIG, f"does not fit the base model's LM ({e})"
        ) from None
    load_trainable_weights(model, folder)
    cast_floating(model.lm, dtype_before)  # adapter tensors in the LM's dtype, like its other weights
    if merge_adapters:
        model.lm = model.lm.merge_and_unload()
    return model.eval()


def export_merged(
    src: str | Path,
    dst: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    base_model: str | Path | None = None,
) -> Path:
    """Merge checkpoint `src` into a standalone model folder `dst` that loads without peft.

    `dst` must not exist (or be empty); it appears only when complete. `dtype` as `load_model`
    (default: float32, or `CODI2_DTYPE`).
    """
    dst = Path(dst).expanduser()
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"export folder {dst} is not empty; export into a new folder")
    model = load_adapter_checkpoint(
        src, merge_adapters=True, dtype=dtype, base_model=base_model, device="cpu"
    )
    partial = dst.parent / f".{dst.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.replace(dst)
    logger.info("exported %s merged into %s", src, dst)
    return dst
