"""`codi2-agent train`, `eval` and `bench`: make a model, score it, time it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from codi2_agent.cli._common import (
    DeviceOption,
    DtypeOption,
    ModelOption,
    StepsOption,
    _fail,
    _load,
    _progress,
    _say,
    _threads,
)


def train_cmd(
    out: Annotated[Path, typer.Option(help="Tiny: the model folder to write. Paper: the run folder.")],
    preset: Annotated[
        str, typer.Option(help="tiny (the embedded model) or paper (see --model-dir).")
    ] = "tiny",
    workdir: Annotated[Path | None, typer.Option(help="Tiny: checkpoints and loss logs (resumable).")] = None,
    stages: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated stages to run. Tiny: encoders,image_decoder,audio_decoder,align,lm,tune; "
            "paper: bridge,align,instruct (bridge, by default when the align data has audio-caption "
            "pairs: fits the CLAP audio features to AudioLDM-2's conditioning).",
            show_default=False,
        ),
    ] = None,
    smoke: Annotated[bool, typer.Option(help="Tiny: minutes-scale settings (a check, not a model).")] = False,
    threads: Annotated[int, typer.Option(help="Tiny: torch CPU threads.")] = 2,
    perception_from: Annotated[
        str | None,
        typer.Option(
            help="Tiny: a finished model ('tiny' or a folder) whose encoders and decoders this run adopts "
            "(then only align and lm train).",
            show_default=False,
        ),
    ] = None,
    retrain: Annotated[
        str | None,
        typer.Option(
            help="Tiny, with --perception-from or --continue-from: decoder stages to train anew on the "
            "adopted encoders instead of adopting them (image_decoder, audio_decoder).",
            show_default=False,
        ),
    ] = None,
    continue_from: Annotated[
        str | None,
        typer.Option(
            help="Tiny: a finished model ('tiny' or a folder) this run adopts whole, then trains only tune "
            "on top of it (and the --retrain decoders; --stages without tune keeps its reasoning as is).",
            show_default=False,
        ),
    ] = None,
    recipe_file: Annotated[
        Path | None,
        typer.Option(
            "--recipe",
            help="Tiny: a JSON file of TinyRecipe fields (e.g. a shipped model's recipe.json) over the "
            "defaults; --seed and --threads still apply.",
            show_default=False,
        ),
    ] = None,
    model_dir: Annotated[
        Path | None, typer.Option(help="Paper: the assembled model folder (assemble_paper_model).")
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            help="Paper: a dataset folder for both stages (repeat for several).", show_default=False
        ),
    ] = None,
    align_data: Annotated[
        list[Path] | None, typer.Option(help="Paper: dataset folder(s) for align only.", show_default=False)
    ] = None,
    instruct_data: Annotated[
        list[Path] | None,
        typer.Option(help="Paper: dataset folder(s) for instruct only.", show_default=False),
    ] = None,
    bridge_steps: Annotated[
        int, typer.Option(help="Paper: optimiser steps of bridge (the CLAP expansion).", min=1)
    ] = 1000,
    align_steps: Annotated[int, typer.Option(help="Paper: optimiser steps of align.", min=1)] = 2000,
    instruct_steps: Annotated[int, typer.Option(help="Paper: optimiser steps of instruct.", min=1)] = 10000,
    batch_size: Annotated[int, typer.Option(help="Paper: samples per device per micro-batch.", min=1)] = 4,
    grad_accum: Annotated[int, typer.Option(help="Paper: micro-batches per optimiser step.", min=1)] = 8,
    bridge_lr: Annotated[float, typer.Option(help="Paper: learning rate of bridge.")] = 1e-3,
    align_lr: Annotated[float, typer.Option(help="Paper: learning rate of align.")] = 1e-3,
    instruct_lr: Annotated[float, typer.Option(help="Paper: learning rate of instruct.")] = 2e-4,
    lora_rank: Annotated[int, typer.Option(help="Paper: LoRA rank.", min=1)] = 16,
    lora_alpha: Annotated[int, typer.Option(help="Paper: LoRA alpha.", min=1)] = 32,
    lora_dropout: Annotated[float, typer.Option(help="Paper: LoRA dropout.")] = 0.05,
    lora_targets: Annotated[
        str | None,
        typer.Option(
            help="Paper: comma-separated LM module names (default: its attention projections).",
            show_default=False,
        ),
    ] = None,
    diffusion: Annotated[bool, typer.Option(help="Paper: add the decoders' diffusion loss L_DM.")] = False,
    mixed_precision: Annotated[str, typer.Option(help="Paper: no, bf16 or fp16.")] = "bf16",
    gradient_checkpointing: Annotated[bool, typer.Option(help="Paper: recompute LM activations.")] = True,
    save_every: Annotated[int, typer.Option(help="Paper: optimiser steps between checkpoints.", min=1)] = 500,
    log_with: Annotated[
        str | None,
        typer.Option(help="Paper: accelerate trackers, e.g. tensorboard,wandb.", show_default=False),
    ] = None,
    shuffle_buffer: Annotated[
        int, typer.Option(help="Paper: samples in the seeded shuffle buffer (0: the folders' order).", min=0)
    ] = 64,
    text_only_p: Annotated[
        float, typer.Option(help="Paper: share of instruct exemplars shown as captions.")
    ] = 0.3,
    seed: Annotated[
        int, typer.Option(help="Both: the run's seed (tiny: every stage; paper: data order, LoRA init).")
    ] = 0,
) -> None:
    """Train (or resume) a model: the tiny preset reproduces the shipped weights; the paper preset
    trains an assembled paper folder with LoRA (run it under `accelerate launch` for several GPUs)."""
    chosen = _names(stages) if stages is not None else None
    if preset == "paper":
        if recipe_file is not None:
            raise _fail("--recipe sets TinyRecipe fields: it is for the tiny preset")
        _train_paper(
            out, model_dir, chosen, data, align_data, instruct_data,
            dict(
                bridge_steps=bridge_steps, align_steps=align_steps, instruct_steps=instruct_steps,
                batch_size=batch_size, grad_accum=grad_accum, bridge_lr=bridge_lr, align_lr=align_lr,
                instruct_lr=instruct_lr,
                lora=dict(
                    rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout,
                    target_modules=_names(lora_targets) or None,
                ),
                diffusion=diffusion, mixed_precision=mixed_precision,
                gradient_checkpointing=gradient_checkpointing, save_every=save_every,
                shuffle_buffer=shuffle_buffer,
                log_with=_names(log_with), seed=seed,
            ),
            text_only_p,
        )  # fmt: skip
        return
    from codi2_agent.training import STAGES, TinyRecipe, train

    recipe = TinyRecipe.smoke() if smoke else TinyRecipe()
    try:
        if recipe_file is not None:
            recipe = TinyRecipe.from_json_file(recipe_file, base=recipe)
        recipe.threads, recipe.seed = threads, seed
        result = train(
            out,
            preset=preset,
            workdir=workdir,
            recipe=recipe,
            stages=chosen or list(STAGES),
            perception_from=perception_from,
            retrain=_names(retrain),
            continue_from=continue_from,
        )
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # a missing --perception-from model too
        raise _fail(str(e)) from None
    typer.echo(
        f"model written to {result}" if result else "stages done; run the remaining stages to assemble"
    )


def _names(text: str | None) -> list[str]:
    """ "a, b," -> ["a", "b"]."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _train_paper(
    out: Path,
    model_dir: Path | None,
    stages: list[str] | None,
    data: list[Path] | None,
    align_data: list[Path] | None,
    instruct_data: list[Path] | None,
    settings: dict[str, Any],
    text_only_p: float,
) -> None:
    """`train --preset paper`: check the arguments and the data folders, then train.

    Without --stages every stage runs, except `bridge` when the align data holds no audio-caption
    manifest or shard (it has nothing to train on; audio answers then stay untrained)."""
    from dataclasses import replace

    from codi2_agent.model import CoDi2Config, ModelLoadError
    from codi2_agent.training.datasets import DatasetError
    from codi2_agent.training.paper import PAPER_STAGES, PaperTrainingConfig, train_paper
    from codi2_agent.training.paper.sources import audio_caption_files, dataset_sources

    if model_dir is None:
        raise _fail("--preset paper needs --model-dir: a folder made by assemble_paper_model", 2)
    if not (model_dir / "config.json").is_file():
        raise _fail(f"--model-dir {model_dir} is not a model folder (no config.json in it)", 2)
    align, instruct = align_data or data or [], instruct_data or data or []
    try:
        config = PaperTrainingConfig.from_dict({**settings, "stages": stages or list(PAPER_STAGES)})
        if not stages and not (align and audio_caption_files(align)):
            config = replace(config, stages=tuple(s for s in config.stages if s != "bridge"))
            if align:
                typer.echo("no audio-caption data: bridge stage skipped (audio stays untrained)", err=True)
        needs = {"bridge": align, "align": align, "instruct": instruct}
        missing = [s for s in config.stages if not needs[s]]
        if missing:
            option = "instruct" if missing == ["instruct"] else "align"
            raise ValueError(f"no data for stage(s) {', '.join(missing)}: pass --data (or --{option}-data)")
        sample_rate = CoDi2Config.from_json_file(model_dir / "config.json").sample_rate
        sources = dataset_sources(
            align, instruct, sample_rate=sample_rate, text_only_p=text_only_p, seed=config.seed
        )
        result = train_paper(model_dir, out, sources, config)
    except (ValueError, FileNotFoundError, DatasetError, ModelLoadError) as e:
        raise _fail(str(e), 2 if isinstance(e, ValueError) else 1) from None
    typer.echo(f"checkpoint written to {result} (load it with load_model; merge it with codi2-agent export)")


