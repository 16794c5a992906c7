"""How a dataset record becomes `Sample`s, phrased like the tiny recipe's tasks (same task names).

A caption pair gives both directions — ``caption_image`` (picture -> its caption) and
``text_to_image`` (caption -> the picture), and the same for audio; an edit triplet gives
``edit_image`` / ``edit_audio``; a subject set gives ``subject_image``. Media carry their captions
(`Media.caption`) where the data has them: that is what the in-context builder's text-only trick
shows in their place.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from codi2_agent.data.phrasing import PROMPTS, REPLIES, pick
from codi2_agent.data.samples import Message, Sample
from codi2_agent.media import Media
from codi2_agent.training.datasets._source import MediaKind, ReadOptions

__all__ = ["EDIT_TASKS", "PAIR_TASKS", "SUBJECT_TASK", "edit_sample", "pair_samples", "subject_sample"]

PAIR_TASKS: dict[MediaKind, tuple[str, str]] = {  # (media -> text, text -> media)
    "image": ("caption_image", "text_to_image"),
    "audio": ("caption_audio", "text_to_audio"),
}
EDIT_TASKS: dict[MediaKind, str] = {"image": "edit_image", "audio": "edit_audio"}
SUBJECT_TASK = "subject_image"

# Real subjects have no scene attribute to name: the request says what the data says instead.
_SUBJECT_ASK_CAPTIONED = ("now show the same subject: {c}.", "draw my subject again: {c}.")
_SUBJECT_ASK = ("show the same subject in a new picture.", "draw my subject once more.")


def _either_order(media: Media, text: str, rng: np.random.Generator) -> list[str | Media]:
    return [text, media] if rng.random() < 0.5 else [media, text]


def pair_samples(
    kind: MediaKind,
    media: Media,
    caption: str,
    rng: np.random.Generator,
    options: ReadOptions,
    meta: dict[str, Any],
) -> Iterator[Sample]:
    """The caption sample then the generation sample of one (media, caption) pair, as wanted."""
    media.caption = caption
    to_text, to_media = PAIR_TASKS[kind]
    prompt, request = pick(PROMPTS[to_text], rng), pick(PROMPTS[to_media], rng).format(c=caption)
    reply = pick(REPLIES, rng)  # drawn either way, so the phrasing does not depend on `tasks`
    if options.wants(to_text):
        ask = Message("user", _either_order(media, prompt, rng))
        yield Sample(to_text, [ask], caption, None, None, {**meta, "modality": kind})
    if options.wants(to_media):
        yield Sample(to_media, [Message("user", [request])], reply, media, None, {**meta, "modality": kind})


def edit_sample(
    kind: MediaKind,
    source: Media,
    instruction: str,
    target: Media,
    rng: np.random.Generator,
    meta: dict[str, Any],
) -> Sample:
    """(source, instruction) -> target."""
    ask = Message("user", _either_order(source, instruction, rng))
    return Sample(EDIT_TASKS[kind], [ask], pick(REPLIES, rng), target, None, {**meta, "modality": kind})


def subject_sample(
    references: list[Media], target: Media, rng: np.random.Generator, meta: dict[str, Any]
) -> Sample:
    """Pictures of one subject, then a request for a new picture of it -> `target`."""
    parts: list[str | Media] = [pick(PROMPTS["subject_intro"], rng)]
    for i, reference in enumerate(references):
        parts += ([pick(PROMPTS["subject_again"], rng)] if i else []) + [reference]
    if target.caption:
        parts.append(pick(_SUBJECT_ASK_CAPTIONED, rng).format(c=target.caption.rstrip(".")))
    else:
        parts.append(pick(_SUBJECT_ASK, rng))
    meta = {**meta, "modality": "image", "n_references": len(references)}
    return Sample(SUBJECT_TASK, [Message("user", parts)], pick(REPLIES, rng), target, None, meta)
