"""The tiny recipe's reasoning stages: projector + LM + output heads on paired data (`align`), on
every task (`lm`, optionally as an averaged set of branches), and continued with an EMA (`tune`).

The encoders and decoders stay frozen here; `codi2_agent.training.recipe` runs these stages in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from codi2_agent.model import CoDi2Model
from codi2_agent.training.loop import StageConfig, run_stage
from codi2_agent.training.stages import STAGES

if TYPE_CHECKING:
    from codi2_agent.training.recipe import TinyRecipe

__all__ = [
    "ALIGN_TASKS",
    "ANALOGY_TASKS",
    "SOUND_TASKS",
    "reasoning_param_groups",
    "reasoning_stage_config",
    "task_draw",
    "train_reasoning_stage",
    "training_dropout",
]

# Paired media <-> text tasks: the `align` stage's whole diet and the `lm` stage's replayed share.
ALIGN_TASKS = ("caption_audio", "caption_image", "text_to_audio", "text_to_image")
ANALOGY_TASKS = ("analogy_audio", "analogy_image")
# The tasks whose answer is a sound: what `tune_sound_replay` draws more often in `tune`.
SOUND_TASKS = ("analogy_audio", "edit_audio", "text_to_audio")


def task_draw(recipe: TinyRecipe, stage: str) -> list[str]:
    """The tasks a reasoning stage draws each sample from: a list with repeats, so a task listed twice
    is drawn twice as often. `align` sees the paired tasks; `lm` and `tune` every task, with the paired
    ones, the concept and the analogies replayed (`align_replay`, `concept_replay`, `analogy_replay`);
    `tune` also the sound tasks (`tune_sound_replay`)."""
    from codi2_agent.data.tasks import TASKS

    if stage == "align":
        return list(ALIGN_TASKS)
    if stage not in ("lm", "tune"):
        raise ValueError(f"{stage!r} is not a reasoning stage (align, lm, tune)")
    return (
        sorted(TASKS)
        + list(ALIGN_TASKS) * recipe.align_replay
        + ["concept_image"] * recipe.concept_replay
        + list(ANALOGY_TASKS) * recipe.analogy_replay
        + (list(SOUND_TASKS) * recipe.tune_sound_replay if stage == "tune" else [])
    )


def reasoning_stage_config(recipe: TinyRecipe, stage: str) -> StageConfig:
    """The optimiser settings of one reasoning stage: `tune` continues at its own lower rate with a fresh
    warm-up and an EMA; `align` and `lm` share the LM's rate. All three use the recipe's weight decay."""
    decay = recipe.lm_weight_decay
    if stage == "tune":
        return StageConfig(
            stage,
            recipe.tune_steps,
            lr=recipe.tune_lr,
            weight_decay=decay,
            warmup=50,
            ema=recipe.tune_ema,
            keep_every=recipe.keep_every or None,
        )
    if stage not in ("align", "lm"):
        raise ValueError(f"{stage!r} is not a reasoning stage (align, lm, tune)")
    steps = recipe.align_steps if stage == "align" else recipe.lm_steps
    warmup = min(100, steps // 8 + 1)
    return StageConfig(
        stage, steps, lr=recipe.lm_lr, weight_decay=decay, warmup=warmup, keep_every=recipe.keep_every or None
    )


def reasoning_param_groups(model: CoDi2Model, recipe: TinyRecipe) -> list[dict[str, Any]]:
    """The reasoning stages' parameters (LM, projectors, output heads) as AdamW groups: one group at the
    stage's decay, or, with `head_weight_decay` set, the output heads in a second group at that decay."""
    body = [*model.lm.parameters(), *model.projectors.parameters()]
    heads = list(model.output_heads.parameters())
    if recipe.head_weight_decay is None:
        return [{"params": body + heads}]
    return [{"params": body}, {"params": heads, "weight_decay": recipe.head_weight_decay}]


def _reasoning_parts(model: CoDi2Model) -> nn.ModuleDict:
    """What the reasoning stages train (their `final.pt` holds exactly this state dict)."""
    return nn.ModuleDict({"lm": model.lm, "projectors": model.projectors, "heads": model.output_heads})


