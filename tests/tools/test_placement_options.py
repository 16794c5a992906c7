"""`device=` / `dtype=` reach `load_model` from `Session`, `CoDi2Toolkit`, `ChatCoDi2` and the CLI.

The model is the seeded random tiny model saved to a folder (tests/conftest.py), loaded by path as a
user's own model would be, in bfloat16 on the CPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from codi2_agent import Session
from codi2_agent.model import CoDi2Model
from codi2_agent.model.placement import FLOAT32_BUFFERS
from codi2_agent.settings import SettingsError
from codi2_agent.tools import ChatCoDi2, CoDi2Toolkit

STEPS = 2


def assert_all_bf16(model: CoDi2Model) -> None:
    """Every parameter in bfloat16; every floating buffer too, except the float32 constants."""
    wrong = [name for name, p in model.named_parameters() if p.dtype != torch.bfloat16]
    assert wrong == [] and sum(1 for _ in model.parameters()) > 50
    for owner in model.modules():
        kept = FLOAT32_BUFFERS.get(type(owner).__name__, ())
        for name, buffer in owner.named_buffers(recurse=False):
            if buffer.is_floating_point():
                assert buffer.dtype == (torch.float32 if name in kept else torch.bfloat16), name


def test_session_in_bfloat16_runs_a_turn(tiny_model_dir: Path, tmp_path: Path) -> None:
    with Session(str(tiny_model_dir), root=tmp_path, dtype="bfloat16", device="cpu",
                 num_inference_steps=STEPS, progress=False) as s:  # fmt: skip
        assert_all_bf16(s.backend.model)
        made = s.say("draw a large red star in the desert")
        assert made.image is not None and made.image.image.size == (32, 32)
        assert s.say("what is in this picture?", made.refs[0]).text  # the model reads its own picture


def test_toolkit_and_chat_model_in_bfloat16(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toolkit = CoDi2Toolkit(
        str(tiny_model_dir), root=tmp_path / "agent", dtype="bf16", num_inference_steps=STEPS
    )
    try:
        assert_all_bf16(toolkit.session.backend.model)
    finally:
        toolkit.close()
    monkeypatch.setenv("CODI2_DTYPE", "bf16")  # no argument: the environment's default applies
    with ChatCoDi2(model=str(tiny_model_dir), num_inference_steps=STEPS) as llm:
        assert llm._backend is None  # still loads on first use
        msg = llm.invoke("draw a small blue circle at night", output="image")
        assert msg.content_blocks[-1]["type"] == "image"
        assert_all_bf16(llm.backend.model)


def test_placement_for_a_model_not_loaded_here_is_refused(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="dtype= apply when the model is loaded by name or folder"):
        Session(tiny_model, root=tmp_path, dtype="bfloat16")
    with pytest.raises(SettingsError, match="model server sets its own device and dtype"):
        ChatCoDi2(model="http://127.0.0.1:8000", device="cpu").backend  # noqa: B018
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        ChatCoDi2(dtype="fp8")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        ChatCoDi2(device="gpu")


def _cli(*args: str, cwd: Path, input: str) -> subprocess.CompletedProcess[str]:
    """The real `codi2-agent` in a subprocess, offline."""
    quiet = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}
    return subprocess.run(
        [sys.executable, "-m", "codi2_agent.cli", *args],
        input=input, capture_output=True, text=True, cwd=cwd, timeout=300, env={**os.environ, **quiet},
    )  # fmt: skip


def test_cli_dtype_flag_reaches_the_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = _cli("chat", "--model", str(tiny_model_dir), "--dtype", "bfloat16", "--root", "s", "--out", "out",
                "--steps", str(STEPS), cwd=tmp_path, input="draw a small red star in the snow\n")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(cpu, bfloat16)" in proc.stdout  # the loaded model's own weights, reported
    assert "turn 1: image @m:" in proc.stdout and list((tmp_path / "out" / "chat").glob("*.png"))
    bad = _cli("chat", "--model", str(tiny_model_dir), "--dtype", "fp8", cwd=tmp_path, input="")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "error: invalid CoDi-2 setting: argument dtype='fp8'" in bad.stderr
