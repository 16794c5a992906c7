"""Fixtures for the CLI tests: the model the commands load, and a runner for the real `codi2-agent`.

Every command runs as a subprocess (``python -m codi2_agent.cli``), the way users run it. The model
is the shipped ``tiny`` once its weights exist, else a seeded random tiny model saved to a folder
(same architecture and cost), so the tests pass either way.
"""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``codi2-agent ARGS`` in `tmp_path` (or `cwd`); stdin from `input`."""

    def run(
        *args: str, input: str | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
        return subprocess.run(
            [sys.executable, "-m", "codi2_agent.cli", *args],
            input=input,
            capture_output=True,
            text=True,
            cwd=cwd or tmp_path,
            env=env,
            timeout=timeout,
        )

    return run


def _assert_user_error(proc: subprocess.CompletedProcess[str], code: int, *needles: str) -> list[str]:
    """A user error: exit `code`, no traceback, every stderr line an ``error: ...`` reason."""
    assert proc.returncode == code, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("error: ") for line in lines), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)
    return lines


@pytest.fixture
def user_error() -> Callable[..., list[str]]:
    """``user_error(proc, code, *needles)``: assert a one-line-reason failure; returns the lines."""
    return _assert_user_error
