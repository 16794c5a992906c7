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
DEVICE_HELP = "Where the model runs: cpu, cuda, cuda:N, mps or auto (default: $CODI2_DEVICE, else cpu)."
DTYPE_HELP = "Precision of every part: float32, bfloat16, float16 (default: $CODI2_DTYPE, else float32)."
# Options several commands share, declared once.
ModelOption = Annotated[str, typer.Option(help=MODEL_HELP)]
StepsOption = Annotated[int | None, typer.Option(help=STEPS_HELP, min=1)]
DeviceOption = Annotated[str | None, typer.Option(help=DEVICE_HELP, show_default=False)]
DtypeOption = Annotated[str | None, typer.Option(help=DTYPE_HELP, show_default=False)]


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


def _load(model: str, *, device: str | None = None, dtype: str | None = None) -> CoDi2Model:
    """Load a model with a spinner, placed as `--device` / `--dtype` (or `CODI2_*`) say; a missing or
    broken model, or a placement this machine cannot give, is a one-line error."""
    import torch

    from codi2_agent.model import WeightsNotFoundError, load_model
    from codi2_agent.model.placement import DeviceUnavailableError

    torch.set_num_threads(_threads())
    with _progress(f"loading model {model}"):
        try:
            return load_model(model, device=device, dtype=dtype)
        except (WeightsNotFoundError, DeviceUnavailableError, ValueError, OSError) as e:
            raise _fail(str(e)) from None


def _placement(model: CoDi2Model) -> str:
    """Where a loaded model's weights are and in what precision, e.g. "cpu, bfloat16"."""
    weight = next(model.parameters())
    return f"{weight.device}, {str(weight.dtype).removeprefix('torch.')}"
