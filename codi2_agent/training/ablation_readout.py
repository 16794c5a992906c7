"""Scoring a model without diffusion decoding: c_MLLM read out by the nearest class mean of C_x.

The model answers each held-out sample as `generate` would (greedy reply, contradiction repair, the
K gen tokens: `predict_answers`, equal to `generate`'s c_MLLM up to float rounding) and stops before
the decoder. Media answers are read by `ClassMeanReadout`: the mean C_x of clean renders per
attribute value, from the frozen encoders; the nearest mean names the value. Text answers are parsed
as `codi2_agent.evaluation` judges them. Used by `codi2_agent.training.ablation`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch

from codi2_agent.media import Modality
from codi2_agent.model import CoDi2Model

__all__ = ["ClassMeanReadout", "ScoreRow", "eval_samples", "predict_answers", "score_model"]


# --- the read-out: nearest class mean of C_x features ------------------------------------------------
class ClassMeanReadout:
    """Reads world attributes off feature vectors by the nearest mean C_x of clean renders per value.

    `means[modality][attribute]` is (values, (V, K*D) tensor). Fit once per perception: the encoders
    are frozen, so every variant is read by the same ruler.
    """

    def __init__(self, means: dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]]) -> None:
        self.means = means

    @classmethod
    @torch.no_grad()
    def fit(cls, model: CoDi2Model, *, renders_per_combo: int = 1, seed: int = 0) -> ClassMeanReadout:
        """Render every attribute combination of each modality `renders_per_combo` times (train-range
        seeds: never an eval render) and average C_x per attribute value. Every combination appears
        equally often, so a value's mean is not pulled towards the others it happens to co-occur with."""
        from codi2_agent.data import world

        rng = np.random.default_rng([seed, 31])
        means: dict[str, dict[str, tuple[tuple[str, ...], torch.Tensor]]] = {}
        modalities: tuple[world.WorldModality, ...] = ("image", "audio")
        for kind in modalities:
            attrs = [a for a in world.all_attrs(kind) for _ in range(renders_per_combo)]
            media = [world.render(a, world.render_seed(rng, "train")) for a in attrs]
            feats = _encode(model, Modality(kind), media)
            means[kind] = {}
            for attribute, values in world.ATTRIBUTES[kind].items():
                labels = np.array([values.index(a[attribute]) for a in attrs])
                stack = torch.stack(
                    [feats[torch.from_numpy(labels == v)].mean(0) for v in range(len(values))]
                )
                means[kind][attribute] = (values, stack)
        return cls(means)

    def predict(self, modality: Modality | str, features: torch.Tensor) -> list[dict[str, str]]:
        """(N, K, D) or (N, K*D) features -> the nearest class mean's value of each attribute."""
        kind = Modality.parse(modality).value
        flat = features.detach().float().reshape(len(features), -1).cpu()
        out: list[dict[str, str]] = [{} for _ in range(len(flat))]
        for attribute, (values, centres) in self.means[kind].items():
            nearest = torch.cdist(flat, centres).argmin(-1).tolist()
            for row, index in zip(out, nearest, strict=True):
                row[attribute] = values[index]
        return out

    def verdicts(
        self, modality: Modality | str, features: torch.Tensor, expected: Sequence[Mapping[str, str]]
    ) -> list[dict[str, bool]]:
        """Per sample, whether each attribute of `expected` was read right from `features`."""
        predicted = self.predict(modality, features)
        return [{a: p[a] == e[a] for a in p} for p, e in zip(predicted, expected, strict=True)]

    def accuracy(
        self, modality: Modality | str, features: torch.Tensor, expected: Sequence[Mapping[str, str]]
    ) -> dict[str, float]:
        """Per-attribute accuracy and `all` (every attribute right) of `features` against `expected`."""
        verdicts = self.verdicts(modality, features, expected)
        scores = {a: float(np.mean([v[a] for v in verdicts])) for a in verdicts[0]}
        scores["all"] = float(np.mean([all(v.values()) for v in verdicts]))
        return scores


def _encode(model: CoDi2Model, modality: Modality, media: Sequence[Any]) -> torch.Tensor:
    """C_x (N, K*D) of media, through the frozen encoder."""
    device = model.lm.get_input_embeddings().weight.device
    with torch.no_grad():
        values = model.processor.media_tensor(modality, media).to(device)
        return model.encode_media(modality, values).float().flatten(1).cpu()


