"""Does weight decay make the tiny LM compose unseen sound combinations? A long `align`-task screen.

Run: `.venv/bin/python benchmarks/bench_weight_decay.py [--perception tiny|PATH] [--decays 0.01,1.0]
[--seeds 0] [--scope all|heads] [--steps 6000] [--checks 8] [--lr 5e-4] [--threads 1] [--workdir DIR]
[--out FILE] [--note TEXT ...]`. Prints a table and writes it to FILE (default
benchmarks/results/tiny_weight_decay.txt).

The reasoning half (projectors, LM, output heads) is trained from scratch on a finished model's frozen
perception, on the `align` tasks only (captions and text-to-media, train split), for `--steps` at a
constant learning rate after a 100-step warm-up: grokking-style, so that a slow effect of the decay is
not hidden by a schedule that anneals before it shows. Every `steps / checks` steps it measures what
`bench_additivity.py` measures: the LM's c_MLLM for one plain text-to-media prompt per attribute
combination against the mean C_x of 4 renders, on the train and the held-out combinations. Each
decay x seed arm starts from the same initial weights and the same task draw, so the arms differ in
the decay alone. `--scope heads` decays only the output feature heads (the recipe's `head_weight_decay`;
the rest at 0.01, v5's decay): does the gain come from the head that makes the features or from the
whole LM? The summary averages each arm's checks over the second half of training (the plateau), where
one check swings by about +-0.005.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_additivity import encoder_means, lm_features, mse

from codi2_agent.data import world

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "tiny_weight_decay.txt"
REST_DECAY = 0.01  # scope "heads": the decay of everything but the heads (every version up to v5 used it)
WARMUP = 100
RENDERS = 4


def fresh_reasoner(perception: Path, seed: int):
    """A model with `perception`'s frozen encoders/decoders and a freshly initialised reasoning half,
    built as the ablation tool builds a run's model."""
    from transformers import AutoTokenizer

    from codi2_agent.model import CoDi2Model
    from codi2_agent.training.ablation import Variant
    from codi2_agent.training.recipe import _restore_done, perception_config

    tokenizer = AutoTokenizer.from_pretrained(perception / "tokenizer", local_files_only=True)
    config = Variant("base").config(perception_config(perception))
    model = CoDi2Model.from_config(config, tokenizer, seed=seed)
    _restore_done(model, perception)  # the adopted encoders and decoders
    model.encoders.requires_grad_(False).eval()
    model.decoders.requires_grad_(False)
    return model


def measure(model, truth: dict[str, Any]) -> dict[str, float]:
    """c_MLLM error (MSE per feature) on train and held-out combinations, per modality."""
    import torch

    model.eval()
    row = {}
    for kind, (combos, held, means) in truth.items():
        with torch.no_grad():
            answer = lm_features(model, kind, combos)
        row[f"{kind}_train"] = mse(answer[~held], means[~held])
        row[f"{kind}_held"] = mse(answer[held], means[held])
    return row


def arm_recipe(decay: float, scope: str) -> Any:
    """The recipe an arm trains with: `decay` on every reasoning parameter (scope "all", the recipe's
    `lm_weight_decay`) or on the output heads alone ("heads", `head_weight_decay`; the rest at
    `REST_DECAY`), whatever today's recipe defaults are."""
    from codi2_agent.training.recipe import TinyRecipe

    if scope not in ("all", "heads"):
        raise ValueError(f"scope must be 'all' or 'heads', got {scope!r}")
    if scope == "all":
        return TinyRecipe(lm_weight_decay=decay, head_weight_decay=None)
    return TinyRecipe(lm_weight_decay=REST_DECAY, head_weight_decay=decay)


