"""Scripted multi-turn pipelines: a YAML file of turns and loops over files, run through a `Session`.

A pipeline is a conversation written down: turns with words and media, and `for_each` loops that
run the same turns once per file of a folder ("apply the edit from this example pair to every image
in ./in"). Outputs go to a folder with a report (``report.md`` + ``report.json``: every turn's
inputs, outputs and timings). Re-running resumes: finished turns are read back from the report and
the session's checkpoints, never generated again; a turn whose definition (or an input file's
content) changed is redone, and so is everything after it in its thread.

The format (every relative path is relative to the YAML file's folder)::

    version: 1
    name: blue-everything           # names the default output folder (outputs/<name>) and the thread
    model: tiny                     # optional: 'tiny' or a model folder (`--model` overrides it)
    seed: 0                         # defaults for every turn; a turn may override each of them
    diffusion_steps: 20
    turns:
      - name: star                  # optional: names the output files; later turns say "@star"
        say: draw a small red star in the snow
      - name: blue
        say: make it blue
      - for_each: inputs/shapes     # a folder (its image and audio files) or a glob ("in/*.png")
        name: shapes
        turns:                      # once per file, each file in its own thread forked from here
          - say: do the same edit to this one
            image: "{file}"
            example: {before: "@star", after: "@blue"}
            save_as: "blue/{stem}"

Turn fields: ``say`` (the words), ``image`` / ``audio`` (a file, ``@name`` of an earlier turn's
output, or a list of them), ``example`` (``before`` and ``after`` of an edit to imitate: in-context
analogy; ``after`` alone when it is an earlier turn's edit), ``task`` (generate, edit, analogy,
compose, describe, recall; read from the words by default; recall searches the pipeline's exemplar
memory for what ``say`` describes and answers with the media it finds), ``output`` (auto, text,
image, audio), ``seed``, ``diffusion_steps``, ``guidance_scale``, ``max_new_tokens``, ``save_as``
(output path without extension, relative to the output folder). Inside ``for_each``, ``{file}``,
``{stem}``, ``{name}`` and ``{index}`` stand for the current file's path, name without extension,
name, and position (1…).

The output folder holds the media (``01-star.png``, ``shapes/circle/01.png`` or the ``save_as``
names; text answers as ``.txt``), ``report.md``, ``report.json`` and ``session/`` (the artifacts,
exemplar memory and checkpoints of the pipeline's threads, which is what resuming reads).

Example:
    >>> from codi2_agent.pipelines import load_pipeline, run_pipeline    # doctest: +SKIP
    >>> pipeline = load_pipeline("examples/pipelines/edit_rounds.yaml")  # doctest: +SKIP
    >>> report = run_pipeline(pipeline, out="outputs/edit-rounds", model="tiny")  # doctest: +SKIP
    >>> report.status, len(report.turns)  # doctest: +SKIP
    ('complete', 7)
"""

from __future__ import annotations

from .plan import Pipeline, PlannedTurn, load_pipeline, parse_pipeline
from .report import PipelineReport, TurnRecord
from .run import run_pipeline
from .spec import (
    ExampleSpec,
    ForEachSpec,
    PipelineBusyError,
    PipelineError,
    PipelineRunError,
    PipelineSpec,
    Problem,
    TurnSpec,
)

__all__ = [
    "ExampleSpec",
    "ForEachSpec",
    "Pipeline",
    "PipelineBusyError",
    "PipelineError",
    "PipelineReport",
    "PipelineRunError",
    "PipelineSpec",
    "PlannedTurn",
    "Problem",
    "TurnRecord",
    "TurnSpec",
    "load_pipeline",
    "parse_pipeline",
    "run_pipeline",
]
