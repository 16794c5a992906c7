"""Instruction-edit triplets from a JSONL manifest (InstructPix2Pix-like), images or audio.

Layout (paths relative to the dataset folder)::

    edits.jsonl  {"input": "a/0001.png", "instruction": "make it snow", "output": "b/0001.png"}
                 {"input": "x/03.wav", "instruction": "add rain", "output": "y/03.wav"}

InstructPix2Pix's own names are read too (``input_image``, ``edit_prompt``, ``edited_image``),
and the captions of the two sides when present (``input_caption`` / ``original_prompt``,
``output_caption`` / ``edited_prompt``): they are what the text-only trick shows for them. The
modality follows the input file (or a ``modality`` field); both sides must have the same one.
Each triplet gives one ``edit_image`` or ``edit_audio`` sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from codi2_agent.data.samples import Sample
from codi2_agent.media import MediaError
from codi2_agent.training.datasets._errors import BadRecordError, DatasetError, ProblemLog
from codi2_agent.training.datasets._samples import EDIT_TASKS, edit_sample
from codi2_agent.training.datasets._source import (
    DatasetRoot,
    MediaKind,
    Origin,
    Record,
    media_kind,
    text_field,
)
from codi2_agent.training.datasets.pairs import records

__all__ = ["INPUT_KEYS", "INSTRUCTION_KEYS", "OUTPUT_KEYS", "read_edits"]

INPUT_KEYS = ("input", "input_image", "source", "original_image")
OUTPUT_KEYS = ("output", "edited_image", "output_image", "target")
INSTRUCTION_KEYS = ("instruction", "edit_prompt", "edit")
_INPUT_CAPTION_KEYS = ("input_caption", "original_prompt", "input_prompt")
_OUTPUT_CAPTION_KEYS = ("output_caption", "edited_prompt", "output_prompt")


def read_edits(root: DatasetRoot, manifest: Path, problems: ProblemLog) -> Iterator[Sample]:
    """One ``edit_image`` / ``edit_audio`` sample per triplet of the manifest."""
    name, rng, options = root.relative(manifest), root.rng_for(manifest), root.options
    for line, record in records(manifest, name, problems, options.max_record_bytes):
        try:
            kind = _kind(record)
            if not options.wants(EDIT_TASKS[kind]):
                continue
            limit = options.max_record_bytes
            instruction = text_field(record, INSTRUCTION_KEYS, limit)
            captions = [
                text_field(record, keys, limit, required=False)
                for keys in (_INPUT_CAPTION_KEYS, _OUTPUT_CAPTION_KEYS)
            ]
            (in_key, in_path), (out_key, out_path) = _path(record, INPUT_KEYS), _path(record, OUTPUT_KEYS)
            origin = Origin(problems, name, line)
            source = root.open_media(in_path, in_key, kind, origin, captions[0])
            target = root.open_media(out_path, out_key, kind, origin, captions[1])
        except (DatasetError, MediaError) as e:
            problems.report(e, name, line)
            continue
        assert instruction is not None
        yield edit_sample(
            kind, source, instruction, target, rng, {"format": "edit", "source": f"{name}:{line}"}
        )


def _path(record: Record, keys: tuple[str, ...]) -> tuple[str, object]:
    key = next((k for k in keys if k in record), None)
    if key is None:
        raise BadRecordError(f"no {' / '.join(repr(k) for k in keys)} field")
    return key, record[key]


def _kind(record: Record) -> MediaKind:
    """The triplet's modality: its ``modality`` field, else the input file's suffix."""
    stated = record.get("modality")
    if stated is not None:
        if stated not in ("image", "audio"):
            raise BadRecordError(f"field 'modality' must be 'image' or 'audio', got {stated!r}")
        return "image" if stated == "image" else "audio"
    _, written = _path(record, INPUT_KEYS)
    kind = media_kind(written) if isinstance(written, str) else None
    if kind is None:
        raise BadRecordError(f"cannot tell image from audio by the input's name {written!r}; add 'modality'")
    return kind
