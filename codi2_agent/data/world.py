"""The tiny world: procedural, seeded images and sounds whose every property is a named attribute.

An image is a shape of a colour and size on a scene; a sound is a note of an instrument and pitch
over an ambience. Scenes and ambiences are linked one-to-one (`SCENE_TO_AMBIENCE`), so "this
picture in the ambience of that sound" has exactly one right answer. Renders are deterministic under
a seed; the seed only moves things that are not attributes (position, tilt, onset, texture, noise).

Splits hold out attribute *combinations*: `split="train"` never yields any pair in `HELD_OUT`,
`split="test"` always yields at least one, and test renders use seeds from a disjoint range
(`render_seed`). So test scores measure generalisation to unseen combinations, not memory.

Example:
    >>> import numpy as np
    >>> attrs = {"shape": "star", "colour": "red", "size": "small", "scene": "snow"}
    >>> caption_image(attrs)
    'a small red star in the snow'
    >>> parse_caption("a small red star in the snow") == attrs
    True
    >>> render_image(attrs, seed=3) == render_image(attrs, seed=3)
    True
    >>> edit(attrs, "colour", "blue")["colour"]
    'blue'
    >>> a = random_attrs("audio", np.random.default_rng(0), split="train")
    >>> caption_audio({"instrument": "sine", "pitch": "660", "ambience": "wind"})
    'a high sine tone with wind'
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np

from codi2_agent.data._draw import IMAGE_SIZE, draw_image
from codi2_agent.data._synth import NUM_SAMPLES, PITCH_HZ, SAMPLE_RATE, synth_audio
from codi2_agent.media import Media

__all__ = [
    "AMBIENCE_PHRASES",
    "AMBIENCE_TO_SCENE",
    "ATTRIBUTES",
    "AUDIO_ATTRIBUTES",
    "HELD_OUT",
    "IMAGE_ATTRIBUTES",
    "IMAGE_SIZE",
    "INSTRUMENT_ADJ",
    "INSTRUMENT_NOUN",
    "NUM_SAMPLES",
    "PITCH_HZ",
    "PITCH_WORDS",
    "SAMPLE_RATE",
    "SCENE_PHRASES",
    "SCENE_TO_AMBIENCE",
    "SPLITS",
    "TEST_SEED_OFFSET",
    "Attrs",
    "Split",
    "WorldModality",
    "all_attrs",
    "ambience_phrase",
    "caption",
    "caption_audio",
    "caption_image",
    "caption_variants",
    "check_attrs",
    "edit",
    "in_split",
    "is_held_out",
    "modality_of",
    "parse_caption",
    "random_attrs",
    "render",
    "render_audio",
    "render_image",
    "render_seed",
    "scene_phrase",
]

Attrs = dict[str, str]
WorldModality = Literal["image", "audio"]
Split = Literal["train", "test", "all"]
SPLITS: tuple[Split, ...] = ("train", "test", "all")

IMAGE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle", "star", "cross"),
    "colour": ("red", "green", "blue", "yellow", "purple", "orange"),
    "size": ("small", "large"),
    "scene": ("day", "night", "snow", "rain", "desert", "forest"),
}
AUDIO_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "instrument": ("sine", "square", "saw", "pluck"),
    "pitch": tuple(PITCH_HZ),  # "220" ... "880" (Hz)
    "ambience": ("quiet", "crickets", "wind", "rain", "cicadas", "birds"),
}
ATTRIBUTES: dict[str, dict[str, tuple[str, ...]]] = {"image": IMAGE_ATTRIBUTES, "audio": AUDIO_ATTRIBUTES}

# A bijection: every scene sounds like exactly one ambience and back.
SCENE_TO_AMBIENCE: dict[str, str] = {
    "day": "quiet",
    "night": "crickets",
    "snow": "wind",
    "rain": "rain",
    "desert": "cicadas",
    "forest": "birds",
}
AMBIENCE_TO_SCENE: dict[str, str] = {a: s for s, a in SCENE_TO_AMBIENCE.items()}

# Attribute pairs never seen in training. Each value of each attribute still appears in training
# (one held-out partner per shape / instrument), so every test item is a new combination of
# familiar parts.
HELD_OUT: dict[str, tuple[frozenset[tuple[str, str]], ...]] = {
    "image": tuple(
        frozenset(pair)
        for pair in [
            (("shape", "circle"), ("colour", "purple")),
            (("shape", "square"), ("colour", "orange")),
            (("shape", "triangle"), ("colour", "blue")),
            (("shape", "star"), ("colour", "green")),
            (("shape", "cross"), ("colour", "red")),
            (("shape", "circle"), ("scene", "desert")),
            (("shape", "square"), ("scene", "night")),
            (("shape", "triangle"), ("scene", "snow")),
            (("shape", "star"), ("scene", "rain")),
            (("shape", "cross"), ("scene", "forest")),
        ]
    ),
    "audio": tuple(
        frozenset(pair)
        for pair in [
            (("instrument", "sine"), ("pitch", "880")),
            (("instrument", "square"), ("pitch", "220")),
            (("instrument", "saw"), ("pitch", "440")),
            (("instrument", "pluck"), ("pitch", "660")),
            (("instrument", "sine"), ("ambience", "rain")),
            (("instrument", "square"), ("ambience", "birds")),
            (("instrument", "saw"), ("ambience", "crickets")),
            (("instrument", "pluck"), ("ambience", "wind")),
        ]
    ),
}
TEST_SEED_OFFSET = 10**6  # train render seeds lie in [0, 1e6), test seeds in [1e6, 2e6)

PITCH_WORDS: dict[str, str] = {
    "220": "very low",
    "330": "low",
    "440": "middle",
    "660": "high",
    "880": "very high",
}
INSTRUMENT_ADJ = {"sine": "sine", "square": "square", "saw": "saw", "pluck": "plucked"}
INSTRUMENT_NOUN = {
    "sine": "sine wave",
    "square": "square wave",
    "saw": "sawtooth wave",
    "pluck": "plucked string",
}
_SIZE_ALT = {"small": "little", "large": "big"}
# The first phrase is the canonical one (used by `caption_*` without an rng).
SCENE_PHRASES: dict[str, tuple[str, ...]] = {
    "day": ("on a sunny day", "in daylight", "in the daytime"),
    "night": ("at night", "in the night", "at nighttime"),
    "snow": ("in the snow", "in a snowy field", "in winter snow"),
    "rain": ("in the rain", "in a rainy scene", "out in the rain"),
    "desert": ("in the desert", "among sand dunes", "in a sandy desert"),
    "forest": ("in the forest", "among the trees", "in the woods"),
}
AMBIENCE_PHRASES: dict[str, tuple[str, ...]] = {
    "quiet": ("in silence", "with a quiet background", "with silence behind it"),
    "crickets": ("with crickets", "with chirping crickets", "over crickets"),
    "wind": ("with wind", "with a howling wind", "over the wind"),
    "rain": ("with rain", "with falling rain", "over the rain"),
    "cicadas": ("with cicadas", "with buzzing cicadas", "over cicadas"),
    "birds": ("with birdsong", "with singing birds", "over birdsong"),
}


# --- attributes and splits ---------------------------------------------------------------------
def modality_of(attrs: Mapping[str, str]) -> WorldModality:
    """The modality ("image" or "audio") the attribute names belong to; ValueError for neither."""
    keys = set(attrs)
    for modality, schema in ATTRIBUTES.items():
        if keys == set(schema):
            return modality  # type: ignore[return-value]
    raise ValueError(
        f"attrs {sorted(keys)} match neither image {sorted(IMAGE_ATTRIBUTES)} "
        f"nor audio {sorted(AUDIO_ATTRIBUTES)}"
    )


def check_attrs(attrs: Mapping[str, str]) -> WorldModality:
    """Validate a full attribute dict and return its modality; ValueError naming the bad value."""
    modality = modality_of(attrs)
    for name, value in attrs.items():
        if value not in ATTRIBUTES[modality][name]:
            raise ValueError(f"{name}={value!r} is not one of {ATTRIBUTES[modality][name]}")
    return modality


def is_held_out(attrs: Mapping[str, str]) -> bool:
    """True when `attrs` contains a held-out combination (so only the test split may produce it)."""
    items = set(attrs.items())
    return any(pair <= items for pair in HELD_OUT[modality_of(attrs)])


def all_attrs(modality: WorldModality) -> Iterator[Attrs]:
    """Every attribute combination of a modality, in a fixed order."""
    schema = ATTRIBUTES[modality]
    for values in itertools.product(*schema.values()):
        yield dict(zip(schema, values, strict=True))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def in_split(attrs: Mapping[str, str], split: Split) -> bool:
    """Whether `random_attrs(..., split)` could have produced `attrs`."""
    _check_split(split)
    if split == "all":
        return True
    return is_held_out(attrs) == (split == "test")


def random_attrs(modality: WorldModality, rng: np.random.Generator | int, split: Split = "train") -> Attrs:
    """A uniformly random attribute dict from `split` ("train", "test" or "all")."""
    _check_split(split)
    if modality not in ATTRIBUTES:
        raise ValueError(f"modality must be 'image' or 'audio', got {modality!r}")
    rng = np.random.default_rng(rng)
    schema = ATTRIBUTES[modality]
    while True:  # rejection sampling: ~70 % of combos are train, ~30 % test
        attrs = {name: str(values[int(rng.integers(len(values)))]) for name, values in schema.items()}
        if in_split(attrs, split):
            return attrs


def render_seed(rng: np.random.Generator, split: Split = "train") -> int:
    """A render seed from the split's own range, so train and test never share a render."""
    _check_split(split)
    return int(rng.integers(TEST_SEED_OFFSET)) + (TEST_SEED_OFFSET if split == "test" else 0)


