"""benchmarks/bench_model.py: figures only for the model named, random weights only when asked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_model.py"


def _bench(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--threads", "1", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )


def _rows(table: str) -> list[str]:
    return [line.rsplit(None, 3)[0].strip() for line in table.splitlines()[5:]]


@pytest.mark.parametrize("model", ["bogus", "folder-without-config"])
def test_an_unknown_model_is_one_line_and_exit_2(tmp_path: Path, model: str) -> None:
    (tmp_path / "folder-without-config").mkdir()
    proc = _bench("--model", model, "--out", "model.txt", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == f"error: --model {model!r} is neither a shipped model (tiny), " + (
        "a model folder (no config.json in it) nor 'random'\n"
    )
    assert proc.stdout == "" and not (tmp_path / "model.txt").exists()


def test_a_folder_that_does_not_load_is_one_line_and_exit_1(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    proc = _bench("--model", "broken", "--out", "model.txt", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    # The loader may log a warning first (no manifest.json); the failure itself is one line.
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [proc.stderr.splitlines()[-1]] and "config.json: not valid JSON" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "model.txt").exists()


def test_random_weights_only_when_asked_and_labelled_so(tmp_path: Path) -> None:
    proc = _bench("--model", "random", "--repeats", "1", "--out", "t/model.txt", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "t" / "model.txt").read_text()
    assert table == proc.stdout
    assert "; model: RANDOM tiny weights (seeded; timing only, not a trained model); 1 repeats" in table
    assert _rows(table) == [
        "import codi2_agent",
        "load model",
        "generate text (caption, <=16 tokens)",
        "generate image (edit, 20 DDIM steps)",
        "generate audio (edit, 20 DDIM steps + Griffin-Lim)",
        "generate image from image+audio",
    ]


def test_the_cli_writes_the_model_table_into_its_out_folder(cli: Any, model_arg: str, tmp_path: Path) -> None:
    proc = cli("bench", "--quick", "--only", "model", "--model", model_arg, "--out", "bench")
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "bench" / "model.txt").read_text()
    assert f"; model: {model_arg}; 2 repeats" in table and table.strip() in proc.stdout
    launched = f"== bench_model.py --model {model_arg} --threads 1 --repeats 2 --out bench/model.txt"
    assert launched in proc.stdout
    assert len(_rows(table)) == 6
