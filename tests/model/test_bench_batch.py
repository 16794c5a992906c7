"""Smoke run of benchmarks/bench_batch.py on the shipped tiny model: it runs, and its figures add up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bench_batch_writes_its_table_and_the_denoiser_ceiling(tmp_path: Path, dtype: str) -> None:
    out = tmp_path / "batch.txt"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "bench_batch.py"),
            "--batch",
            "2",
            "--repeats",
            "1",
            "--dtype",
            dtype,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = out.read_text()
    assert proc.stdout == text
    assert f"model: tiny, parameters in {dtype};" in text.splitlines()[1]  # every one, as loaded

    rows = {m[1]: [float(v) for v in m.groups()[1:]] for m in re.finditer(
        r"^(2 \w+ turns)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x$", text, re.M
    )}  # fmt: skip
    assert set(rows) == {"2 image turns", "2 audio turns", "2 text turns", "2 mixed turns"}
    # The seconds are printed to 3 decimals, the rates and speed-up are computed before rounding: a text
    # turn of 0.030 s may really be 0.0305 s, 1.7 % off, so each check allows the printed precision.
    half = 0.0005
    for seq, bat, seq_rate, bat_rate, speed_up in rows.values():
        assert seq > half and bat > half
        assert 2 / (seq + half) - 0.01 <= seq_rate <= 2 / (seq - half) + 0.01
        assert 2 / (bat + half) - 0.01 <= bat_rate <= 2 / (bat - half) + 0.01
        assert (seq - half) / (bat + half) - 0.01 <= speed_up <= (seq + half) / (bat - half) + 0.01

    # the denoiser's per-row cost at 2 and 4 rows (a lone guided turn, a batch of 2 turns)
    costs = {int(n): float(ms) for n, ms in re.findall(r"^\s+(\d+) rows\s+([\d.]+) ms per row", text, re.M)}
    assert set(costs) == {2, 4, 8} and all(ms > 0 for ms in costs.values())
    lone = float(re.search(r"a lone image turn: ([\d.]+) s", text)[1])
    assert abs(lone - rows["2 image turns"][0] / 2) < 1e-3 + 0.001 * lone  # the sequential side's turn
    floor, most = re.search(r"costs at least ([\d.]+) s .* at most ([\d.]+)x", text).groups()
    assert abs(float(floor) - costs[4] * 2 * 20 / 1e3) < 0.002  # 20 DDIM steps, 2 rows each
    assert abs(float(most) - lone / float(floor)) < 0.01 * float(most) + 0.01
