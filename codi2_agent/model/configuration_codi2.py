"""`CoDi2Config`: one architecture, two presets (`tiny`, `paper`), saved as JSON beside the weights.

Every field is validated by pydantic when a config is built, replaced or read (`config.json` is
input like any other: a hand edit or a damaged file must not reach the decoder as NaN guidance or
zero diffusion steps). A bad value is a `ConfigError` naming the file and the field path:
``config.json: image_decoder.guidance_scale must be a finite number >= 0, got nan``.

Example:
    >>> cfg = CoDi2Config.tiny()
    >>> CoDi2Config.from_dict(cfg.to_dict()) == cfg
    True
    >>> CoDi2Config.tiny(alpha=float("nan"))
    Traceback (most recent call last):
    ...
    codi2_agent.model.configuration_codi2.ConfigError: alpha must be a finite number >= 0, got nan
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, field, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast, dataclass_transform

from pydantic import AfterValidator, ConfigDict, PlainValidator, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

from codi2_agent.model.vocabulary import Vocabulary

__all__ = [
    "CONFIG_NAME",
    "DECODER_KINDS",
    "ENCODER_KINDS",
    "CoDi2Config",
    "ConfigError",
    "DecoderConfig",
    "EncoderConfig",
    "ModelLoadError",
    "check_sampling_arguments",
]

CONFIG_NAME = "config.json"

# Component kinds per modality (`build_encoder` / `_build_decoder` build them). ImageBind embeds both.
IMAGE_ENCODER_KINDS = ("tiny_image", "clip_vision", "imagebind")
AUDIO_ENCODER_KINDS = ("tiny_audio", "clap_audio", "imagebind")
IMAGE_DECODER_KINDS = ("tiny_diffusion", "stable_unclip")
AUDIO_DECODER_KINDS = ("tiny_diffusion", "audioldm2")
ENCODER_KINDS = tuple(dict.fromkeys((*IMAGE_ENCODER_KINDS, *AUDIO_ENCODER_KINDS)))
DECODER_KINDS = tuple(dict.fromkeys((*IMAGE_DECODER_KINDS, *AUDIO_DECODER_KINDS)))
PRESETS = ("tiny", "paper")
PROJECTOR_TYPES = ("linear", "mlp2x_gelu_ln")
# The tiny decoder trains on v or epsilon targets only (its loss knows no "sample" target).
PREDICTION_TYPES = ("epsilon", "v_prediction")
# Telephone-band speech to high-resolution audio; anything outside is a typo or a damaged file.
SAMPLE_RATE_RANGE = (1_000, 384_000)


# --- errors ---------------------------------------------------------------------------------------------
class ModelLoadError(Exception):
    """A model folder or config that cannot be loaded as it is: missing, damaged or invalid."""


class ConfigError(ModelLoadError, ValueError):
    """A config value of the wrong type, out of range, or unknown.

    `problems` holds (field path, what is wrong) pairs, `field` the first field path (e.g.
    ``"image_decoder.guidance_scale"``), `source` the file it was read from (None: built in code).
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | Path | None = None) -> None:
        self.problems = [(str(f), str(p)) for f, p in problems]
        self.source = source
        self.field = self.problems[0][0] if self.problems else ""
        text = "; ".join(f"{f} {p}" if f else p for f, p in self.problems)
        super().__init__(f"{source}: {text}" if source is not None else text)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes, like other exceptions
        return (type(self), (self.problems, self.source))


# --- field checks (pydantic validators with messages a person can act on) -------------------------------
_NO_VALUE = object()


class _Invalid(ValueError):
    """What a check found: `problem` ("must be ..."), the `value` it got, and `sub`, a path below the
    checked field (a sub-config's ``kind``, a key of ``lm``). pydantic keeps it as the error's cause."""

    def __init__(self, problem: str, value: Any = _NO_VALUE, sub: Sequence[str] = ()) -> None:
        super().__init__(problem)
        self.problem, self.value, self.sub = problem, value, tuple(sub)

    def describe(self) -> str:
        return self.problem if self.value is _NO_VALUE else f"{self.problem}, got {self.value!r}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    what = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"

    def check(value: Any) -> int:
        if not (isinstance(value, int) and not isinstance(value, bool)) or value < low:
            raise _Invalid(f"must be {what}", value)
        if high is not None and value > high:
            raise _Invalid(f"must be {what}", value)
        return int(value)

    return check


def _number(low: float, high: float | None = None) -> Callable[[Any], float]:
    what = f"a finite number >= {low:g}" if high is None else f"a finite number in [{low:g}, {high:g}]"

    def check(value: Any) -> float:
        if not _is_number(value) or not math.isfinite(value) or value < low:
            raise _Invalid(f"must be {what}", value)
        if high is not None and value > high:
            raise _Invalid(f"must be {what}", value)
        return float(value)

    return check


