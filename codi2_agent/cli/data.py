"""`codi2-agent data check DIR`: validate a training dataset folder; counts per format/task, problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from codi2_agent.cli._common import _fail, _progress, _say

data_app = typer.Typer(
    help="Training datasets: check a folder before training on it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

FORMAT_HELP = "auto (detected per file), webdataset, image-caption, audio-caption, edit or subjects."


@data_app.command("check")
def check_cmd(
    folder: Annotated[Path, typer.Argument(help="The dataset folder (or one shard / manifest file).")],
    format: Annotated[str, typer.Option("--format", help=FORMAT_HELP)] = "auto",
    strict: Annotated[
        bool, typer.Option(help="Exit 1 when any record has a problem (else problems are reported, exit 0).")
    ] = False,
    sample_rate: Annotated[int, typer.Option(help="The model's audio rate (clips are resampled).")] = 16000,
    max_file_mb: Annotated[
        float, typer.Option(help="Refuse media files larger than this.", min=0.001)
    ] = 25.0,
    limit: Annotated[
        int | None, typer.Option(help="Stop each file after this many samples (a quick look).", min=1)
    ] = None,
    show: Annotated[int, typer.Option(help="Problems listed in full (all are counted).", min=0)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Read every record of a dataset folder as training would, and report samples and problems.

    Exit codes: 0 readable (problems, if any, are listed); 1 problems found with --strict;
    2 nothing readable there (no such folder, unknown format, a manifest of unknown kind).
    """
    from codi2_agent.training.datasets import DatasetError, ReadOptions, check_dataset

    options = ReadOptions(sample_rate=sample_rate, max_file_bytes=int(max_file_mb * 1024 * 1024))
    try:
        with _progress(f"checking {folder}"):
            report = check_dataset(folder, format, options=options, limit=limit)
    except (DatasetError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        raise _fail(str(e), 2) from None
    problems = report.problems
    if as_json:
        _say(json.dumps(report.to_dict(), indent=2))
    else:
        _say(f"dataset: {report.folder}")
        for source in report.to_dict()["sources"]:
            _say(f"  {source['format']:<14} {source['path']}")
        _say("samples:")
        for (fmt, task), count in sorted(report.samples.items()):
            _say(f"  {fmt:<14} {task:<16} {count}")
        _say(f"total: {sum(report.samples.values())} samples from {len(report.sources)} source(s)")
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(problems.counts.items()))
        _say(f"problems: {problems.total}" + (f" ({kinds})" if kinds else ""))
        for problem in problems.problems[:show]:
            _say(f"  {problem}")
        if problems.total > min(show, len(problems.problems)):
            _say(f"  ... and {problems.total - min(show, len(problems.problems))} more")
    if strict and not report.ok:
        raise typer.Exit(1)
