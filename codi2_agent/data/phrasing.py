"""How people ask for things in the tiny world: edit instructions, task prompts, answers, and the
text corpus a tokenizer learns them from.

Every phrasing list is a list of templates; builders pick one with an rng, and `corpus()` walks
them all, so the tokenizer has seen every word a sample can contain.

Example:
    >>> a = {"shape": "star", "colour": "red", "size": "small", "scene": "snow"}
    >>> edit_instructions(a, "shape", "circle")[0]
    'turn the star into a circle'
    >>> change_sentence("colour", "red", "blue")
    'the colour changed from red to blue'
    >>> parse_change("the colour changed from red to blue")
    ('colour', 'red', 'blue')
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from codi2_agent.data.world import (
    AMBIENCE_PHRASES,
    ATTRIBUTES,
    INSTRUMENT_ADJ,
    INSTRUMENT_NOUN,
    PITCH_WORDS,
    SCENE_PHRASES,
    all_attrs,
    ambience_phrase,
    caption,
    caption_variants,
    check_attrs,
    scene_phrase,
)

__all__ = [
    "PROMPTS",
    "REPLIES",
    "analogy_reply",
    "change_sentence",
    "concept_reply",
    "corpus",
    "edit_instruction",
    "edit_instructions",
    "parse_change",
    "pick",
    "tiny_vocabulary",
]

# Short assistant answers that accompany produced media: the media is the answer.
REPLIES: tuple[str, ...] = ("Here it is.", "Here you go.", "Done.")

_AMBIENCE_NOUN = {
    "quiet": "silence",
    "crickets": "crickets",
    "wind": "wind",
    "rain": "rain",
    "cicadas": "cicadas",
    "birds": "birdsong",
}

# Fixed prompt pieces per task; `{c}` is a caption, `{p}` a scene phrase, `{n}` a number.
PROMPTS: dict[str, tuple[str, ...]] = {
    "text_to_image": (
        "draw {c}",
        "generate an image of {c}",
        "show me {c}",
        "paint {c}",
        "make a picture of {c}",
        "can you draw {c}?",
        "I want to see {c}",
        "create an image: {c}",
    ),
    "text_to_audio": (
        "play {c}",
        "generate a sound of {c}",
        "let me hear {c}",
        "make audio of {c}",
        "synthesise {c}",
        "can you play {c}?",
        "create a clip: {c}",
    ),
    "caption_image": (
        "what is in this image?",
        "describe this picture.",
        "caption this image.",
        "what do you see?",
        "write a caption for this picture.",
    ),
    "caption_audio": (
        "what do you hear?",
        "describe this sound.",
        "caption this audio clip.",
        "what is this sound?",
        "write a caption for this clip.",
    ),
    "edit_lead": ("", "now", "please", "next,", "and now"),
    "analogy_intro": (
        "here is an example of an edit:",
        "look at this change:",
        "example:",
        "learn from this example:",
    ),
    "analogy_intro_many": (
        "here are some examples of an edit.",
        "look at these changes.",
        "examples:",
        "learn the edit from these examples.",
    ),
    "analogy_numbered": ("example {n}:",),
    "analogy_arrow": ("becomes", "turns into", "->", "is changed to"),
    "analogy_query": (
        "do the same to this:",
        "now apply the same change to",
        "now this one:",
        "same edit for",
    ),
    "subject_intro": (
        "this is my subject:",
        "here is the object I care about:",
        "meet my object:",
        "remember this thing:",
    ),
    "subject_again": ("and here it is again:", "another view:", "once more:"),
    "subject_ask": ("show it {p}.", "now draw it {p}.", "put my object {p}.", "render the same object {p}."),
    "compose_image": ("here is a picture",),
    "compose_sound": ("and a sound",),
    "compose": (
        "show this picture in the ambience of this sound.",
        "make the scene match the sound.",
        "put this image in the setting this sound belongs to.",
        "change the background to fit the sound.",
    ),
    "concept_intro": (
        "these pictures share one thing:",
        "learn the concept from these:",
        "what do these have in common?",
        "here is a concept:",
    ),
    "concept_ask": (
        "apply it to this one:",
        "give this picture the same concept:",
        "now apply it to",
        "do the same for",
    ),
    "what_changed_before": ("before:", "compare", "what changed between", "look at these two:"),
    "what_changed_after": ("after:", "and", "and", "then"),
    "what_changed_ask": ("what changed?", "what is different?", "what was edited?", "tell me what changed."),
}


def pick(options: tuple[str, ...] | list[str], rng: np.random.Generator) -> str:
    """One of `options`, chosen by `rng`."""
    return options[int(rng.integers(len(options)))]


def _edit_templates(attrs: Mapping[str, str], attribute: str, new: str) -> list[str]:
    """Every phrasing of "set `attribute` to `new`" given the current `attrs` (>= 4 per kind)."""
    old = attrs[attribute]
    if attribute == "colour":
        shape = attrs["shape"]
        return [
            f"make it {new}",
            f"change the colour to {new}",
            f"paint the {shape} {new}",
            f"turn the {shape} {new}",
            f"recolour it {new}",
            f"make the {old} {shape} {new} instead",
        ]
    if attribute == "shape":
        return [
            f"turn the {old} into a {new}",
            f"make it a {new} instead",
            f"replace the {old} with a {new}",
            f"change the shape to a {new}",
            f"swap the {old} for a {new}",
        ]
    if attribute == "size":
        shape = attrs["shape"]
        bigger = new == "large"
        return [
            f"make it {'bigger' if bigger else 'smaller'}",
            f"make the {shape} {new}",
            f"{'enlarge' if bigger else 'shrink'} the {shape}",
            f"change the size to {new}",
            f"make it {'big' if bigger else 'little'}",
        ]
    if attribute == "scene":
        shape = attrs["shape"]
        return [
            f"change the background to {new}",
            *(f"put it {p}" for p in SCENE_PHRASES[new]),
            f"show it {scene_phrase(new)} instead",
            f"place the {shape} {scene_phrase(new)}",
            f"change the scene from {old} to {new}",
        ]
    if attribute == "pitch":
        up = float(new) > float(old)
        return [
            f"{'raise' if up else 'lower'} the pitch to {new} Hz",
            f"transpose it to {new} Hz",
            f"play it at {new} Hz instead",
            f"change the note to {new} Hz",
            f"make it a {PITCH_WORDS[new]} note",
            f"move it {'up' if up else 'down'} to {new} Hz",
        ]
    if attribute == "instrument":
        return [
            f"play it on a {INSTRUMENT_NOUN[new]}",
            f"switch the instrument to a {INSTRUMENT_NOUN[new]}",
            f"make it a {INSTRUMENT_ADJ[new]} tone",
            f"use a {INSTRUMENT_NOUN[new]} instead of the {INSTRUMENT_NOUN[old]}",
            f"change the instrument from {INSTRUMENT_ADJ[old]} to {INSTRUMENT_ADJ[new]}",
        ]
    if attribute == "ambience":
        o, n = _AMBIENCE_NOUN[old], _AMBIENCE_NOUN[new]
        out = [
            f"replace the {o} with {n}",
            f"swap the {o} for {n}",
            f"change the background sound to {n}",
            f"use {n} as the background",
            *(f"put it {p}" for p in AMBIENCE_PHRASES[new]),
        ]
        if new == "quiet":
            out += [f"remove the {o}", f"take out the {o}"]
        if old == "quiet":
            out += [f"add {n} in the background", f"add some {n}"]
        return out
    raise ValueError(f"no attribute {attribute!r}")


def edit_instructions(attrs: Mapping[str, str], attribute: str, value: str) -> list[str]:
    """All phrasings of the instruction that turns `attrs` into `edit(attrs, attribute, value)`."""
    modality = check_attrs(attrs)
    if attribute not in ATTRIBUTES[modality] or value not in ATTRIBUTES[modality][attribute]:
        raise ValueError(f"cannot set {attribute}={value!r} on {modality} attributes")
    if attrs[attribute] == value:
        raise ValueError(f"{attribute} is already {value!r}; an edit must change something")
    return _edit_templates(attrs, attribute, value)


def edit_instruction(attrs: Mapping[str, str], attribute: str, value: str, rng: np.random.Generator) -> str:
    """One phrasing of the edit instruction, e.g. "make it blue", "raise the pitch to 660 Hz"."""
    return pick(edit_instructions(attrs, attribute, value), rng)


def analogy_reply(attribute: str, value: str) -> str:
    """An analogy's answer text, naming the edit the example shows before the medium that applies it.

    Stating the inferred edit first turns the analogy into two steps the model also learns on their
    own ("what changed?" and instruction editing), the way CoDi-2 answers in interleaved text and media.
    """
    return f"the same edit: the {attribute} becomes {value}."


# A concept answer's lead-in; the reply goes on like an analogy's ("the colour becomes purple.").
_CONCEPT_LEADS: tuple[str, ...] = ("the concept:", "the same concept:", "one thing in common:")


def concept_reply(attribute: str, value: str, rng: np.random.Generator) -> str:
    """A concept's answer text, naming the value the examples share before the medium that applies it.

    As with `analogy_reply`, the LM states what it inferred first, then makes the medium that follows
    from its own words. The lead-in is drawn like `pick(REPLIES, rng)`: one draw of three, so every
    medium and prompt a seed gives is what it was when concept answers were a generic reply. Measured
    on the tiny model (benchmarks/results/tiny_concept_reply.txt): fine-tuning both seed runs on this
    answer lifted held-out concept 0.49 / 0.54 -> 0.76 / 0.77; the same steps on "Here it is." did not.
    """
    return f"{pick(_CONCEPT_LEADS, rng)} the {attribute} becomes {value}."


def change_sentence(attribute: str, old: str, new: str) -> str:
    """The canonical "what changed?" answer: "the colour changed from red to blue"."""
    return f"the {attribute} changed from {old} to {new}"


_CHANGE_RE = re.compile(r"the (\w+) changed from (\w+) to (\w+)")


def parse_change(text: str) -> tuple[str, str, str] | None:
    """(attribute, old, new) from a "what changed?" answer, or None when it names no change."""
    m = _CHANGE_RE.search(text.lower())
    return (m.group(1), m.group(2), m.group(3)) if m else None


def corpus() -> Iterator[str]:
    """Every caption, instruction, prompt and answer phrasing, each once (for training a BPE tokenizer).

    Example:
        >>> lines = list(corpus())
        >>> "a small red star in the snow" in lines and "raise the pitch to 660 Hz" in lines
        True
    """
    seen: set[str] = set()
    for line in _corpus_lines():
        if line not in seen:
            seen.add(line)
            yield line


def _corpus_lines() -> Iterator[str]:
    for modality in ("image", "audio"):
        for attrs in all_attrs(modality):
            yield from caption_variants(attrs)
            for attribute, values in ATTRIBUTES[modality].items():
                for value in values:
                    if value != attrs[attribute]:
                        yield from edit_instructions(attrs, attribute, value)
                        yield change_sentence(attribute, attrs[attribute], value)
    for name, options in PROMPTS.items():
        for i, template in enumerate(options):
            # Cycle fillers through every value so all templates meet all words.
            for j, a in enumerate(all_attrs("audio" if name == "text_to_audio" else "image")):
                if j % len(options) == i or "{" not in template:
                    yield template.format(
                        c=caption(a), p=scene_phrase(a["scene"]) if "scene" in a else "", n=j % 4 + 1
                    )
                    if "{" not in template:
                        break
    yield from REPLIES
    yield from (p for ps in AMBIENCE_PHRASES.values() for p in ps)
    yield from (ambience_phrase(a) for a in AMBIENCE_PHRASES)


def tiny_vocabulary() -> dict[str, Any]:
    """The tiny world's vocabulary as saved in a model's config: its attribute words, the first
    phrasing of each prompt the session graph composes, and the reply that accompanies media."""
    from codi2_agent.model.vocabulary import PROMPT_NAMES, Vocabulary

    prompts = {name: PROMPTS[name][0] for name in PROMPT_NAMES}
    return Vocabulary(attributes=ATTRIBUTES, prompts=prompts, reply=REPLIES[0]).to_dict()