def _one_of(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices or not isinstance(value, str):
            raise _Invalid(f"must be one of {', '.join(map(repr, choices))}", value)
        return value

    return check


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("must be true or false", value)
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Invalid("must be a non-empty string", value)
    return value


def _optional_name(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise _Invalid("must be a non-empty string or null", value)
    return value


def _widths(value: Any) -> tuple[int, ...]:
    """Channel widths: JSON gives a list, code a tuple; both become a tuple of positive ints."""
    if not isinstance(value, list | tuple) or not value or not all(_is_number(v) for v in value):
        raise _Invalid("must be a non-empty list of integers >= 1", value)
    if not all(isinstance(v, int) and v >= 1 for v in value):
        raise _Invalid("must be a non-empty list of integers >= 1", value)
    return tuple(int(v) for v in value)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise _Invalid("must be an object (a JSON mapping)", value)
    return dict(value)


def _finite_everywhere(value: Any, path: tuple[str, ...] = ()) -> None:
    """No NaN or infinity anywhere in a nested kwargs mapping (``rope_scaling`` and the like)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise _Invalid("must be a finite number", value, path)
    if isinstance(value, Mapping):
        for key, item in value.items():
            _finite_everywhere(item, (*path, str(key)))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _finite_everywhere(item, (*path, str(i)))


def _lm_kwargs(value: Any) -> dict[str, Any]:
    kwargs = _mapping(value)
    _finite_everywhere(kwargs)
    return kwargs


def _vocabulary(value: Any) -> dict[str, Any]:
    data = _mapping(value)
    try:
        Vocabulary.from_dict(data)
    except (ValueError, TypeError, AttributeError) as e:
        raise _Invalid(f"is invalid: {e}") from None
    return data  # kept as the mapping it is; `CoDi2Model.vocabulary` builds the Vocabulary


def _kind_in(kinds: tuple[str, ...]) -> Callable[[Any], Any]:
    """A sub-config's kind must suit its modality (an image slot cannot hold an audio encoder)."""

    def check(part: Any) -> Any:
        if part.kind not in kinds:
            raise _Invalid(f"must be one of {', '.join(map(repr, kinds))}", part.kind, ("kind",))
        return part

    return check


PositiveInt = Annotated[int, PlainValidator(_integer(1))]
NonNegativeInt = Annotated[int, PlainValidator(_integer(0))]
NonNegativeFloat = Annotated[float, PlainValidator(_number(0))]
Fraction = Annotated[float, PlainValidator(_number(0, 1))]
Flag = Annotated[bool, PlainValidator(_flag)]
Name = Annotated[str, PlainValidator(_name)]
OptionalName = Annotated[str | None, PlainValidator(_optional_name)]
Widths = Annotated[tuple[int, ...], PlainValidator(_widths)]

_check_steps, _check_guidance = _integer(1), _number(0)


def _problems(error: ValidationError, cls: type) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, problem) pairs in this module's words."""
    names = [f.name for f in fields(cls)]
    problems = []
    for err in error.errors(include_url=False):
        loc = list(err["loc"])
        if loc and isinstance(loc[0], int) and loc[0] < len(names):  # a positional argument
            loc[0] = names[loc[0]]
        path = [str(p) for p in loc]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _Invalid):
            path += cause.sub
            text = cause.describe()
        elif err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            text = "is not a known field"
        elif err["type"].startswith("missing"):
            text = "is required"
        elif err["type"] in ("dataclass_type", "dataclass_exact_type", "dict_type"):
            text = f"must be an object (a JSON mapping), got {err['input']!r}"
        else:  # a check pydantic made itself; its own words, lower-cased to fit the sentence
            text = f"{err['msg'][:1].lower()}{err['msg'][1:]}, got {err['input']!r}"
        problems.append((".".join(path), text))
    return problems


_T = TypeVar("_T")


@dataclass_transform(field_specifiers=(dataclasses.field,))
def _validated(cls: type[_T]) -> type[_T]:
    """A pydantic dataclass — every construction, `dataclasses.replace` included, checks each field —
    whose failures are `ConfigError`s naming the field path instead of pydantic's ValidationError."""
    checked = pydantic_dataclass(cls, config=ConfigDict(extra="forbid"))
    validate = checked.__init__

    @functools.wraps(validate)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            validate(self, *args, **kwargs)
        except ValidationError as e:
            raise ConfigError(_problems(e, checked)) from None

    setattr(checked, "__init__", __init__)  # noqa: B010 (mypy refuses assigning to a method)
    return cast(type[_T], checked)


