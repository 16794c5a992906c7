"""benchmarks/compare_evals.py: the runs table behind REPRODUCE.md, built from eval JSON files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_evals.py"


MEDIA = load_benchmark("compare_evals").MEDIA_TASKS


def _write(path: Path, accuracies: dict[str, float]) -> Path:
    path.write_text(
        json.dumps([{"task": t, "n": 80, "accuracy": a, "target": 0.9} for t, a in accuracies.items()])
    )
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_the_table_gives_spread_targets_and_the_media_sum(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {**dict.fromkeys(MEDIA, 0.95), "what_changed": 1.0, "edit_audio": 0.875})
    b = _write(tmp_path / "b.json", {**dict.fromkeys(MEDIA, 0.9375), "what_changed": 0.9625})
    out = tmp_path / "table.txt"
    done = _run(f"r0={a}", f"r1={b}", "--spread", "r0", "r1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in out.read_text().splitlines()[1:-1]}
    assert rows["edit_audio"] == ["0.875", "0.938", "0.062", "0.90", "NO"]  # 0.875 < 0.90 in one run
    assert rows["text_to_image"] == ["0.950", "0.938", "0.012", "0.90", "yes"]
    assert rows["what_changed"] == ["1.000", "0.963", "0.037", "0.95", "yes"]
    assert out.read_text().splitlines()[-1].split()[-2:] == ["8.47", "8.44"]  # 8 x 0.95 + 0.875; 9 x 0.9375
    assert done.stdout == out.read_text()


def test_a_run_missing_tasks_shows_dashes_and_no_sum(tmp_path: Path) -> None:
    full = _write(tmp_path / "full.json", dict.fromkeys(MEDIA, 1.0))
    part = _write(tmp_path / "part.json", {"edit_image": 0.5})
    done = _run(f"full={full}", f"part={part}")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].split()[-2:] == ["9.00", "-"]
    assert next(line for line in lines if line.startswith("edit_audio")).split()[1:] == ["1.000", "-"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nolabel.json"], "expected LABEL=PATH"),
        (["x={bad}"], "not an eval result"),
        (["x={good}", "--spread", "y"], "--spread names runs that were not given: ['y']"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "bad.json").write_text(json.dumps({"task": "edit_image"}))
    good = _write(tmp_path / "good.json", {"edit_image": 1.0})
    done = _run(*(a.format(bad=tmp_path / "bad.json", good=good) for a in args))
    assert done.returncode != 0
    assert message in done.stderr
