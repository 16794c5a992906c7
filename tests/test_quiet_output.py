"""Library code is quiet off a terminal: no loading or training bars in logs and pipes, no prints.

Bars are feedback for a person at a terminal; piped into a log, a CI run or a captured subprocess
they are noise. Each check runs with stderr not a terminal; one runs on a pseudo-terminal to show
the bars are still there for a person.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BAR_TEXT = ("Loading weights", "it/s]", "%|")

LOAD = "import sys; from codi2_agent.model import load_model; load_model(sys.argv[1])"
LOAD_AND_EVALUATE = """
import sys
from codi2_agent.evaluation import evaluate
from codi2_agent.model import load_model

model = load_model(sys.argv[1])
rows = evaluate(model, per_task=1, tasks=["caption_image", "edit_image"], num_inference_steps=2)
assert len(rows) > 2
"""


def _env() -> dict[str, str]:
    # Without the CLI's own HF_HUB_DISABLE_PROGRESS_BARS: the library must be quiet by itself.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False"}


def test_loading_and_a_short_eval_off_a_terminal_draw_no_bar_and_print_nothing(model_arg: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_AND_EVALUATE, model_arg],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == ""  # library code logs; it never prints
    assert not [t for t in BAR_TEXT if t in proc.stderr], proc.stderr[-3000:]


def test_loading_on_a_terminal_still_shows_the_bar(model_arg: str) -> None:
    from terminal import run_on_a_terminal

    code, screen = run_on_a_terminal([sys.executable, "-c", LOAD, model_arg], env=_env(), streams=["stderr"])
    assert code == 0, screen[-2000:]
    assert "Loading weights" in screen


def test_the_loading_guard_restores_the_libraries_settings() -> None:
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    from codi2_agent.model.loading_bars import loading_bars_on_terminal_only

    before = (transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled())
    with loading_bars_on_terminal_only():  # pytest captures stderr: not a terminal
        assert not transformers_logging.is_progress_bar_enabled()
    assert (transformers_logging.is_progress_bar_enabled(), are_progress_bars_disabled()) == before


def test_a_training_stage_off_a_terminal_draws_no_bar(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from codi2_agent.training import StageConfig, run_stage

    torch.manual_seed(0)
    net = nn.Linear(4, 1)

    def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return nn.functional.mse_loss(net(x), x.sum(dim=1, keepdim=True)), {}

    cfg = StageConfig("quiet-stage", steps=3, warmup=1, save_every=10, log_every=1)
    run_stage(cfg, net, net.parameters(), lambda step: torch.randn(8, 4), loss_fn, tmp_path)  # default
    out, err = capfd.readouterr()
    assert out == "" and "quiet-stage" not in err and "%|" not in err, err
