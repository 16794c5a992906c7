"""Dataset folders as the stages' data sources (the readers of `codi2_agent.training.datasets`).

- `bridge`: the audio-caption pairs of the align folders, once each (``caption_audio``), read from
  their audio-caption manifests and webdataset shards only (image manifests are not opened);
- `align`: the caption pairs of every folder, both directions (``caption_image``, ``text_to_image``,
  ``caption_audio``, ``text_to_audio``), folders interleaved;
- `instruct`: every task of every folder (pairs, edit triplets, subject sets), each sample with
  1-2 exemplars of its own task in front (`InContextBuilder`), some shown as captions only (the
  paper's text-only trick).

Each source is a callable that opens the folders afresh, so every epoch (and a resumed run)
reads the same samples in the same order. Media are decoded when a sample is used, not when it is
read (``defer_decoding``): the samples of other processes, and those a resumed run reads past, cost
no decoding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from codi2_agent.data.samples import Sample
from codi2_agent.training.paper.data import DataSource

__all__ = ["ALIGN_TASKS", "audio_caption_files", "dataset_sources"]

ALIGN_TASKS = frozenset({"caption_image", "text_to_image", "caption_audio", "text_to_audio"})
_AUDIO_PAIR_FORMATS = ("audio_caption", "webdataset")  # the formats that can hold audio-caption pairs


def audio_caption_files(paths: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """(file, format) of every audio-caption manifest and webdataset shard in the dataset folders."""
    from codi2_agent.training.datasets import find_sources

    return [(s.path, s.format) for p in paths for s in find_sources(p)[1] if s.format in _AUDIO_PAIR_FORMATS]


def dataset_sources(
    align: Sequence[str | Path],
    instruct: Sequence[str | Path],
    *,
    sample_rate: int,
    shots: tuple[int, int] = (1, 2),
    text_only_p: float = 0.3,
    seed: int = 0,
) -> dict[str, DataSource]:
    """{"bridge": ..., "align": ..., "instruct": ...} reading the given dataset folders (or single
    manifests/shards).

    The folders are scanned now, so a wrong path or an unreadable folder fails before any model
    loads (`DatasetFormatError`, `FileNotFoundError`).
    """
    from codi2_agent.training.datasets import InContextBuilder, find_sources, mix, open_dataset

    for path in [*align, *instruct]:
        find_sources(path)

    def folders(paths: Sequence[str | Path], tasks: frozenset[str] | None) -> Iterator[Sample]:
        streams = {
            str(i): open_dataset(p, sample_rate=sample_rate, tasks=tasks, seed=seed, defer_decoding=True)
            for i, p in enumerate(paths)
        }
        return mix(streams, seed=seed) if len(streams) > 1 else next(iter(streams.values()))

    def align_samples() -> Iterator[Sample]:
        return folders(align, ALIGN_TASKS)

    audio_files = audio_caption_files(align)

    def bridge_samples() -> Iterator[Sample]:
        streams = {
            str(i): open_dataset(
                p, fmt, sample_rate=sample_rate, tasks={"caption_audio"}, seed=seed, defer_decoding=True
            )
            for i, (p, fmt) in enumerate(audio_files)
        }
        if len(streams) > 1:
            return mix(streams, seed=seed)
        return next(iter(streams.values()), iter(()))  # no audio pairs: the bridge says so

    def instruct_samples() -> Iterator[Sample]:
        builder = InContextBuilder(shots=shots, text_only_p=text_only_p, seed=seed)
        return builder(folders(instruct, None))

    return {"bridge": bridge_samples, "align": align_samples, "instruct": instruct_samples}
