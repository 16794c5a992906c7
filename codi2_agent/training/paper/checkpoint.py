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

import functools
import json
import logging
import shutil
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
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
    "IncompleteCheckpointError",
    "export_merged",
    "is_adapter_checkpoint",
    "load_adapter_checkpoint",
    "load_trainable_weights",
    "save_adapter_checkpoint",
    "save_lora_adapter",
    "trainable_state_dict",
    "trainable_state_names",
    "unwrapped_modules",
    "unwrapped_name",
    "unwrapped_state_dict",
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


class IncompleteCheckpointError(ValueError):
    """The state handed to `save_adapter_checkpoint` lacks tensors the model trains (a LoRA layer, a
    token row, a head): nothing is written, rather than a checkpoint that fails or misleads later."""


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


def trainable_state_names(model: CoDi2Model) -> list[str]:
    """The names `trainable_state_dict` has (no tensor copied)."""
    return [f"{name}.{key}" for name, module in trained_modules(model).items() for key in module.state_dict()]


def trainable_state_dict(model: CoDi2Model) -> dict[str, torch.Tensor]:
    """Projectors, output heads (and the CLAP expansion), float32 on the CPU (the part saved in full)."""
    return {
        f"{name}.{key}": value.detach().float().cpu().contiguous()
        for name, module in trained_modules(model).items()
        for key, value in module.state_dict().items()
    }


# Module wrappers that training may put around parts of the LM, each holding the wrapped module as one
# child: FSDP (1) units, activation-checkpoint wrappers and torch.compile's `OptimizedModule` (whole
# models, or repeated blocks with accelerate's `compile_regions`; torch exports no name for its
# `_orig_mod`). A parameter's name then carries the child's name as a segment of its own.
_COMPILED_MODULE = "_orig_mod"


@functools.cache
def _wrapper_segments() -> frozenset[str]:
    # imported when needed: torch.distributed.fsdp takes a second to import, and serving never needs it
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import _CHECKPOINT_WRAPPED_MODULE
    from torch.distributed.fsdp._common_utils import FSDP_WRAPPED_MODULE

    return frozenset({FSDP_WRAPPED_MODULE, _CHECKPOINT_WRAPPED_MODULE, _COMPILED_MODULE})


def unwrapped_name(name: str) -> str:
    """A parameter or module name without wrapper segments, as the unwrapped model names it:
    ``layers.0._fsdp_wrapped_module.self_attn.q_proj`` -> ``layers.0.self_attn.q_proj``."""
    segments = _wrapper_segments()
    return ".".join(part for part in name.split(".") if part not in segments)


def unwrapped_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` keyed by `unwrapped_name` (FSDP's full state dict is already; other gathers may not be)."""
    clean: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = unwrapped_name(key)
        if name in clean:
            raise ValueError(f"state dict keys {key!r} and another both name {name!r} once unwrapped")
        clean[name] = value
    return clean


@contextmanager
def unwrapped_modules(root: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Within the block, every wrapper below `root` is replaced by the module it wraps, so that
    `root.named_modules()` gives the unwrapped model's names; the wrappers are back afterwards.

    peft selects an adapter's entries of a state dict by the names of its LoRA layers in the module
    tree; under FSDP those names carry ``_fsdp_wrapped_module`` inside (each decoder layer is a unit,
    peft strips the segment only at the start of a name), while the gathered state dict's keys do
    not, so the wrapped layers' LoRA weights would be left out. Nothing may run the model meanwhile.
    """
    segments, swapped = _wrapper_segments(), []
    try:
        pending = [root]
        while pending:
            parent = pending.pop()
            for name, child in list(parent._modules.items()):
                inner = child
                while inner is not None and (wrapped := segments & inner._modules.keys()):
                    inner = inner._modules[next(iter(wrapped))]
                if inner is not child:
                    parent._modules[name] = inner
                    swapped.append((parent, name, child))
                if inner is not None:
                    pending.append(inner)
        yield root
    finally:
        for parent, name, child in reversed(swapped):
            parent._modules[name] = child


def _missing(names: Iterable[str], found: Iterable[str]) -> list[str]:
    return sorted(set(names).difference(found))


def _refuse_incomplete(what: str, missing: list[str]) -> None:
    if missing:
        raise IncompleteCheckpointError(
            f"the {what} to save lacks {len(missing)} trained tensor(s) of the model: "
            f"{', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''} (no checkpoint written)"
        )


def save_lora_adapter(
    lm: Any, folder: Path, lm_state_dict: Mapping[str, torch.Tensor] | None = None
) -> list[str]:
    """`lm.save_pretrained(folder)` of a peft model, from `lm_state_dict` when given (a gathered full
    state of `lm`; wrapper segments in its keys are dropped); returns the names of the tensors written.

    peft selects the adapter's entries by module name: it sees the unwrapped names here (see
    `unwrapped_modules`), and every adapter tensor the unwrapped LM has must be among those written.

    Raises:
        IncompleteCheckpointError: `lm_state_dict` lacks an adapter tensor (a LoRA layer, a token row).
    """
    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    state = unwrapped_state_dict(lm_state_dict) if lm_state_dict is not None else None
    with unwrapped_modules(lm):
        # passed explicitly so that peft does not check the tensors: under FSDP they are this
        # process's shards; only their names count
        expected = get_peft_model_state_dict(lm, state_dict=lm.state_dict(), save_embedding_layers=False)
        lm.save_pretrained(folder, state_dict=state, save_embedding_layers=False)
    with safe_open(folder / PEFT_WEIGHTS, framework="pt") as f:
        written = sorted(f.keys())
    _refuse_incomplete("LM adapter", _missing(expected, written))
    return written


def save_adapter_checkpoint(
    model: CoDi2Model,
    folder: str | Path,
    *,
    base_model: str | Path,
    stage: str,
    step: int,
    lm_state_dict: Mapping[str, torch.Tensor] | None = None,
    trainable: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write `model`'s adapter, trained modules, config and manifest to `folder` (replaced whole).

    `model.lm` must be a peft model. `lm_state_dict` / `trainable`: the LM's and the trained modules'
    full state, when they must be gathered first (FSDP); default: read from `model`. Keys may carry
    wrapper segments (``_fsdp_wrapped_module.``, see `unwrapped_name`).

    Raises:
        IncompleteCheckpointError: the given state lacks a tensor the model trains; `folder` is left
            as it was.
    """
    from safetensors.torch import save_file

    folder, base = Path(folder), Path(base_model).resolve()
    trained = trainable_state_dict(model) if trainable is None else unwrapped_state_dict(trainable)
    _refuse_incomplete("trained modules' state", _missing(trainable_state_names(model), trained))
    partial = folder.parent / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        save_lora_adapter(model.lm, partial / ADAPTER_FOLDER, lm_state_dict)
    except IncompleteCheckpointError:
        shutil.rmtree(partial)
        raise
    save_file(
        trained,
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
