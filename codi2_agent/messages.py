"""Messages: LangChain v1 content blocks <-> `MediaRef`s, user messages, and prompt turns.

Every surface (the session graph, `Session`, the tools, `ChatCoDi2`, pipelines) builds and reads
messages through this module, so a medium is turned into a block, and a message into prompt turns,
in exactly one way.

Inbound, a media block may carry its bytes (``base64`` or a ``data:`` url), or point at a stored
artifact (an ``artifact://<sha256>`` url, or ``file_id`` = the sha256). Bytes go into the
`ArtifactStore` once; from then on only the reference travels. Other urls are refused here: fetching
is a tool's decision, under its own policy (`codi2_agent.tools.MediaAccess`).

Outbound, media are ``{"type": "image" | "audio", "url": "artifact://<id>", "mime_type": ...}``
with the caption and turn in ``extras``; `inline_block` gives the base64 form for clients that
cannot read the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.backends import PromptTurn
from codi2_agent.media import Media, MediaError, MediaRef, Modality

__all__ = [
    "MEDIA_BLOCK_TYPES",
    "UnsupportedSourceError",
    "block_ref",
    "ingest_message",
    "inline_block",
    "is_inline",
    "message_parts",
    "message_text",
    "prompt_turns",
    "ref_block",
    "refs_of",
    "user_message",
]

MEDIA_BLOCK_TYPES = frozenset({"image", "audio"})


class UnsupportedSourceError(MediaError):
    """A media block whose source this layer does not read (a remote url, a foreign file id, …)."""


def is_inline(block: Mapping[str, Any]) -> bool:
    """True for a media block that carries its bytes."""
    url = block.get("url")
    return bool(block.get("base64") or block.get("data")) or (
        isinstance(url, str) and url.startswith("data:")
    )


def block_ref(block: Mapping[str, Any], artifacts: ArtifactStore, *, turn: int | None = None) -> MediaRef:
    """The `MediaRef` of a media content block, storing inline bytes first.

    Raises:
        MediaError: bad or oversized data, an unknown artifact, or a source that is not read here.
    """
    kind = block.get("type")
    if kind not in MEDIA_BLOCK_TYPES:
        raise UnsupportedSourceError(f"content block type {kind!r} is not image or audio")
    extras = block.get("extras") or {}
    caption = extras.get("caption") if isinstance(extras, Mapping) else None
    if is_inline(block):
        media = Media.from_content_block(dict(block), limits=artifacts.limits)
        return artifacts.put(media, caption=caption, turn=turn)
    url, file_id = block.get("url"), block.get("file_id")
    if isinstance(url, str) and url.startswith(URI_SCHEME):
        source = url
    elif isinstance(file_id, str) and file_id:
        source = file_id
    elif isinstance(url, str):
        raise UnsupportedSourceError(
            f"{kind} block points at {url[:60]!r}: remote media are not fetched here; send the bytes "
            "(base64), an artifact:// url, or use a tool configured to fetch urls"
        )
    else:
        raise UnsupportedSourceError(f"{kind} block has no base64 data, artifact url or file id")
    ref = artifacts.ref(source)  # refuses malformed ids, raises ArtifactNotFoundError for unknown ones
    if ref.modality.value != kind:
        raise MediaError(f"block says {kind!r} but artifact {ref.short_id} is {ref.modality.value}")
    return ref.model_copy(update={"caption": caption if caption is not None else ref.caption, "turn": turn})


def ingest_message(message: BaseMessage, artifacts: ArtifactStore) -> BaseMessage:
    """A copy of `message` whose inline media are stored in `artifacts` and referenced by url.

    Send this to a session graph instead of a message with base64 data: the graph would store the
    bytes too, but LangGraph keeps a run's raw input in its checkpoint write log.
    """
    content: list[Any] = []
    for block in message.content_blocks:
        if block.get("type") in MEDIA_BLOCK_TYPES and is_inline(block):
            content.append(ref_block(block_ref(block, artifacts)))
        else:
            content.append(block)
    return message.model_copy(update={"content": content})


def ref_block(ref: MediaRef) -> dict[str, Any]:
    """The v1 content block that points at a stored medium."""
    extras: dict[str, Any] = {"artifact_id": ref.id}
    if ref.caption:
        extras["caption"] = ref.caption
    if ref.turn is not None:
        extras["turn"] = ref.turn
    return {"type": ref.modality.value, "url": ref.uri, "mime_type": ref.mime, "extras": extras}


def inline_block(ref: MediaRef, artifacts: ArtifactStore) -> dict[str, Any]:
    """The v1 content block with the medium's bytes (base64), for clients without the store."""
    block = artifacts.get(ref).to_content_block()
    if ref.caption:
        block["extras"] = {"caption": ref.caption, "artifact_id": ref.id}
    return block


