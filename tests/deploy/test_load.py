"""The load benchmark's short version: sessions of two tenants through a pool of graph workers that
share Postgres checkpoints and a `chroma run` memory — no turn lost or doubled, no cross-tenant read,
memory items and artifacts exactly the media the turns produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_load.py"


def test_short_load_through_two_workers(tmp_path: Path, postgres_url: str, model_arg: str) -> None:
    out, rows_file = tmp_path / "load.txt", tmp_path / "load.json"
    command = [
        sys.executable, str(SCRIPT), "--sessions", "4", "--turns", "3", "--tenants", "2", "--workers", "2",
        "--steps", "2", "--model", model_arg, "--postgres", postgres_url, "--deadline", "300",
        "--out", str(out), "--json", str(rows_file),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    (row,) = json.loads(rows_file.read_text())
    assert row["workers"] == 2 and row["turns_answered"] == row["turns_expected"] == 12
    assert row["lost"] == 0 and row["duplicated"] == 0 and row["log_mismatches"] == 0
    # 4 sessions x (a picture + one edit) = 8 media; "describe it" makes none.
    assert row["memory_items"] == row["memory_expected"] == 8
    assert row["artifacts"] == row["artifacts_expected"] == 8
    assert row["cross_tenant_leaks"] == 0
    assert row["cross_tenant_attempts"] == row["cross_tenant_refused"] >= 2 * (3 * 5 + 2 + 1)
    assert row["turns_per_s"] > 0 and 0 < row["p50_s"] <= row["p95_s"]
    table = out.read_text()
    assert "4 sessions x 3 turns over 2 tenants" in table and table.count(" ok") == 1
