"""Ablations of the reasoning stages (`align` + `lm`) on frozen perception, scored in seconds.

A researcher names variants of the tiny recipe's reasoning stages; each variant x seed trains
`align` and `lm` on a copy of one finished perception workdir (encoders and decoders hardlinked,
never retrained) and is scored *without diffusion decoding*: the model answers each held-out sample
(`split="test"`) as `generate` would — the same greedy reply text, the same K gen tokens — and the
predicted features c_MLLM are read out by the nearest class mean of C_x features of clean renders
(one mean per attribute value, from the frozen encoders). Text answers (captions, "what changed?")
are parsed, as `codi2_agent.evaluation` judges them. Per task: accuracy (every attribute right),
per-attribute accuracy, the feature MSE to C_x(target), and the read-out's own ceiling (the true
C_x(target) read out the same way). `codi2-agent eval` (diffusion + probes) stays the final word;
this ranks variants.

What a variant may change (anything else is a ValueError naming the field):

- recipe fields of the reasoning stages: `align_steps`, `lm_steps`, `lm_branches`, `lm_layers` (the
  LM's depth; or `lm.num_hidden_layers` below, not both), `align_replay`, `concept_replay`,
  `analogy_replay`, `lm_batch`, `lm_lr`, `lm_weight_decay`, `head_weight_decay`, `lm_dropout`
  (the base is the workdir's own `recipe.json`; `seed` comes from the seeds list);
- model fields the reasoning stages own (projector, LM and output heads are trained from scratch, so
  they may take any shape): `num_media_tokens` (placeholder tokens per input medium),
  `projector_type` ("linear" / "mlp2x_gelu_ln"), `alpha` (weight of the feature loss), and `lm`, a
  mapping merged into the tiny Llama's kwargs with keys among `hidden_size`, `intermediate_size`,
  `num_hidden_layers`, `num_attention_heads`, `num_key_value_heads`.

Encoder/decoder shapes, media sizes and the vocabulary belong to the frozen perception and cannot vary.

Variants file (JSON): `{"base": {}, "fast_lr": {"lm_lr": 1e-3}, "wide": {"lm": {"hidden_size": 192}}}`.
Usage: `python -m codi2_agent.training.ablation --workdir W --variants variants.json --seeds 0,1 --out DIR`
(or `codi2-agent train-ablate ...`). Each run lives in `DIR/runs/<variant>/seed<k>/`, a recipe
workdir of its own: killed runs resume there, finished ones are only scored again. On a machine
that other jobs keep busy, pass fewer threads than free cores (`--threads 1`): two torch threads on
one free core spin against each other, and a smoke ablation took 179 s instead of 22 s.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from codi2_agent.model import CoDi2Config, CoDi2Model
from codi2_agent.training.ablation_readout import ClassMeanReadout, ScoreRow, eval_samples, score_model
from codi2_agent.training.reasoning import train_reasoning_stage
from codi2_agent.training.recipe import (
    PERCEPTION_FILE,
    PERCEPTION_STAGES,
    TinyRecipe,
    _restore_done,
    perception_config,
    with_lm_layers,
)

__all__ = [
    "LM_FIELDS",
    "MODEL_FIELDS",
    "PERCEPTION_STAGES",
    "RECIPE_FIELDS",
    "ClassMeanReadout",
    "ScoreRow",
    "Variant",
    "compare",
    "format_compare",
    "format_scores",
    "load_variants",
    "run_ablation",
]

logger = logging.getLogger(__name__)

RECIPE_FIELDS = (
    "align_steps",
    "lm_steps",
    "lm_branches",
    "lm_layers",
    "align_replay",
    "concept_replay",
    "analogy_replay",
    "lm_batch",
    "lm_lr",
    "lm_weight_decay",
    "head_weight_decay",
    "lm_dropout",
)
MODEL_FIELDS = ("num_media_tokens", "projector_type", "alpha", "lm")
LM_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a variant name is a folder name


# --- variants ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """A named set of overrides: `recipe` (TinyRecipe fields) and `model` (CoDi2Config.tiny fields)."""

    name: str
    recipe: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, overrides: Mapping[str, Any]) -> Variant:
        """Split one flat override mapping into recipe and model fields; refuse anything else."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"variant name {name!r} must be letters, digits, '_', '.', '-' (a folder name)")
        if not isinstance(overrides, Mapping):
            raise ValueError(f"variant {name!r}: overrides must be a JSON object, got {overrides!r}")
        recipe_fields = {f.name for f in fields(TinyRecipe)}
        recipe, model = {}, {}
        for key, value in overrides.items():
            if key in RECIPE_FIELDS:
                recipe[key] = value
            elif key in MODEL_FIELDS:
                model[key] = value
            elif key == "seed":
                raise ValueError(f"variant {name!r}: 'seed' is not an override; pass seeds to the ablation")
            elif key in recipe_fields:
                raise ValueError(
                    f"variant {name!r}: {key!r} configures the frozen perception stages (or the run), "
                    f"not the reasoning stages; a variant may set {list(RECIPE_FIELDS + MODEL_FIELDS)}"
                )
            else:
                raise ValueError(
                    f"variant {name!r}: unknown override field {key!r}; expected some of "
                    f"{list(RECIPE_FIELDS + MODEL_FIELDS)}"
                )
        lm = model.get("lm")
        if "lm_layers" in recipe and isinstance(lm, Mapping) and "num_hidden_layers" in lm:
            raise ValueError(
                f"variant {name!r}: sets the LM's depth twice (lm_layers and lm.num_hidden_layers); set one"
            )
        variant = cls(name, recipe, model)
        variant.recipe_for(TinyRecipe(), seed=0)  # every value checked now, before any training
        variant.config()
        return variant

    def recipe_for(self, base: TinyRecipe, seed: int) -> TinyRecipe:
        """`base` with this variant's recipe overrides and `seed`."""
        for key, value in self.recipe.items():
            if key == "lm_lr":
                ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 1
                what = "a learning rate in (0, 1)"
            elif key in ("lm_weight_decay", "head_weight_decay"):
                ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 10
                what = "a weight decay in [0, 10]"
            elif key == "lm_dropout":
                ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
                what = "a dropout rate in [0, 1)"
            else:
                low = 0 if key.endswith("_replay") else 1
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
                what = f"an integer >= {low}"
            if not ok:
                raise ValueError(f"variant {self.name!r}: {key} must be {what}, got {value!r}")
        return replace(base, **self.recipe, seed=seed)

    def config(
        self, perception: Mapping[str, Any] | None = None, *, lm_layers: int | None = None
    ) -> CoDi2Config:
        """The tiny config (with the tiny world's vocabulary and the perception workdir's shapes,
        `perception_config`), `lm_layers` deep (the base recipe's; this variant's own `lm_layers`
        wins), and this variant's model overrides."""
        from codi2_agent.data.phrasing import tiny_vocabulary

        overrides = dict(self.model)
        base = CoDi2Config.tiny(vocabulary=tiny_vocabulary(), **(perception or {}))
        layers = self.recipe.get("lm_layers", lm_layers)
        if layers is not None:
            base = with_lm_layers(base, layers)
        if "lm" in overrides:
            lm = overrides["lm"]
            if not isinstance(lm, Mapping):
                raise ValueError(f"variant {self.name!r}: 'lm' must be a JSON object of {list(LM_FIELDS)}")
            unknown = sorted(set(lm) - set(LM_FIELDS))
            if unknown:
                raise ValueError(
                    f"variant {self.name!r}: unknown lm override field(s) {unknown}; expected some of "
                    f"{list(LM_FIELDS)}"
                )
            overrides["lm"] = {**base.lm, **lm}
        config = base.replace(**overrides)  # a ConfigError (a ValueError) names a bad value
        lm_kwargs = config.lm
        heads, kv = lm_kwargs["num_attention_heads"], lm_kwargs["num_key_value_heads"]
        if lm_kwargs["hidden_size"] % heads or heads % kv:
            raise ValueError(
                f"variant {self.name!r}: lm hidden_size ({lm_kwargs['hidden_size']}) must divide by "
                f"num_attention_heads ({heads}), which must divide by num_key_value_heads ({kv})"
            )
        return config

    def describe(self) -> dict[str, Any]:
        return {**self.recipe, **self.model}


