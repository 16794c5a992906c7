"""benchmarks/bench_train_gpu.py: its CPU dry run measures the trainer's step end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train_gpu.py"


def test_the_dry_run_trains_the_small_paper_model_and_writes_its_table(tmp_path):
    out = tmp_path / "train_gpu.txt"
    # one part (the instruct stage: in-context samples, LoRA trained); align differs in its samples only
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--parts", "instruct", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    table = out.read_text()
    assert "device cpu, float32; paper sizes: TINY (small)" in table
    rows = {line.split()[1]: line for line in table.splitlines() if line.startswith("instruct")}
    for name in ("build", "parameters", "trained", "optimiser", "samples/s", "tokens/s", "peak", "loss"):
        assert name in rows, table
    assert "ERROR" not in table and "finite" in rows["loss"]
    assert float(rows["samples/s"].split()[2]) > 0 and float(rows["tokens/s"].split()[2]) > 0
