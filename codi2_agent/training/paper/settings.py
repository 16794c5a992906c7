"""`PaperTrainingConfig`: every knob of paper-scale training, validated, saved beside the checkpoints.

Three stages; the last two as LLaVA and CoDi-2 train:

- `bridge`: audio-caption pairs. Only the CLAP audio encoder's `expand` trains, so that C_x(audio)
  lands on AudioLDM-2's own conditioning for the caption (see `paper.bridge`); without it the audio
  features the later stages regress onto are a random projection AudioLDM-2 cannot read.
- `align`: paired data (captions <-> media). The LM stays frozen; the projectors, the output heads
  and the rows of CoDi-2's new tokens learn to map the encoders' features in and out of it.
- `instruct`: in-context instruction data (edits, exemplars, multi-turn). LoRA on the LM's attention
  projections joins the parts trained in `align`.

The objective is the paper's `alpha * MSE(c_MLLM, C_x(target)) + L_DM + L_t`; the weights are the
model's own config fields (`alpha`, `diffusion_loss_weight`), and the diffusion term is off unless
`diffusion=True` (it runs the frozen unCLIP / AudioLDM-2 UNets on every sample with a medium answer).

Example:
    >>> cfg = PaperTrainingConfig(align_steps=10, instruct_steps=20)
    >>> cfg.steps("instruct"), cfg.steps("bridge"), cfg.lora.rank
    (20, 1000, 16)
    >>> PaperTrainingConfig(batch_size=0)
    Traceback (most recent call last):
    ...
    ValueError: batch_size must be >= 1, got 0
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["MIXED_PRECISION", "PAPER_STAGES", "LoraSettings", "PaperTrainingConfig"]

PAPER_STAGES = ("bridge", "align", "instruct")
MIXED_PRECISION = ("no", "bf16", "fp16")


def _at_least(name: str, value: float, low: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise ValueError(f"{name} must be >= {low:g}, got {value!r}")


@dataclass
class LoraSettings:
    """LoRA on the LM (peft). `target_modules` None: the attention projections found in the LM
    (q/k/v/o for Llama, Mistral and Qwen2; see `codi2_agent.training.paper.lora.attention_targets`)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        _at_least("lora.rank", self.rank, 1)
        _at_least("lora.alpha", self.alpha, 0)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout!r}")
        if self.target_modules is not None and (
            not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules)
        ):
            raise ValueError(
                f"lora.target_modules must be a non-empty list of names, got {self.target_modules!r}"
            )


@dataclass
class PaperTrainingConfig:
    """Steps, batch, optimiser and precision for `PaperTrainer`. Per-device batch: `batch_size`;
    effective batch: `batch_size * grad_accum * processes`."""

    stages: tuple[str, ...] = PAPER_STAGES
    bridge_steps: int = 1000
    align_steps: int = 2000
    instruct_steps: int = 10000
    batch_size: int = 4
    grad_accum: int = 8
    bridge_lr: float = 1e-3  # the CLAP expansion only (a linear map, regressed)
    # also regress expand(CLAP_text(caption)) onto the same target (CLAP's joint space): off, as
    # measured at tiny size it gave a worse audio fit (see the README's paper training section)
    bridge_text_inputs: bool = False
    align_lr: float = 1e-3  # projectors, heads and token rows only (LLaVA's stage-1 rate)
    instruct_lr: float = 2e-4  # LoRA + the same parts
    weight_decay: float = 0.0
    warmup_steps: int = 100
    # seeded shuffle buffer over the streamed samples (0: the source's order); it holds decoded
    # media, so its memory is about shuffle_buffer x the media of one sample, per process
    shuffle_buffer: int = 64
    max_grad_norm: float = 1.0
    lora: LoraSettings = field(default_factory=LoraSettings)
    diffusion: bool = False  # add L_DM (the frozen decoders' noise loss, conditioned per model config)
    mixed_precision: str = "bf16"  # accelerate's: "no", "bf16", "fp16"
    gradient_checkpointing: bool = True
    save_every: int = 500  # optimiser steps between checkpoints
    keep_checkpoints: int = 2  # the newest N checkpoints of a stage are kept
    log_every: int = 10
    log_with: list[str] = field(default_factory=list)  # accelerate trackers: "tensorboard", "wandb", ...
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSettings(**self.lora)
        self.stages = tuple(self.stages)
        unknown = [s for s in self.stages if s not in PAPER_STAGES]
        if unknown or not self.stages:
            raise ValueError(f"stages must be some of {list(PAPER_STAGES)}, got {list(self.stages)}")
        steps = ("bridge_steps", "align_steps", "instruct_steps")
        for name in (*steps, "batch_size", "grad_accum", "save_every", "log_every"):
            _at_least(name, getattr(self, name), 1)
        _at_least("keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("shuffle_buffer", self.shuffle_buffer, 0)
        for name in ("bridge_lr", "align_lr", "instruct_lr", "weight_decay", "max_grad_norm", "warmup_steps"):
            _at_least(name, getattr(self, name), 0)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )

    def steps(self, stage: str) -> int:
        return int(getattr(self, f"{stage}_steps"))

    def lr(self, stage: str) -> float:
        return float(getattr(self, f"{stage}_lr"))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = list(self.stages)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PaperTrainingConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown PaperTrainingConfig fields: {unknown}")
        return cls(**data)

    def to_json_file(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
