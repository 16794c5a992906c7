"""`CoDi2Config`: one architecture, two presets (`tiny`, `paper`), saved as JSON beside the weights.

Example:
    >>> cfg = CoDi2Config.tiny()
    >>> CoDi2Config.from_dict(cfg.to_dict()) == cfg
    True
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_NAME", "CoDi2Config", "DecoderConfig", "EncoderConfig"]

CONFIG_NAME = "config.json"


@dataclass
class EncoderConfig:
    """A media encoder C_x: media -> feature vectors in the space the decoder is conditioned on."""

    kind: str  # "tiny_image" | "tiny_audio" | "clip_vision" | "clap_audio" | "imagebind"
    feature_dim: int = 64  # width of C_x(x), the space c_MLLM regresses to
    num_feature_tokens: int = 1  # vectors per medium in C_x(x) (1 = one pooled vector)
    channels: tuple[int, ...] = (32, 64, 128)  # tiny CNN widths, one stride-2 stage each
    subfolder: str | None = None  # pretrained kinds: folder (relative to the model folder, or absolute)


@dataclass
class DecoderConfig:
    """A diffusion decoder conditioned on feature vectors (c_MLLM at inference, C_x(x) when training)."""

    kind: str  # "tiny_diffusion" | "stable_unclip" | "audioldm2"
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    cond_channels: int = 4  # feature also projected into this many extra input channels
    fold: int = 1  # pixel-unshuffle factor: denoise at 1/fold resolution with fold^2 x channels (CPU speed)
    num_train_timesteps: int = 1000
    prediction_type: str = "v_prediction"
    cond_dropout: float = 0.1  # classifier-free guidance: share of steps trained unconditioned
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    subfolder: str | None = None


@dataclass
class CoDi2Config:
    """Everything needed to rebuild a CoDi-2 model; `to_json_file` / `from_json_file` round-trip it."""

    preset: str = "tiny"
    # --- language model (a transformers causal LM; LlamaForCausalLM for both presets) -------------
    lm: dict[str, Any] = field(default_factory=dict)  # LlamaConfig kwargs (tiny) or {} (paper, from disk)
    lm_subfolder: str = "language_model"
    # --- media in -----------------------------------------------------------------------------------
    image_size: int = 32  # images are resized to this square before encoding / as decoder targets
    sample_rate: int = 16000
    audio_num_samples: int = 16128  # audio is padded/cropped to this many samples
    n_mels: int = 32
    mel_frames: int = 64
    num_media_tokens: int = 2  # placeholder tokens each input medium expands to
    projector_type: str = "mlp2x_gelu_ln"
    image_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("tiny_image"))
    audio_encoder: EncoderConfig = field(default_factory=lambda: EncoderConfig("tiny_audio"))
    # --- media out ----------------------------------------------------------------------------------
    image_decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig("tiny_diffusion"))
    audio_decoder: DecoderConfig = field(default_factory=lambda: DecoderConfig("tiny_diffusion"))
    # --- loss: alpha * MSE(c_MLLM, C_x(target)) + diffusion_weight * L_DM + L_t -----------------------
    alpha: float = 1.0
    diffusion_loss_weight: float = 1.0
    diffusion_loss_into_lm: bool = False  # condition L_DM on c_MLLM (paper) instead of C_x(target)
    max_length: int = 1024
    # What the model can talk about (see `codi2_agent.model.vocabulary`); {} = open vocabulary.
    vocabulary: dict[str, Any] = field(default_factory=dict)

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
            image_decoder=DecoderConfig(
                "tiny_diffusion", block_out_channels=(64, 128, 128), layers_per_block=2, fold=2
            ),
            audio_decoder=DecoderConfig(
                "tiny_diffusion", block_out_channels=(32, 64, 128), layers_per_block=1, fold=2
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
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown CoDi2Config fields: {sorted(unknown)}")
        data.update({k: asdict(v) if hasattr(v, "__dataclass_fields__") else v for k, v in overrides.items()})
        return CoDi2Config.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoDi2Config:
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown CoDi2Config fields: {sorted(unknown)}")
        for name, sub in (
            ("image_encoder", EncoderConfig),
            ("audio_encoder", EncoderConfig),
            ("image_decoder", DecoderConfig),
            ("audio_decoder", DecoderConfig),
        ):
            if name in data and isinstance(data[name], dict):
                sub_data = {k: tuple(v) if isinstance(v, list) else v for k, v in data[name].items()}
                data[name] = sub(**sub_data)  # type: ignore[arg-type]
        return cls(**data)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> CoDi2Config:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from None
