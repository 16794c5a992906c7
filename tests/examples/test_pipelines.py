"""Every example pipeline in examples/pipelines validates and runs to completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from codi2_agent.pipelines import load_pipeline, run_pipeline

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PIPELINES = sorted(p.name for p in (EXAMPLES / "pipelines").glob("*.yaml"))


def test_there_are_example_pipelines() -> None:
    assert {"analogy_folder.yaml", "edit_rounds.yaml", "sound_and_picture.yaml"} <= set(PIPELINES)


@pytest.mark.parametrize("name", PIPELINES)
def test_pipeline_runs(name: str, model: Any, model_arg: str, tmp_path: Path) -> None:
    pipeline = load_pipeline(EXAMPLES / "pipelines" / name)
    report = run_pipeline(pipeline, tmp_path, model=model, model_id=model_arg, diffusion_steps=2)
    assert report.status == "complete", report.to_markdown()
    assert all(t.outputs and all((tmp_path / o.path).is_file() for o in t.outputs) for t in report.turns)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "report.json").is_file()
