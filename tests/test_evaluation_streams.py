"""`evaluate(tasks=[...])` scores the very samples the full evaluation scores for those tasks.

Each task's samples come from its own stream, seeded by the task's place among all tasks. Before, the
seed was the task's place in the list asked for, so a subset (or another order) silently drew other
samples than the committed tables.
"""

from __future__ import annotations

from typing import Any

import pytest

import codi2_agent.data.tasks as tasks_module
from codi2_agent.evaluation import evaluate, task_stream
from codi2_agent.model import CoDi2Model
from codi2_agent.training.ablation_readout import eval_samples


def _fingerprint(sample: Any) -> tuple[str, str]:
    return sample.target_text, repr(sample.meta)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[tuple[str, str]]]:
    """Every sample `evaluate` draws, per task, in order."""
    seen: dict[str, list[tuple[str, str]]] = {}
    real = tasks_module.sample_task

    def recording(name: str, rng: Any, split: Any = "train", **kwargs: Any) -> Any:
        sample = real(name, rng, split, **kwargs)
        seen.setdefault(name, []).append(_fingerprint(sample))
        return sample

    monkeypatch.setattr(tasks_module, "sample_task", recording)
    return seen


def test_a_subset_in_any_order_draws_the_full_evaluations_samples(
    tiny_model: CoDi2Model, drawn: dict[str, list[tuple[str, str]]]
) -> None:
    kwargs: dict[str, Any] = {"per_task": 2, "seed": 77, "num_inference_steps": 1, "rounds": 1}
    evaluate(tiny_model, tasks=["caption_image", "what_changed"], **kwargs)
    first = {name: list(drawn.pop(name)) for name in ("caption_image", "what_changed")}
    evaluate(tiny_model, tasks=["what_changed"], **kwargs)

    assert drawn["what_changed"] == first["what_changed"]
    # The ablation read-out's paired samples are the evaluation's own.
    expected = eval_samples(["caption_image", "what_changed"], 2, 77)
    assert first == {name: [_fingerprint(s) for s in expected[name]] for name in first}
    # Tasks draw different samples from one another, and another seed draws others again.
    assert first["caption_image"] != first["what_changed"]
    assert eval_samples(["what_changed"], 2, 78)["what_changed"] != expected["what_changed"]


def test_an_unknown_task_is_refused_by_name_before_any_generation(
    tiny_model: CoDi2Model, drawn: dict[str, list[tuple[str, str]]]
) -> None:
    with pytest.raises(ValueError, match="unknown task 'edit_imag'"):
        evaluate(tiny_model, tasks=["caption_image", "edit_imag"], per_task=1)
    assert drawn == {}  # not even the valid task before it was drawn
    with pytest.raises(ValueError, match="unknown task"):
        task_stream("no_such_task", 0)