def run_arm(
    perception: Path,
    decay: float,
    seed: int,
    steps: int,
    checks: int,
    lr: float,
    truth,
    log,
    scope: str = "all",
):
    """Train one arm; returns its rows (one per check)."""
    import torch

    from codi2_agent.data.tasks import sample_task
    from codi2_agent.training.reasoning import ALIGN_TASKS, reasoning_param_groups

    model = fresh_reasoner(perception, seed)
    recipe = arm_recipe(decay, scope)  # the training recipe's own parameter groups
    optimizer = torch.optim.AdamW(
        reasoning_param_groups(model, recipe), lr=lr, weight_decay=recipe.lm_weight_decay
    )
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / WARMUP))
    rng = np.random.default_rng([seed, 7, 1])  # the same task draw in every arm of this seed
    torch.manual_seed(seed)
    at = sorted({max(1, round(steps * (k + 1) / checks)) for k in range(checks)})
    rows, window, t0 = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        model.train()
        samples = [sample_task(ALIGN_TASKS[rng.integers(len(ALIGN_TASKS))], rng, "train") for _ in range(16)]
        batch = model.processor.collate([model.processor.encode_sample(s) for s in samples])
        out = model(**batch, compute_diffusion_loss=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        window.append(float(out.loss_feature.detach()))
        if step in at:
            norm = float(torch.sqrt(sum(p.detach().pow(2).sum() for p in params)))
            arm = f"{decay:g}" + ("" if scope == "all" else "@heads")
            row = {"arm": arm, "seed": seed, "step": step, "feature_loss": float(np.mean(window))}
            row |= {"param_norm": norm, **measure(model, truth), "s": time.perf_counter() - t0}
            window = []
            rows.append(row)
            log(json.dumps(row))
    return rows


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    arms = list(dict.fromkeys((r["arm"], r["seed"]) for r in rows))
    lines = [
        "## every check: c_MLLM MSE per feature (features have unit variance), audio / image",
        "decay   seed   step  feature loss  param norm  audio train  audio held  image train  image held",
    ]
    for r in rows:
        lines.append(
            f"{r['arm']:<7s} {r['seed']:>4d} {r['step']:>6d} {r['feature_loss']:>13.4f}"
            f" {r['param_norm']:>11.1f} {r['audio_train']:>12.4f} {r['audio_held']:>11.4f}"
            f" {r['image_train']:>12.4f} {r['image_held']:>11.4f}"
        )
    lines += [
        "## plateau: each arm's checks over the second half of training, averaged",
        "decay   seed  checks  audio train  audio held  image train  image held",
    ]
    for arm, seed in arms:
        mine = [r for r in rows if (r["arm"], r["seed"]) == (arm, seed)]
        late = [r for r in mine if r["step"] > mine[-1]["step"] / 2] or mine[-1:]
        mean = {
            k: float(np.mean([r[k] for r in late]))
            for k in ("audio_train", "audio_held", "image_train", "image_held")
        }
        lines.append(
            f"{arm:<7s} {seed:>4d} {len(late):>7d} {mean['audio_train']:>12.4f} {mean['audio_held']:>11.4f}"
            f" {mean['image_train']:>12.4f} {mean['image_held']:>11.4f}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perception", default="tiny", help="tiny or a finished tiny model folder")
    parser.add_argument("--decays", default="0.01,1.0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--scope", choices=("all", "heads"), default="all", help="what the decay applies to")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--checks", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--workdir", type=Path, help="where the adopted perception goes (default: a temp dir)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", action="append", default=[], help="a comment line for the table's head")
    args = parser.parse_args(argv)
    decays = [float(d) for d in args.decays.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.steps < 1 or args.checks < 1 or not decays or min(decays) < 0:
        parser.error("--steps and --checks must be >= 1 and every decay >= 0")

    import torch

    from codi2_agent.training.recipe import adopt_perception

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        perception = (args.workdir or Path(tmp)) / "perception"
        perception.mkdir(parents=True, exist_ok=True)
        adopt_perception(perception, args.perception)  # checks the model folder's integrity manifest
        ruler = fresh_reasoner(perception, 0)
        truth = {}
        for kind in ("audio", "image"):
            combos = list(world.all_attrs(kind))
            held = np.array([world.is_held_out(c) for c in combos])
            truth[kind] = (combos, held, encoder_means(ruler, kind, combos, RENDERS)[0])
        rows = []
        for seed in seeds:
            for decay in decays:
                rows += run_arm(
                    perception, decay, seed, args.steps, args.checks, args.lr, truth, print, args.scope
                )
    head = [f"# {note}" for note in args.note]
    head.append(
        f"# perception {args.perception}; align tasks, batch 16, lr {args.lr:g} constant after {WARMUP}"
        f" warm-up steps, {args.steps} steps; machine {platform.machine()}, torch {torch.__version__},"
        f" {args.threads} threads; {rows[-1]['s']:.0f} s for the last arm"
    )
    text = "\n".join(head + table(rows)) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
