"""`codi2-agent`: the command line. Bad input exits non-zero with a one-line reason, never a traceback.

Commands: ``demo`` (the scripted session), ``chat`` (talk to the model in the terminal), ``run``
(a YAML pipeline; see `codi2_agent.pipelines`), ``train``, ``train-ablate`` (compare variants of
the reasoning stages on frozen perception), ``export`` (merge a paper training checkpoint into a
standalone folder), ``eval``, ``bench``, ``info`` and
``serve`` (the model over HTTP on Ray Serve).
Results go to stdout; progress bars and spinners go to the terminal only (nothing when piped).

Each command lives in a module of this package (``run``: demo and run; ``chat``; ``train_eval``:
train, export, eval and bench; ``ablate``: train-ablate; ``info``; ``serve``; ``data``: data
check) and is registered on `app` below, in the order ``--help`` lists them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from codi2_agent.cli.ablate import train_ablate
from codi2_agent.cli.chat import chat
from codi2_agent.cli.data import data_app
from codi2_agent.cli.info import info
from codi2_agent.cli.mcp import mcp
from codi2_agent.cli.run import demo, run_cmd
from codi2_agent.cli.serve import serve
from codi2_agent.cli.train_eval import bench, eval_cmd, export_cmd, train_cmd

app = typer.Typer(
    help="CoDi-2-style any-to-any generation for agents, pipelines and notebooks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(demo)
app.command()(chat)
app.command("run")(run_cmd)
app.command("train")(train_cmd)
app.command("train-ablate")(train_ablate)
app.command("export")(export_cmd)
app.command("eval")(eval_cmd)
app.command()(bench)
app.command()(info)
app.command()(mcp)
app.add_typer(data_app, name="data")
app.command()(serve)


def _show_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("codi2-agent")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from codi2_agent import __version__ as number
    typer.echo(f"codi2-agent {number}")
    raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    # Options before the command; the app's help text comes from `app` above.
    return None


def main() -> None:
    """The `codi2-agent` console script (pyproject's ``[project.scripts]``): Ctrl-C exits 130."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