def edit(attrs: Mapping[str, str], attribute: str, value: str) -> Attrs:
    """A copy of `attrs` with one attribute set to `value` (validated)."""
    modality = check_attrs(attrs)
    schema = ATTRIBUTES[modality]
    if attribute not in schema:
        raise ValueError(f"{modality} has no attribute {attribute!r}; expected one of {tuple(schema)}")
    if value not in schema[attribute]:
        raise ValueError(f"{attribute}={value!r} is not one of {schema[attribute]}")
    return {**attrs, attribute: value}


# --- rendering ---------------------------------------------------------------------------------
def render_image(attrs: Mapping[str, str], seed: int) -> Media:
    """A 32x32 RGB image of `attrs`, captioned. Same attrs and seed -> identical pixels."""
    if check_attrs(attrs) != "image":
        raise ValueError(f"render_image needs image attributes, got {dict(attrs)}")
    return Media.from_image(draw_image(dict(attrs), int(seed)), caption=caption_image(attrs))


def render_audio(attrs: Mapping[str, str], seed: int) -> Media:
    """A 1.0 s, 16 kHz clip of `attrs`, captioned. Same attrs and seed -> identical samples."""
    if check_attrs(attrs) != "audio":
        raise ValueError(f"render_audio needs audio attributes, got {dict(attrs)}")
    return Media.from_audio(synth_audio(dict(attrs), int(seed)), SAMPLE_RATE, caption=caption_audio(attrs))


