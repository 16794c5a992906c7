"""Media decoded on first use: what readers yield when `ReadOptions.defer_decoding` is on.

A training run reads far more samples than it decodes: each process of a group reads the whole
stream and takes its share, and a resumed run reads past every sample the group already consumed.
A `DeferredMedia` holds what decoding needs (a file in the dataset folder, or a tar member's bytes)
and decodes when its content is first read, so a sample that is only read past costs no decoding.
Everything else a sample is made of (text, captions, the modality) is there from the start:
`Sample.check()`, `mix` and the in-context builder, text-only trick included, never decode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from codi2_agent.data.samples import Sample
from codi2_agent.media import Media, MediaError, Modality
from codi2_agent.training.datasets._errors import DatasetError, ProblemLog, located

if TYPE_CHECKING:
    import numpy as np

    from codi2_agent.training.datasets._source import DatasetRoot, MediaKind

__all__ = ["DeferredMedia", "Origin", "load_media"]


@dataclass(frozen=True, eq=False)
class Origin:
    """Where a medium was named (a manifest's line, a shard's key): what its problems are filed under."""

    problems: ProblemLog
    file: str
    line: int | None = None


class DeferredMedia(Media):
    """An image or audio a record names, decoded (once) the first time its content is read.

    Decoding is what the reader would have done: size caps, the expected modality, audio
    resampled to the model's rate (`sample_rate` says that rate before decoding). A medium that
    fails is reported to its reader's `ProblemLog` once, under the record's file and line (in
    strict mode that raises), and raises an error of its own class, located, at every use.
    """

    __slots__ = ("_error", "_origin", "_root", "_source", "_where")

    def __init__(
        self,
        root: DatasetRoot,
        source: Path | bytes,
        kind: MediaKind,
        where: str,
        origin: Origin,
        caption: str | None = None,
    ) -> None:
        # Media.__init__ insists on content; this one has none yet.
        self.modality = Modality(kind)
        self._text, self._image, self._audio = None, None, None
        self.sample_rate = root.options.sample_rate if self.modality is Modality.AUDIO else None
        self.caption = caption
        self.content_id = None
        self._root, self._where, self._origin = root, where, origin
        self._source: Path | bytes | None = source  # None once decoding was tried
        self._error: Exception | None = None

    @property
    def decoded(self) -> bool:
        """Whether the content is here (decoding was tried and worked)."""
        return self._source is None and self._error is None

    def load(self) -> DeferredMedia:
        """Decode now if not yet done; returns self. Raises the medium's located error if it fails."""
        if self._error is not None:
            raise self._error
        if self._source is not None:
            try:
                kind: MediaKind = "image" if self.modality is Modality.IMAGE else "audio"
                media = self._root.decode_now(self._source, kind, self._where)
            except (DatasetError, MediaError) as e:
                origin = self._origin
                self._error, self._source = located(e, origin.file, origin.line), None
                origin.problems.report(e, origin.file, origin.line)  # strict: raises it here
                raise self._error from e
            if self.modality is Modality.IMAGE:
                self._image = media.image
            else:
                self._audio, self.sample_rate = media.audio, media.sample_rate
            self._source = None  # the file name or member bytes are not needed again
        return self

    @property
    def image(self) -> Image.Image:
        self.load()
        return super().image

    @property
    def audio(self) -> np.ndarray:
        self.load()
        return super().audio

    def __repr__(self) -> str:
        if self.decoded:
            return super().__repr__()
        state = "failed" if self._error is not None else "not decoded"
        caption = f", caption={self.caption!r}" if self.caption else ""
        return f"DeferredMedia({self.modality.value}, {self._where}, {state}{caption})"


def load_media(sample: Sample) -> None:
    """Decode every deferred medium of `sample` (its conversation's and its target) now.

    A trainer calls this where it can skip a bad sample, rather than meet the error in collation.
    """
    media = sample.input_media() + ([sample.target] if sample.target is not None else [])
    for medium in media:
        if isinstance(medium, DeferredMedia):
            medium.load()
