"""Subject sets: several pictures of one subject -> "keep the subject" samples (``subject_image``).

Two layouts (paths relative to the dataset folder)::

    subjects.jsonl  {"subject": "my-dog", "images": ["dog/1.jpg", "dog/2.jpg", "dog/3.jpg"],
                     "captions": ["my dog on grass", "...", "..."]}     (captions optional)

    my-dog/1.jpg  my-dog/2.jpg  my-dog/2.txt (an optional caption beside a picture)
    teapot/a.png  teapot/b.png                (a folder per subject, no manifest)

Every picture of a subject is the answer of one sample, whose request shows up to
`max_references` of the other pictures (chosen by the seed) and asks for a new one, naming the
answer's caption when it has one. A subject needs at least two readable pictures. Only one
subject's pictures are held at a time; a subject is read up to `MAX_SUBJECT_IMAGES` pictures.
With deferred decoding (`ReadOptions.defer_decoding`) every picture a subject names counts as
readable when it is read: one that later fails to decode fails the samples that show it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from codi2_agent.data.samples import Sample
from codi2_agent.media import Media, MediaError
from codi2_agent.training.datasets._errors import BadRecordError, DatasetError, ProblemLog
from codi2_agent.training.datasets._samples import SUBJECT_TASK, subject_sample
from codi2_agent.training.datasets._source import DatasetRoot, Origin, media_kind, text_field
from codi2_agent.training.datasets.pairs import records

__all__ = ["MAX_SUBJECT_IMAGES", "read_subject_folders", "read_subjects", "subject_folders"]

MAX_SUBJECT_IMAGES = 64
MAX_REFERENCES = 3


def read_subjects(root: DatasetRoot, manifest: Path, problems: ProblemLog) -> Iterator[Sample]:
    """Samples of a subjects JSONL (``subject`` + ``images``, optional ``captions``)."""
    name, rng, options = root.relative(manifest), root.rng_for(manifest), root.options
    if not options.wants(SUBJECT_TASK):
        return
    for line, record in records(manifest, name, problems, options.max_record_bytes):
        where = f"{name}:{line}"
        try:
            subject = text_field(record, ("subject",), options.max_record_bytes)
            images, captions = record.get("images"), record.get("captions")
            if not isinstance(images, list) or len(images) < 2:
                raise BadRecordError(f"field 'images' must be a list of at least 2 paths, got {images!r}")
            if len(images) > MAX_SUBJECT_IMAGES:
                raise BadRecordError(f"{len(images)} images; a subject may have up to {MAX_SUBJECT_IMAGES}")
            if captions is not None and (not isinstance(captions, list) or len(captions) != len(images)):
                raise BadRecordError("field 'captions' must be a list as long as 'images'")
        except DatasetError as e:
            problems.report(e, name, line)
            continue
        pictures: list[Media] = []
        for i, written in enumerate(images):
            try:
                caption = (
                    text_field({"c": captions[i]}, ("c",), options.max_record_bytes) if captions else None
                )
                origin = Origin(problems, name, line)
                pictures.append(root.open_media(written, f"images[{i}]", "image", origin, caption))
            except (DatasetError, MediaError) as e:
                problems.report(e, name, line)
        yield from _subject_samples(str(subject), pictures, rng, where, problems)


def subject_folders(root: DatasetRoot) -> list[Path]:
    """The folder layout's subjects: sub-folders of the dataset folder that hold pictures."""
    return sorted(
        folder
        for folder in root.root.iterdir()
        if folder.is_dir() and not folder.name.startswith(".") and any(_pictures(folder))
    )


def read_subject_folders(root: DatasetRoot, problems: ProblemLog) -> Iterator[Sample]:
    """Samples of the folder-per-subject layout, one subject folder at a time (sorted)."""
    if not root.options.wants(SUBJECT_TASK):
        return
    for folder in subject_folders(root):
        name, rng = root.relative(folder), root.rng_for(folder)
        pictures: list[Media] = []
        for path in sorted(_pictures(folder))[:MAX_SUBJECT_IMAGES]:
            written = f"{name}/{path.name}"
            try:
                caption_file = path.with_suffix(".txt")
                caption = None
                if caption_file.is_file():
                    root.resolve(f"{name}/{caption_file.name}", "caption")
                    caption = _caption_text(caption_file, root.options.max_record_bytes)
                origin = Origin(problems, written)
                pictures.append(root.open_media(written, "image", "image", origin, caption))
            except (DatasetError, MediaError) as e:
                problems.report(e, written)
        yield from _subject_samples(folder.name, pictures, rng, name, problems)


def _caption_text(path: Path, max_bytes: int) -> str:
    with path.open("rb") as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BadRecordError(f"{path.name} is longer than {max_bytes} bytes")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise BadRecordError(f"{path.name} is not UTF-8 text ({e})") from None
    if not text:
        raise BadRecordError(f"{path.name} is empty")
    return text


def _pictures(folder: Path) -> Iterator[Path]:
    return (p for p in folder.iterdir() if media_kind(p.name) == "image")


def _subject_samples(
    subject: str, pictures: list[Media], rng: np.random.Generator, where: str, problems: ProblemLog
) -> Iterator[Sample]:
    if len(pictures) < 2:
        problems.report(
            BadRecordError(f"subject {subject!r} has {len(pictures)} readable picture(s); 2 are needed"),
            where,
        )
        return
    for i, target in enumerate(pictures):
        others = [p for j, p in enumerate(pictures) if j != i]
        chosen = sorted(rng.permutation(len(others))[:MAX_REFERENCES].tolist())
        meta = {"format": "subjects", "source": where, "subject": subject}
        yield subject_sample([others[j] for j in chosen], target, rng, meta)
