"""Scoring a model on the tiny world's held-out suite: per-task accuracy and multi-round consistency.

Media answers are judged by the attribute probes (`codi2_agent.data.probes`); text answers by
parsing them (`parse_caption`, `parse_change`). A medium counts as correct when *every* expected
attribute is right; per-attribute accuracy is reported too. Two diagnostic rows separate the
chain's parts: `decoder_oracle_*` decodes the *true* target's C_x features (the decoder alone),
and `probe_self_*` is the probes' accuracy on clean test renders (the judge's own error).

Usage: `codi2-agent eval --model tiny --per-task 40` (prints the table and writes it, with JSON).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from codi2_agent.media import Media, OutputKind
from codi2_agent.model import CoDi2Model, Turn

if TYPE_CHECKING:
    from codi2_agent.data.world import Attrs, WorldModality

__all__ = [
    "EvalRow",
    "evaluate",
    "format_columns",
    "format_row",
    "format_table",
    "task_stream",
    "write_results",
]

TARGETS = {  # docs/architecture.md §12: the held-out suite's targets per task family
    "edit": 0.9,
    "analogy": 0.9,
    "compose": 0.9,
    "caption": 0.95,
}


def task_stream(task: str, seed: int) -> np.random.Generator:
    """The random stream one task's evaluation samples are drawn from.

    Seeded by the task's place among *all* tasks, not among the ones asked for, so `tasks=[...]` draws
    the very samples the full evaluation draws for those tasks (and the ablation read-out scores the
    same ones). An unknown name is refused by name.
    """
    from codi2_agent.data.tasks import TASKS

    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return np.random.default_rng([seed, sorted(TASKS).index(task)])


@dataclass
class EvalRow:
    task: str
    n: int
    accuracy: float  # every expected attribute right (media) / exact parse (text)
    per_attribute: dict[str, float] = field(default_factory=dict)
    seconds_per_sample: float = 0.0

    @property
    def target(self) -> float | None:
        return next((t for prefix, t in TARGETS.items() if self.task.startswith(prefix)), None)


def _judge_text(task: str, text: str, sample: Any) -> bool:
    from codi2_agent.data.phrasing import parse_change
    from codi2_agent.data.world import parse_caption

    if task == "what_changed":
        return parse_change(text) == parse_change(sample.target_text)
    try:
        return bool(parse_caption(text) == sample.target_attrs)
    except ValueError:
        return False


def evaluate(
    model: CoDi2Model,
    *,
    per_task: int = 40,
    seed: int = 1234,
    num_inference_steps: int | None = None,
    rounds: int = 5,
    tasks: Sequence[str] | None = None,
    split: str = "test",
    probes: Any = None,
    progress: Callable[[str], None] | None = None,
) -> list[EvalRow]:
    """Run every task `per_task` times on `split` ("test": held-out combinations and unseen seeds;
    "train": seen combinations) and return one row per task plus diagnostics."""
    from codi2_agent.data.probes import load_probes
    from codi2_agent.data.tasks import TASKS, sample_task

    probes = probes or load_probes()
    names = list(tasks) if tasks is not None else sorted(TASKS)
    streams = {name: task_stream(name, seed) for name in names}  # every name checked before any work
    rows: list[EvalRow] = []
    for name in names:
        rng = streams[name]
        hits, t0 = 0, time.perf_counter()
        attr_hits: dict[str, int] = defaultdict(int)
        n_attr: dict[str, int] = defaultdict(int)
        for i in range(per_task):
            sample = sample_task(name, rng, split)  # type: ignore[arg-type]
            output: OutputKind = "text" if sample.target is None else sample.target.modality.value
            result = model.generate(
                sample.messages, output=output, seed=seed + i, num_inference_steps=num_inference_steps
            )
            if sample.target is None:
                hits += _judge_text(name, result.text, sample)
                continue
            verdict = probes.score(result.media[0], sample.target_attrs)
            hits += all(verdict.values())
            for attr, ok in verdict.items():
                attr_hits[attr] += ok
                n_attr[attr] += 1
        rows.append(
            EvalRow(
                name,
                per_task,
                hits / per_task,
                {a: attr_hits[a] / n_attr[a] for a in n_attr},
                (time.perf_counter() - t0) / per_task,
            )
        )
        if progress:
            progress(format_row(rows[-1]))
    rows += _decoder_oracle(model, probes, per_task, seed, num_inference_steps)
    rows.append(_multi_round(model, probes, per_task // 2 or 1, rounds, seed, num_inference_steps))
    if progress:
        for row in rows[len(names) :]:
            progress(format_row(row))
    return rows


def decoder_oracle_draw(modality: WorldModality, seed: int, n: int) -> tuple[list[Attrs], list[Media]]:
    """The held-out attributes and renders the decoder oracle judges for `seed` and `n` samples (all
    attributes first, then the renders, from one stream: another `n` draws other renders)."""
    from codi2_agent.data import world

    rng = np.random.default_rng([seed, 99, ("image", "audio").index(modality)])
    attrs = [world.random_attrs(modality, rng, "test") for _ in range(n)]
    return attrs, [world.render(a, world.render_seed(rng, "test")) for a in attrs]


def _decoder_oracle(model: CoDi2Model, probes: Any, n: int, seed: int, steps: int | None) -> list[EvalRow]:
    """Decode the true C_x(target) of test renders: how good the decoders are on their own."""
    rows = []
    modalities: tuple[WorldModality, ...] = ("image", "audio")
    for modality in modalities:
        attrs, media = decoder_oracle_draw(modality, seed, n)
        t0 = time.perf_counter()
        feats = model.encode_media(modality, model.processor.media_tensor(media[0].modality, media))
        decoded = []
        for i in range(n):
            gen = torch.Generator().manual_seed(seed + i)
            decoded += model.decoder(modality).decode(
                feats[i : i + 1], generator=gen, num_inference_steps=steps
            )
        acc = probes.accuracy(decoded, attrs)
        rows.append(
            EvalRow(f"decoder_oracle_{modality}", n, acc.pop("all"), acc, (time.perf_counter() - t0) / n)
        )
        self_acc = probes.accuracy(media, attrs)
        rows.append(EvalRow(f"probe_self_{modality}", n, self_acc.pop("all"), self_acc, 0.0))
    return rows


def _multi_round(
    model: CoDi2Model, probes: Any, n: int, rounds: int, seed: int, steps: int | None
) -> EvalRow:
    """Edit the model's own output `rounds` times; check untargeted attributes never drift."""
    from codi2_agent.data import world
    from codi2_agent.data.phrasing import edit_instruction

    rng = np.random.default_rng([seed, 7])
    kept, targeted, chain, total = 0, 0, 0, 0
    t0 = time.perf_counter()
    for i in range(n):
        attrs = world.random_attrs("image", rng, "test")
        image: Media = world.render(attrs, world.render_seed(rng, "test"))
        chat: list[Turn] = []
        for r in range(rounds):
            attribute = str(rng.choice(list(world.IMAGE_ATTRIBUTES)))
            value = str(rng.choice([v for v in world.IMAGE_ATTRIBUTES[attribute] if v != attrs[attribute]]))
            instruction = edit_instruction(attrs, attribute, value, rng)
            chat += (
                [Turn("user", [image, instruction])]
                if not chat
                else [Turn("assistant", [image]), Turn("user", [instruction])]
            )
            before = probes.predict([image])[0]
            image = model.generate(
                chat, output="image", seed=seed + 100 * i + r, num_inference_steps=steps
            ).media[0]
            after = probes.predict([image])[0]
            attrs = world.edit(attrs, attribute, value)
            kept += all(after[a] == before[a] for a in after if a != attribute)  # untouched attributes stay
            targeted += after[attribute] == value
            chain += after == attrs
            total += 1
    return EvalRow(
        f"multi_round_{rounds}x",
        total,
        kept / total,
        {"edited_right": targeted / total, "whole_chain_right": chain / total},
        (time.perf_counter() - t0) / total,
    )