def render(attrs: Mapping[str, str], seed: int) -> Media:
    """`render_image` or `render_audio`, by the attributes' modality."""
    return render_image(attrs, seed) if check_attrs(attrs) == "image" else render_audio(attrs, seed)


# --- captions ----------------------------------------------------------------------------------
def _pick(options: tuple[str, ...] | list[str], rng: np.random.Generator | None) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def scene_phrase(scene: str, rng: np.random.Generator | None = None) -> str:
    """A scene as a phrase: "in the snow", "at night", ... (the canonical one without an rng)."""
    return _pick(SCENE_PHRASES[scene], rng)


def ambience_phrase(ambience: str, rng: np.random.Generator | None = None) -> str:
    """An ambience as a phrase: "with wind", "in silence", ... (canonical without an rng)."""
    return _pick(AMBIENCE_PHRASES[ambience], rng)


def _image_templates(a: Mapping[str, str], scene: str) -> list[str]:
    size, colour, shape = a["size"], a["colour"], a["shape"]
    return [
        f"a {size} {colour} {shape} {scene}",
        f"a {colour} {shape}, {size}, {scene}",
        f"a {size} {shape} coloured {colour}, {scene}",
        f"{scene}, a {size} {colour} {shape}",
        f"a {_SIZE_ALT[size]} {colour} {shape} {scene}",
    ]


def _audio_templates(a: Mapping[str, str], amb: str) -> list[str]:
    pitch, inst = a["pitch"], a["instrument"]
    return [
        f"a {PITCH_WORDS[pitch]} {INSTRUMENT_ADJ[inst]} tone {amb}",
        f"a {INSTRUMENT_ADJ[inst]} tone at {pitch} Hz {amb}",
        f"a {PITCH_WORDS[pitch]} note on a {INSTRUMENT_NOUN[inst]} {amb}",
        f"a {INSTRUMENT_NOUN[inst]} playing {pitch} Hz {amb}",
    ]


def caption_image(attrs: Mapping[str, str], rng: np.random.Generator | None = None) -> str:
    """The caption, "a small red star in the snow"; with `rng`, one of several phrasings (all parseable)."""
    if rng is None:
        return _image_templates(attrs, scene_phrase(attrs["scene"]))[0]
    return _pick(_image_templates(attrs, scene_phrase(attrs["scene"], rng)), rng)


def caption_audio(attrs: Mapping[str, str], rng: np.random.Generator | None = None) -> str:
    """The caption, "a high sine tone with wind"; with `rng`, one of several phrasings (all parseable)."""
    if rng is None:
        return _audio_templates(attrs, ambience_phrase(attrs["ambience"]))[0]
    return _pick(_audio_templates(attrs, ambience_phrase(attrs["ambience"], rng)), rng)


def caption(attrs: Mapping[str, str], rng: np.random.Generator | None = None) -> str:
    """`caption_image` or `caption_audio`, by the attributes' modality."""
    return caption_image(attrs, rng) if check_attrs(attrs) == "image" else caption_audio(attrs, rng)


