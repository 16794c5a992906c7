"""Content-addressed storage for media: the only place bytes live.

Files sit under `root/<id[:2]>/<id><ext>`, where `id` is the sha256 of the canonical bytes
(`Media.to_bytes`), so the same content is stored once and a re-run turn writes nothing new.
Writes go to a temporary file in the same folder and are renamed into place, so a crash never
leaves a half-written artifact under a valid id.

Example:
    >>> import tempfile
    >>> from codi2_agent.media import Media
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> ref = store.put(Media.from_text("hello"))
    >>> store.get(ref).text
    'hello'
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from codi2_agent.media import MIME_TO_EXT, Media, MediaError, MediaLimits, MediaRef, Modality

__all__ = ["ArtifactNotFoundError", "ArtifactStore", "InvalidArtifactIdError"]

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
URI_SCHEME = "artifact://"
_EXT_TO_MIME = {ext: mime for mime, ext in MIME_TO_EXT.items()}
_MIME_TO_MODALITY = {"image/png": Modality.IMAGE, "audio/wav": Modality.AUDIO, "text/plain": Modality.TEXT}


class InvalidArtifactIdError(MediaError):
    """An id or uri that is not a sha256 artifact id (or would leave the store's root)."""


class ArtifactNotFoundError(MediaError, KeyError):
    """A well-formed id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ArtifactStore:
    """Media files under `root`, addressed by the sha256 of their canonical bytes."""

    def __init__(self, root: str | Path, *, limits: MediaLimits | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or MediaLimits()

    # --- writing --------------------------------------------------------------------------------
    def put(self, media: Media, *, caption: str | None = None, turn: int | None = None) -> MediaRef:
        """Store `media` (idempotent) and return its reference."""
        data, mime = media.to_bytes()
        artifact_id = hashlib.sha256(data).hexdigest()
        path = self._path(artifact_id, MIME_TO_EXT[mime])
        if not path.exists():
            self._atomic_write(path, data)
        return MediaRef(
            id=artifact_id,
            uri=URI_SCHEME + artifact_id,
            modality=media.modality,
            mime=mime,
            caption=caption if caption is not None else media.caption,
            turn=turn,
        )

    def put_bytes(self, data: bytes, *, caption: str | None = None, turn: int | None = None) -> MediaRef:
        """Validate and store encoded image/audio bytes (re-encoded canonically)."""
        return self.put(Media.open(data, limits=self.limits), caption=caption, turn=turn)

    def _atomic_write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # --- reading --------------------------------------------------------------------------------
    def get(self, ref: MediaRef | str) -> Media:
        """Decode a stored artifact by `MediaRef`, id or `artifact://` uri."""
        artifact_id = self.parse_id(ref)
        path = self.path(artifact_id)
        caption = ref.caption if isinstance(ref, MediaRef) else None
        if path.suffix == ".txt":
            media = Media.from_text(path.read_text("utf-8"))
        else:
            media = Media.open(path, limits=self.limits)
        media.caption = caption
        return media

    def open(self, ref: MediaRef | str) -> BinaryIO:
        """The stored bytes as a binary file object."""
        return self.path(self.parse_id(ref)).open("rb")

    def ref(self, ref: MediaRef | str) -> MediaRef:
        """A `MediaRef` rebuilt from an id or uri of a stored artifact."""
        if isinstance(ref, MediaRef):
            self.path(ref.id)
            return ref
        artifact_id = self.parse_id(ref)
        path = self.path(artifact_id)
        mime = _EXT_TO_MIME[path.suffix]
        return MediaRef(
            id=artifact_id, uri=URI_SCHEME + artifact_id, modality=_MIME_TO_MODALITY[mime], mime=mime
        )

    def path(self, ref: MediaRef | str) -> Path:
        """The file holding an artifact; raises `ArtifactNotFoundError` if it is not stored."""
        artifact_id = self.parse_id(ref)
        for ext in _EXT_TO_MIME:
            candidate = self._path(artifact_id, ext)
            if candidate.is_file():
                return candidate
        raise ArtifactNotFoundError(f"no artifact {artifact_id} in {self.root}")

    def __contains__(self, ref: object) -> bool:
        try:
            self.path(ref)  # type: ignore[arg-type]
        except MediaError:
            return False
        return True

    def ids(self) -> Iterator[str]:
        for path in sorted(self.root.glob("??/*")):
            if _ID_RE.match(path.stem) and not path.name.startswith(".tmp-"):
                yield path.stem

    def delete(self, ref: MediaRef | str) -> None:
        self.path(ref).unlink()

    # --- ids and paths --------------------------------------------------------------------------
    @staticmethod
    def parse_id(ref: MediaRef | str) -> str:
        """The artifact id in a `MediaRef`, a bare id or an `artifact://` uri; anything else is refused."""
        raw = ref.id if isinstance(ref, MediaRef) else str(ref)
        if raw.startswith(URI_SCHEME):
            raw = raw[len(URI_SCHEME) :]
        if not _ID_RE.match(raw):
            raise InvalidArtifactIdError(f"{str(ref)[:80]!r} is not an artifact id (64 lowercase hex digits)")
        return raw

    def _path(self, artifact_id: str, ext: str) -> Path:
        path = (self.root / artifact_id[:2] / f"{artifact_id}{ext}").resolve()
        # The id regex already rules out separators; this guards against a symlinked shard folder.
        if not path.is_relative_to(self.root):
            raise InvalidArtifactIdError(f"artifact {artifact_id} would resolve outside {self.root}")
        return path
