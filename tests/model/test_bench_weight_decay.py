"""benchmarks/bench_weight_decay.py: arms differ only in the decay, and a short run writes its table."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_a_short_screen_trains_both_arms_from_one_start_and_writes_the_table(tmp_path) -> None:
    out = tmp_path / "wd.txt"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_weight_decay.py"),
            "--decays",
            "0,5",
            "--steps",
            "4",
            "--checks",
            "2",
            "--lr",
            "0.1",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
            "--note",
            "smoke",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert text.startswith("# smoke\n# perception tiny;") and "4 steps" in text
    row = re.compile(
        r"^(\S+)\s+0\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", re.M
    )
    rows = {(float(m[1]), int(m[2])): [float(x) for x in m.groups()[2:]] for m in row.finditer(text)}
    assert sorted(rows) == [(0.0, 2), (0.0, 4), (5.0, 2), (5.0, 4)]
    for values in rows.values():  # feature loss, norm, then four MSEs of unit-variance features
        assert all(0 < v < 5 for v in values[2:]) and values[1] > 1
    # Same initial weights and task draw: only the decay separates the arms, and it shrinks the weights.
    assert rows[(5.0, 4)][1] < rows[(0.0, 4)][1] - 1
    assert rows[(5.0, 2)][0] == rows[(0.0, 2)][0] or abs(rows[(5.0, 2)][0] - rows[(0.0, 2)][0]) < 0.05
    assert (tmp_path / "w" / "perception" / "encoders" / "done").is_file()  # the adopted perception
    assert text.count("\n0 ") + text.count("\n5 ") == 6  # 4 check rows + 2 plateau rows


def test_the_heads_scope_decays_the_output_heads_alone() -> None:
    bench = load_benchmark("bench_weight_decay")
    everything = bench.arm_recipe(1.0, "all")
    assert (everything.lm_weight_decay, everything.head_weight_decay) == (1.0, None)
    heads = bench.arm_recipe(1.0, "heads")
    assert (heads.lm_weight_decay, heads.head_weight_decay) == (0.01, 1.0)  # the rest at v5's decay
    with pytest.raises(ValueError, match="scope must be 'all' or 'heads'"):
        bench.arm_recipe(1.0, "lm")