def caption_variants(attrs: Mapping[str, str]) -> list[str]:
    """Every phrasing `caption(attrs, rng)` can produce (for tokenizer corpora and tests)."""
    if check_attrs(attrs) == "image":
        return [t for p in SCENE_PHRASES[attrs["scene"]] for t in _image_templates(attrs, p)]
    return [t for p in AMBIENCE_PHRASES[attrs["ambience"]] for t in _audio_templates(attrs, p)]


# --- parsing -----------------------------------------------------------------------------------
# Word sequences that name a value. Longer sequences win ("very low" before "low").
_IMAGE_LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "shape": {
        "circle": ("circle", "disc"),
        "square": ("square",),
        "triangle": ("triangle",),
        "star": ("star",),
        "cross": ("cross", "plus"),
    },
    "colour": {c: (c,) for c in IMAGE_ATTRIBUTES["colour"]} | {"purple": ("purple", "violet")},
    "size": {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")},
    "scene": {
        "day": ("day", "daytime", "daylight", "sunny"),
        "night": ("night", "nighttime"),
        "snow": ("snow", "snowy"),
        "rain": ("rain", "rainy"),
        "desert": ("desert", "sand", "sandy", "dunes"),
        "forest": ("forest", "woods", "trees"),
    },
}
_AUDIO_LEXICON: dict[str, dict[str, tuple[str, ...]]] = {
    "instrument": {
        "sine": ("sine",),
        "square": ("square",),
        "saw": ("saw", "sawtooth"),
        "pluck": ("pluck", "plucked"),
    },
    "pitch": {p: (p, PITCH_WORDS[p]) for p in AUDIO_ATTRIBUTES["pitch"]} | {"440": ("440", "middle", "mid")},
    "ambience": {
        "quiet": ("silence", "silent", "quiet"),
        "crickets": ("crickets", "cricket"),
        "wind": ("wind", "windy"),
        "rain": ("rain", "rainy", "raindrops"),
        "cicadas": ("cicadas", "cicada"),
        "birds": ("birds", "bird", "birdsong"),
    },
}
_AUDIO_CUES = {"tone", "note", "hz", "sound", "audio", "clip", "wave", "string", "pitch", "playing"}


def _phrases(lexicon: dict[str, dict[str, tuple[str, ...]]]) -> list[tuple[tuple[str, ...], str, str]]:
    out = [
        (tuple(p.split()), attr, value)
        for attr, vals in lexicon.items()
        for value, ps in vals.items()
        for p in ps
    ]
    # Plurals ("stars", "crickets" already plural) match too; longest phrases are tried first.
    out += [
        ((*words[:-1], words[-1] + "s"), a, v) for words, a, v in list(out) if not words[-1].endswith("s")
    ]
    return sorted(out, key=lambda t: -len(t[0]))


_PHRASES = {"image": _phrases(_IMAGE_LEXICON), "audio": _phrases(_AUDIO_LEXICON)}
_WORDS = {m: {w for words, _, _ in ps for w in words} for m, ps in _PHRASES.items()}


def _guess_modality(tokens: list[str]) -> WorldModality:
    # Words only one modality uses ("square" and "rain" are shared, so they don't vote).
    shared = _WORDS["image"] & _WORDS["audio"]
    audio = sum(t in _AUDIO_CUES or (t in _WORDS["audio"] and t not in shared) for t in tokens)
    image = sum(t in _WORDS["image"] and t not in shared for t in tokens)
    return "audio" if audio > image else "image"


def parse_caption(text: str, modality: WorldModality | None = None) -> Attrs:
    """The attributes a caption names (first mention wins); attributes it does not name are absent.

    `modality` ("image" / "audio") is guessed from the words when not given.

    Example:
        >>> parse_caption("a big blue cross among the trees")
        {'shape': 'cross', 'colour': 'blue', 'size': 'large', 'scene': 'forest'}
        >>> parse_caption("a plucked tone at 330 Hz over the rain")
        {'instrument': 'pluck', 'pitch': '330', 'ambience': 'rain'}
    """
    tokens = re.findall(r"[a-z]+|\d+", text.lower())
    modality = modality or _guess_modality(tokens)
    if modality not in _PHRASES:
        raise ValueError(f"modality must be 'image' or 'audio', got {modality!r}")
    found: Attrs = {}
    i = 0
    while i < len(tokens):
        for words, attr, value in _PHRASES[modality]:
            if tuple(tokens[i : i + len(words)]) == words:
                found.setdefault(attr, value)
                i += len(words)
                break
        else:
            i += 1
    order = list(ATTRIBUTES[modality])
    return {k: found[k] for k in order if k in found}