def format_row(row: EvalRow) -> str:
    target = f"{row.target:.2f}" if row.target is not None else "-"
    met = "" if row.target is None else ("yes" if row.accuracy >= row.target else "NO")
    attrs = " ".join(f"{k}={v:.2f}" for k, v in row.per_attribute.items())
    head = f"{row.task:<24} {row.n:>4} {row.accuracy:>8.3f} {target:>7} {met:>4}"
    return f"{head} {row.seconds_per_sample:>7.2f}  {attrs}"


def format_columns() -> str:
    """The column names line above `format_row` lines."""
    return f"{'task':<24} {'n':>4} {'accuracy':>8} {'target':>7} {'met':>4} {'s/each':>7}  per attribute"


def format_table(rows: Sequence[EvalRow], header: str = "") -> str:
    lines = [header] if header else []
    lines.append(format_columns())
    lines += [format_row(r) for r in rows]
    return "\n".join(lines)


def write_results(rows: Sequence[EvalRow], folder: str | Path, name: str, header: str) -> tuple[Path, Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    txt, js = folder / f"{name}.txt", folder / f"{name}.json"
    txt.write_text(format_table(rows, header) + "\n")
    js.write_text(json.dumps([{**asdict(r), "target": r.target} for r in rows], indent=2) + "\n")
    return txt, js
