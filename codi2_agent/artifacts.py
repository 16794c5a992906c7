"""Content-addressed storage for media: the only place bytes live.

Files sit under `root/<id[:2]>/<id><ext>`, where `id` is the sha256 of the canonical bytes
(`Media.to_bytes`), so the same content is stored once and a re-run turn writes nothing new.
Writes go to a temporary file in the same folder and are renamed into place, so a crash never
leaves a half-written artifact under a valid id. Reads check the bytes against the id they are
named by, so a file swapped or damaged on disk is an error, never a silently different medium.

Tenancy: `for_tenant(name)` gives a view of the same store in which a tenant sees only the media
it stored (or was explicitly given with `share`): a marker per (tenant, artifact) under
``root/_tenants/``. Content addressing still stores a medium once, whoever sends it. Reading an id
the tenant does not hold fails exactly like reading an unknown id, so ids are not an oracle.

A small LRU of decoded media sits in front of the files: one turn reads each medium several times
(memory, prompt, caption), and a decode is far dearer than a dictionary lookup. Cached media carry
their `content_id`, which lets the model reuse their encoder features too.

Example:
    >>> import tempfile
    >>> from codi2_agent.media import Media
    >>> store = ArtifactStore(tempfile.mkdtemp())
    >>> ref = store.put(Media.from_text("hello"))
    >>> store.get(ref).text
    'hello'
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from codi2_agent.media import MIME_TO_EXT, Media, MediaError, MediaLimits, MediaRef, Modality

__all__ = [
    "DEFAULT_TENANT",
    "ArtifactNotFoundError",
    "ArtifactStore",
    "CorruptArtifactError",
    "InvalidArtifactIdError",
    "check_name",
]

_ID_RE = re.compile(r"^[0-9a-f]{64}$")
URI_SCHEME = "artifact://"
_EXT_TO_MIME = {ext: mime for mime, ext in MIME_TO_EXT.items()}
_MIME_TO_MODALITY = {"image/png": Modality.IMAGE, "audio/wav": Modality.AUDIO, "text/plain": Modality.TEXT}
TENANTS_DIR = "_tenants"
LAYOUT_MARKER = ".tenancy-v1"
DEFAULT_TENANT = "default"  # the tenant of stores and threads made before tenancy existed
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_name(value: object, what: str = "tenant") -> str:
    """A tenant or thread name: a non-empty string of at most 256 characters without control characters.

    Raises:
        ValueError: naming what is wrong.
    """
    if not isinstance(value, str) or not value:
        raise ValueError(f"a {what} name must be a non-empty string, got {value!r}")
    if len(value) > 256:
        raise ValueError(f"{what} names are at most 256 characters, got {len(value)}")
    if _CONTROL.search(value):
        raise ValueError(f"{what} names may not contain control characters, got {value[:40]!r}")
    return value


def _tenant_folder(tenant: str) -> str:
    """A file-system-safe, collision-free folder name for a tenant (names are untrusted text)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", tenant)[:32].lstrip(".") or "_"
    return f"{safe}-{hashlib.sha256(tenant.encode()).hexdigest()[:16]}"


class InvalidArtifactIdError(MediaError):
    """An id or uri that is not a sha256 artifact id (or would leave the store's root)."""