def message_parts(message: BaseMessage, artifacts: ArtifactStore | None = None) -> list[str | MediaRef]:
    """Text and media of a message whose media are artifact references (after ingest), in order."""
    return _parts(message, lambda block: _stored_ref(block, artifacts), strict=False)


def _parts(
    message: BaseMessage, media: Callable[[Mapping[str, Any]], MediaRef | None], *, strict: bool
) -> list[str | MediaRef]:
    """A message's text and media parts; `strict` refuses block types CoDi-2 does not read."""
    parts: list[str | MediaRef] = []
    for block in message.content_blocks:
        kind = block.get("type")
        if kind == "text":
            text = str(block.get("text", "")).strip()
            if text:
                parts.append(text)
        elif kind in MEDIA_BLOCK_TYPES:
            ref = media(block)
            if ref is not None:
                parts.append(ref)
        elif strict and kind not in _SKIPPED_BLOCKS:
            raise ValueError(f"CoDi-2 reads text, image and audio blocks, not {kind!r}")
    return parts


def _stored_ref(block: Mapping[str, Any], artifacts: ArtifactStore | None) -> MediaRef | None:
    url, file_id = block.get("url"), block.get("file_id")
    source = url if isinstance(url, str) and url.startswith(URI_SCHEME) else file_id
    if not isinstance(source, str):
        return None
    extras = block.get("extras") or {}
    artifact_id = ArtifactStore.parse_id(source)
    modality = Modality.parse(str(block.get("type")))
    mime = str(block.get("mime_type") or ("image/png" if modality is Modality.IMAGE else "audio/wav"))
    ref = MediaRef(
        id=artifact_id,
        uri=URI_SCHEME + artifact_id,
        modality=modality,
        mime=mime,
        caption=extras.get("caption"),
        turn=extras.get("turn"),
    )
    return ref if artifacts is None or ref in artifacts else None


def message_text(message: BaseMessage) -> str:
    """The text blocks of a message, joined with spaces."""
    return " ".join(
        str(b.get("text", "")).strip() for b in message.content_blocks if b.get("type") == "text"
    ).strip()


def refs_of(messages: Iterable[BaseMessage]) -> list[MediaRef]:
    """Every artifact reference in `messages`, in order."""
    return [p for m in messages for p in message_parts(m) if isinstance(p, MediaRef)]


def user_message(text: str = "", refs: Sequence[MediaRef] = (), *, id: str | None = None) -> HumanMessage:
    """A user message: its words, then its media as artifact references.

    Raises:
        ValueError: neither text nor media.
    """
    content: list[Any] = [{"type": "text", "text": text}] if text else []
    content += [ref_block(r) for r in refs]
    if not content:
        raise ValueError("a message needs text or media")
    return HumanMessage(content=content, id=id)


_SKIPPED_BLOCKS = frozenset({"reasoning", "tool_call", "tool_call_chunk", "invalid_tool_call"})


def prompt_turns(messages: Iterable[BaseMessage], artifacts: ArtifactStore | None = None) -> list[PromptTurn]:
    """A conversation as the model's prompt turns: user/assistant, text and media in order.

    With `artifacts`, media blocks are read strictly: inline bytes are stored, artifact references
    checked, other sources refused (`MediaError`) and unknown block types refused (`ValueError`).
    Without, only the artifact references a message holds are kept (the graph's own messages).
    A system message has no role of its own in CoDi-2: it prefixes the next user turn. Consecutive
    messages of one speaker are merged into one turn.
    """
    turns: list[PromptTurn] = []
    system: list[str | MediaRef] = []
    for message in messages:
        parts = (
            _parts(message, lambda block: block_ref(block, artifacts), strict=True)  # stores inline bytes
            if artifacts is not None
            else message_parts(message)
        )
        if isinstance(message, SystemMessage):
            system += parts
            continue
        if not parts:
            continue
        role: Literal["user", "assistant"] = "assistant" if isinstance(message, AIMessage) else "user"
        if role == "user" and system:
            parts, system = [*system, *parts], []
        if turns and turns[-1].role == role:
            turns[-1] = PromptTurn(role=role, parts=(*turns[-1].parts, *parts))
        else:
            turns.append(PromptTurn(role=role, parts=tuple(parts)))
    return turns
