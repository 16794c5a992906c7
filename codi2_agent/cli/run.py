"""`codi2-agent demo` (the scripted session) and `codi2-agent run` (a YAML pipeline of turns)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from codi2_agent.cli._common import (
    MODEL_HELP,
    DeviceOption,
    DtypeOption,
    ModelOption,
    StepsOption,
    _fail,
    _load,
    _progress,
    _say,
)


def demo(
    out: Annotated[Path, typer.Option(help="Folder for every input and output of the session.")] = Path(
        "outputs/demo"
    ),
    model: ModelOption = "tiny",
    steps: StepsOption = None,
    seed: Annotated[int, typer.Option(help="Seed for the diffusion noise.")] = 0,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Run the scripted multi-round session and write its outputs to OUT."""
    from codi2_agent.demo import run_demo

    loaded = _load(model, device=device, dtype=dtype)
    with _progress("demo", total=7) as update:

        def log(line: str) -> None:
            _say(line)
            update()

        turns = run_demo(loaded, out, num_inference_steps=steps, seed=seed, log=log)
    _say(f"\n{len(turns)} turns; outputs and summary.json in {out}")


def run_cmd(
    pipeline: Annotated[
        Path, typer.Argument(help="The pipeline YAML file.", show_default=False, metavar="PIPELINE.yaml")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the file's out:, else outputs/NAME).")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help=MODEL_HELP + " Default: the file's model:, else tiny.")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Diffusion steps for turns that set none.", min=1)] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for turns that set none (default: the file's).")
    ] = None,
    fresh: Annotated[bool, typer.Option(help="Forget an earlier run in OUT and start over.")] = False,
    limit: Annotated[
        int | None, typer.Option(help="Run at most this many turns now; the next run resumes.", min=0)
    ] = None,
    check: Annotated[bool, typer.Option(help="Only validate the file and print the plan.")] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
) -> None:
    """Run a YAML pipeline of turns (and loops over files); re-running resumes where it stopped.

    Writes the media, report.md and report.json to OUT. A malformed pipeline exits with code 2 and
    names the line and field of each problem.
    """
    from codi2_agent.pipelines import (
        PipelineBusyError,
        PipelineError,
        PipelineRunError,
        load_pipeline,
        run_pipeline,
    )

    # 1. Validate (cheap: no model)
    try:
        plan = load_pipeline(pipeline)
    except PipelineError as e:
        for problem in e.problems:
            typer.secho(f"error: {problem}", err=True, fg="red")
        raise typer.Exit(2) from None
    if check:
        _say(plan.describe())
        _say("ok: the pipeline is valid")
        return

    # 2. Run, with a bar over the planned turns
    where = out or plan.default_out()
    model = model or plan.model
    loaded = _load(model, device=device, dtype=dtype)
    counts = {"reused": 0, "done": 0}
    with _progress(plan.name, total=len(plan.turns)) as update:

        def on_event(kind: str, record: Any) -> None:
            if kind == "start":
                update(0, description=f"{plan.name}: {record.key}")
            elif kind in counts:
                counts[kind] += 1
                update()
                shown = ", ".join(m.path for m in record.outputs if m.path) or repr(record.text)
                _say(
                    f"{record.key}: {shown}"
                    + (" (done earlier)" if kind == "reused" else f" ({record.seconds:.2f} s)")
                )

        try:
            report = run_pipeline(
                plan,
                where,
                model=loaded,
                model_id=model,
                diffusion_steps=steps,
                seed=seed,
                fresh=fresh,
                limit=limit,
                on_event=on_event,
            )
        except (PipelineRunError, PipelineBusyError) as e:
            raise _fail(f"{e} (report: {where / 'report.md'})") from None
        except KeyboardInterrupt:
            raise _fail(f"interrupted; run the same command again to resume ({where})", 130) from None
    c = report.counts
    _say(
        f"\n{report.status}: {c['done']}/{c['planned']} turns done ({c['reused']} from an earlier run, "
        f"{c['ran']} now); report: {where / 'report.md'}"
    )
    if report.status != "complete":
        _say("run the same command again to continue")