def train_reasoning_stage(
    model: CoDi2Model, recipe: TinyRecipe, workdir: Path, progress: bool | None, stage: str
) -> None:
    """Train one reasoning stage on `model`'s current weights; `lm` with `lm_branches` > 1 trains that
    many branches from those weights and keeps their average (`_train_lm_soup`)."""
    if recipe.lm_branches < 1:
        raise ValueError(f"lm_branches must be 1 or more, got {recipe.lm_branches}")
    model.encoders.requires_grad_(False).eval()
    model.decoders.requires_grad_(False)
    if stage == "lm" and recipe.lm_branches > 1:
        _train_lm_soup(model, recipe, workdir, progress)
    else:
        _run_reasoning_stage(model, recipe, workdir, progress, stage)


def _run_reasoning_stage(
    model: CoDi2Model, recipe: TinyRecipe, workdir: Path, progress: bool | None, stage: str, branch: int = 0
) -> None:
    from codi2_agent.data.tasks import sample_task

    # Branch 0 draws what an unbranched stage always drew, so `lm_branches=1` repeats earlier runs.
    key = [recipe.seed + 7, STAGES.index(stage)] + ([branch] if branch else [])
    rng = np.random.default_rng(key)
    names = task_draw(recipe, stage)

    def batch_fn(step: int) -> dict[str, Any]:
        samples = [sample_task(names[rng.integers(len(names))], rng, "train") for _ in range(recipe.lm_batch)]
        return model.processor.collate([model.processor.encode_sample(s) for s in samples])

    def loss_fn(batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(**batch, compute_diffusion_loss=False)
        return out.loss, {"text": out.loss_text.item(), "feature": out.loss_feature.item()}

    config = reasoning_stage_config(recipe, stage)
    if recipe.lm_branches > 1 and stage == "lm":
        config = replace(config, name=f"lm/branch{branch}")
    with training_dropout(model, recipe.lm_dropout if stage == "lm" else 0.0):
        run_stage(
            config,
            _reasoning_parts(model),
            reasoning_param_groups(model, recipe),
            batch_fn,
            loss_fn,
            workdir,
            seed=recipe.seed + branch,
            progress=progress,
        )


@contextmanager
def training_dropout(model: CoDi2Model, p: float) -> Iterator[None]:
    """Dropout at rate `p` on the LM's attention weights and on the hidden states the output heads
    read, for as long as the block runs; both act in training mode only. The model's config and saved
    weights are untouched, and the previous attention rates come back afterwards."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"lm_dropout must be in [0, 1), got {p}")
    if p == 0.0:
        yield
        return
    attentions = [m for m in model.lm.modules() if hasattr(m, "attention_dropout")]
    before = [m.attention_dropout for m in attentions]

    def drop_head_input(head: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (nn.functional.dropout(args[0], p, head.training), *args[1:])

    hooks = [head.register_forward_pre_hook(drop_head_input) for head in model.output_heads.values()]
    for m in attentions:
        m.attention_dropout = p
    try:
        yield
    finally:
        for m, rate in zip(attentions, before, strict=True):
            m.attention_dropout = rate
        for hook in hooks:
            hook.remove()


def _train_lm_soup(model: CoDi2Model, recipe: TinyRecipe, workdir: Path, progress: bool | None) -> None:
    """`lm` as a soup: `lm_branches` runs of the stage from the same starting weights (`align`'s), each
    on its own draw of samples, then the uniform average of their weights, written as `lm/final.pt`.

    Runs from one starting point stay linearly connected, so their average is a working model; and where
    the held-out combinations land is decided early in each run and differs between runs even on the
    same seed on another machine. Averaging two runs that land 0.060 and 0.100 apart on held-out sound
    features gave 0.063, two at 0.057 and 0.058 gave 0.052; an average across different `align` starts
    is noise (0.92) — so every branch starts from the same weights (benchmarks/results/tiny_lm_soup.txt)."""
    parts = _reasoning_parts(model)
    stage_dir = workdir / "lm"
    if (stage_dir / "done").exists():  # a finished stage: its soup is its result
        parts.load_state_dict(torch.load(stage_dir / "final.pt", map_location="cpu"))
        return
    start = {k: v.detach().clone() for k, v in parts.state_dict().items()}
    finals = []
    for branch in range(recipe.lm_branches):
        parts.load_state_dict(start)
        _run_reasoning_stage(model, recipe, workdir, progress, "lm", branch)
        finals.append(torch.load(stage_dir / f"branch{branch}" / "final.pt", map_location="cpu"))
    soup = {k: torch.stack([f[k].float() for f in finals]).mean(0).to(start[k].dtype) for k in start}
    parts.load_state_dict(soup)
    torch.save(soup, stage_dir / "final.pt")
    (stage_dir / "done").write_text(json.dumps({"steps": recipe.lm_steps, "branches": recipe.lm_branches}))
