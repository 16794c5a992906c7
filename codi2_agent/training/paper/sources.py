"""Dataset folders as the two stages' data sources (the readers of `codi2_agent.training.datasets`).

- `align`: the caption pairs of every folder, both directions (``caption_image``, ``text_to_image``,
  ``caption_audio``, ``text_to_audio``), folders interleaved;
- `instruct`: every task of every folder (pairs, edit triplets, subject sets), each sample with
  1-2 exemplars of its own task in front (`InContextBuilder`), some shown as captions only (the
  paper's text-only trick).

Each source is a callable that opens the folders afresh, so every epoch (and a resumed run)
reads the same samples in the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from codi2_agent.data.samples import Sample
from codi2_agent.training.paper.data import DataSource

__all__ = ["ALIGN_TASKS", "dataset_sources"]

ALIGN_TASKS = frozenset({"caption_image", "text_to_image", "caption_audio", "text_to_audio"})


def dataset_sources(
    align: Sequence[str | Path],
    instruct: Sequence[str | Path],
    *,
    sample_rate: int,
    shots: tuple[int, int] = (1, 2),
    text_only_p: float = 0.3,
    seed: int = 0,
) -> dict[str, DataSource]:
    """{"align": ..., "instruct": ...} reading the given dataset folders (or single manifests/shards).

    The folders are scanned now, so a wrong path or an unreadable folder fails before any model
    loads (`DatasetFormatError`, `FileNotFoundError`).
    """
    from codi2_agent.training.datasets import InContextBuilder, find_sources, mix, open_dataset

    for path in [*align, *instruct]:
        find_sources(path)

    def folders(paths: Sequence[str | Path], tasks: frozenset[str] | None) -> Iterator[Sample]:
        streams = {
            str(i): open_dataset(p, sample_rate=sample_rate, tasks=tasks, seed=seed)
            for i, p in enumerate(paths)
        }
        return mix(streams, seed=seed) if len(streams) > 1 else next(iter(streams.values()))

    def align_samples() -> Iterator[Sample]:
        return folders(align, ALIGN_TASKS)

    def instruct_samples() -> Iterator[Sample]:
        builder = InContextBuilder(shots=shots, text_only_p=text_only_p, seed=seed)
        return builder(folders(instruct, None))

    return {"align": align_samples, "instruct": instruct_samples}
