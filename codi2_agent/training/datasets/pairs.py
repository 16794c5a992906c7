"""Caption pairs from a manifest: image–caption JSONL, and audio–caption CSV or JSONL (AudioCaps-like).

Layouts (paths relative to the dataset folder)::

    pairs.jsonl   {"image": "images/0001.png", "caption": "a red bus on a bridge"}
    clips.csv     audio,caption                      (or "file", "path", "audio_path")
                  audio/0001.wav,a dog barks twice
    audiocaps.csv audiocap_id,youtube_id,start_time,caption
                  (files found as audio/<youtube_id>.wav, Y<youtube_id>.wav, <youtube_id>_<start>.wav,
                  or .flac, in the folder or its audio/)

Each pair gives two samples: ``caption_image`` and ``text_to_image`` (``caption_audio`` and
``text_to_audio`` for sound).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from codi2_agent.data.samples import Sample
from codi2_agent.media import Media, MediaError, MediaNotFoundError
from codi2_agent.training.datasets._errors import DatasetError, ProblemLog
from codi2_agent.training.datasets._samples import pair_samples
from codi2_agent.training.datasets._source import (
    DatasetRoot,
    MediaKind,
    Origin,
    Record,
    iter_csv,
    iter_jsonl,
    text_field,
)

__all__ = ["AUDIO_KEYS", "CAPTION_KEYS", "IMAGE_KEYS", "read_audio_captions", "read_image_captions"]

IMAGE_KEYS = ("image", "image_path", "file_name")
AUDIO_KEYS = ("audio", "audio_path", "file", "path", "filename", "file_name")
CAPTION_KEYS = ("caption", "text", "prompt")
_AUDIO_FOLDERS = ("", "audio")
_AUDIO_EXTENSIONS = (".wav", ".flac")


def records(path: Path, name: str, problems: ProblemLog, max_bytes: int) -> Iterator[tuple[int, Record]]:
    """The records of a JSONL or CSV manifest, by its suffix."""
    reader = iter_csv if path.suffix.lower() == ".csv" else iter_jsonl
    return reader(path, name, problems, max_bytes)


def read_image_captions(root: DatasetRoot, manifest: Path, problems: ProblemLog) -> Iterator[Sample]:
    """Samples of an image–caption JSONL: ``caption_image`` and ``text_to_image`` per line."""
    return _read_pairs(root, manifest, problems, "image", "image_caption")


def read_audio_captions(root: DatasetRoot, manifest: Path, problems: ProblemLog) -> Iterator[Sample]:
    """Samples of an audio–caption CSV/JSONL: ``caption_audio`` and ``text_to_audio`` per row."""
    return _read_pairs(root, manifest, problems, "audio", "audio_caption")


def _read_pairs(
    root: DatasetRoot, manifest: Path, problems: ProblemLog, kind: MediaKind, fmt: str
) -> Iterator[Sample]:
    name, rng, options = root.relative(manifest), root.rng_for(manifest), root.options
    for line, record in records(manifest, name, problems, options.max_record_bytes):
        try:
            caption = text_field(record, CAPTION_KEYS, options.max_record_bytes)
            assert caption is not None
            origin = Origin(problems, name, line)
            opener = _open_audio if kind == "audio" else _open_image
            media = opener(root, record, origin)
        except (DatasetError, MediaError) as e:
            problems.report(e, name, line)
            continue
        yield from pair_samples(
            kind, media, caption, rng, options, {"format": fmt, "source": f"{name}:{line}"}
        )


def _open_image(root: DatasetRoot, record: Record, origin: Origin) -> Media:
    key = next((k for k in IMAGE_KEYS if k in record), IMAGE_KEYS[0])
    return root.open_media(record.get(key), key, "image", origin)


def _open_audio(root: DatasetRoot, record: Record, origin: Origin) -> Media:
    key = next((k for k in AUDIO_KEYS if k in record), None)
    if key is not None:
        return root.open_media(record[key], key, "audio", origin)
    if "youtube_id" not in record:
        text_field(record, AUDIO_KEYS, 0)  # raises: names the fields that were expected
    return root.open_media(_audiocaps_file(root, record), "youtube_id", "audio", origin)


def _audiocaps_file(root: DatasetRoot, record: Record) -> str:
    """The file of an AudioCaps row (no file column): the first of the usual download names found."""
    clip = str(record["youtube_id"]).strip()
    stems = [clip, f"Y{clip}"]
    if "start_time" in record:
        start = str(record["start_time"]).strip()
        stems += [f"{clip}_{start}", f"Y{clip}_{start}"]
    candidates = [
        f"{folder}/{stem}{ext}".lstrip("/")
        for folder in _AUDIO_FOLDERS
        for stem in stems
        for ext in _AUDIO_EXTENSIONS
    ]
    for candidate in candidates:
        if root.resolve(candidate, "youtube_id").is_file():
            return candidate
    raise MediaNotFoundError(f"no audio file for youtube_id {clip!r} (looked for {', '.join(candidates)})")
