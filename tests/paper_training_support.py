"""Shared by tests/training/test_paper_*.py: tiny assembled paper folders per LM family, and small
sample streams drawn from the tiny world (pictures and sounds it renders)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from codi2_agent.data.samples import Sample
from codi2_agent.data.tasks import sample_task
from codi2_agent.model import assemble_paper_model
from codi2_agent.model.paper_testing import TINY_ASSEMBLE_OVERRIDES, build_tiny_paper_sources
from codi2_agent.training.paper import LoraSettings, PaperTrainingConfig

# 0.3: a random LM with opinions (see `tiny_language_model`), so the text loss has room to fall
INIT_RANGE = 0.3


def assemble_tiny(folder: Path, family: str = "llama", seed: int = 0) -> Path:
    """An assembled paper folder (through `assemble_paper_model`, as a user makes one) with a tiny
    random LM of `family`."""
    sources = build_tiny_paper_sources(
        folder / "sources", seed=seed, lm_family=family, initializer_range=INIT_RANGE
    )
    return assemble_paper_model(
        folder / "model",
        language_model=sources.language_model,
        unclip=sources.unclip,
        audioldm2=sources.audioldm2,
        config_overrides=TINY_ASSEMBLE_OVERRIDES,
        seed=seed,
    )


def world_samples(tasks: list[str], seed: int = 0) -> list[Sample]:
    """One sample per task name, from the tiny world's task builders (train split)."""
    rng = np.random.default_rng(seed)
    return [sample_task(task, rng, "train") for task in tasks]


PAIRS = ["caption_image", "text_to_image", "caption_audio", "text_to_audio"]
INSTRUCT = ["edit_image", "analogy_image", "edit_audio", "multi_round"]


def quick_config(**overrides: object) -> PaperTrainingConfig:
    """Seconds-scale settings: no mixed precision (CPU), a few steps, frequent logs."""
    settings: dict[str, object] = dict(
        bridge_steps=2,
        align_steps=2,
        instruct_steps=2,
        batch_size=2,
        grad_accum=1,
        warmup_steps=1,
        mixed_precision="no",
        save_every=1,
        log_every=1,
        shuffle_buffer=0,
        lora=LoraSettings(rank=4, alpha=8, dropout=0.0),
    )
    settings.update(overrides)
    return PaperTrainingConfig(**settings)  # type: ignore[arg-type]


def fresh_accelerate_state() -> None:
    """accelerate keeps one `AcceleratorState` per process and refuses another mixed precision in it;
    a process that trains several times with different settings (a test session) starts afresh."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
