"""`Vocabulary`: what a model can talk about, read from its config instead of hard-coded in the graph.

A CoDi-2 model answers best in the phrasings it was trained on ("what is in this image?", "here is
an example of an edit: A becomes A′, do the same to this: B"), and a model trained on a closed world
knows a closed set of attribute words. Both belong to the model, so the session graph, the tools and
the resolver read them from `model.vocabulary` (saved in ``config.json`` under ``"vocabulary"``) and
the same graph serves the tiny preset and the paper preset's open vocabulary.

Example:
    >>> vocab = Vocabulary.default()
    >>> vocab.prompt("caption_image")
    'what is in this image?'
    >>> vocab.prompt("text_to_image").format(c="a red star")
    'draw a red star'
    >>> vocab.open
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_REPLY", "PROMPT_NAMES", "Vocabulary"]

DEFAULT_REPLY = "Here it is."

# Prompt pieces the session graph composes prompts from; `{c}` is a caption, `{n}` a number.
DEFAULT_PROMPTS: dict[str, str] = {
    "text_to_image": "draw {c}",
    "text_to_audio": "play {c}",
    "caption_image": "what is in this image?",
    "caption_audio": "what do you hear?",
    "analogy_intro": "here is an example of an edit:",
    "analogy_intro_many": "here are some examples of an edit.",
    "analogy_numbered": "example {n}:",
    "analogy_arrow": "becomes",
    "analogy_query": "do the same to this:",
    "compose": "show this picture in the ambience of this sound.",
    "what_changed_before": "before:",
    "what_changed_after": "after:",
    "what_changed_ask": "what changed?",
}
PROMPT_NAMES = frozenset(DEFAULT_PROMPTS)


@dataclass(frozen=True)
class Vocabulary:
    """The words and prompt shapes a model knows.

    Args:
        attributes: per modality (``"image"``, ``"audio"``), attribute name -> the values the model
            was trained to tell apart (``{"image": {"colour": ("red", …)}}``). Empty: an open
            vocabulary (a model that reads any words, like the paper preset's LLaMA).
        prompts: template name -> the phrasing to use (every name of `PROMPT_NAMES`).
        reply: what the model says when its answer is a medium ("Here it is.").
    """

    attributes: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    reply: str = DEFAULT_REPLY

    def __post_init__(self) -> None:
        missing = PROMPT_NAMES - set(self.prompts)
        if missing:
            raise ValueError(f"vocabulary lacks prompts {sorted(missing)}")
        for modality, attrs in self.attributes.items():
            if modality not in ("image", "audio"):
                raise ValueError(f"vocabulary attributes are per 'image' / 'audio', got {modality!r}")
            for name, values in attrs.items():
                if not values or not all(isinstance(v, str) and v for v in values):
                    raise ValueError(f"vocabulary attribute {modality}.{name} needs non-empty words")

    @classmethod
    def default(cls) -> Vocabulary:
        """English prompts and an open vocabulary (models saved before vocabularies were recorded)."""
        return cls()

    @property
    def open(self) -> bool:
        """True when the model reads any words (no closed attribute set)."""
        return not self.attributes

    def prompt(self, name: str) -> str:
        try:
            return self.prompts[name]
        except KeyError:
            raise KeyError(f"no prompt {name!r} in the model's vocabulary") from None

    def words(self, modality: str | None = None) -> frozenset[str]:
        """Every attribute value the model knows (of one modality, or all)."""
        return frozenset(
            word
            for m, attrs in self.attributes.items()
            if modality in (None, m)
            for values in attrs.values()
            for value in values
            for word in value.split()
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "attributes": {m: {k: list(v) for k, v in attrs.items()} for m, attrs in self.attributes.items()},
            "prompts": dict(self.prompts),
            "reply": self.reply,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Vocabulary:
        """Read a config's ``"vocabulary"`` entry (None or empty: the default)."""
        if not data:
            return cls.default()
        unknown = set(data) - {"attributes", "prompts", "reply"}
        if unknown:
            raise ValueError(f"unknown vocabulary fields: {sorted(unknown)}")
        attributes = {
            str(m): {str(k): tuple(str(v) for v in values) for k, values in attrs.items()}
            for m, attrs in (data.get("attributes") or {}).items()
        }
        prompts = {**DEFAULT_PROMPTS, **{str(k): str(v) for k, v in (data.get("prompts") or {}).items()}}
        return cls(attributes=attributes, prompts=prompts, reply=str(data.get("reply", DEFAULT_REPLY)))
