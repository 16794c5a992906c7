"""What every command shares: the two consoles, the shared options, one-line errors, bars, model loading."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

# Set before any command imports transformers or chromadb (each command imports them lazily).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # ours replace transformers' loading bars

if TYPE_CHECKING:
    from codi2_agent.model import CoDi2Model

_out = Console(highlight=False, soft_wrap=True)  # results
_err = Console(stderr=True, highlight=False, soft_wrap=True)

MODEL_HELP = "'tiny' (the shipped weights) or a model folder."
STEPS_HELP = "Diffusion steps (default: the model's)."
# Options several commands share, declared once.
ModelOption = Annotated[str, typer.Option(help=MODEL_HELP)]
StepsOption = Annotated[int | None, typer.Option(help=STEPS_HELP, min=1)]


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg="red")
    return typer.Exit(code)


def _say(text: str = "") -> None:
    """Print a result line to stdout, as is (no markup, no wrapping inside paths)."""
    _out.print(text, markup=False, highlight=False)


def _threads() -> int:
    """torch CPU threads: $OMP_NUM_THREADS when set, else up to 2."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        return min(2, os.cpu_count() or 1)


@contextlib.contextmanager
def _progress(description: str, total: float | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on the terminal (stdout's when it is one, else stderr's; none if neither).

    Yields ``update(advance=1, description=None)``.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn()]
    if total is not None:
        columns.append(MofNCompleteColumn())
    columns.append(TimeElapsedColumn())
    console = _out if _out.is_terminal else _err
    if not console.is_terminal:  # piped or captured: no bar (rich would still print blank lines)
        yield lambda advance=1, description=None: None
        return
    with Progress(
        *columns, console=console, transient=True, redirect_stdout=False, redirect_stderr=False
    ) as bar:
        task = bar.add_task(description, total=total)

        def update(advance: float = 1, description: str | None = None) -> None:
            bar.update(task, advance=advance, description=description)

        yield update


def _load(model: str) -> CoDi2Model:
    """Load a model with a spinner; a missing or broken model is a one-line error."""
    import torch

    from codi2_agent.model import WeightsNotFoundError, load_model

    torch.set_num_threads(_threads())
    with _progress(f"loading model {model}"):
        try:
            return load_model(model)
        except (WeightsNotFoundError, ValueError, OSError) as e:
            raise _fail(str(e)) from None
