"""`codi2-agent`: the command line. Bad input exits non-zero with a one-line reason, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

app = typer.Typer(
    help="CoDi-2-style any-to-any generation for agents, pipelines and notebooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(code)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for every input and output of the session.")] = Path(
        "outputs/demo"
    ),
    model: Annotated[str, typer.Option(help="'tiny' (shipped) or a model folder.")] = "tiny",
    steps: Annotated[int | None, typer.Option(help="Diffusion steps (default: the model's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the diffusion noise.")] = 0,
) -> None:
    """Run the scripted multi-round session and write its outputs to OUT."""
    import torch

    from codi2_agent.demo import run_demo
    from codi2_agent.model import WeightsNotFoundError, load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        loaded = load_model(model)
    except (WeightsNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    turns = run_demo(loaded, out, num_inference_steps=steps, seed=seed, log=typer.echo)
    typer.echo(f"\n{len(turns)} turns; outputs and summary.json in {out}")


@app.command("train")
def train_cmd(
    out: Annotated[Path, typer.Option(help="Folder to write the trained model to.")],
    preset: Annotated[str, typer.Option(help="Model preset (tiny).")] = "tiny",
    workdir: Annotated[Path | None, typer.Option(help="Checkpoints and loss logs (resumable).")] = None,
    stages: Annotated[
        str, typer.Option(help="Comma-separated stages to run.")
    ] = "encoders,image_decoder,audio_decoder,lm",
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


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Option(help="'tiny' or a model folder.")] = "tiny",
    per_task: Annotated[int, typer.Option(help="Held-out samples per task.")] = 40,
    steps: Annotated[int | None, typer.Option(help="Diffusion steps (default: the model's).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the table (.txt) and .json.")] = Path(
        "benchmarks/results"
    ),
    name: Annotated[str, typer.Option(help="File name stem for the results.")] = "eval_tiny",
    seed: Annotated[int, typer.Option(help="Seed of the held-out draw.")] = 1234,
) -> None:
    """Score a model on the tiny world's held-out split (unseen seeds and attribute combinations)."""
    import time

    import torch

    from codi2_agent.evaluation import evaluate, format_table, write_results
    from codi2_agent.model import WeightsNotFoundError, load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        loaded = load_model(model)
    except (WeightsNotFoundError, ValueError) as e:
        raise _fail(str(e)) from None
    t0 = time.perf_counter()
    rows = evaluate(loaded, per_task=per_task, seed=seed, num_inference_steps=steps, progress=typer.echo)
    header = (
        f"# codi2-agent eval: model={model}, held-out split, {per_task} samples/task, seed {seed}, "
        f"{time.perf_counter() - t0:.0f} s on {os.cpu_count()} CPUs ({time.strftime('%Y-%m-%d')})"
    )
    txt, _ = write_results(rows, out, name, header)
    typer.echo("\n" + format_table(rows, header) + f"\n\nwritten to {txt}")


@app.command()
def info(model: Annotated[str, typer.Option(help="'tiny' or a model folder.")] = "tiny") -> None:
    """Show where the model lives and its size."""
    from codi2_agent.model import SHIPPED_MODELS, shipped_model_path

    path = shipped_model_path(model) if model in SHIPPED_MODELS else Path(model)
    if not path.exists():
        raise _fail(f"no model at {path}")
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    typer.echo(f"model: {model}\npath: {path}\nsize: {size / 1e6:.1f} MB")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
