"""`codi2-agent train`, `eval` and `bench`: make a model, score it, time it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

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
    out: Annotated[Path, typer.Option(help="Folder to write the trained model to.")],
    preset: Annotated[str, typer.Option(help="Model preset (tiny).")] = "tiny",
    workdir: Annotated[Path | None, typer.Option(help="Checkpoints and loss logs (resumable).")] = None,
    stages: Annotated[
        str, typer.Option(help="Comma-separated stages to run.")
    ] = "encoders,image_decoder,audio_decoder,align,lm",  # training.STAGES (kept literal: fast --help)
    smoke: Annotated[bool, typer.Option(help="Minutes-scale settings (a check, not a model).")] = False,
    threads: Annotated[int, typer.Option(help="torch CPU threads.")] = 2,
) -> None:
    """Train (or resume training) a model; the tiny preset reproduces the shipped weights."""
    from codi2_agent.training import TinyRecipe, train

    recipe = TinyRecipe.smoke() if smoke else TinyRecipe()
    recipe.threads = threads
    try:
        result = train(
            out,
            preset=preset,
            workdir=workdir,
            recipe=recipe,
            stages=[s.strip() for s in stages.split(",") if s.strip()],
        )
    except (ValueError, RuntimeError) as e:
        raise _fail(str(e)) from None
    typer.echo(
        f"model written to {result}" if result else "stages done; run the remaining stages to assemble"
    )


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
