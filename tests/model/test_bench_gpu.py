"""benchmarks/bench_gpu.py's CPU mode: every part runs, the table is written, time limits hold."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def _bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _rows(table: str) -> dict[tuple[str, str], str]:
    """(part, measurement) -> value, read back from the written table."""
    body = table.split("\n\n", 1)[1].splitlines()[1:]  # after the header and the column titles
    rows = {}
    for line in body:
        part, rest = line.split(maxsplit=1)
        name, value = re.split(r"\s{2,}", rest)[:2]
        rows[(part, name)] = value
    return rows


def test_dry_run_measures_every_part_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.txt"
    proc = _bench("--dry-run", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(out.read_text())
    for part in ("tiny", "paper"):
        for turn in ("text turn", "image turn", "audio turn"):
            [value] = [v for (p, name), v in rows.items() if p == part and name.startswith(turn)]
            assert re.fullmatch(r"\d+\.\d{3} s", value) and float(value.split()[0]) > 0, (part, turn, value)
        assert rows[(part, "peak memory (turns)")].endswith("RSS")
    assert float(rows[("tiny", "load_model('tiny')")].split()[0]) > 0
    assert float(rows[("paper", "build paper model")].split()[0]) > 0
    for output in ("image", "audio"):  # generate_batch vs sequential generate, tiny and paper
        for model in ("tiny", "paper"):
            value = rows[("batched", f"{model} {output} x2")]
            assert re.fullmatch(r"\d+\.\d\d turns/s", value) and float(value.split()[0]) > 0, value
    assert re.search(
        r"batched +tiny image x2 .*sequential \d+\.\d\d turns/s, ratio \d+\.\d\dx", out.read_text()
    )
    assert "ERROR" not in out.read_text()


def test_a_part_over_its_time_limit_is_an_error_row_and_the_rest_still_runs(tmp_path: Path) -> None:
    out = tmp_path / "gpu.txt"
    proc = _bench("--dry-run", "--parts", "paper,tiny", "--paper-limit-s", "3", "--out", str(out))
    assert proc.returncode == 1  # a part failed; the table is written anyway
    rows = _rows(out.read_text())
    assert rows[("paper", "time limit")] == "ERROR"
    assert float(rows[("tiny", "load_model('tiny')")].split()[0]) > 0  # the next part still ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_a_missing_device_is_an_error_row(tmp_path: Path) -> None:
    out = tmp_path / "gpu.txt"
    proc = _bench("--device", "cuda", "--parts", "tiny", "--out", str(out), timeout=120)
    assert proc.returncode == 1
    table = out.read_text()
    assert _rows(table)[("tiny", "part failed")] == "ERROR"
    assert "DeviceUnavailableError" in table and "CUDA is not available" in table
