"""What media an agent may make the tools read: files under configured roots, urls only if enabled.

An LLM agent can be prompt-injected ("describe /etc/shadow", "fetch http://169.254.169.254/…"), so
a tool argument naming a file or url is refused unless the operator allowed it (docs/architecture.md §11):

- paths are resolved (symlinks and ``..`` included) and must lie under one of `roots`; the file is
  then opened once, walking down from the root without following links, and read from that
  descriptor, so a link swapped in between the check and the read is refused, never followed;
- ``http(s)://`` urls are fetched only with ``allow_urls=True``, with a size cap and a timeout;
- ``data:`` urls are accepted even without ``allow_urls``: they carry their bytes inline and
  nothing is fetched, so they pass the same size caps and decoding checks as base64 content blocks;
- ``artifact://…``, ``@m:…`` and words like "the last image" are references, resolved by the graph
  (an ``artifact://`` id of the wrong form is refused here).

Every failure is a `MediaAccessError` (a `ToolException`) that names the problem: a NUL byte, a
name or path too long, a symlink loop, a folder, pipe or device, permission denied, a bad id.

Example:
    >>> access = MediaAccess(roots=["/data/inputs"])
    >>> access.classify("@m:ab12cd34")
    'reference'
    >>> access.classify("https://example.com/cat.png")
    'url'
"""

from __future__ import annotations

import errno
import os
import re
import urllib.request
from pathlib import Path
from typing import Any, Literal

from langchain_core.tools import ToolException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from codi2_agent._media_files import check_path_text, path_error, read_open_file, shorten
from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.media import Media, MediaError, MediaPathError, MediaRef

from ._files import open_beneath

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
        allow_urls: fetch ``http(s)://`` urls (off by default). ``data:`` urls are read either way:
            their bytes are inline and nothing is fetched, so they get the caps base64 blocks get.
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

    def read_file(self, source: str, max_bytes: int) -> bytes:
        """The bytes of the file `source` names, if it lies under a root; `MediaAccessError` otherwise.

        The path is resolved and checked, then opened once from its root without following links
        (see the module doc) and read from that descriptor: what is read is what was checked.
        """
        raw = source[len("file://") :] if source.startswith("file://") else source
        where = repr(shorten(raw))
        if not self.roots:
            raise MediaAccessError(
                f"reading files is disabled: {where} was refused (no media roots are configured; "
                "pass media_roots=[...] to the toolkit to allow a folder)"
            )
        try:
            check_path_text(raw)
            # realpath follows symlinks and '..', so a link inside a root cannot point outside it.
            resolved = Path(os.path.realpath(os.path.expanduser(raw)))
        except MediaPathError as e:
            raise MediaAccessError(str(e)) from None
        except OSError:  # a link re-pointed while it was being resolved
            raise MediaAccessError(f"{where} changed while it was being resolved; refused") from None
        root = next((r for r in self.roots if resolved.is_relative_to(r)), None)
        if root is None:
            allowed = ", ".join(str(r) for r in self.roots)
            raise MediaAccessError(f"{where} is outside the allowed media folders ({allowed}); refused")
        try:
            fd = open_beneath(root, resolved.relative_to(root))
            try:
                return read_open_file(fd, max_bytes, where)
            finally:
                os.close(fd)
        except MediaError as e:
            raise MediaAccessError(str(e)) from None
        except OSError as e:
            raise MediaAccessError(_file_problem(raw, where, e)) from None

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

        Raises:
            MediaAccessError: for anything that cannot be read, with what is wrong (never another
                error: the message goes back to the agent, which may fix its call).
        """
        kind = self.classify(source)
        stripped = source.strip()
        if kind == "reference":
            if stripped.startswith(URI_SCHEME):  # the graph would only say it cannot find it
                try:
                    ArtifactStore.parse_id(stripped)
                except MediaError as e:
                    raise MediaAccessError(str(e)) from None
            return None
        limits = artifacts.limits
        try:
            if kind == "path":
                data = self.read_file(stripped, limits.max_bytes)
                media = Media.open(data, limits=limits, name="the file")
            elif kind == "url":
                media = Media.open(self.fetch(stripped), limits=limits, name="the download")
            else:
                block = {"type": _data_kind(stripped), "url": stripped}
                media = Media.from_content_block(block, limits=limits)
            return artifacts.put(media, caption=caption)
        except MediaAccessError:
            raise
        except (MediaError, OSError, ValueError) as e:  # MediaError is a ValueError; said for clarity
            raise MediaAccessError(f"cannot read {shorten(stripped, 80)!r}: {e}") from None


def _file_problem(raw: str, where: str, error: OSError) -> str:
    """What went wrong opening `raw`, in words (a loop and a link swapped in both fail with ELOOP)."""
    if error.errno == errno.ELOOP:
        try:
            os.stat(raw)
        except OSError as again:
            if again.errno == errno.ELOOP:
                return f"{where} is a symlink loop; refused"
        return f"{where} changed while it was being opened (a symbolic link appeared); refused"
    if error.errno == errno.EXDEV:
        return f"{where} moved outside the allowed media folders while it was being opened; refused"
    return str(path_error(where, error))


def _data_kind(url: str) -> str:
    return "audio" if url[5:].lower().startswith("audio") else "image"
