"""The README's pipeline example is a valid pipeline (the format documented is the format parsed)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from codi2_agent.pipelines import parse_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_readme_pipeline_example_validates(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    assert blocks, "the README documents the pipeline format with a ```yaml example"
    inputs = ROOT / "examples" / "pipelines" / "inputs"
    shutil.copytree(inputs, tmp_path / "inputs")
    shutil.copytree(inputs / "pair", tmp_path / "pair")
    for block in blocks:
        pipeline = parse_pipeline(block, base_dir=tmp_path, source="README.md")
        assert pipeline.turns