def load_variants(source: str | Path | Mapping[str, Any]) -> list[Variant]:
    """Variants from a JSON file (or its parsed mapping): `{"name": {override: value, ...}, ...}`."""
    if isinstance(source, Mapping):
        data: Any = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"variants file {path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"variants file {path} is not valid JSON ({e})") from None
    if not isinstance(data, Mapping) or not data:
        raise ValueError('variants must be a non-empty JSON object: {"name": {override: value}, ...}')
    return [Variant.parse(name, overrides) for name, overrides in data.items()]


# --- runs ---------------------------------------------------------------------------------------------
def check_perception(workdir: Path) -> None:
    """A workdir whose perception stages are done, with its tokenizer: else a ValueError naming what lacks."""
    if not workdir.is_dir():
        raise ValueError(f"perception workdir {workdir} does not exist")
    for stage in PERCEPTION_STAGES:
        if not (workdir / stage / "done").exists() or not (workdir / stage / "final.pt").exists():
            raise ValueError(
                f"perception workdir {workdir} lacks the finished stage {stage!r}; train it first "
                f"(`codi2-agent train --preset tiny --workdir {workdir} --stages {stage} --out ...`)"
            )
    if not (workdir / "tokenizer").is_dir():
        raise ValueError(f"perception workdir {workdir} lacks its 'tokenizer' folder")


