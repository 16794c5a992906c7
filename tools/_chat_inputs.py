"""What `ChatCoDi2` does to messages before the model sees them: local files named in media blocks
read under the allowed roots, and media replaced by stand-ins when only tokens are counted.

Example:
    >>> from langchain_core.messages import HumanMessage
    >>> msg = HumanMessage([{"type": "image", "url": "/etc/passwd"}])
    >>> local_file_sources(msg, MediaAccess())
    ['/etc/passwd']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage

from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.messages import MEDIA_BLOCK_TYPES, UnsupportedSourceError, ref_block

from ._access import MediaAccess, MediaAccessError

__all__ = ["MediaFileRefusedError", "counting_stand_ins", "local_file_sources", "read_local_files"]

# Counting needs each medium's modality only (the processor puts N placeholder tokens per medium),
# so a counted message's media all point at this id, which is never looked up.
_STAND_IN_ID = "0" * 64


class MediaFileRefusedError(UnsupportedSourceError):
    """A media block names a local file that may not be read: reading files is off (no
    ``media_roots``), the path lies outside the allowed folders, or it is not a readable medium."""


def _url(block: Any) -> str | None:
    url = block.get("url") if block.get("type") in MEDIA_BLOCK_TYPES else None
    return url if isinstance(url, str) else None


def local_file_sources(message: BaseMessage, access: MediaAccess) -> list[str]:
    """The local paths (plain or ``file://``) that `message`'s media blocks name."""
    return [url for b in message.content_blocks if (url := _url(b)) and access.classify(url) == "path"]


def read_local_files(
    messages: Sequence[BaseMessage], access: MediaAccess, artifacts: ArtifactStore
) -> list[BaseMessage]:
    """`messages`, with media blocks that name local files rewritten to the stored files' references.

    Raises:
        MediaFileRefusedError: a file outside `access.roots` (or any file, when there are none), a
            link out of them, or a file that is not a readable image or sound; the message says which.
    """
    out: list[BaseMessage] = []
    for message in messages:
        if not local_file_sources(message, access):
            out.append(message)
            continue
        content: list[Any] = []
        for block in message.content_blocks:
            url = _url(block)
            if url is None or access.classify(url) != "path":
                content.append(block)
                continue
            if not access.roots:
                raise MediaFileRefusedError(
                    f"{block['type']} block names the local file {url[:80]!r}, but reading files is off: "
                    "pass media_roots=[folder, ...] to ChatCoDi2 to allow the files under those folders"
                )
            try:
                ref = access.load(url, artifacts)
            except MediaAccessError as e:
                raise MediaFileRefusedError(str(e)) from None
            if ref is None or ref.modality.value != block["type"]:
                found = "nothing" if ref is None else f"an {ref.modality.value} file"
                raise MediaFileRefusedError(f"{block['type']} block names {url[:80]!r}, which is {found}")
            content.append(ref_block(ref))
        out.append(message.model_copy(update={"content": content}))
    return out


def counting_stand_ins(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    """`messages` with every image and audio block replaced by a reference of the same modality:
    what token counting reads, without decoding, storing or fetching any medium."""
    out: list[BaseMessage] = []
    for message in messages:
        blocks = message.content_blocks
        if not any(b.get("type") in MEDIA_BLOCK_TYPES for b in blocks):
            out.append(message)
            continue
        content = [
            {"type": b["type"], "url": URI_SCHEME + _STAND_IN_ID} if b.get("type") in MEDIA_BLOCK_TYPES else b
            for b in blocks
        ]
        out.append(message.model_copy(update={"content": content}))
    return out
