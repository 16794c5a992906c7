"""Keep transformers' and diffusers' "Loading weights" bars off logs, pipes and captured output.

Both libraries draw a tqdm bar whenever a checkpoint loads. On a terminal that is feedback; in a log
file, a CI run or a piped command it is noise (carriage returns and block characters). Our loaders
run under `loading_bars_on_terminal_only()`, which turns the bars off for the load when stderr is not
a terminal and restores the libraries' settings afterwards. It is a `contextlib` context manager, so
it also decorates a loading function.

Example:
    >>> with loading_bars_on_terminal_only():
    ...     pass  # a from_pretrained call here shows its bar only on a terminal
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator

__all__ = ["loading_bars_on_terminal_only", "stderr_is_a_terminal"]


def stderr_is_a_terminal() -> bool:
    """Whether sys.stderr (where tqdm draws) is an interactive terminal."""
    stream = sys.stderr
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or already closed
        return False


@contextlib.contextmanager
def loading_bars_on_terminal_only() -> Iterator[None]:
    """Hide transformers' (and, when imported, diffusers') loading bars unless stderr is a terminal."""
    if stderr_is_a_terminal():
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars

    hub_bars_were_off = are_progress_bars_disabled()
    # diffusers is heavy: only quiet it when a caller has already imported it (a pipeline load)
    libraries = ["transformers"] + (["diffusers"] if "diffusers" in sys.modules else [])
    switched_off = []
    for library in libraries:
        bars = importlib.import_module(f"{library}.utils.logging")
        if bars.is_progress_bar_enabled():
            bars.disable_progress_bar()
            switched_off.append(bars)
    try:
        yield
    finally:
        for bars in switched_off:
            bars.enable_progress_bar()
        if hub_bars_were_off:  # transformers' enable_progress_bar() also turns the hub's bars on
            disable_progress_bars()
