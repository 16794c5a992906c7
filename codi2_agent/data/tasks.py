"""Task builders: each turns an rng into one `Sample` of a CoDi-2 capability in the tiny world.

Every builder is `build_<task>(rng, split="train", *, n_shots=..., text_only=False) -> Sample` and
is registered in `TASKS`. Splits work on the *media the model sees or must make*:

- `split="train"`: no medium anywhere in the sample has a held-out attribute combination;
- `split="test"`: the answer (the target medium, or the medium a text answer is about) has one,
  and every render uses a test-range seed.

In-context variants, as in the paper:

- `n_shots`: for analogy tasks, the number of solved exemplar pairs (A -> A′) shown before the
  query B (>= 1); for every other task (but `multi_round`), that many solved instances of the same
  task are prepended as earlier user/assistant turns;
- `text_only=True`: exemplar media (analogy pairs, concept images, prepended shots) are replaced by
  their captions, so a multimodal example costs no media at all; the query media stay media.

Example:
    >>> s = build_analogy_image(0, "train", n_shots=2, text_only=True)
    >>> s.task, len(s.input_media()), s.meta["edited"] in ("shape", "colour", "size", "scene")
    ('analogy_image', 1, True)
    >>> sample_task("what_changed", 1).target_text.startswith("the ")
    True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from codi2_agent.data.phrasing import (
    PROMPTS,
    REPLIES,
    analogy_reply,
    change_sentence,
    concept_reply,
    edit_instruction,
    pick,
)
from codi2_agent.data.samples import Message, Sample
from codi2_agent.data.world import (
    AMBIENCE_TO_SCENE,
    ATTRIBUTES,
    IMAGE_ATTRIBUTES,
    SCENE_TO_AMBIENCE,
    Attrs,
    Split,
    WorldModality,
    caption,
    edit,
    in_split,
    is_held_out,
    random_attrs,
    render,
    render_seed,
    scene_phrase,
)
from codi2_agent.media import Media

__all__ = [
    "TASKS",
    "build_analogy_audio",
    "build_analogy_image",
    "build_caption_audio",
    "build_caption_image",
    "build_compose_image_audio",
    "build_concept_image",
    "build_edit_audio",
    "build_edit_image",
    "build_multi_round",
    "build_subject_image",
    "build_text_to_audio",
    "build_text_to_image",
    "build_what_changed",
    "sample_task",
]

RngLike = np.random.Generator | int
_MAX_TRIES = 10_000  # rejection sampling over attribute plans; acceptance is >= ~20 %


# --- helpers -----------------------------------------------------------------------------------
def _merge(parts: Iterable[str | Media]) -> list[str | Media]:
    """Drop empty text and join neighbouring text with a space, so content alternates text / media."""
    out: list[str | Media] = []
    for part in parts:
        if isinstance(part, str):
            part = part.strip()
            if not part:
                continue
            if out and isinstance(out[-1], str):
                out[-1] = f"{out[-1]} {part}"
                continue
        out.append(part)
    return out


def _material(split: Split) -> Split:
    # Media other than the answer: train keeps them all in train; test may show anything.
    return "train" if split == "train" else "all"


def _fits(split: Split, others: Iterable[Attrs], targets: Iterable[Attrs]) -> bool:
    """Does a plan belong to `split`? (see the module docstring)"""
    targets = list(targets)
    if split == "train":
        return not any(is_held_out(a) for a in [*others, *targets])
    if split == "test":
        return any(is_held_out(a) for a in targets)
    return True


def _random_edit(
    attrs: Mapping[str, str], rng: np.random.Generator, attributes: Sequence[str] | None = None
) -> tuple[str, str]:
    """A random (attribute, new value) that changes `attrs`."""
    schema = ATTRIBUTES["image" if "shape" in attrs else "audio"]
    attribute = pick(list(attributes or schema), rng)
    return attribute, pick([v for v in schema[attribute] if v != attrs[attribute]], rng)


def _plan_edit(
    modality: WorldModality, rng: np.random.Generator, split: Split, attributes: Sequence[str] | None = None
) -> tuple[Attrs, str, str]:
    """(source, attribute, value) whose edited result is the answer of a `split` sample."""
    for _ in range(_MAX_TRIES):
        if split == "test":  # draw the held-out answer first, then where it came from
            target = random_attrs(modality, rng, "test")
            attribute, old = _random_edit(target, rng, attributes)
            return edit(target, attribute, old), attribute, target[attribute]
        source = random_attrs(modality, rng, split)
        attribute, value = _random_edit(source, rng, attributes)
        if in_split(edit(source, attribute, value), split):
            return source, attribute, value
    raise RuntimeError("could not plan an edit; the split constraints are unsatisfiable")


def _draw_where(
    modality: WorldModality, rng: np.random.Generator, split: Split, accept: Callable[[Attrs], bool]
) -> Attrs:
    for _ in range(_MAX_TRIES):
        attrs = random_attrs(modality, rng, split)
        if accept(attrs):
            return attrs
    raise RuntimeError("could not draw attributes that satisfy the task's constraints")


def _textify(messages: Iterable[Message]) -> list[Message]:
    """Captions in place of media: the paper's text-only in-context trick."""
    return [
        Message(m.role, _merge(p if isinstance(p, str) else _caption_of(p) for p in m.content))
        for m in messages
    ]