def check_sampling_arguments(num_inference_steps: Any = None, guidance_scale: Any = None) -> None:
    """Call-time diffusion arguments, checked like the config's (None: use the config's value).

    Raises:
        ValueError: ``num_inference_steps must be an integer >= 1, got 0`` and the like.
    """
    for name, value, check in (
        ("num_inference_steps", num_inference_steps, _check_steps),
        ("guidance_scale", guidance_scale, _check_guidance),
    ):
        if value is None:
            continue
        try:
            check(value)
        except _Invalid as e:
            raise ValueError(f"{name} {e.describe()}") from None


# --- the config -----------------------------------------------------------------------------------------
@_validated
class EncoderConfig:
    """A media encoder C_x: media -> feature vectors in the space the decoder is conditioned on."""

    kind: Annotated[str, PlainValidator(_one_of(*ENCODER_KINDS))]
    feature_dim: PositiveInt = 64  # width of C_x(x), the space c_MLLM regresses to
    num_feature_tokens: PositiveInt = 1  # vectors per medium in C_x(x) (1 = one pooled vector)
    channels: Widths = (32, 64, 128)  # tiny CNN widths, one stride-2 stage each
    subfolder: OptionalName = None  # pretrained kinds: folder (relative to the model folder, or absolute)


@_validated
class DecoderConfig:
    """A diffusion decoder conditioned on feature vectors (c_MLLM at inference, C_x(x) when training)."""

    kind: Annotated[str, PlainValidator(_one_of(*DECODER_KINDS))]
    block_out_channels: Widths = (32, 64, 64)
    layers_per_block: PositiveInt = 1
    cond_channels: NonNegativeInt = 4  # feature also projected into this many extra input channels
    fold: PositiveInt = (
        1  # pixel-unshuffle factor: denoise at 1/fold resolution with fold^2 x channels (CPU speed)
    )
    num_train_timesteps: PositiveInt = 1000
    prediction_type: Annotated[str, PlainValidator(_one_of(*PREDICTION_TYPES))] = "v_prediction"
    cond_dropout: Fraction = 0.1  # classifier-free guidance: share of steps trained unconditioned
    num_inference_steps: PositiveInt = 20
    guidance_scale: NonNegativeFloat = 1.0
    subfolder: OptionalName = None

    @model_validator(mode="after")
    def _ddim_steps_fit(self) -> DecoderConfig:
        # DDIM picks its steps among the training timesteps (the pipelines bring their own schedulers)
        if self.kind == "tiny_diffusion" and self.num_inference_steps > self.num_train_timesteps:
            raise _Invalid(
                f"must be <= num_train_timesteps ({self.num_train_timesteps})",
                self.num_inference_steps,
                ("num_inference_steps",),
            )
        return self