def base_recipe(workdir: Path) -> TinyRecipe:
    """The recipe the perception workdir was trained with (its `recipe.json`), else the defaults."""
    path = workdir / "recipe.json"
    if not path.is_file():
        return TinyRecipe()
    data = json.loads(path.read_text())
    known = {f.name for f in fields(TinyRecipe)}
    dropped = sorted(set(data) - known)
    if dropped:
        logger.warning("%s: ignoring fields this TinyRecipe does not have: %s", path, dropped)
    return TinyRecipe.from_fields({k: v for k, v in data.items() if k in known}, source=str(path))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the perception weights are only read: one copy on disk serves every run
    except OSError:
        shutil.copy2(src, dst)


def _prepare_run(perception: Path, run_dir: Path, variant: Variant, seed: int) -> None:
    """Hardlink the frozen perception into `run_dir`; refuse a run dir made for other overrides."""
    claim = {
        "variant": variant.name,
        "seed": seed,
        "overrides": variant.describe(),
        "perception": str(perception.resolve()),
    }
    claim_path = run_dir / "variant.json"
    if claim_path.exists():
        found = json.loads(claim_path.read_text())
        if found != claim:
            raise ValueError(
                f"run folder {run_dir} was made for {found}, not {claim}; use another --out or delete it"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    if (perception / PERCEPTION_FILE).is_file() and not (run_dir / PERCEPTION_FILE).exists():
        _link_or_copy(str(perception / PERCEPTION_FILE), str(run_dir / PERCEPTION_FILE))
    for part in (*PERCEPTION_STAGES, "tokenizer"):
        if not (run_dir / part).exists():
            shutil.copytree(
                perception / part,
                run_dir / part,
                copy_function=_link_or_copy,
                ignore=shutil.ignore_patterns("state.pt", "*.tmp"),
            )
    claim_path.write_text(json.dumps(claim, indent=2))


def train_run(
    perception: Path,
    run_dir: Path,
    variant: Variant,
    seed: int,
    base: TinyRecipe,
    *,
    progress: bool | None = None,
    save_model: bool = False,
) -> CoDi2Model:
    """Train (or resume, or load) `align`, `lm` and `tune` of one variant x seed; returns the model."""
    from transformers import AutoTokenizer

    _prepare_run(perception, run_dir, variant, seed)
    recipe = variant.recipe_for(base, seed)
    config = variant.config(perception_config(run_dir), lm_layers=recipe.lm_layers)
    # The run's recipe names the depth it trains (an `lm.num_hidden_layers` override included), so the
    # workdir rebuilds to the same shapes (`_build_model`, e.g. in benchmarks/bench_additivity.py).
    recipe = replace(recipe, lm_layers=config.lm["num_hidden_layers"])
    torch.set_num_threads(recipe.threads)
    (run_dir / "recipe.json").write_text(json.dumps(asdict(recipe), indent=2))
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True)
    model = CoDi2Model.from_config(config, tokenizer, seed=seed)
    _restore_done(model, run_dir)  # frozen encoders and decoders (and any finished reasoning stage)
    for stage in ("align", "lm", "tune") if recipe.tune_steps else ("align", "lm"):
        train_reasoning_stage(model, recipe, run_dir, progress, stage=stage)
        _restore_done(model, run_dir)
    if save_model:  # a full model folder, for `codi2-agent eval` on the variants worth it
        model.save_pretrained(run_dir / "model")
    return model.eval()


