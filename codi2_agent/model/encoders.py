"""Media encoders C_x: media tensors -> feature vectors in the space the decoders are conditioned on.

Every encoder maps a batch from `CoDi2Processor.media_tensor` to `(B, num_feature_tokens, D)`.
The same features serve three roles, as in CoDi-2: LM input (through the projector), the
regression target for `c_MLLM`, and the memory's embedding space.

- `TinyImageEncoder` / `TinyAudioEncoder`: small CNNs (audio reads a log-mel image); ours, trained.
- `ClipImageEncoder`: transformers' `CLIPVisionModelWithProjection`, i.e. the OpenCLIP-H image tower
  that SD-2.1-unCLIP-H is conditioned on (its `image_encoder` subfolder).
- `ClapAudioEncoder`: transformers' `ClapModel` audio tower (AudioLDM-2's own CLAP), pooled and
  expanded to the 8 x 768 sequence AudioLDM-2's UNet reads.
- `ImageBindEncoder`: the paper's encoder; optional (CC BY-NC-SA), imported lazily.
"""

from __future__ import annotations

from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from codi2_agent.media import Modality
from codi2_agent.model.audio import MelSpectrogram
from codi2_agent.model.configuration_codi2 import CoDi2Config, EncoderConfig
from codi2_agent.model.placement import cast_floating

__all__ = [
    "ClapAudioEncoder",
    "ClipImageEncoder",
    "ImageBindEncoder",
    "MediaEncoder",
    "TinyAudioEncoder",
    "TinyImageEncoder",
    "build_encoder",
]


class MediaEncoder(nn.Module):
    """Base: `forward(values) -> (B, num_feature_tokens, feature_dim)`."""

    modality: Modality
    pretrained: bool = False  # True: weights live in their own subfolder (transformers layout)

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.feature_dim = cfg.feature_dim
        self.num_feature_tokens = cfg.num_feature_tokens

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the weights: inputs are cast to it (processor tensors come as float32)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def place(self, device: torch.device, dtype: torch.dtype, offload: bool = False) -> None:
        """Move to `device`, cast to `dtype` (encoders are small next to the decoders: never offloaded)."""
        cast_floating(self.to(device), dtype)

    def onto_features(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted features (..., D) -> the normalisation every output of this encoder ends in, so a
        decoder trained on this encoder's features reads a prediction on the same scale. Identity here:
        the pretrained encoders (CLIP, CLAP, ImageBind) keep their predictions as the heads make them
        (renormalising them is not measured at paper scale)."""
        return features


def _conv_stack(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
            nn.GroupNorm(8, out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(8, out_channels),
            nn.SiLU(),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


# CLIP's (and ImageBind's) pixel normalisation
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_pixels(values: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, S, S) in [-1, 1] -> CLIP's input: bicubic to `size`, normalised. Differentiable, in torch."""
    x = nn.functional.interpolate((values + 1) / 2, size=(size, size), mode="bicubic", align_corners=False)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _require_transformers_files(path: Path, what: str, extra: tuple[str, ...] = ()) -> None:
    """Check a transformers folder before loading: a missing config would otherwise load a default one."""
    from codi2_agent.model.modeling_codi2 import WeightsNotFoundError

    missing = [name for name in ("config.json", *extra) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES[::2]))
    if missing:
        raise WeightsNotFoundError(f"{what} folder {path} is incomplete: missing {', '.join(missing)}")


def resample_audio(wav: np.ndarray, source: int, target: int) -> np.ndarray:
    """Polyphase resampling along the last axis (scipy; no torchaudio)."""
    if source == target:
        return wav
    from scipy.signal import resample_poly

    g = gcd(source, target)
    return resample_poly(wav, target // g, source // g, axis=-1).astype(np.float32)


class TinyImageEncoder(MediaEncoder):
    """(B, 3, S, S) in [-1, 1] -> (B, 1, D). Strided CNN, global mean+max pool, linear."""

    modality = Modality.IMAGE

    def __init__(self, cfg: EncoderConfig, config: CoDi2Config) -> None:
        super().__init__(cfg)
        self.body = _conv_stack(3, cfg.channels)
        self.out = nn.Linear(2 * cfg.channels[-1], cfg.feature_dim)
        # Unit-scale features: they are regression targets and decoder conditions, so keep them bounded.
        self.norm = nn.LayerNorm(cfg.feature_dim, elementwise_affine=False)

    def onto_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(features)  # zero mean, unit variance over D: norm sqrt(D) (no weights to learn)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        h = self.body(values.to(self.dtype))  # (B, C, S/8, S/8)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        return self.norm(self.out(pooled)).unsqueeze(1)  # (B, 1, D)


class TinyAudioEncoder(MediaEncoder):
    """(B, N) waveform -> log-mel (B, 1, M, T) -> CNN -> (B, 1, D)."""

    modality = Modality.AUDIO

    def __init__(self, cfg: EncoderConfig, config: CoDi2Config) -> None:
        super().__init__(cfg)
        self.mel = MelSpectrogram(config.sample_rate, n_mels=config.n_mels, num_frames=config.mel_frames)
        self.body = _conv_stack(1, cfg.channels)
        self.out = nn.Linear(2 * cfg.channels[-1], cfg.feature_dim)
        self.norm = nn.LayerNorm(cfg.feature_dim, elementwise_affine=False)

    def onto_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(features)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        h = self.body(self.mel(values).to(self.dtype))  # mel in fp32, the CNN in the model's dtype
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)  # (B, 2C)
        return self.norm(self.out(pooled)).unsqueeze(1)  # (B, 1, D)