@_validated
class CoDi2Config:
    """Everything needed to rebuild a CoDi-2 model; `to_json_file` / `from_json_file` round-trip it."""

    preset: Annotated[str, PlainValidator(_one_of(*PRESETS))] = "tiny"
    # --- language model (a transformers causal LM; LlamaForCausalLM for both presets) -------------
    # LlamaConfig kwargs (tiny) or {} (paper, from disk)
    lm: Annotated[dict[str, Any], PlainValidator(_lm_kwargs)] = field(default_factory=dict)
    lm_subfolder: Name = "language_model"
    # --- media in -----------------------------------------------------------------------------------
    image_size: PositiveInt = 32  # images are resized to this square before encoding / as decoder targets
    sample_rate: Annotated[int, PlainValidator(_integer(*SAMPLE_RATE_RANGE))] = 16000
    audio_num_samples: PositiveInt = 16128  # audio is padded/cropped to this many samples
    n_mels: PositiveInt = 32
    mel_frames: PositiveInt = 64
    num_media_tokens: PositiveInt = 2  # placeholder tokens each input medium expands to
    projector_type: Annotated[str, PlainValidator(_one_of(*PROJECTOR_TYPES))] = "mlp2x_gelu_ln"
    image_encoder: Annotated[EncoderConfig, AfterValidator(_kind_in(IMAGE_ENCODER_KINDS))] = field(
        default_factory=lambda: EncoderConfig("tiny_image")
    )
    audio_encoder: Annotated[EncoderConfig, AfterValidator(_kind_in(AUDIO_ENCODER_KINDS))] = field(
        default_factory=lambda: EncoderConfig("tiny_audio")
    )
    # --- media out ----------------------------------------------------------------------------------
    image_decoder: Annotated[DecoderConfig, AfterValidator(_kind_in(IMAGE_DECODER_KINDS))] = field(
        default_factory=lambda: DecoderConfig("tiny_diffusion")
    )
    audio_decoder: Annotated[DecoderConfig, AfterValidator(_kind_in(AUDIO_DECODER_KINDS))] = field(
        default_factory=lambda: DecoderConfig("tiny_diffusion")
    )
    # --- loss: alpha * MSE(c_MLLM, C_x(target)) + diffusion_weight * L_DM + L_t -----------------------
    alpha: NonNegativeFloat = 1.0
    diffusion_loss_weight: NonNegativeFloat = 1.0
    diffusion_loss_into_lm: Flag = False  # condition L_DM on c_MLLM (paper) instead of C_x(target)
    # At generation, put c_MLLM through the fixed normalisation its encoder's features end in (the tiny
    # encoders' LayerNorm; the pretrained encoders have none) before a decoder reads it. The decoders
    # learn from C_x(x) alone, and an MSE regressor's c_MLLM is shrunk towards the mean (norm about 7.1
    # where every C_x has 8). Measured in benchmarks/results/renorm_c_mllm.txt.
    renorm_c_mllm: Flag = True
    max_length: PositiveInt = 1024
    # What the model can talk about (see `codi2_agent.model.vocabulary`); {} = open vocabulary.
    vocabulary: Annotated[dict[str, Any], PlainValidator(_vocabulary)] = field(default_factory=dict)

    # --- presets ----------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> CoDi2Config:
        """The embedded default: ~1-2M-parameter Llama, small CNN encoders, pixel/mel UNet decoders."""
        cfg = cls(
            preset="tiny",
            lm=dict(
                hidden_size=128,
                intermediate_size=384,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=1024,
                rms_norm_eps=1e-5,
                tie_word_embeddings=True,
            ),
            # Classifier-free guidance at 3.5 (the decoders train with 10 % null conditions): decoding
            # the true C_x of 80 held-out renders, guidance 1 / 2 / 3.5 / 5 / 7.5 gives image 0.91 /
            # 0.97 / 0.99 / 0.97 / 0.95 (shape is the attribute that moves) and audio 0.84 / 0.91 /
            # 0.94 / 0.90 / 0.88 (instrument and ambience); twice the UNet work per step.
            image_decoder=DecoderConfig(
                "tiny_diffusion",
                block_out_channels=(64, 128, 128),
                layers_per_block=2,
                fold=2,
                guidance_scale=3.5,
            ),
            audio_decoder=DecoderConfig(
                "tiny_diffusion",
                block_out_channels=(32, 64, 128),
                layers_per_block=1,
                fold=2,
                guidance_scale=3.5,
            ),
        )
        return cfg.replace(**overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> CoDi2Config:
        """LLaMA-2-chat + CLIP-H (unCLIP's own image encoder) / ImageBind + SD-2.1-unCLIP-H + AudioLDM-2.

        Every component is loaded from a subfolder of the model folder (or an absolute local path).
        Feature widths follow the decoders' conditioning spaces: 1024-d unCLIP image embeddings and
        AudioLDM-2's 8 x 768 "generated prompt embeds".
        """
        cfg = cls(
            preset="paper",
            lm={},
            image_size=768,
            sample_rate=16000,
            audio_num_samples=16000 * 10,
            num_media_tokens=1,
            image_encoder=EncoderConfig("clip_vision", feature_dim=1024, subfolder="image_encoder"),
            audio_encoder=EncoderConfig(
                "clap_audio", feature_dim=768, num_feature_tokens=8, subfolder="audio_encoder"
            ),
            image_decoder=DecoderConfig(
                "stable_unclip", subfolder="image_decoder", num_inference_steps=20, guidance_scale=7.5
            ),
            audio_decoder=DecoderConfig(
                "audioldm2", subfolder="audio_decoder", num_inference_steps=100, guidance_scale=3.5
            ),
            alpha=1.0,
            diffusion_loss_into_lm=True,
            max_length=4096,
        )
        return cfg.replace(**overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> CoDi2Config:
        presets = {"tiny": cls.tiny, "paper": cls.paper}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(presets)}")
        return presets[name](**overrides)

    # --- (de)serialisation ------------------------------------------------------------------------
    def replace(self, **overrides: Any) -> CoDi2Config:
        data = self.to_dict()
        data.update({k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in overrides.items()})
        return CoDi2Config.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | Path | None = None) -> CoDi2Config:
        """Build and validate a config from its JSON form; `source` (a file) prefixes any error.

        Raises:
            ConfigError: an unknown field, a wrong type or an out-of-range value (each named by its
                path, e.g. ``image_decoder.guidance_scale``).
        """
        if not isinstance(data, Mapping):
            raise ConfigError([("", f"must be a JSON object, got {type(data).__name__}")], source)
        unknown = set(map(str, data)) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError([("", f"unknown CoDi2Config fields: {sorted(unknown)}")], source)
        try:
            return cls(**data)
        except ConfigError as e:
            if source is None:
                raise
            raise ConfigError(e.problems, source) from None

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> CoDi2Config:
        """Read and validate a config.json. Raises `ConfigError` naming `path` (and the field)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError([("", f"not valid JSON ({e})")], path) from None
        return cls.from_dict(data, source=path)