def run_ablation(
    workdir: str | Path,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    out: str | Path,
    *,
    tasks: Sequence[str] | None = None,
    per_task: int = 40,
    eval_seed: int = 1234,
    threads: int | None = None,
    renders_per_combo: int = 1,
    progress: bool | None = None,
    save_models: bool = False,
    report: Callable[[str], None] | None = None,
) -> list[ScoreRow]:
    """Train and score every variant x seed; write `out/scores.json` and `out/scores.txt` (rewritten
    after each run, so a long ablation's finished runs are on disk) and return the rows.

    `report` receives each finished run's table lines (the CLI prints them).
    """
    from codi2_agent.data.tasks import TASKS

    workdir, out = Path(workdir), Path(out)
    check_perception(workdir)
    if not variants:
        raise ValueError("an ablation needs at least one variant")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be unique, got {names}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be a non-empty list of distinct integers, got {list(seeds)}")
    chosen = list(tasks) if tasks is not None else sorted(TASKS)
    unknown = sorted(set(chosen) - set(TASKS))
    if unknown or not chosen:
        raise ValueError(f"unknown tasks {unknown}; expected some of {sorted(TASKS)}")
    if per_task < 1:
        raise ValueError(f"per_task must be >= 1, got {per_task}")
    base = base_recipe(workdir)
    if threads is not None:
        base = replace(base, threads=threads)
    torch.set_num_threads(base.threads)

    samples = eval_samples(chosen, per_task, eval_seed)
    readout: ClassMeanReadout | None = None
    rows: list[ScoreRow] = []
    settings = {
        "workdir": str(workdir.resolve()),
        "seeds": list(seeds),
        "tasks": chosen,
        "per_task": per_task,
        "eval_seed": eval_seed,
        "base_recipe": asdict(base),
        "variants": {v.name: v.describe() for v in variants},
    }
    for variant in variants:
        for seed in seeds:
            t0 = time.perf_counter()
            model = train_run(
                workdir,
                out / "runs" / variant.name / f"seed{seed}",
                variant,
                seed,
                base,
                progress=progress,
                save_model=save_models,
            )
            if readout is None:  # the encoders are the perception's in every run: fit the ruler once
                readout = ClassMeanReadout.fit(model, renders_per_combo=renders_per_combo, seed=eval_seed)
            run_rows = score_model(model, readout, samples, variant=variant.name, seed=seed)
            rows += run_rows
            logger.info(
                "%s seed %d: trained and scored in %.1f s", variant.name, seed, time.perf_counter() - t0
            )
            if report:
                report(format_scores(run_rows, header=False))
            write_results(rows, out, settings)
    return rows