def _caption_of(media: Media) -> str:
    if not media.caption:
        raise ValueError("text-only exemplars need captioned media")
    return media.caption


def _answer(sample: Sample) -> Message:
    return Message("assistant", _merge([sample.target_text, *([sample.target] if sample.target else [])]))


def _with_shots(
    core: Callable[[np.random.Generator, Split, bool], Sample],
    rng: RngLike,
    split: Split,
    n_shots: int,
    text_only: bool,
) -> Sample:
    """`core`'s sample, preceded by `n_shots` solved instances of the same task as earlier turns."""
    if n_shots < 0:
        raise ValueError(f"n_shots must be >= 0, got {n_shots}")
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    rng = np.random.default_rng(rng)
    prefix: list[Message] = []
    for _ in range(n_shots):
        shot = core(rng, split, text_only)
        turns = [*shot.messages, _answer(shot)]
        prefix += _textify(turns) if text_only else turns
    sample = core(rng, split, text_only)
    sample.messages = prefix + sample.messages
    sample.meta.update(n_shots=n_shots, text_only=text_only)
    return sample


def _meta(split: Split, modality: str, **extra: Any) -> dict[str, Any]:
    return {"split": split, "modality": modality, **extra}


# --- text -> media, media -> text --------------------------------------------------------------
def _text_to(task: str, modality: WorldModality) -> Callable[[np.random.Generator, Split, bool], Sample]:
    def core(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
        attrs = random_attrs(modality, rng, split)
        seed = render_seed(rng, split)
        prompt = pick(PROMPTS[task], rng).format(c=caption(attrs, rng))
        return Sample(
            task,
            [Message("user", [prompt])],
            pick(REPLIES, rng),
            render(attrs, seed),
            attrs,
            _meta(split, modality, seed=seed),
        )

    return core


def _caption(task: str, modality: WorldModality) -> Callable[[np.random.Generator, Split, bool], Sample]:
    def core(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
        attrs = random_attrs(modality, rng, split)
        seed = render_seed(rng, split)
        media, prompt = render(attrs, seed), pick(PROMPTS[task], rng)
        content: list[str | Media] = [prompt, media] if rng.random() < 0.5 else [media, prompt]
        return Sample(
            task,
            [Message("user", _merge(content))],
            caption(attrs),
            None,
            attrs,
            _meta(split, modality, seed=seed),
        )

    return core


def build_text_to_image(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """Text to image: "draw a small red star in the snow" -> that image."""
    return _with_shots(_text_to("text_to_image", "image"), rng, split, n_shots, text_only)


def build_text_to_audio(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """Text to audio: "play a high sine tone with wind" -> that clip."""
    return _with_shots(_text_to("text_to_audio", "audio"), rng, split, n_shots, text_only)


def build_caption_image(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """An image and "describe this picture." -> its canonical caption."""
    return _with_shots(_caption("caption_image", "image"), rng, split, n_shots, text_only)


def build_caption_audio(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """A clip and "what do you hear?" -> its canonical caption."""
    return _with_shots(_caption("caption_audio", "audio"), rng, split, n_shots, text_only)


# --- instruction editing -----------------------------------------------------------------------
def _instruction(attrs: Attrs, attribute: str, value: str, rng: np.random.Generator) -> str:
    return f"{pick(PROMPTS['edit_lead'], rng)} {edit_instruction(attrs, attribute, value, rng)}".strip()


def _edit(task: str, modality: WorldModality) -> Callable[[np.random.Generator, Split, bool], Sample]:
    def core(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
        source, attribute, value = _plan_edit(modality, rng, split)
        target = edit(source, attribute, value)
        seed = render_seed(rng, split)  # one seed for both: an edit keeps everything else in place
        media, instruction = render(source, seed), _instruction(source, attribute, value, rng)
        content: list[str | Media] = [media, instruction] if rng.random() < 0.5 else [instruction, media]
        meta = _meta(split, modality, seed=seed, edited=attribute, value=value, source_attrs=source)
        return Sample(
            task, [Message("user", _merge(content))], pick(REPLIES, rng), render(target, seed), target, meta
        )

    return core


def build_edit_image(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """An image and "make it blue" / "turn the star into a circle" / ... -> the edited image."""
    return _with_shots(_edit("edit_image", "image"), rng, split, n_shots, text_only)


def build_edit_audio(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """A clip and "raise the pitch to 660 Hz" / "replace the wind with rain" / ... -> the edited clip."""
    return _with_shots(_edit("edit_audio", "audio"), rng, split, n_shots, text_only)


# --- in-context exemplar learning --------------------------------------------------------------
def _analogy(
    task: str, modality: WorldModality, rng: RngLike, split: Split, n_shots: int, text_only: bool
) -> Sample:
    if n_shots < 1:
        raise ValueError(f"an analogy needs at least one exemplar pair; n_shots={n_shots}")
    rng = np.random.default_rng(rng)
    query, attribute, value = _plan_edit(modality, rng, split)
    material = _material(split)

    def usable(a: Attrs) -> bool:  # an exemplar the same edit changes, and that is not the query
        return a[attribute] != value and a != query and in_split(edit(a, attribute, value), material)

    pairs = [
        (a, edit(a, attribute, value))
        for a in (_draw_where(modality, rng, material, usable) for _ in range(n_shots))
    ]
    seeds = [render_seed(rng, split) for _ in range(n_shots + 1)]
    parts: list[str | Media] = [pick(PROMPTS["analogy_intro" if n_shots == 1 else "analogy_intro_many"], rng)]
    arrow = pick(PROMPTS["analogy_arrow"], rng)
    for i, ((a, a2), seed) in enumerate(zip(pairs, seeds, strict=False)):
        if n_shots > 1:
            parts.append(PROMPTS["analogy_numbered"][0].format(n=i + 1))
        # Text-only exemplars are never rendered: their captions are all the model sees.
        parts += [caption(a), arrow, caption(a2)] if text_only else [render(a, seed), arrow, render(a2, seed)]
    parts += [pick(PROMPTS["analogy_query"], rng), render(query, seeds[-1])]
    target = edit(query, attribute, value)
    meta = _meta(
        split,
        modality,
        seed=seeds[-1],
        edited=attribute,
        value=value,
        source_attrs=query,
        exemplars=pairs,
        n_shots=n_shots,
        text_only=text_only,
    )
    if text_only:
        meta["exemplar_captions"] = [caption(a) for pair in pairs for a in pair]
    return Sample(
        task,
        [Message("user", _merge(parts))],
        analogy_reply(attribute, value),
        render(target, seeds[-1]),
        target,
        meta,
    )


def build_analogy_image(
    rng: RngLike, split: Split = "train", *, n_shots: int = 1, text_only: bool = False
) -> Sample:
    """A -> A′ (one attribute changed), then B -> ? : the answer is B with the same change."""
    return _analogy("analogy_image", "image", rng, split, n_shots, text_only)


def build_analogy_audio(
    rng: RngLike, split: Split = "train", *, n_shots: int = 1, text_only: bool = False
) -> Sample:
    """The audio analogy: A -> A′, B -> B′ with the same one-attribute change."""
    return _analogy("analogy_audio", "audio", rng, split, n_shots, text_only)


# --- subject, composition, concept -------------------------------------------------------------
def _subject(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
    material = _material(split)
    for _ in range(_MAX_TRIES):
        target = random_attrs("image", rng, split)
        scenes = [
            s
            for s in IMAGE_ATTRIBUTES["scene"]
            if s != target["scene"] and in_split(edit(target, "scene", s), material)
        ]
        if scenes:
            break
    else:
        raise RuntimeError("could not plan a subject sample")
    k = int(rng.integers(1, min(3, len(scenes)) + 1))
    shots = [edit(target, "scene", str(s)) for s in rng.permutation(scenes)[:k]]
    parts: list[str | Media] = [pick(PROMPTS["subject_intro"], rng)]
    seeds = [render_seed(rng, split) for _ in range(k + 1)]
    for i, (shot, seed) in enumerate(zip(shots, seeds, strict=False)):
        parts += ([pick(PROMPTS["subject_again"], rng)] if i else []) + [render(shot, seed)]
    parts.append(pick(PROMPTS["subject_ask"], rng).format(p=scene_phrase(target["scene"], rng)))
    subject = {name: target[name] for name in ("shape", "colour", "size")}
    meta = _meta(split, "image", seed=seeds[-1], subject=subject, shots=shots)
    return Sample(
        "subject_image",
        [Message("user", _merge(parts))],
        pick(REPLIES, rng),
        render(target, seeds[-1]),
        target,
        meta,
    )


def build_subject_image(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """1-3 images of one subject (shape, colour, size) in other scenes + "show it in the desert."
    -> the subject in that scene (a new render, not an edit of a shown image)."""
    return _with_shots(_subject, rng, split, n_shots, text_only)


def _compose(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
    source, _, scene = _plan_edit("image", rng, split, attributes=("scene",))
    ambience = SCENE_TO_AMBIENCE[scene]
    sound = _draw_where("audio", rng, _material(split), lambda a: a["ambience"] == ambience)
    target = edit(source, "scene", AMBIENCE_TO_SCENE[sound["ambience"]])
    seed, sound_seed = render_seed(rng, split), render_seed(rng, split)
    image, clip, prompt = render(source, seed), render(sound, sound_seed), pick(PROMPTS["compose"], rng)
    layout = int(rng.integers(3))
    if layout == 0:
        parts: list[str | Media] = [image, clip, prompt]
    elif layout == 1:
        parts = [prompt, image, clip]
    else:
        parts = [PROMPTS["compose_image"][0], image, PROMPTS["compose_sound"][0], clip, prompt]
    meta = _meta(
        split, "image", seed=seed, source_attrs=source, sound_attrs=sound, edited="scene", value=scene
    )
    return Sample(
        "compose_image_audio",
        [Message("user", _merge(parts))],
        pick(REPLIES, rng),
        render(target, seed),
        target,
        meta,
    )


def build_compose_image_audio(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """An image + a sound -> the image with its scene set to the sound's ambience's scene
    (`AMBIENCE_TO_SCENE`), everything else kept."""
    return _with_shots(_compose, rng, split, n_shots, text_only)


def _concept(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
    query, attribute, value = _plan_edit("image", rng, split)
    k = int(rng.integers(2, 5))
    material = _material(split)
    for _ in range(_MAX_TRIES):
        examples = [_draw_where("image", rng, material, lambda a: a[attribute] == value) for _ in range(k)]
        # The shared value must be the *only* thing they share, or the concept is ambiguous.
        if all(len({a[n] for a in examples}) > 1 for n in IMAGE_ATTRIBUTES if n != attribute):
            break
    else:
        raise RuntimeError("could not draw unambiguous concept examples")
    seeds = [render_seed(rng, split) for _ in range(k + 1)]
    shown = [caption(a) if text_only else render(a, s) for a, s in zip(examples, seeds, strict=False)]
    target = edit(query, attribute, value)
    parts: list[str | Media] = [
        pick(PROMPTS["concept_intro"], rng),
        *shown,
        pick(PROMPTS["concept_ask"], rng),
        render(query, seeds[-1]),
    ]
    meta = _meta(
        split,
        "image",
        seed=seeds[-1],
        edited=attribute,
        value=value,
        source_attrs=query,
        concept={attribute: value},
        examples=examples,
    )
    if text_only:
        meta["exemplar_captions"] = [str(s) for s in shown]
    return Sample(
        "concept_image",
        [Message("user", _merge(parts))],
        concept_reply(attribute, value, rng),
        render(target, seeds[-1]),
        target,
        meta,
    )


def build_concept_image(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """2-4 images that share exactly one attribute value (e.g. all purple) + "apply it to" an
    image -> "the concept: the colour becomes purple." and that image with the shared value."""
    return _with_shots(_concept, rng, split, n_shots, text_only)


# --- reasoning ---------------------------------------------------------------------------------
def _what_changed(rng: np.random.Generator, split: Split, text_only: bool) -> Sample:
    before, attribute, value = _plan_edit("image", rng, split)
    after = edit(before, attribute, value)
    seed = render_seed(rng, split)
    i = int(rng.integers(len(PROMPTS["what_changed_before"])))
    parts: list[str | Media] = [
        PROMPTS["what_changed_before"][i],
        render(before, seed),
        PROMPTS["what_changed_after"][i],
        render(after, seed),
        pick(PROMPTS["what_changed_ask"], rng),
    ]
    answer = {"attribute": attribute, "from": before[attribute], "to": value}
    meta = _meta(
        split, "image", seed=seed, edited=attribute, value=value, source_attrs=before, after_attrs=after
    )
    return Sample(
        "what_changed",
        [Message("user", _merge(parts))],
        change_sentence(attribute, before[attribute], value),
        None,
        answer,
        meta,
    )


def build_what_changed(
    rng: RngLike, split: Split = "train", *, n_shots: int = 0, text_only: bool = False
) -> Sample:
    """Two images A, A′ -> "the colour changed from red to blue" (target_attrs: attribute/from/to)."""
    return _with_shots(_what_changed, rng, split, n_shots, text_only)


# --- multi-round -------------------------------------------------------------------------------
def build_multi_round(
    rng: RngLike,
    split: Split = "train",
    *,
    n_shots: int = 0,
    text_only: bool = False,
    modality: WorldModality | None = None,
) -> Sample:
    """A 3-6 round conversation; each round edits the previous output.

    Round 1 either asks for a new medium ("draw ...") or hands one over with a first edit; every
    assistant message holds the medium it produced; the last user message asks for one more edit,
    and the target is that edit applied to the latest output. `meta["turns"]` is the number of user
    requests (3-6), so there are 2 * turns - 1 messages.
    """
    if n_shots:
        raise ValueError("multi_round is already a conversation; n_shots is not supported")
    rng = np.random.default_rng(rng)
    modality = modality or ("image" if rng.random() < 0.7 else "audio")
    turns = int(rng.integers(3, 7))
    starts_with_media = bool(rng.random() < 0.5)
    n_edits = turns if starts_with_media else turns - 1
    for _ in range(_MAX_TRIES):
        states = [random_attrs(modality, rng, _material(split))]
        edits = []
        for _ in range(n_edits):
            attribute, value = _random_edit(states[-1], rng)
            edits.append((attribute, value))
            states.append(edit(states[-1], attribute, value))
        if _fits(split, states[:-1], states[-1:]):
            break
    else:
        raise RuntimeError("could not plan a multi-round conversation")
    seed = render_seed(rng, split)  # one seed for the whole chain: each round is an edit
    task = "text_to_image" if modality == "image" else "text_to_audio"
    messages: list[Message] = []
    if starts_with_media:
        first: list[str | Media] = [render(states[0], seed), edit_instruction(states[0], *edits[0], rng)]
        messages.append(Message("user", _merge(first if rng.random() < 0.5 else first[::-1])))
    else:
        messages.append(Message("user", [pick(PROMPTS[task], rng).format(c=caption(states[0], rng))]))
    # states[i + 1] = edits[i] applied to states[i]; the assistant has just produced states[i].
    i = 1 if starts_with_media else 0
    while True:
        messages.append(Message("assistant", _merge([pick(REPLIES, rng), render(states[i], seed)])))
        messages.append(Message("user", [_instruction(states[i], *edits[i], rng)]))
        i += 1
        if i == n_edits:
            break
    final = states[-1]
    meta = _meta(
        split,
        modality,
        seed=seed,
        turns=turns,
        edits=edits,
        states=states,
        edited=edits[-1][0],
        value=edits[-1][1],
        source_attrs=states[-2],
        n_shots=0,
        text_only=text_only,
    )
    if text_only:  # earlier turns' media as captions; the latest output stays media, it is being edited
        latest = messages[-2]
        messages = [*_textify(messages[:-2]), latest, messages[-1]]
    return Sample("multi_round", messages, pick(REPLIES, rng), render(final, seed), final, meta)


# --- registry ----------------------------------------------------------------------------------
TASKS: dict[str, Callable[..., Sample]] = {
    "text_to_image": build_text_to_image,
    "text_to_audio": build_text_to_audio,
    "caption_image": build_caption_image,
    "caption_audio": build_caption_audio,
    "edit_image": build_edit_image,
    "edit_audio": build_edit_audio,
    "analogy_image": build_analogy_image,
    "analogy_audio": build_analogy_audio,
    "subject_image": build_subject_image,
    "compose_image_audio": build_compose_image_audio,
    "concept_image": build_concept_image,
    "what_changed": build_what_changed,
    "multi_round": build_multi_round,
}


def sample_task(name: str, rng: RngLike, split: Split = "train", **kwargs: Any) -> Sample:
    """`TASKS[name](rng, split, **kwargs)`, with a clear error for an unknown task name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](rng, split, **kwargs)
