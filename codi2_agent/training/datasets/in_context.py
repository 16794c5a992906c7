"""In-context samples from data streams: exemplars of the same task drawn from the data itself.

CoDi-2 turns paired and instruction data into in-context instruction data by showing solved
examples of the same task before the query; the tiny recipe does it with its world's task
builders (`codi2_agent.data.tasks`, ``n_shots`` / ``text_only``). `InContextBuilder` does the same
to any stream of `Sample`s: it keeps a bounded reservoir of earlier samples per task and puts k of
them, as earlier user/assistant turns, in front of each sample.

The paper's text-only trick: with probability `text_only_p` the exemplars show their media's
captions in place of the media (a multimodal exemplar at the cost of text), the query's media stay.
A sample whose exemplars are not all captioned keeps its media (counted in `stats`).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from codi2_agent.data.samples import Message, Sample
from codi2_agent.media import Media

__all__ = ["InContextBuilder", "answer_message", "textify"]

logger = logging.getLogger(__name__)


def answer_message(sample: Sample) -> Message:
    """The assistant's turn that solves `sample`: its target text, then its target medium."""
    parts: list[str | Media] = [sample.target_text] if sample.target_text else []
    if sample.target is not None:
        parts.append(sample.target)
    return Message("assistant", parts)


def textify(messages: list[Message]) -> list[Message] | None:
    """The messages with every medium replaced by its caption; None when one has no caption."""
    out: list[Message] = []
    for message in messages:
        parts: list[str] = []
        for part in message.content:
            if isinstance(part, Media):
                if not part.caption:
                    return None
                part = part.caption
            parts.append(part)
        out.append(Message(message.role, [" ".join(p.strip() for p in parts if p.strip())]))
    return out


@dataclass
class InContextBuilder:
    """Wrap a stream of samples so each comes with `shots` solved exemplars of its own task.

    Args:
        shots: exemplars per sample: an int, or an inclusive (min, max) range drawn per sample.
        reservoir_size: earlier samples kept per task to draw exemplars from (a uniform reservoir
            sample of all the task's samples so far, so memory is bounded whatever the stream).
        text_only_p: probability that a sample's exemplars show captions instead of media.
        seed: the only source of randomness: the same stream and seed give the same samples.

    The first samples of a task wait until the reservoir holds `min(shots)` others to draw from
    (so every emitted sample has at least that many); at the end of the stream, samples still
    waiting (a task with too few samples in all) come out with what there is, and are counted in
    ``stats["short"]``. Each sample's ``meta`` gets ``n_shots``, ``text_only`` and
    ``exemplar_sources`` (the exemplars' ``meta["source"]``).

    Example:
        >>> builder = InContextBuilder(shots=(1, 3), reservoir_size=64, text_only_p=0.3, seed=0)
        >>> # for sample in builder(open_dataset("data/pairs")): ...
    """

    shots: int | tuple[int, int] = (1, 3)
    reservoir_size: int = 64
    text_only_p: float = 0.0
    seed: int = 0
    stats: Counter[str] = field(default_factory=Counter, init=False)

    def __post_init__(self) -> None:
        low, high = (self.shots, self.shots) if isinstance(self.shots, int) else self.shots
        if not 0 <= low <= high:
            raise ValueError(f"shots must be >= 0 (a range low <= high), got {self.shots!r}")
        if self.reservoir_size <= high:  # a waiting sample needs `high` others besides itself
            raise ValueError(
                f"reservoir_size must be more than the most shots ({high}), got {self.reservoir_size}"
            )
        if not 0.0 <= self.text_only_p <= 1.0:
            raise ValueError(f"text_only_p must be in [0, 1], got {self.text_only_p}")
        self._range = (low, high)

    def __call__(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """The in-context samples of `samples`, one per input sample (a fresh, seeded pass)."""
        rng = np.random.default_rng(self.seed)
        reservoirs: dict[str, list[Sample]] = defaultdict(list)
        seen: Counter[str] = Counter()
        waiting: dict[str, list[Sample]] = defaultdict(list)
        low = self._range[0]
        for sample in samples:
            task = sample.task
            seen[task] += 1
            reservoir = reservoirs[task]
            pool = list(reservoir)  # drawn before `sample` joins: never its own exemplar
            self._keep(reservoir, sample, seen[task], rng)
            if len(pool) < low:
                waiting[task].append(sample)
            else:
                yield self._build(sample, pool, rng)
            if waiting[task] and len(reservoir) > low:
                for held in waiting.pop(task):
                    yield self._build(held, [s for s in reservoir if s is not held], rng)
        for task, held_samples in waiting.items():
            for held in held_samples:
                self.stats["short"] += 1
                logger.info("%s: only %d other samples for in-context exemplars", task, seen[task] - 1)
                yield self._build(held, [s for s in reservoirs[task] if s is not held], rng)

    def _keep(self, reservoir: list[Sample], sample: Sample, nth: int, rng: np.random.Generator) -> None:
        """Reservoir sampling (Algorithm R): each of the task's `nth` samples is kept equally likely."""
        if len(reservoir) < self.reservoir_size:
            reservoir.append(sample)
            return
        slot = int(rng.integers(nth))
        if slot < self.reservoir_size:
            reservoir[slot] = sample

    def _build(self, sample: Sample, pool: list[Sample], rng: np.random.Generator) -> Sample:
        low, high = self._range
        k = min(int(rng.integers(low, high + 1)), len(pool))
        exemplars = [pool[i] for i in sorted(rng.choice(len(pool), size=k, replace=False).tolist())]
        turns = [m for shot in exemplars for m in (*shot.messages, answer_message(shot))]
        text_only = bool(turns) and rng.random() < self.text_only_p
        if text_only:
            as_text = textify(turns)
            if as_text is None:
                self.stats["text_only_uncaptioned"] += 1
                text_only = False
            else:
                turns = as_text
        self.stats["built"] += 1
        self.stats["text_only"] += int(text_only)
        meta = {
            **sample.meta,
            "n_shots": k,
            "text_only": text_only,
            "exemplar_sources": [shot.meta.get("source") for shot in exemplars],
        }
        return Sample(
            sample.task,
            [*turns, *sample.messages],
            sample.target_text,
            sample.target,
            sample.target_attrs,
            meta,
        )