class ArtifactNotFoundError(MediaError, KeyError):
    """A well-formed id that the store does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CorruptArtifactError(MediaError):
    """A stored file whose bytes no longer hash to the id it is stored under (damaged or swapped)."""


class ArtifactStore:
    """Media files under `root`, addressed by the sha256 of their canonical bytes.

    Args:
        root: the folder (created if missing).
        limits: size caps applied when decoding stored or incoming bytes.
        cache_size: decoded media kept in memory (0 turns the cache off). Media returned by `get`
            share their pixels / samples with the cache: treat them as read-only.
    """

    def __init__(self, root: str | Path, *, limits: MediaLimits | None = None, cache_size: int = 64) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.limits = limits or MediaLimits()
        self.cache_size = cache_size
        self.tenant: str | None = None  # None: the whole store (operators, backends); see for_tenant
        self._grants: Path | None = None
        self._cache: OrderedDict[str, Media] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._stats = {"reads": 0}  # shared by every tenant view of this store
        self._migrate()

    @property
    def reads(self) -> int:
        """Files read and decoded (cache misses), for tests and benchmarks."""
        return self._stats["reads"]

    # --- tenancy --------------------------------------------------------------------------------
    def for_tenant(self, tenant: str) -> ArtifactStore:
        """This store as `tenant` sees it: only media it stored or was given (see the module doc)."""
        view = copy.copy(self)  # shares the root, the decoded-media cache and its lock
        view.tenant = check_name(tenant)
        view._grants = self.root / TENANTS_DIR / _tenant_folder(tenant)
        return view

    def grant(self, ref: MediaRef | str) -> None:
        """Let this view's tenant read a stored artifact (a no-op on the whole store)."""
        artifact_id = self.parse_id(ref)
        self._whole().path(artifact_id)  # only stored artifacts can be granted
        marker = self._grant_path(artifact_id)
        if marker is not None and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()

    def share(self, ref: MediaRef | str, tenant: str) -> MediaRef:
        """Give `tenant` one of this view's media (sharing is always explicit)."""
        found = self.ref(ref)  # refuses what this tenant does not hold
        self.for_tenant(tenant).grant(found)
        return found

    def _whole(self) -> ArtifactStore:
        if self.tenant is None:
            return self
        whole = copy.copy(self)
        whole.tenant, whole._grants = None, None
        return whole

    def _grant_path(self, artifact_id: str) -> Path | None:
        return None if self._grants is None else self._grants / artifact_id[:2] / artifact_id

    def _held(self, artifact_id: str) -> bool:
        marker = self._grant_path(artifact_id)
        return marker is None or marker.is_file()

    def _migrate(self) -> None:
        """A store made before tenancy: its media belong to the default tenant (as its threads do)."""
        layout = self.root / TENANTS_DIR / LAYOUT_MARKER
        if layout.exists():
            return
        existing = list(self.ids())
        if existing:
            default = self.for_tenant(DEFAULT_TENANT)
            for artifact_id in existing:
                default.grant(artifact_id)
        layout.parent.mkdir(parents=True, exist_ok=True)
        layout.touch()

    # --- writing --------------------------------------------------------------------------------
    def put(self, media: Media, *, caption: str | None = None, turn: int | None = None) -> MediaRef:
        """Store `media` (idempotent) and return its reference."""
        data, mime = media.to_bytes()
        artifact_id = hashlib.sha256(data).hexdigest()
        path = self._path(artifact_id, MIME_TO_EXT[mime])
        if not path.exists():
            self._atomic_write(path, data)
        media.content_id = artifact_id
        self._remember(artifact_id, media)
        self.grant(artifact_id)
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
        caption = ref.caption if isinstance(ref, MediaRef) else None
        if not self._held(artifact_id):
            raise self._not_found(artifact_id)
        with self._cache_lock:
            cached = self._cache.get(artifact_id)
            if cached is not None:
                self._cache.move_to_end(artifact_id)
        if cached is not None and artifact_id in self:  # a deleted artifact is gone, cached or not
            return _shallow_copy(cached, caption)
        path = self.path(artifact_id)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != artifact_id:
            raise CorruptArtifactError(
                f"artifact {artifact_id[:12]} at {path} does not match its id (changed or damaged)"
            )
        media = (
            Media.from_text(data.decode("utf-8"))
            if path.suffix == ".txt"
            else Media.open(data, limits=self.limits)
        )
        media.content_id = artifact_id
        self._stats["reads"] += 1
        self._remember(artifact_id, media)
        return _shallow_copy(media, caption)

    def _remember(self, artifact_id: str, media: Media) -> None:
        if self.cache_size <= 0:
            return
        with self._cache_lock:
            self._cache[artifact_id] = _shallow_copy(media, None)
            self._cache.move_to_end(artifact_id)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

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
        """The file holding an artifact; raises `ArtifactNotFoundError` if it is not stored (or, in a
        tenant's view, not the tenant's)."""
        artifact_id = self.parse_id(ref)
        if self._held(artifact_id):
            for ext in _EXT_TO_MIME:
                candidate = self._path(artifact_id, ext)
                if candidate.is_file():
                    return candidate
        raise self._not_found(artifact_id)

    def _not_found(self, artifact_id: str) -> ArtifactNotFoundError:
        # One message for "never stored" and "another tenant's": an id must not reveal which.
        return ArtifactNotFoundError(f"no artifact {artifact_id} in {self.root}")

    def __contains__(self, ref: object) -> bool:
        try:
            self.path(ref)  # type: ignore[arg-type]
        except MediaError:
            return False
        return True

    def ids(self) -> Iterator[str]:
        for path in sorted(self.root.glob("??/*")):
            if _ID_RE.match(path.stem) and not path.name.startswith(".tmp-") and self._held(path.stem):
                yield path.stem

    def delete(self, ref: MediaRef | str) -> None:
        """Remove an artifact. In a tenant's view: the tenant's hold on it, and the file once no
        tenant holds it."""
        artifact_id = self.parse_id(ref)
        path = self.path(artifact_id)
        marker = self._grant_path(artifact_id)
        if marker is not None:
            marker.unlink(missing_ok=True)
            holders = (self.root / TENANTS_DIR).glob(f"*/{artifact_id[:2]}/{artifact_id}")
            if any(True for _ in holders):
                return
        with self._cache_lock:
            self._cache.pop(artifact_id, None)
        path.unlink()

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


def _shallow_copy(media: Media, caption: str | None) -> Media:
    """Another `Media` over the same decoded content, with its own caption."""
    copy = object.__new__(Media)
    for slot in Media.__slots__:
        object.__setattr__(copy, slot, getattr(media, slot))
    copy.caption = caption
    return copy
