"""The tiny synthetic world and the in-context samples built from it.

- `world`: attributes, seeded renders (32x32 images, 1 s 16 kHz clips), captions and their parser,
  edits, and the train/test split of attribute combinations;
- `tasks`: one builder per CoDi-2 capability (`TASKS`), returning `Sample`s (`samples`);
- `phrasing`: instructions, prompts, answers and the tokenizer `corpus()`;
- `probes`: the attribute classifiers that score generated media (imports torch, so it loads lazily).

Example:
    >>> from codi2_agent.data import render_image, sample_task, parse_caption
    >>> s = sample_task("edit_image", 0, "train")
    >>> s.target.caption == render_image(s.target_attrs, s.meta["seed"]).caption
    True
    >>> parse_caption(s.target.caption) == s.target_attrs
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from codi2_agent.data.phrasing import (
    change_sentence,
    corpus,
    edit_instruction,
    edit_instructions,
    parse_change,
)
from codi2_agent.data.samples import Message, Sample
from codi2_agent.data.tasks import TASKS, sample_task
from codi2_agent.data.world import (
    AMBIENCE_TO_SCENE,
    ATTRIBUTES,
    AUDIO_ATTRIBUTES,
    HELD_OUT,
    IMAGE_ATTRIBUTES,
    SCENE_TO_AMBIENCE,
    SPLITS,
    TEST_SEED_OFFSET,
    Attrs,
    Split,
    all_attrs,
    caption,
    caption_audio,
    caption_image,
    edit,
    in_split,
    is_held_out,
    modality_of,
    parse_caption,
    random_attrs,
    render,
    render_audio,
    render_image,
    render_seed,
)

if TYPE_CHECKING:
    from codi2_agent.data.probes import Probes, load_probes, score, train_probes

__all__ = [
    "AMBIENCE_TO_SCENE",
    "ATTRIBUTES",
    "AUDIO_ATTRIBUTES",
    "HELD_OUT",
    "IMAGE_ATTRIBUTES",
    "SCENE_TO_AMBIENCE",
    "SPLITS",
    "TASKS",
    "TEST_SEED_OFFSET",
    "Attrs",
    "Message",
    "Probes",
    "Sample",
    "Split",
    "all_attrs",
    "caption",
    "caption_audio",
    "caption_image",
    "change_sentence",
    "corpus",
    "edit",
    "edit_instruction",
    "edit_instructions",
    "in_split",
    "is_held_out",
    "load_probes",
    "modality_of",
    "parse_caption",
    "parse_change",
    "random_attrs",
    "render",
    "render_audio",
    "render_image",
    "render_seed",
    "sample_task",
    "score",
    "train_probes",
]

_LAZY = {"Probes", "load_probes", "score", "train_probes"}


def __getattr__(name: str) -> Any:
    # The probes need torch; importing the world and the tasks should not.
    if name in _LAZY:
        from codi2_agent.data import probes

        return getattr(probes, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
