"""Every example script in examples/ runs, as a user would run it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from codi2_agent import Media

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

# Arguments for each script ({tmp}: a fresh folder). A new script fails below until it is listed here.
ARGS = {
    "agent_example.py": ["--root", "{tmp}", "--steps", "2"],
    "pipelines/make_inputs.py": ["--out", "{tmp}"],
}
SCRIPTS = sorted(
    p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py") if "notebooks" not in p.parts
)


def test_every_script_is_listed() -> None:
    assert sorted(ARGS) == SCRIPTS, "add the new example script (and its arguments) to ARGS"


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_runs(script: str, tmp_path: Path) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in ARGS[script]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if script == "agent_example.py":
        assert (
            "call:  codi2_apply_example_edit" in proc.stdout
            and len(list((tmp_path / "out").glob("*.png"))) == 4
        )
    if script == "pipelines/make_inputs.py":  # the committed inputs are what the script makes
        committed = EXAMPLES / "pipelines" / "inputs"
        made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
        assert made == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
        assert all(Media.open(tmp_path / p) == Media.open(committed / p) for p in made)