# --- tables -------------------------------------------------------------------------------------------
def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_scores(rows: Sequence[ScoreRow], *, header: bool = True) -> str:
    """One line per (variant, seed, task): accuracy, feature MSE, read-out ceiling, per attribute."""
    lines = []
    if header:
        head = f"{'variant':<16} {'seed':>4} {'task':<22} {'n':>4} {'acc':>6} {'f_mse':>6} {'ceil':>6}"
        lines.append(f"{head}  per attribute")
    for r in rows:
        attrs = " ".join(f"{k}={v:.2f}" for k, v in r.per_attribute.items())
        lines.append(
            f"{r.variant:<16} {r.seed:>4} {r.task:<22} {r.n:>4} {r.accuracy:>6.3f} "
            f"{_fmt(r.feature_mse):>6} {_fmt(r.readout_ceiling):>6}  {attrs}"
        )
    return "\n".join(lines)


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def compare(rows: Sequence[ScoreRow]) -> dict[str, dict[str, Any]]:
    """Per variant: mean and spread across seeds of each task's accuracy (and feature MSE), and of
    the mean accuracy over tasks (`all_tasks`)."""
    summary: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r.variant for r in rows):
        mine = [r for r in rows if r.variant == variant]
        seeds = list(dict.fromkeys(r.seed for r in mine))
        entry: dict[str, Any] = {"seeds": seeds}
        for task in dict.fromkeys(r.task for r in mine):
            of_task = [r for r in mine if r.task == task]
            entry[task] = {"accuracy": _spread([r.accuracy for r in of_task])}
            mses = [r.feature_mse for r in of_task if r.feature_mse is not None]
            if mses:
                entry[task]["feature_mse"] = _spread(mses)
        per_seed = [statistics.fmean(r.accuracy for r in mine if r.seed == s) for s in seeds]
        entry["all_tasks"] = {"accuracy": _spread(per_seed)}
        summary[variant] = entry
    return summary


def format_compare(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """Tasks down, variants across: accuracy mean ± std over seeds."""
    variants = list(summary)
    tasks = list(dict.fromkeys(t for v in variants for t in summary[v] if t not in ("seeds", "all_tasks")))
    width = max(16, *(len(v) + 2 for v in variants))
    lines = [f"{'task':<22}" + "".join(f"{v:>{width}}" for v in variants)]
    for task in [*tasks, "all_tasks"]:
        cells = []
        for v in variants:
            acc = summary[v].get(task, {}).get("accuracy")
            cells.append(f"{acc['mean']:.3f} ± {acc['std']:.3f}" if acc else "-")
        lines.append(f"{task:<22}" + "".join(f"{c:>{width}}" for c in cells))
    seeds = {v: len(summary[v]["seeds"]) for v in variants}
    lines.append(f"(accuracy mean ± std over seeds; seeds per variant: {seeds})")
    return "\n".join(lines)


def write_results(rows: Sequence[ScoreRow], out: Path, settings: Mapping[str, Any]) -> tuple[Path, Path]:
    """`out/scores.json` (settings, rows, compare) and `out/scores.txt` (both tables)."""
    out.mkdir(parents=True, exist_ok=True)
    summary = compare(rows)
    js, txt = out / "scores.json", out / "scores.txt"
    js.write_text(
        json.dumps({**settings, "rows": [asdict(r) for r in rows], "compare": summary}, indent=2) + "\n"
    )
    txt.write_text(format_scores(rows) + "\n\n" + format_compare(summary) + "\n")
    return js, txt


if __name__ == "__main__":  # the `codi2-agent train-ablate` command, on its own
    from codi2_agent.cli.ablate import main

    main()
