"""What every reader shares: its options, the dataset folder it may read from, and record streams.

`DatasetRoot` turns a path written in a record into a file inside the dataset folder, or refuses
it (`UnsafePathError`), and decodes media with size caps; audio is resampled to the model's rate.
With `ReadOptions.defer_decoding` it decodes nothing yet and hands out `DeferredMedia` instead.
`iter_jsonl` / `iter_csv` stream records one line at a time, so a reader holds one record (and
its media) at a time, whatever the size of the file.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

import numpy as np

from codi2_agent.media import Media, MediaLimits, Modality
from codi2_agent.training.datasets._deferred import DeferredMedia, Origin
from codi2_agent.training.datasets._errors import BadRecordError, ProblemLog, UnsafePathError

__all__ = [
    "DatasetRoot",
    "Origin",
    "ReadOptions",
    "Record",
    "iter_csv",
    "iter_jsonl",
    "text_field",
]

Record = dict[str, Any]
MediaKind = Literal["image", "audio"]
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg"})


@dataclass(frozen=True)
class ReadOptions:
    """How datasets are read: the model's audio rate, size caps, which tasks, the phrasing seed.

    Attributes:
        sample_rate: every clip is resampled to this rate (the model's `config.sample_rate`).
        max_file_bytes: a media file (or tar member) larger than this is refused unread.
        max_record_bytes: a JSONL line, CSV row or caption longer than this is refused.
        max_pixels: images with more pixels are refused on their header (decompression bombs).
        max_duration_s: clips longer than this are refused on their header.
        tasks: only samples of these tasks are built (None: all); e.g. ``{"caption_image"}``.
        seed: seeds the choice of prompt phrasings, so a dataset reads the same every time.
        defer_decoding: hand out media undecoded (`DeferredMedia`), decoded when first used. A
            sample read but never used (another process's share, or read past on resume) then
            costs no decoding; a bad medium is reported when it is used, not when it is read, and
            a subject's pictures all count as readable until then. Training sets it.
    """

    sample_rate: int = 16000
    max_file_bytes: int = 25 * 1024 * 1024
    max_record_bytes: int = 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_duration_s: float = 60.0
    tasks: frozenset[str] | None = None
    seed: int = 0
    defer_decoding: bool = False

    def wants(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks

    @property
    def limits(self) -> MediaLimits:
        return MediaLimits(
            max_bytes=self.max_file_bytes, max_pixels=self.max_pixels, max_duration_s=self.max_duration_s
        )


def media_kind(name: str) -> MediaKind | None:
    """ "image" or "audio" by a file name's suffix; None for anything else."""
    suffix = PurePosixPath(name.lower()).suffix
    return "image" if suffix in IMAGE_SUFFIXES else "audio" if suffix in AUDIO_SUFFIXES else None


class DatasetRoot:
    """The dataset folder: the only place records may point into; decodes the media they name.

    Paths in records are relative to the folder. Absolute paths and ``..`` are refused as
    written; a path that only leaves the folder through a symbolic link is refused once resolved
    (links that stay inside are fine). Datasets are read, not served: the resolved file is then
    read by path, with no defence against a link swapped in between by someone writing the folder.
    """

    def __init__(self, root: str | Path, options: ReadOptions) -> None:
        self.root = Path(root).resolve(strict=True)
        self._given = Path(root).absolute()  # the folder as named, links and all: names problems
        self.options = options

    def resolve(self, written: object, field: str = "path") -> Path:
        """The file `written` (a record's relative path) names inside the folder."""
        if not isinstance(written, str) or not written.strip():
            raise BadRecordError(f"field {field!r} must be a non-empty relative path, got {written!r}")
        if "\x00" in written:
            raise UnsafePathError(f"field {field!r}: {written!r} contains a NUL byte")
        posix, windows = PurePosixPath(written), PureWindowsPath(written)
        if posix.is_absolute() or windows.is_absolute() or windows.drive or written.startswith("\\"):
            raise UnsafePathError(f"field {field!r}: {written!r} is absolute; paths must be relative")
        if ".." in posix.parts or ".." in windows.parts:
            raise UnsafePathError(f"field {field!r}: {written!r} climbs out of the dataset folder (..)")
        path = (self.root / posix).resolve()
        if not path.is_relative_to(self.root):
            raise UnsafePathError(f"field {field!r}: {written!r} leads outside the dataset folder ({path})")
        return path

    def open_media(
        self, written: object, field: str, kind: MediaKind, origin: Origin, caption: str | None = None
    ) -> Media:
        """The `kind` file a record names (size-capped; audio at the model's rate); `origin` is
        where a deferred medium's problem is filed when it is decoded."""
        path = self.resolve(written, field)
        return self._media(path, kind, f"field {field!r}: {written}", origin, caption)

    def decode(
        self, data: bytes, name: str, kind: MediaKind, origin: Origin, caption: str | None = None
    ) -> Media:
        """Media bytes (a tar member) the same way."""
        return self._media(data, kind, name, origin, caption)

    def _media(
        self, source: Path | bytes, kind: MediaKind, where: str, origin: Origin, caption: str | None
    ) -> Media:
        if self.options.defer_decoding:
            return DeferredMedia(self, source, kind, where, origin, caption)
        media = self.decode_now(source, kind, where)
        media.caption = caption
        return media

    def decode_now(self, source: Path | bytes, kind: MediaKind, where: str) -> Media:
        """Decode a file of the folder (already resolved) or a tar member's bytes as `kind`."""
        name = where if isinstance(source, bytes) else None
        return self.checked(Media.open(source, limits=self.options.limits, name=name), kind, where)

    def checked(self, media: Media, kind: MediaKind, where: str) -> Media:
        if media.modality is not Modality(kind):
            raise BadRecordError(f"{where} is {media.modality.value}, but an {kind} is expected here")
        if kind == "audio":
            media = media.resampled(self.options.sample_rate)
        return media

    def rng_for(self, path: Path) -> np.random.Generator:
        """The phrasing rng of one file: the options' seed and the file's name, nothing else, so
        each file reads the same whichever files come before it."""
        return np.random.default_rng([self.options.seed, zlib.crc32(self.relative(path).encode())])

    def relative(self, path: Path) -> str:
        """`path` as samples and problems name it: relative to the folder when inside it."""
        for base, candidate in ((self._given, path.absolute()), (self.root, path.resolve())):
            if candidate.is_relative_to(base):
                return str(candidate.relative_to(base))
        return str(path)


def text_field(record: Record, names: Sequence[str], max_chars: int, *, required: bool = True) -> str | None:
    """The first of `names` present in `record`, as non-empty text (a `BadRecordError` if not)."""
    for name in names:
        if name in record and record[name] is not None:
            value = record[name]
            if not isinstance(value, str) or not value.strip():
                raise BadRecordError(f"field {name!r} must be non-empty text, got {value!r}")
            if len(value) > max_chars:
                raise BadRecordError(f"field {name!r} is {len(value)} characters; the limit is {max_chars}")
            return value.strip()
    if required:
        raise BadRecordError(f"no {' / '.join(repr(n) for n in names)} field")
    return None


def iter_jsonl(path: Path, name: str, problems: ProblemLog, max_bytes: int) -> Iterator[tuple[int, Record]]:
    """(line number, object) for each line of a JSONL file, read one line at a time.

    Blank lines are skipped; a line that is too long, not UTF-8, not JSON or not an object is a
    `BadRecordError` problem (the over-long line is skipped without being held in memory).
    """
    with path.open("rb") as stream:
        number = 0
        while True:
            raw = stream.readline(max_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # the rest of the over-long line, thrown away chunk by chunk
                problems.report(BadRecordError(f"line longer than {max_bytes} bytes"), name, number)
                continue
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested or numbers too deep
                problems.report(BadRecordError(f"not a JSON line ({type(e).__name__}: {e})"), name, number)
                continue
            if not isinstance(record, dict):
                problems.report(
                    BadRecordError(f"a JSON {type(record).__name__}, not an object"), name, number
                )
                continue
            yield number, record


def iter_csv(path: Path, name: str, problems: ProblemLog, max_bytes: int) -> Iterator[tuple[int, Record]]:
    """(line number, row) for each row of a CSV file with a header, read one row at a time.

    A row with more cells than the header, or longer than `max_bytes`, is a `BadRecordError`
    problem; text that is not UTF-8 ends the file with one (a CSV cannot be re-synchronised).
    """
    with path.open("rb") as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        reader = csv.DictReader(text, restkey="\x00extra")
        try:
            for row in reader:
                line = reader.line_num
                if "\x00extra" in row:
                    problems.report(BadRecordError("more cells than the header has columns"), name, line)
                elif sum(len(v or "") for v in row.values()) > max_bytes:
                    problems.report(BadRecordError(f"row longer than {max_bytes} bytes"), name, line)
                else:
                    yield line, {k: v for k, v in row.items() if v not in (None, "")}
        except UnicodeDecodeError as e:
            problems.report(
                BadRecordError(f"not UTF-8 text ({e}); the rest is skipped"), name, reader.line_num
            )
        except csv.Error as e:
            problems.report(BadRecordError(f"not CSV ({e}); the rest is skipped"), name, reader.line_num)