class ClipImageEncoder(MediaEncoder):
    """unCLIP's CLIP-H image tower: (B, 3, S, S) in [-1, 1] -> (B, 1, 1024) `image_embeds`."""

    modality = Modality.IMAGE
    pretrained = True

    def __init__(self, cfg: EncoderConfig, config: CoDi2Config, model: Any) -> None:
        super().__init__(cfg)
        self.model = model
        self.size = model.config.image_size

    @classmethod
    def load(
        cls, cfg: EncoderConfig, config: CoDi2Config, path: Path, dtype: torch.dtype | None = None
    ) -> ClipImageEncoder:
        from transformers import CLIPVisionModelWithProjection

        _require_transformers_files(path, "CLIP image encoder")
        model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True, dtype=dtype)
        return cls(cfg, config, model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        x = clip_pixels(values, self.size)
        return self.model(pixel_values=x.to(self.model.dtype)).image_embeds.unsqueeze(1)  # (B, 1, 1024)

    def save(self, path: Path) -> None:
        self.model.save_pretrained(path)


class ClapAudioEncoder(MediaEncoder):
    """AudioLDM-2's CLAP audio tower: waveform -> pooled 512-d embed -> (B, K, 768) via a learned map.

    AudioLDM-2's UNet reads a sequence of K x 768 "generated prompt embeds" (what its GPT-2 makes
    from a caption); the linear `expand` is part of this encoder (saved in `expand.safetensors`).
    Assembling a paper folder creates it random: C_x(x) is then not a sequence AudioLDM-2 can read.
    Paper training's `bridge` stage (`codi2_agent.training.paper.bridge`) trains it, regressing
    `expand(CLAP(audio))` onto the pipeline's own conditioning for the audio's caption; its
    checkpoints carry the trained `expand`, and an exported folder writes it here.
    """

    EXPAND = "expand.safetensors"

    modality = Modality.AUDIO
    pretrained = True

    def __init__(self, cfg: EncoderConfig, config: CoDi2Config, model: Any, feature_extractor: Any) -> None:
        super().__init__(cfg)
        self.model, self.feature_extractor = model, feature_extractor
        self.sample_rate = config.sample_rate
        width = model.config.projection_dim
        self.expand = nn.Linear(width, cfg.num_feature_tokens * cfg.feature_dim)

    @classmethod
    def load(
        cls, cfg: EncoderConfig, config: CoDi2Config, path: Path, dtype: torch.dtype | None = None
    ) -> ClapAudioEncoder:
        from safetensors.torch import load_file
        from transformers import ClapFeatureExtractor, ClapModel

        # expand.safetensors is CoDi-2's own (trained) part: without it C_x would be a random map
        _require_transformers_files(
            path, "CLAP audio encoder", extra=("preprocessor_config.json", cls.EXPAND)
        )
        enc = cls(
            cfg,
            config,
            ClapModel.from_pretrained(path, local_files_only=True, dtype=dtype),
            ClapFeatureExtractor.from_pretrained(path, local_files_only=True),
        )
        enc.expand.load_state_dict(load_file(path / cls.EXPAND))
        if dtype is not None:
            enc.expand.to(dtype)
        return enc

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        target = self.feature_extractor.sampling_rate
        wav = resample_audio(values.detach().float().cpu().numpy(), self.sample_rate, target)
        feats = self.feature_extractor(list(wav), sampling_rate=target, return_tensors="pt")
        is_longer = feats.get("is_longer")  # only fusion CLAPs read it
        emb = self.model.get_audio_features(
            input_features=feats["input_features"].to(values.device, self.model.dtype),
            is_longer=None if is_longer is None else is_longer.to(values.device),
        )
        emb = getattr(emb, "pooler_output", emb)  # (B, P): transformers 5 returns an output object
        emb = emb.to(self.expand.weight.dtype)
        return self.expand(emb).view(values.shape[0], self.num_feature_tokens, self.feature_dim)

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        self.model.save_pretrained(path)
        self.feature_extractor.save_pretrained(path)
        expand = {k: v.contiguous() for k, v in self.expand.state_dict().items()}
        save_file(expand, path / self.EXPAND)


class ImageBindEncoder(MediaEncoder):
    """The paper's ImageBind-huge (image or audio) -> (B, 1, 1024). Not a dependency: CC BY-NC-SA 4.0.

    Inputs are prepared as ImageBind's own `data.load_and_transform_*` do: images bicubic to 224 with
    CLIP normalisation; audio at 16 kHz cut into 3 evenly spaced 2 s clips, each turned into ImageBind's
    128-bin Kaldi fbank (its `waveform2melspec`, which needs its torchaudio) and normalised.
    """

    pretrained = True
    WEIGHTS = "imagebind_huge.pth"
    IMAGE_SIZE = 224
    AUDIO_RATE, CLIP_S, NUM_CLIPS, MEL_BINS, MEL_FRAMES = 16000, 2.0, 3, 128, 204
    MEL_MEAN, MEL_STD = -4.268, 9.138

    def __init__(self, cfg: EncoderConfig, config: CoDi2Config, modality: Modality, path: Path) -> None:
        super().__init__(cfg)
        try:
            from imagebind.models import imagebind_model
        except ImportError as e:
            raise ImportError(
                "the 'imagebind' encoder needs the ImageBind package (CC BY-NC-SA 4.0, non-commercial): "
                "pip install git+https://github.com/facebookresearch/ImageBind, or use the 'clip_vision' / "
                "'clap_audio' encoders of the paper preset"
            ) from e
        from codi2_agent.model.modeling_codi2 import WeightsNotFoundError

        self.modality = modality
        self.sample_rate = config.sample_rate
        weights = path / self.WEIGHTS
        if not weights.is_file():
            raise WeightsNotFoundError(f"ImageBind folder {path} is incomplete: missing {self.WEIGHTS}")
        self.model = imagebind_model.imagebind_huge(pretrained=False)
        self.model.load_state_dict(torch.load(weights, map_location="cpu"))
        self.key = "vision" if modality is Modality.IMAGE else "audio"  # ImageBind's ModalityType values

    def _audio_inputs(self, values: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, clips, 1, 128, 204), as `imagebind.data.load_and_transform_audio_data`."""
        from imagebind.data import waveform2melspec

        wav = torch.from_numpy(  # (B, N) at 16 kHz
            resample_audio(values.detach().float().cpu().numpy(), self.sample_rate, self.AUDIO_RATE)
        )
        clip_len = int(self.CLIP_S * self.AUDIO_RATE)
        last_start = max(wav.shape[-1] - clip_len, 0)
        starts = np.linspace(0, last_start, self.NUM_CLIPS).astype(int)
        out = torch.stack(
            [
                torch.stack(
                    [
                        waveform2melspec(
                            w[None, s : s + clip_len].clone(), self.AUDIO_RATE, self.MEL_BINS, self.MEL_FRAMES
                        )
                        for s in starts
                    ]
                )
                for w in wav
            ]
        )
        return ((out - self.MEL_MEAN) / self.MEL_STD).to(values.device)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.modality is Modality.IMAGE:
            x = clip_pixels(values, self.IMAGE_SIZE)
        else:
            x = self._audio_inputs(values)
        return self.model({self.key: x.to(self.dtype)})[self.key].unsqueeze(1)  # (B, 1, 1024)

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path / self.WEIGHTS)


_TINY = {"tiny_image": TinyImageEncoder, "tiny_audio": TinyAudioEncoder}
_PRETRAINED: dict[str, Any] = {"clip_vision": ClipImageEncoder, "clap_audio": ClapAudioEncoder}


def build_encoder(
    cfg: EncoderConfig,
    config: CoDi2Config,
    modality: Modality,
    folder: Path | None,
    dtype: torch.dtype | None = None,
) -> MediaEncoder:
    """Build the encoder `cfg.kind` names; pretrained kinds load from `folder / cfg.subfolder`.

    Pretrained weights load in `dtype` (None: as saved); tiny ones are built in float32 and cast by
    `CoDi2Model.place`.
    """
    if cfg.kind in _TINY:
        enc: MediaEncoder = _TINY[cfg.kind](cfg, config)
    elif cfg.kind in _PRETRAINED or cfg.kind == "imagebind":
        if folder is None or cfg.subfolder is None:
            raise ValueError(f"encoder kind {cfg.kind!r} loads pretrained weights: give a model folder")
        path = folder / cfg.subfolder
        if cfg.kind == "imagebind":
            enc = ImageBindEncoder(cfg, config, modality, path)
        else:
            enc = _PRETRAINED[cfg.kind].load(cfg, config, path, dtype)
    else:
        raise ValueError(
            f"unknown encoder kind {cfg.kind!r}; expected one of "
            f"{sorted([*_TINY, *_PRETRAINED, 'imagebind'])}"
        )
    if enc.modality is not modality:
        raise ValueError(f"encoder kind {cfg.kind!r} encodes {enc.modality.value}, not {modality.value}")
    return enc