def export_cmd(
    src: Annotated[
        Path, typer.Argument(help="A paper training checkpoint (a folder with codi2_adapter.json).")
    ],
    dst: Annotated[Path, typer.Argument(help="The standalone model folder to write (new or empty).")],
    dtype: Annotated[
        str | None, typer.Option(help="Precision of the written weights: float32, bfloat16, float16.")
    ] = None,
) -> None:
    """Merge a paper training checkpoint (LoRA adapter + heads) into a folder that loads without peft."""
    from codi2_agent.model import ModelLoadError
    from codi2_agent.training.paper import export_merged

    try:
        written = export_merged(src, dst, dtype=dtype)
    except (ModelLoadError, FileExistsError, FileNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    typer.echo(f"model written to {written}")


def eval_cmd(
    model: ModelOption = "tiny",
    per_task: Annotated[int, typer.Option(help="Held-out samples per task.", min=1)] = 40,
    steps: StepsOption = None,
    out: Annotated[Path, typer.Option(help="Folder for the table (.txt) and its .json.")] = Path(
        "outputs/eval"
    ),
    name: Annotated[str, typer.Option(help="File name stem for the results.")] = "eval_tiny",
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw.")] = 1234,
    split: Annotated[
        str, typer.Option(help="'test' (held-out combinations) or 'train' (seen ones).")
    ] = "test",
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Score a model on the tiny world's held-out split (unseen seeds and attribute combinations)."""
    if split not in ("test", "train"):
        raise _fail(f"--split must be 'test' or 'train', not {split!r}")
    from codi2_agent.evaluation import evaluate, format_columns, write_results

    loaded = _load(model, device=device, dtype=dtype)
    setting = f"# codi2-agent eval: model={model}, {split} split, {per_task} samples/task, seed {seed}"
    _say(setting)
    _say(format_columns())
    t0 = time.perf_counter()
    with _progress("evaluating") as update:

        def show_row(line: str) -> None:  # each row once, as soon as its task is scored
            _say(line)
            update()

        rows = evaluate(
            loaded, per_task=per_task, seed=seed, num_inference_steps=steps, split=split, progress=show_row
        )
    took = f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs ({time.strftime('%Y-%m-%d')})"
    txt, js = write_results(rows, out, name, f"{setting}, {took}")
    _say(f"\n{len(rows)} rows in {took}; written to {txt} and {js}")


BENCHMARKS = ("model", "memory", "session")


def _check_bench_model(model: str) -> None:
    """Refuse (exit 2) a --model that names no shipped model and no model folder.

    The scripts refuse one too, but only when their turn comes: checked here, a typo fails before
    any benchmark has run.
    """
    from codi2_agent.model import SHIPPED_MODELS

    if model in SHIPPED_MODELS or (Path(model).expanduser() / "config.json").is_file():
        return
    raise _fail(
        f"--model {model!r} is neither a shipped model ({', '.join(SHIPPED_MODELS)}) "
        "nor a model folder (no config.json in it)",
        2,
    )


def _bench_args(name: str, quick: bool, model: str, out: Path | None) -> list[str]:
    """Command-line arguments of benchmarks/bench_<name>.py (quick: a smoke-sized run)."""
    target = ["--out", str(out / f"{name}.txt")] if out is not None else []
    if name == "memory":
        return (["--dims", "64", "--sizes", "1000", "--queries", "20"] if quick else []) + target
    from codi2_agent.model import SHIPPED_MODELS, shipped_model_path

    # A smoke run works in a checkout whose shipped weights are not trained yet: on random weights,
    # which the scripts label as such. Figures (no --quick) need the real model.
    missing = model in SHIPPED_MODELS and not (shipped_model_path(model) / "config.json").is_file()
    chosen = ["--model", "random" if quick and missing else model]
    if name == "model":
        return chosen + ["--threads", str(_threads())] + (["--repeats", "2"] if quick else []) + target
    quick_args = ["--probes", "quick", "--sessions", "1", "--turns", "6", "--steps", "2"]
    return chosen + (quick_args if quick else []) + target


def bench(
    only: Annotated[
        str, typer.Option(help="Comma-separated benchmarks to run: model, memory, session.")
    ] = "model,memory,session",
    quick: Annotated[
        bool, typer.Option(help="Smoke-sized runs (seconds to a minute each), not figures.")
    ] = False,
    model: ModelOption = "tiny",
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the result tables (default: benchmarks/results, or a temp folder with --quick)."
        ),
    ] = None,
) -> None:
    """Run the benchmark scripts in benchmarks/ (a source checkout) and print their tables."""
    import tempfile

    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise _fail(f"unknown benchmark(s) {unknown or only!r}; choose from {', '.join(BENCHMARKS)}")
    _check_bench_model(model)
    folder = Path(__file__).resolve().parents[2] / "benchmarks"  # the checkout above codi2_agent/cli/
    if not folder.is_dir():
        raise _fail(f"the benchmark scripts live in a source checkout (no {folder}); clone the repository")
    if quick and out is None:
        out = Path(tempfile.mkdtemp(prefix="codi2-bench-"))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads())}
    with _progress("benchmarks", total=len(names)) as update:
        for name in names:
            script = folder / f"bench_{name}.py"
            update(0, description=f"bench_{name}.py")
            args = _bench_args(name, quick, model, out)
            cmd = [sys.executable, str(script), *args]
            _say(f"== bench_{name}.py {' '.join(args)}")
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            assert proc.stdout is not None
            for line in proc.stdout:
                _say(line.rstrip("\n"))
            if proc.wait() != 0:
                raise _fail(f"bench_{name}.py failed (exit {proc.returncode})")
            update()
    _say(f"\nresult tables in {out or folder / 'results'}")
