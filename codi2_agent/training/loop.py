"""A small, resumable training loop on `accelerate`: one call per training stage.

The loop owns what every stage needs and nothing else: gradient accumulation, clipping, a cosine
schedule with warm-up, EMA of the trained weights (optional), a JSONL loss log, a tqdm bar (on a
terminal), and a checkpoint (weights + optimiser + scheduler + step + RNG state) every `save_every`
steps, so a killed run resumes where it stopped, and (optionally) weight snapshots every `keep_every`
steps. The stage supplies `batch_fn(step) -> batch` and `loss_fn(batch) -> (loss, logs)`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["StageConfig", "run_stage"]


@dataclass
class StageConfig:
    name: str
    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup: int = 100
    grad_accum: int = 1
    clip: float = 1.0
    ema: float | None = None  # EMA decay of the trained weights; the EMA copy is what gets kept
    # Start the EMA at zero and divide it by 1 - ema**step when it is read (Adam's bias correction), so
    # the weights the stage starts from carry no weight in it. For modules trained from a random init:
    # a plain EMA of decay 0.999 still holds 0.999**1500 = 22 % of the init after 1,500 steps.
    ema_debias: bool = False
    save_every: int = 200
    log_every: int = 20
    # Steps between kept snapshots of the trained weights (the EMA copy when `ema` is set), written as
    # `<name>/step<N>.pt` beside `final.pt` and never deleted, so a run's path can be measured afterwards
    # and a checkpoint chosen from it; None keeps none (only the resumable state, which is overwritten).
    keep_every: int | None = None


def _lr_lambda(cfg: StageConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def _trainable_groups(params: Iterable[nn.Parameter] | Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parameter groups holding only the parameters that train; plain parameters make one group (the
    optimiser state a single list of parameters gives)."""
    items: list[Any] = list(params)
    dicts = sum(isinstance(item, dict) for item in items)
    if 0 < dicts < len(items):
        raise TypeError("params must be all parameters or all parameter groups (dicts), not a mix")
    given: list[dict[str, Any]] = items if dicts else [{"params": items}]
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in given]
    return [g for g in groups if g["params"]]


def run_stage(
    cfg: StageConfig,
    module: nn.Module,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]],
    batch_fn: Callable[[int], Any],
    loss_fn: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    workdir: Path,
    *,
    seed: int = 0,
    progress: bool | None = None,
) -> nn.Module:
    """Train `params` (inside `module`) for `cfg.steps`; resume from `workdir/<name>/state.pt` if present.

    `params` is either parameters or torch's parameter groups (dicts with "params" and their own
    optimiser settings, e.g. "weight_decay"); a group without a setting takes `cfg`'s.
    Returns the module holding the final weights (the EMA copy when `cfg.ema` is set). `progress`:
    True/False shows/hides the tqdm bar; None (default) shows it only when stderr is a terminal.
    """
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    stage_dir = workdir / cfg.name
    stage_dir.mkdir(parents=True, exist_ok=True)
    done_flag, state_path, log_path = stage_dir / "done", stage_dir / "state.pt", stage_dir / "loss.jsonl"
    ema = copy.deepcopy(module).eval().requires_grad_(False) if cfg.ema else None
    if ema is not None and cfg.ema_debias:
        with torch.no_grad():
            for e in ema.parameters():
                e.zero_()
    if done_flag.exists():  # a finished stage: load its result and move on
        final = ema if ema is not None else module
        final.load_state_dict(torch.load(stage_dir / "final.pt", map_location="cpu"))
        return final

    accelerator = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    groups = _trainable_groups(params)
    params = [p for group in groups for p in group["params"]]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    module, optimizer, scheduler = accelerator.prepare(module, optimizer, scheduler)
    start = 0
    if state_path.exists():
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        accelerator.unwrap_model(module).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    else:
        torch.manual_seed(seed)

    def save(step: int) -> None:
        state = {
            "model": accelerator.unwrap_model(module).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "rng": torch.get_rng_state(),
        }
        if ema is not None:
            state["ema"] = ema.state_dict()
        tmp = state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(state_path)  # atomic: a kill mid-save keeps the previous checkpoint

    module.train()
    hide = None if progress is None else not progress  # tqdm's None: hidden unless stderr is a TTY
    bar = tqdm(range(start, cfg.steps), desc=cfg.name, disable=hide, initial=start, total=cfg.steps)
    t0, window = time.time(), []
    with log_path.open("a") as log:
        for step in bar:
            for micro in range(cfg.grad_accum):
                with accelerator.accumulate(module):
                    loss, logs = loss_fn(batch_fn(step * cfg.grad_accum + micro))
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.clip:
                        accelerator.clip_grad_norm_(params, cfg.clip)
                    optimizer.step()
                    scheduler.step() if accelerator.sync_gradients else None
                    optimizer.zero_grad()
            if ema is not None:
                with torch.no_grad():
                    for e, p in zip(
                        ema.parameters(), accelerator.unwrap_model(module).parameters(), strict=True
                    ):
                        e.lerp_(p.detach(), 1.0 - cfg.ema)  # type: ignore[operator]
            window.append({"loss": float(loss.detach()), **logs})
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                log.write(
                    json.dumps(
                        {
                            "step": step + 1,
                            "lr": scheduler.get_last_lr()[0],
                            "elapsed_s": round(time.time() - t0, 1),
                            **mean,
                        }
                    )
                    + "\n"
                )
                log.flush()
                bar.set_postfix({k: f"{v:.4f}" for k, v in mean.items()})
                window = []
            if cfg.keep_every and (step + 1) % cfg.keep_every == 0 and step + 1 < cfg.steps:
                kept = _ema_read(ema, cfg, step + 1) if ema is not None else accelerator.unwrap_model(module)
                torch.save(kept.state_dict(), stage_dir / f"step{step + 1}.pt")
            if (step + 1) % cfg.save_every == 0:
                save(step + 1)
    final = _ema_read(ema, cfg, cfg.steps) if ema is not None else accelerator.unwrap_model(module)
    torch.save(final.state_dict(), stage_dir / "final.pt")
    done_flag.write_text(json.dumps({"steps": cfg.steps}))
    state_path.unlink(missing_ok=True)
    return final


def _ema_read(ema: nn.Module, cfg: StageConfig, steps: int) -> nn.Module:
    """The EMA's weights after `steps` updates: itself, or a bias-corrected copy (`cfg.ema_debias`)."""
    if not cfg.ema_debias:
        return ema
    assert cfg.ema is not None
    read = copy.deepcopy(ema)
    with torch.no_grad():
        for p in read.parameters():
            p.div_(1.0 - cfg.ema**steps)
    return read
