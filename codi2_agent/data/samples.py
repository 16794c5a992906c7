"""The sample types every task builder returns: a conversation so far plus the answer it expects.

Example:
    >>> attrs = {"shape": "star", "colour": "red", "size": "small", "scene": "snow"}
    >>> ask = [Message("user", ["describe this picture"])]
    >>> s = Sample("caption_image", ask, "a small red star in the snow", None, attrs)
    >>> s.check() is s, s.messages[-1].role
    (True, 'user')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from codi2_agent.media import Media

__all__ = ["Message", "Sample"]


@dataclass
class Message:
    """One message: who says it and its interleaved text and media."""

    role: Literal["user", "assistant"]
    content: list[str | Media]  # interleaved text and media

    def media(self) -> list[Media]:
        return [part for part in self.content if isinstance(part, Media)]

    def text(self) -> str:
        """The text parts joined with spaces (media left out)."""
        return " ".join(part for part in self.content if isinstance(part, str))


@dataclass
class Sample:
    """A conversation whose last message is the user's request, and the answer it expects."""

    task: str  # e.g. "text_to_image", "caption_image", "edit_image", ...
    messages: list[Message]  # the conversation so far; the last one is the user's request
    target_text: str  # the assistant's answer text ("" when the answer is only media)
    target: Media | None  # the media the assistant must produce (None for text answers)
    target_attrs: dict[str, str] | None  # world attributes the produced media (or text answer) must have
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. {"edited": "colour", "split": "test"}

    def input_media(self) -> list[Media]:
        """Every medium in the conversation, in order (earlier answers included)."""
        return [m for msg in self.messages for m in msg.media()]

    def check(self) -> Sample:
        """Raise ValueError when the structure is wrong: roles must alternate from the user's and
        end with the user's; content must be non-empty str / Media. Returns self."""
        if not self.messages:
            raise ValueError(f"{self.task}: a sample needs at least one message")
        for i, msg in enumerate(self.messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if msg.role != expected:
                raise ValueError(f"{self.task}: message {i} is from {msg.role!r}; expected {expected!r}")
            if not msg.content:
                raise ValueError(f"{self.task}: message {i} is empty")
            for part in msg.content:
                if not isinstance(part, (str, Media)) or part == "":
                    raise ValueError(f"{self.task}: message {i} holds {part!r}; expected text or Media")
        if self.messages[-1].role != "user":
            raise ValueError(f"{self.task}: the last message must be the user's request")
        if self.target is None and not self.target_text:
            raise ValueError(f"{self.task}: a sample needs a target text or a target medium")
        return self
