"""Smoke runs of benchmarks/bench_verify.py and benchmarks/bench_what_changed.py on the shipped tiny
model: they run, and what they write adds up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_bench_verify_writes_a_paired_table(tmp_path: Path) -> None:
    out = tmp_path / "verify.txt"
    _run("bench_verify.py", "--per-task", "2", "--tasks", "text_to_image,edit_audio", "--steps", "2",
         "--verify", "3", "--out", str(out))  # fmt: skip
    lines = out.read_text().splitlines()
    assert "verify=1 vs verify=3" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"text_to_image", "edit_audio", "all"}
    for task in ("text_to_image", "edit_audio"):
        n, acc1, acc3, delta = (
            int(rows[task][1]),
            float(rows[task][2]),
            float(rows[task][3]),
            float(rows[task][4]),
        )
        assert n == 2 and acc1 in (0.0, 0.5, 1.0) and acc3 in (0.0, 0.5, 1.0)
        assert delta == acc3 - acc1
        gained, lost = (int(x) for x in re.fullmatch(r"\+(\d+)/-(\d+)", rows[task][5]).groups())  # type: ignore[union-attr]
        assert round((gained - lost) / n, 3) == round(delta, 3)
        assert float(rows[task][8].rstrip("x")) > 0  # a cost ratio (its size is timing, not behaviour)
        # the kept candidate agrees at least as well as candidate 0 (batched vs alone: float rounding)
        assert float(rows[task][11]) >= float(rows[task][10]) - 0.0015
    assert rows["all"][3] == "4"  # "all media tasks" row: 2 tasks x 2 samples


def test_bench_what_changed_appends_one_line_without_contradictions(tmp_path: Path) -> None:
    out = tmp_path / "what_changed.txt"
    for label in ("first", "second"):
        _run("bench_what_changed.py", "--n", "4", "--label", label, "--out", str(out))
    lines = out.read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["first", "second"]
    for line in lines:
        assert "n=4" in line and "self-contradicting=0" in line
        accuracy = float(re.search(r"accuracy=([\d.]+)", line).group(1))  # type: ignore[union-attr]
        assert accuracy in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert lines[0].split("accuracy=")[1].split()[0] == lines[1].split("accuracy=")[1].split()[0]