# --- answers without diffusion ------------------------------------------------------------------------
@torch.no_grad()
def predict_answers(
    model: CoDi2Model, samples: Sequence[Any], *, batch_size: int = 32
) -> tuple[list[str], list[torch.Tensor | None]]:
    """Each sample's answer text and, where its answer is a medium, c_MLLM (K, D): `generate_batch`'s
    steps up to the decoder (greedy reply, the contradiction repair, the K gen tokens), stopped there."""
    model.eval()
    texts: list[str] = []
    features: list[torch.Tensor | None] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [model._prompt(s.messages) for s in chunk]
        rules = [
            model._text_rules("text" if s.target is None else s.target.modality.value, 64) for s in chunk
        ]
        chunk_texts, _, c_mllm = model._answers_together(prompts, rules)
        texts += chunk_texts
        features += [c_mllm.get(i) for i in range(len(chunk))]
    return texts, features


# --- scoring ------------------------------------------------------------------------------------------
@dataclass
class ScoreRow:
    """One task's scores for one variant x seed."""

    variant: str
    seed: int
    task: str
    n: int
    accuracy: float  # media: every attribute read right; text: the answer parses to the target
    per_attribute: dict[str, float] = field(default_factory=dict)
    # MSE(c_MLLM, C_x(target)), c_MLLM as the decoders read it (renormalised when the model's config says
    # so; tables made before 2026-12-03 measured the heads' raw output); None for text answers
    feature_mse: float | None = None
    readout_ceiling: float | None = None  # the read-out's accuracy on the true C_x(target)
    seconds: float = 0.0


def eval_samples(tasks: Sequence[str], per_task: int, seed: int) -> dict[str, list[Any]]:
    """Held-out samples per task, the same for every variant and seed (a paired comparison)."""
    from codi2_agent.data.tasks import sample_task
    from codi2_agent.evaluation import task_stream

    samples = {}
    for name in tasks:
        rng = task_stream(name, seed)
        samples[name] = [sample_task(name, rng, "test") for _ in range(per_task)]
    return samples


def score_model(
    model: CoDi2Model,
    readout: ClassMeanReadout,
    samples: Mapping[str, Sequence[Any]],
    *,
    variant: str = "",
    seed: int = 0,
) -> list[ScoreRow]:
    """One row per task: media answers read out from c_MLLM, text answers parsed."""
    rows = []
    for task, items in samples.items():
        t0 = time.perf_counter()
        texts, features = predict_answers(model, items)
        if items[0].target is None:
            row = _score_text(task, items, texts)
        else:
            row = _score_media(model, readout, task, items, features)
        row.variant, row.seed, row.seconds = variant, seed, time.perf_counter() - t0
        rows.append(row)
    return rows


def _score_text(task: str, items: Sequence[Any], texts: Sequence[str]) -> ScoreRow:
    from codi2_agent.data.world import parse_caption
    from codi2_agent.evaluation import _judge_text

    hits = [_judge_text(task, text, s) for text, s in zip(texts, items, strict=True)]
    per_attribute: dict[str, float] = {}
    if task.startswith("caption"):  # a caption names every attribute: score them one by one too
        parsed = []
        for text in texts:
            try:
                parsed.append(parse_caption(text))
            except ValueError:
                parsed.append({})
        for attribute in items[0].target_attrs:
            per_attribute[attribute] = float(
                np.mean(
                    [
                        p.get(attribute) == s.target_attrs[attribute]
                        for p, s in zip(parsed, items, strict=True)
                    ]
                )
            )
    return ScoreRow("", 0, task, len(items), float(np.mean(hits)), per_attribute)


def _score_media(
    model: CoDi2Model,
    readout: ClassMeanReadout,
    task: str,
    items: Sequence[Any],
    features: Sequence[torch.Tensor | None],
) -> ScoreRow:
    if any(f is None for f in features):
        raise RuntimeError(f"{task}: the model answered a sample that needs a medium with text only")
    verdicts, ceiling, mse = [], [], []
    # a task's answers may mix modalities (multi_round edits images and sounds): read each in its own space
    for modality in dict.fromkeys(s.target.modality for s in items):
        rows = [i for i, s in enumerate(items) if s.target.modality is modality]
        expected = [items[i].target_attrs for i in rows]
        predicted = torch.stack([cast(torch.Tensor, features[i]) for i in rows]).float().flatten(1).cpu()
        truth = _encode(model, modality, [items[i].target for i in rows])
        verdicts += readout.verdicts(modality, predicted, expected)
        ceiling += [all(v.values()) for v in readout.verdicts(modality, truth, expected)]
        mse += (predicted - truth).pow(2).mean(-1).tolist()
    attributes = dict.fromkeys(a for v in verdicts for a in v)
    per_attribute = {a: float(np.mean([v[a] for v in verdicts if a in v])) for a in attributes}
    accuracy = float(np.mean([all(v.values()) for v in verdicts]))
    return ScoreRow(
        "", 0, task, len(items), accuracy, per_attribute, float(np.mean(mse)), float(np.mean(ceiling))
    )
