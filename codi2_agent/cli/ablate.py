"""`codi2-agent train-ablate`: compare variants of the tiny recipe's reasoning stages, fast.

Also `python -m codi2_agent.training.ablation` (the same command on its own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from codi2_agent.cli._common import _fail, _say, _threads


def _names(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def train_ablate(
    workdir: Annotated[
        Path,
        typer.Option(help="A tiny recipe workdir whose encoders, image_decoder, audio_decoder are done."),
    ],
    variants: Annotated[Path, typer.Option(help='JSON file: {"name": {override: value, ...}, ...}.')],
    out: Annotated[Path, typer.Option(help="Folder for runs/, scores.json and scores.txt.")],
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds of the reasoning stages.")] = "0",
    tasks: Annotated[
        str | None, typer.Option(help="Comma-separated tasks (default: every task).", show_default=False)
    ] = None,
    per_task: Annotated[int, typer.Option(help="Held-out samples per task.", min=1)] = 40,
    eval_seed: Annotated[
        int, typer.Option(help="Seed of the held-out draw (the same for every run).")
    ] = 1234,
    threads: Annotated[
        int | None,
        typer.Option(help="torch CPU threads (default: $OMP_NUM_THREADS, else up to 2).", show_default=False),
    ] = None,
    save_models: Annotated[
        bool, typer.Option(help="Also write each run's model folder (for `eval`).")
    ] = False,
) -> None:
    """Train `align` + `lm` per variant x seed on frozen perception; score c_MLLM without diffusion.

    Prints each run's rows as it finishes, then the comparison (accuracy mean ± std over seeds per
    variant); writes both to OUT/scores.txt, and the rows with their settings to OUT/scores.json.
    """
    from codi2_agent.training.ablation import (
        compare,
        format_compare,
        format_scores,
        load_variants,
        run_ablation,
    )

    try:
        seed_list = [int(s) for s in _names(seeds) or []]
    except ValueError:
        raise _fail(f"--seeds must be comma-separated integers, not {seeds!r}") from None
    _say(format_scores([]))  # the column names, above each run's rows
    try:
        rows = run_ablation(
            workdir,
            load_variants(variants),
            seed_list,
            out,
            tasks=_names(tasks),
            per_task=per_task,
            eval_seed=eval_seed,
            threads=threads or _threads(),
            save_models=save_models,
            report=_say,
        )
    except ValueError as e:
        raise _fail(str(e)) from None
    _say()
    _say(format_compare(compare(rows)))
    _say(f"written: {out / 'scores.txt'}, {out / 'scores.json'}")


def main() -> None:
    """`train-ablate` as a program of its own (`python -m codi2_agent.training.ablation`)."""
    typer.run(train_ablate)
