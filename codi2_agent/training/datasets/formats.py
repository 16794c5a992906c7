"""Which formats a dataset folder holds, and `open_dataset`: every sample of the folder, streamed.

A dataset folder holds, at its top level, any of:

- ``*.tar`` (also ``.tar.gz``, ``.tgz``): webdataset shards (``webdataset``);
- ``*.jsonl``: manifests of caption pairs, edit triplets or subject sets, told apart by the fields
  of their first record (``image_caption``, ``audio_caption``, ``edit``, ``subjects``);
- ``*.csv``: audio–caption manifests (``audio_caption``);
- no manifest at all, but sub-folders of pictures: a folder per subject (``subjects``).

Each file is a `Source`; `open_dataset` reads the sources one after the other (sorted by name).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from codi2_agent.data.samples import Sample
from codi2_agent.training.datasets._errors import DatasetFormatError, ProblemLog
from codi2_agent.training.datasets._source import DatasetRoot, ReadOptions, Record, media_kind
from codi2_agent.training.datasets.edits import INPUT_KEYS, INSTRUCTION_KEYS, OUTPUT_KEYS, read_edits
from codi2_agent.training.datasets.pairs import (
    AUDIO_KEYS,
    CAPTION_KEYS,
    IMAGE_KEYS,
    read_audio_captions,
    read_image_captions,
    records,
)
from codi2_agent.training.datasets.subjects import read_subject_folders, read_subjects, subject_folders
from codi2_agent.training.datasets.webdataset import read_shard

__all__ = ["FORMATS", "Source", "find_sources", "open_dataset"]

FORMATS: dict[str, str] = {
    "webdataset": "tar shards of image/audio + .txt/.json caption members",
    "image_caption": 'JSONL of {"image": path, "caption": text}',
    "audio_caption": "CSV or JSONL of an audio file (or AudioCaps youtube_id) + caption",
    "edit": 'JSONL of {"input": path, "instruction": text, "output": path}, images or audio',
    "subjects": 'JSONL of {"subject": name, "images": [paths]}, or a folder per subject',
}
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_MANIFEST_SUFFIXES = {
    ".jsonl": ("image_caption", "audio_caption", "edit", "subjects"),
    ".csv": ("audio_caption",),
}
_DETECT_LINES = 20  # a manifest's kind is read off its first good record within this many lines


@dataclass(frozen=True)
class Source:
    """One readable part of a dataset folder: a shard or a manifest (or the subject folders)."""

    format: str
    path: Path  # the file; the dataset folder itself for the folder-per-subject layout

    def read(self, root: DatasetRoot, problems: ProblemLog) -> Iterator[Sample]:
        if self.format == "subjects" and self.path.is_dir():
            return read_subject_folders(root, problems)
        return _READERS[self.format](root, self.path, problems)


_READERS: dict[str, Callable[[DatasetRoot, Path, ProblemLog], Iterator[Sample]]] = {
    "webdataset": read_shard,
    "image_caption": read_image_captions,
    "audio_caption": read_audio_captions,
    "edit": read_edits,
    "subjects": read_subjects,
}


def normalise_format(format: str) -> str:
    """A format name as the CLI may spell it (``image-caption``) -> its key (``image_caption``)."""
    name = format.strip().lower().replace("-", "_")
    if name != "auto" and name not in FORMATS:
        raise DatasetFormatError(
            f"unknown dataset format {format!r}; expected auto or one of {sorted(FORMATS)}"
        )
    return name


def find_sources(path: str | Path, format: str = "auto") -> tuple[Path, list[Source]]:
    """(dataset folder, its sources) for a folder or a single shard/manifest file.

    With ``format="auto"`` each manifest's kind is detected from its first record; with a named
    format only the files that format reads are used, all read as that format.

    Raises:
        DatasetFormatError: nothing readable there, or a manifest whose kind cannot be told.
        FileNotFoundError: no such file or folder.
    """
    fmt = normalise_format(format)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {path}")
    folder = path if path.is_dir() else path.parent
    # Suffixes first: a folder may hold a million pictures beside its manifest; keep only the few.
    listed = (p for p in folder.iterdir() if _is_manifest_name(p.name)) if path.is_dir() else iter([path])
    files = sorted(p for p in listed if p.is_file())
    sources: list[Source] = []
    for file in files:
        source = _source_of(file, fmt)
        if source is not None:
            sources.append(source)
    wants_folders = not sources and path.is_dir() and fmt in ("auto", "subjects")
    if wants_folders and subject_folders(DatasetRoot(folder, ReadOptions())):
        sources.append(Source("subjects", folder))
    if not sources:
        wanted = "any format" if fmt == "auto" else f"format {fmt!r}"
        raise DatasetFormatError(
            f"no dataset of {wanted} in {path}: expected {', '.join(_TAR_SUFFIXES)} shards, .jsonl or "
            ".csv manifests at the top level, or sub-folders of pictures (one per subject)"
        )
    return folder, sources


def _is_manifest_name(name: str) -> bool:
    name = name.lower()
    return name.endswith(_TAR_SUFFIXES) or Path(name).suffix in _MANIFEST_SUFFIXES


def _source_of(file: Path, fmt: str) -> Source | None:
    name = file.name.lower()
    if name.endswith(_TAR_SUFFIXES):
        return Source("webdataset", file) if fmt in ("auto", "webdataset") else None
    kinds = _MANIFEST_SUFFIXES.get(file.suffix.lower())
    if kinds is None:
        return None
    if fmt != "auto":
        return Source(fmt, file) if fmt in kinds else None
    return Source(detect_manifest(file), file)


def detect_manifest(file: Path) -> str:
    """The format of a JSONL/CSV manifest, from the fields of its first good record."""
    seen: list[Record] = []
    for _, record in records(file, file.name, ProblemLog(), ReadOptions().max_record_bytes):
        kind = _kind_of(record)
        if kind is not None:
            return kind
        seen.append(record)
        if len(seen) >= _DETECT_LINES:
            break
    keys = sorted(seen[0]) if seen else []
    raise DatasetFormatError(
        f"{file}: cannot tell which dataset format this is (first record's fields: {keys or 'none'}); "
        f"expected fields of one of {sorted(FORMATS)} or pass the format by name"
    )


def _kind_of(record: Record) -> str | None:
    def has(keys: tuple[str, ...]) -> bool:
        return any(k in record for k in keys)

    if "subject" in record and "images" in record:
        return "subjects"
    if has(INSTRUCTION_KEYS) and has(INPUT_KEYS) and has(OUTPUT_KEYS):
        return "edit"
    if not has(CAPTION_KEYS):
        return None
    for key in (*IMAGE_KEYS, *AUDIO_KEYS):
        if isinstance(record.get(key), str):
            kind = media_kind(record[key])
            if kind is not None:
                return f"{kind}_caption"
    return "audio_caption" if "youtube_id" in record else None


def open_dataset(
    path: str | Path,
    format: str = "auto",
    *,
    options: ReadOptions | None = None,
    problems: ProblemLog | None = None,
    strict: bool = False,
    **option_overrides: Any,
) -> Iterator[Sample]:
    """Every `Sample` of a dataset folder (or one shard / manifest), streamed.

    Args:
        path: the dataset folder, or one ``.tar`` shard / ``.jsonl`` / ``.csv`` manifest.
        format: ``"auto"`` (detected per file) or one of `FORMATS`.
        options: `ReadOptions` (the model's sample rate, size caps, tasks, seed, deferred
            decoding); keyword arguments override single fields, e.g. ``sample_rate=48000,
            tasks={"caption_image"}`` or ``defer_decoding=True`` (media decoded on first use).
        problems: where skipped records are counted (a new lenient `ProblemLog` by default);
            pass your own to look at them afterwards. Its own ``strict`` applies.
        strict: with no `problems` given, raise the first problem instead of skipping it.

    The folder is scanned (and manifests' kinds detected) when this is called, so a wrong path
    or format fails here; records are then read one at a time as the iterator is advanced.

    Raises:
        DatasetFormatError: nothing readable at `path`, or an unknown `format`.
        FileNotFoundError: `path` does not exist.
    """
    options = options or ReadOptions()
    if option_overrides:
        if "tasks" in option_overrides and option_overrides["tasks"] is not None:
            option_overrides["tasks"] = frozenset(option_overrides["tasks"])
        options = replace(options, **option_overrides)
    problems = problems if problems is not None else ProblemLog(strict=strict)
    folder, sources = find_sources(path, format)
    root = DatasetRoot(folder, options)
    return _chain(sources, root, problems)


def _chain(sources: list[Source], root: DatasetRoot, problems: ProblemLog) -> Iterator[Sample]:
    for source in sources:
        yield from source.read(root, problems)
