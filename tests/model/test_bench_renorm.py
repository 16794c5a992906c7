"""benchmarks/bench_renorm.py: each column repeats `evaluate` on the same draw with `renorm_c_mllm` off
(raw) and on (renorm), and a task without a medium to decode is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from benchmark_scripts import load_benchmark

from codi2_agent.evaluation import evaluate
from codi2_agent.model import load_model


def test_the_columns_repeat_evaluate_with_the_setting_off_and_on(tmp_path: Path) -> None:
    bench = load_benchmark("bench_renorm")
    out = tmp_path / "renorm.txt"
    args = ["--draws", "5", "--per-task", "6", "--tasks", "text_to_audio,edit_image", "--steps", "4"]
    text = bench.main([*args, "--out", str(out)])
    assert out.read_text() == text
    rows = {tuple(r.split()[1:3]): r.split()[5:] for r in text.splitlines() if r.startswith("tiny ")}
    assert set(rows) == {("text_to_audio", "5"), ("edit_image", "5"), ("sum", "of")}
    # read-out and norm of the raw prediction: a share, and well away from 0 (shrunk below 8)
    for task in ("text_to_audio", "edit_image"):
        line = next(r.split() for r in text.splitlines() if r.split()[:2] == ["tiny", task])
        assert 0.0 <= float(line[3]) <= 1.0 and 4.0 < float(line[4]) < 8.0

    model = load_model("tiny")
    assert model.config.renorm_c_mllm  # the shipped model decodes renormalised features
    for column, renorm in ((0, False), (1, True)):
        model.config = model.config.replace(renorm_c_mllm=renorm)
        got = evaluate(
            model, per_task=6, seed=5, tasks=["text_to_audio", "edit_image"], num_inference_steps=4, rounds=1
        )
        by_task = {row.task: row.accuracy for row in got}
        for task in ("text_to_audio", "edit_image"):
            assert float(rows[(task, "5")][column]) == pytest.approx(by_task[task], abs=1e-3)
            change = float(rows[(task, "5")][1]) - float(rows[(task, "5")][0])
            assert float(rows[(task, "5")][2]) == pytest.approx(change, abs=2e-3)


def test_a_text_task_is_refused_by_name() -> None:
    bench = load_benchmark("bench_renorm")
    with pytest.raises(ValueError, match="caption_image answers with text"):
        bench.main(["--draws", "5", "--per-task", "1", "--tasks", "caption_image"])
    with pytest.raises(SystemExit):
        bench.main(["--tasks", "no_such_task"])
