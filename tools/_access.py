"""What media an agent may make the tools read: files under configured roots, urls only if enabled.

An LLM agent can be prompt-injected ("describe /etc/shadow", "fetch http://169.254.169.254/…"), so
a tool argument naming a file or url is refused unless the operator allowed it (docs/architecture.md §11):

- paths are resolved (symlinks and ``..`` included) and must lie under one of `roots`;
- ``http(s)://`` urls are fetched only with ``allow_urls=True``, with a size cap and a timeout;
- ``artifact://…``, ``@m:…`` and words like "the last image" are references, resolved by the graph.

Example:
    >>> access = MediaAccess(roots=["/data/inputs"])
    >>> access.classify("@m:ab12cd34")
    'reference'
    >>> access.classify("https://example.com/cat.png")
    'url'
"""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path
from typing import Any, Literal

from langchain_core.tools import ToolException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.media import Media, MediaError, MediaRef

__all__ = ["MediaAccess", "MediaAccessError"]

SourceKind = Literal["reference", "url", "data", "path"]
_URL_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
_MEDIA_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".wav", ".flac", ".ogg"}
)


class MediaAccessError(ToolException):
    """A path outside the allowed roots, a refused url, or media that cannot be read."""


class MediaAccess(BaseModel):
    """The media-access policy of a toolkit.

    Args:
        roots: folders whose files (and sub-folders') the tools may read. Empty: no files at all.
        allow_urls: fetch ``http(s)://`` urls (off by default).
        url_timeout_s: per-fetch timeout.
        max_url_bytes: larger downloads are refused.
    """

    model_config = ConfigDict(frozen=True)

    roots: tuple[Path, ...] = ()
    allow_urls: bool = False
    url_timeout_s: float = Field(default=10.0, gt=0)
    max_url_bytes: int = Field(default=25 * 1024 * 1024, gt=0)

    @field_validator("roots", mode="before")
    @classmethod
    def _resolve_roots(cls, value: Any) -> tuple[Path, ...]:
        items = [value] if isinstance(value, (str, Path)) else list(value)
        return tuple(Path(str(v)).expanduser().resolve() for v in items)

    def classify(self, source: str) -> SourceKind:
        """How `source` would be read."""
        s = source.strip()
        if s.startswith(URI_SCHEME) or s.startswith("@m:"):
            return "reference"
        if s.startswith("data:"):
            return "data"
        if s.startswith("file://"):
            return "path"
        if _URL_RE.match(s):
            return "url"
        if "/" in s or "\\" in s or Path(s).suffix.lower() in _MEDIA_SUFFIXES or s.startswith("~"):
            return "path"
        return "reference"  # "the last image", "it", "the star from turn 3"

    def check_path(self, source: str) -> Path:
        """The resolved path, if it lies under a root; `MediaAccessError` otherwise."""
        raw = source[len("file://") :] if source.startswith("file://") else source
        if not self.roots:
            raise MediaAccessError(
                f"reading files is disabled: {raw!r} was refused (no media roots are configured; "
                "pass media_roots=[...] to the toolkit to allow a folder)"
            )
        path = Path(raw).expanduser()
        # resolve() follows symlinks and '..', so a link inside a root cannot point outside it.
        resolved = path.resolve()
        if not any(resolved.is_relative_to(root) for root in self.roots):
            allowed = ", ".join(str(r) for r in self.roots)
            raise MediaAccessError(f"{raw!r} is outside the allowed media folders ({allowed}); refused")
        if not resolved.is_file():
            raise MediaAccessError(f"no media file at {raw!r}")
        return resolved

    def fetch(self, url: str) -> bytes:
        """The bytes at `url`, if urls are allowed."""
        if not self.allow_urls:
            raise MediaAccessError(
                f"fetching urls is disabled: {url[:80]!r} was refused (enable it with allow_urls=True)"
            )
        if not url.lower().startswith(("http://", "https://")):
            raise MediaAccessError(f"only http(s) urls can be fetched, not {url[:80]!r}")
        try:
            with urllib.request.urlopen(url, timeout=self.url_timeout_s) as response:
                data = response.read(self.max_url_bytes + 1)
        except OSError as e:
            raise MediaAccessError(f"could not fetch {url[:80]!r}: {e}") from None
        if len(data) > self.max_url_bytes:
            raise MediaAccessError(f"{url[:80]!r} is larger than {self.max_url_bytes} bytes; refused")
        return data

    def load(self, source: str, artifacts: ArtifactStore, *, caption: str | None = None) -> MediaRef | None:
        """Store the medium `source` names (file, url, data url) and return its ref.

        Returns None for references (``@m:…``, ``artifact://…``, words), which the graph resolves.
        """
        kind = self.classify(source)
        try:
            if kind == "reference":
                return None
            if kind == "path":
                return artifacts.put(Media.open(self.check_path(source.strip())), caption=caption)
            if kind == "url":
                return artifacts.put_bytes(self.fetch(source.strip()), caption=caption)
            media = Media.from_content_block({"type": _data_kind(source), "url": source.strip()})
            return artifacts.put(media, caption=caption)
        except MediaError as e:
            raise MediaAccessError(f"cannot read {source[:80]!r}: {e}") from None


def _data_kind(url: str) -> str:
    return "audio" if url[5:].lower().startswith("audio") else "image"
