"""Paper-scale decoders: diffusers pipelines driven by CoDi-2's c_MLLM features.

- `UnCLIPImageDecoder` wraps `StableUnCLIPImg2ImgPipeline` (SD-2.1-unCLIP-H). c_MLLM (B, 1, 1024)
  is a CLIP-H image embedding: it goes in as `image_embeds=`, noise-augmented by the pipeline's
  `image_normalizer` / `image_noising_scheduler` and read by the UNet as `class_labels`.
- `AudioLDM2Decoder` wraps `AudioLDM2Pipeline`. c_MLLM (B, 8, 768) stands in for the sequence
  AudioLDM-2's own GPT-2 would have produced (`generated_prompt_embeds=`, the UNet's first
  cross-attention); the prompt text, encoded by its T5, feeds the second cross-attention.

Both load a pipeline folder in diffusers' layout (`model_index.json` + one folder per component),
never touch the network, and save it back with `save_pretrained`. `loss` is each pipeline's own
training objective (noise / v-prediction MSE on VAE latents) with the conditioning passed exactly
as `__call__` passes it, so gradients reach c_MLLM and, through it, the LM.

`decode(prompt=...)` hands the LM's text answer (or "" when there is none) to the pipeline as its
text prompt; `loss` uses the empty prompt. The pretrained decoders already learned their
unconditional branch, so `loss` applies no condition dropout: L_DM here trains what conditions
the decoder. Both pipelines' torch modules are registered as submodules, so `.to()`, `.eval()` and
`requires_grad_(False)` on the CoDi-2 model reach them (their weights stay in their own folders).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from codi2_agent.media import Media, Modality
from codi2_agent.model.configuration_codi2 import CoDi2Config, DecoderConfig
from codi2_agent.model.decoders import Generators, MediaDecoder, ProgressCallback
from codi2_agent.model.encoders import resample_audio
from codi2_agent.model.loading_bars import loading_bars_on_terminal_only
from codi2_agent.model.placement import cast_floating

__all__ = ["AudioLDM2Decoder", "UnCLIPImageDecoder", "build_paper_decoder", "load_pipeline"]

PIPELINE_INDEX = "model_index.json"


@loading_bars_on_terminal_only()  # diffusers' own bars: imported by now
def load_pipeline(pipeline_class: Any, path: Path, dtype: torch.dtype | None = None) -> Any:
    """`pipeline_class.from_pretrained(path, dtype=dtype)` from local files only; a missing part names
    the path. `dtype` None loads as saved."""
    from codi2_agent.model.modeling_codi2 import WeightsNotFoundError

    name = pipeline_class.__name__
    index = path / PIPELINE_INDEX
    if not index.is_file():
        raise WeightsNotFoundError(f"{name} folder {path} is incomplete: missing {PIPELINE_INDEX}")
    # diffusers may load an absent component as None (tokenizers) or name only the folder it looked in
    entries = json.loads(index.read_text())
    components = [k for k, v in entries.items() if not k.startswith("_") and isinstance(v, list) and v[0]]
    missing = [f"{k}/" for k in components if not (path / k).is_dir()]
    if missing:
        raise WeightsNotFoundError(f"{name} folder {path} is incomplete: missing {', '.join(missing)}")
    try:
        pipe = pipeline_class.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as e:  # diffusers raises these for absent or unreadable component files
        raise WeightsNotFoundError(f"cannot load {name} from {path}: {e}") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _PipelineDecoder(MediaDecoder):
    """Holds a diffusers pipeline; its torch modules are registered so `.to()` / `.eval()` reach them."""

    pretrained = True

    def __init__(self, cfg: DecoderConfig, config: CoDi2Config, pipe: Any) -> None:
        super().__init__(cfg)
        from diffusers import DDPMScheduler

        self.pipe = pipe
        self.parts = nn.ModuleDict({k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)})
        # Training noises with the sampler's own schedule (as diffusers' training scripts do).
        self.train_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.sample_rate = config.sample_rate
        self.image_size = config.image_size

    def save(self, path: Path) -> None:
        self.pipe.save_pretrained(path, safe_serialization=True)

    def place(self, device: torch.device, dtype: torch.dtype, offload: bool = False) -> None:
        """`.to(device)` and cast; with `offload`, diffusers' model CPU offload instead: the pipeline's
        models wait in CPU memory and each moves to `device` only while it runs."""
        if not offload:
            cast_floating(self.to(device), dtype)
            return
        cast_floating(self.to("cpu"), dtype)
        for name, buffer in self._buffers.items():  # our own (mel) buffers run beside the pipeline
            if buffer is not None:
                self._buffers[name] = buffer.to(device)
        self.pipe.enable_model_cpu_offload(device=device)

    @property
    def device(self) -> torch.device:
        """Where the pipeline computes: the accelerator under CPU offload, else where its UNet is."""
        return torch.device(self.pipe._execution_device)

    @property
    def dtype(self) -> torch.dtype:
        return self.pipe.unet.dtype

    def _noise_loss(
        self, latents: torch.Tensor, generator: torch.Generator | None, **unet_kwargs: Any
    ) -> torch.Tensor:
        """The pipeline's training objective on clean `latents`: MSE to noise (or velocity)."""
        from diffusers.utils.torch_utils import randn_tensor

        b = latents.shape[0]
        noise = randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        t = _randint(self.train_scheduler.config.num_train_timesteps, b, generator, latents.device)
        noisy = self.train_scheduler.add_noise(latents, noise, t)
        pred = self.pipe.unet(noisy, t, return_dict=False, **unet_kwargs)[0]
        kind = self.train_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.train_scheduler.get_velocity(latents, noise, t)
        else:
            raise ValueError(f"unsupported prediction_type {kind!r} in {type(self.pipe).__name__}.scheduler")
        return nn.functional.mse_loss(pred.float(), target.float())

    @staticmethod
    def _step_callback(callback: ProgressCallback | None, total: int) -> Any:
        if callback is None:
            return None
        return lambda i, t, latents: callback(i + 1, total)  # diffusers' (step, timestep, latents) -> ours


def _randint(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Seedable integers in [0, high), drawn on the generator's device (a CPU generator may drive a GPU)."""
    where = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=where).to(device)


def _prompts(prompt: str | None, n: int) -> list[str]:
    return [prompt or ""] * n


class UnCLIPImageDecoder(_PipelineDecoder):
    """SD-2.1-unCLIP-H: c_MLLM (B, 1, D) CLIP image embeddings -> images.

    `noise_level` is unCLIP's embedding augmentation at sampling (0 = follow the embedding closely).
    Training draws it uniformly over the noising schedule, as unCLIP itself was trained, so the
    decoder sees c_MLLM at every augmentation level.
    """

    modality = Modality.IMAGE

    def __init__(self, cfg: DecoderConfig, config: CoDi2Config, pipe: Any, noise_level: int = 0) -> None:
        super().__init__(cfg, config, pipe)
        self.noise_level = noise_level
        self.embedding_dim = pipe.image_normalizer.mean.shape[-1]

    @classmethod
    def load(
        cls, cfg: DecoderConfig, config: CoDi2Config, path: Path, dtype: torch.dtype | None = None
    ) -> UnCLIPImageDecoder:
        from diffusers import StableUnCLIPImg2ImgPipeline

        return cls(cfg, config, load_pipeline(StableUnCLIPImg2ImgPipeline, path, dtype))

    def _embeds(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[1] != 1 or features.shape[2] != self.embedding_dim:
            raise ValueError(
                f"unCLIP features must be (B, 1, {self.embedding_dim}), got {tuple(features.shape)}"
            )
        return features[:, 0].to(self.device, self.dtype)  # (B, D): the pipeline's `image_embeds`

    def augment(
        self, embeds: torch.Tensor, levels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """unCLIP's noise augmentation with one level per sample: (B, D) -> (B, 2D) `class_labels`.

        `StableUnCLIPImg2ImgPipeline.noise_image_embeddings` step for step (normalise, noise with
        `image_noising_scheduler`, un-normalise, append the level's sinusoidal embedding), but for a
        batch of levels and without its `image_normalizer.to(...)`, which re-creates the normaliser's
        parameters (so they would turn trainable again and collect gradients).
        """
        from diffusers.models.embeddings import get_timestep_embedding
        from diffusers.utils.torch_utils import randn_tensor

        normalizer = self.pipe.image_normalizer
        noise = randn_tensor(embeds.shape, generator=generator, device=embeds.device, dtype=embeds.dtype)
        noised = self.pipe.image_noising_scheduler.add_noise(normalizer.scale(embeds), noise, levels)
        level_embeds = get_timestep_embedding(
            levels, embeds.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0
        )
        return torch.cat([normalizer.unscale(noised), level_embeds.to(embeds.dtype)], dim=1)

    @torch.no_grad()
    def _empty_prompt_embeds(self, n: int) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(_prompts(None, n), self.device, 1, False)
        return embeds  # (B, L, H): "" encoded, what the UNet cross-attends to for an image variation

    def loss(
        self, values: torch.Tensor, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Noise-prediction loss on VAE latents of `values` ((B, 3, S, S) in [-1, 1]) given `features`."""
        pipe = self.pipe
        embeds = self._embeds(features)
        with torch.no_grad():
            dist = pipe.vae.encode(values.to(self.device, self.dtype)).latent_dist
            latents = dist.sample(generator) * pipe.vae.config.scaling_factor  # (B, 4, S/f, S/f)
        levels = _randint(
            pipe.image_noising_scheduler.config.num_train_timesteps, embeds.shape[0], generator, self.device
        )
        class_labels = self.augment(embeds, levels, generator)  # (B, 2D)
        text = self._empty_prompt_embeds(len(values))
        return self._noise_loss(latents, generator, encoder_hidden_states=text, class_labels=class_labels)

    @torch.no_grad()
    def decode(
        self,
        features: torch.Tensor,
        *,
        generator: Generators = None,  # one, or one per row (diffusers takes a list)
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        callback: ProgressCallback | None = None,
        prompt: str | None = None,
    ) -> list[Media]:
        embeds = self._embeds(features)
        steps = num_inference_steps or self.cfg.num_inference_steps
        frozen = not self.pipe.image_normalizer.mean.requires_grad
        out = self.pipe(
            image=None,  # the embedding replaces the reference image: no CLIP encoding inside the pipeline
            image_embeds=embeds,
            prompt=_prompts(prompt, embeds.shape[0]),
            noise_level=self.noise_level,
            height=self.image_size,
            width=self.image_size,
            num_inference_steps=steps,
            guidance_scale=self.cfg.guidance_scale if guidance_scale is None else guidance_scale,
            generator=generator,
            callback=self._step_callback(callback, steps),
            output_type="np",
        )
        self.pipe.image_normalizer.requires_grad_(not frozen)  # its `.to()` made new Parameters
        return [Media.from_image(np.asarray(img, dtype=np.float32)) for img in out.images]


class AudioLDM2Decoder(_PipelineDecoder):
    """AudioLDM-2: c_MLLM (B, K, D) as GPT-2 "generated prompt embeds" + T5 text embeddings -> audio.

    Training targets are log-mel spectrograms computed as AudioLDM does (STFT n_fft 1024 with hop =
    the vocoder's total upsampling, slaney mel filters up to Nyquist, natural log of magnitudes
    clamped at 1e-5), the space its VAE encodes and its HiFi-GAN vocoder inverts. The pipeline has
    no waveform -> mel step of its own (its ClapFeatureExtractor is CLAP's 48 kHz front end for
    ranking outputs), so the mel is computed here from the vocoder's configuration.
    """

    modality = Modality.AUDIO
    mel_filters: torch.Tensor  # (M, F) buffer
    window: torch.Tensor  # (N_FFT,) buffer
    N_FFT = 1024  # AudioLDM's STFT size and window length

    def __init__(self, cfg: DecoderConfig, config: CoDi2Config, pipe: Any) -> None:
        super().__init__(cfg, config, pipe)
        from transformers.audio_utils import mel_filter_bank

        vocoder = pipe.vocoder.config
        self.vocoder_rate = int(vocoder.sampling_rate)
        self.hop_length = int(np.prod(vocoder.upsample_rates))
        self.n_mels = int(vocoder.model_in_dim)
        fb = mel_filter_bank(
            num_frequency_bins=self.N_FFT // 2 + 1,
            num_mel_filters=self.n_mels,
            min_frequency=0.0,
            max_frequency=self.vocoder_rate / 2,
            sampling_rate=self.vocoder_rate,
            norm="slaney",
            mel_scale="slaney",
        )  # (F, M), as librosa's default mel filters
        self.register_buffer("mel_filters", torch.from_numpy(fb.T.astype(np.float32)), persistent=False)
        self.register_buffer("window", torch.hann_window(self.N_FFT), persistent=False)
        self.generated_dim = pipe.language_model.config.hidden_size
        # seconds as the pipeline's `audio_length_in_s`; the same length the processor pads audio to
        self.audio_length_s = config.audio_num_samples / config.sample_rate

    @classmethod
    def load(
        cls, cfg: DecoderConfig, config: CoDi2Config, path: Path, dtype: torch.dtype | None = None
    ) -> AudioLDM2Decoder:
        from diffusers import AudioLDM2Pipeline

        return cls(cfg, config, load_pipeline(AudioLDM2Pipeline, path, dtype))

    # --- conditioning ---------------------------------------------------------------------------------
    def _generated(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 3 or features.shape[2] != self.generated_dim:
            raise ValueError(
                f"AudioLDM-2 features must be (B, K, {self.generated_dim}), got {tuple(features.shape)}"
            )
        return features.to(self.device, self.pipe.language_model.dtype)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 hidden states and attention mask, tokenised as `AudioLDM2Pipeline.encode_prompt` does."""
        from transformers import T5EncoderModel

        pipe = self.pipe
        if not isinstance(pipe.text_encoder_2, T5EncoderModel):
            raise ValueError("AudioLDM2Decoder needs the T5 text encoder variant, not the VITS (speech) one")
        tok = pipe.tokenizer_2(
            prompts,
            padding=True,
            max_length=pipe.tokenizer_2.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        return pipe.text_encoder_2(ids, attention_mask=mask)[0], mask  # (B, L, H_t5), (B, L)

    # --- mel ------------------------------------------------------------------------------------------
    def _num_frames(self) -> int:
        """Mel frames the pipeline generates for `audio_length_s` (rounded up to the VAE's factor)."""
        factor = self.pipe.vae_scale_factor
        frames = round(self.audio_length_s * self.vocoder_rate / self.hop_length)
        return math.ceil(frames / factor) * factor

    def log_mel(self, values: torch.Tensor) -> torch.Tensor:
        """Waveforms (B, N) at the model's rate -> AudioLDM log-mel (B, 1, frames, n_mels)."""
        wav = values.detach().float()
        if self.sample_rate != self.vocoder_rate:
            wav = torch.from_numpy(resample_audio(wav.cpu().numpy(), self.sample_rate, self.vocoder_rate))
        wav = wav.to(self.mel_filters.device)
        pad = (self.N_FFT - self.hop_length) // 2  # AudioLDM pads so that frames = samples / hop
        wav = nn.functional.pad(wav[:, None], (pad, pad), mode="reflect")[:, 0]
        spec = torch.stft(
            wav, self.N_FFT, self.hop_length, window=self.window.float(), center=False, return_complex=True
        )  # (B, F, T): float32 whatever the pipeline's dtype (FLOAT32_BUFFERS)
        mel = self.mel_filters.float() @ spec.abs()  # (B, M, T)
        log_mel = torch.log(mel.clamp(min=1e-5)).transpose(1, 2)  # (B, T, M)
        frames = self._num_frames()
        if log_mel.shape[1] < frames:
            log_mel = nn.functional.pad(log_mel, (0, 0, 0, frames - log_mel.shape[1]), value=math.log(1e-5))
        return log_mel[:, None, :frames]

    # --- training / sampling --------------------------------------------------------------------------
    def loss(
        self, values: torch.Tensor, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Noise-prediction loss on VAE latents of the target's log-mel, conditioned as AudioLDM-2 does."""
        pipe = self.pipe
        generated = self._generated(features)
        with torch.no_grad():
            mel = self.log_mel(values).to(self.device, pipe.vae.dtype)
            latents = pipe.vae.encode(mel).latent_dist.sample(generator) * pipe.vae.config.scaling_factor
        text, mask = self.text_embeds(_prompts(None, len(values)))
        return self._noise_loss(
            latents.to(self.dtype),
            generator,
            encoder_hidden_states=generated,
            encoder_hidden_states_1=text.to(self.dtype),
            encoder_attention_mask_1=mask,
        )

    @torch.no_grad()
    def decode(
        self,
        features: torch.Tensor,
        *,
        generator: Generators = None,  # one, or one per row (diffusers takes a list)
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        callback: ProgressCallback | None = None,
        prompt: str | None = None,
    ) -> list[Media]:
        generated = self._generated(features)
        text, mask = self.text_embeds(_prompts(prompt, generated.shape[0]))
        steps = num_inference_steps or self.cfg.num_inference_steps
        out = self.pipe(
            prompt_embeds=text,
            attention_mask=mask,
            generated_prompt_embeds=generated,
            max_new_tokens=generated.shape[1],  # the unconditional branch's GPT-2 run must match K
            audio_length_in_s=self.audio_length_s,
            num_inference_steps=steps,
            guidance_scale=self.cfg.guidance_scale if guidance_scale is None else guidance_scale,
            generator=generator,
            callback=self._step_callback(callback, steps),
            output_type="np",
        )
        media = [Media.from_audio(np.asarray(w, dtype=np.float32), self.vocoder_rate) for w in out.audios]
        return [m.resampled(self.sample_rate) for m in media]


_DECODERS: dict[str, Any] = {"stable_unclip": UnCLIPImageDecoder, "audioldm2": AudioLDM2Decoder}


def build_paper_decoder(
    cfg: DecoderConfig,
    config: CoDi2Config,
    modality: Modality,
    folder: Path,
    dtype: torch.dtype | None = None,
) -> MediaDecoder:
    """Load the pipeline decoder `cfg.kind` names from `folder / cfg.subfolder` (or an absolute
    subfolder), its models in `dtype` (None: as saved)."""
    from codi2_agent.model.modeling_codi2 import WeightsNotFoundError

    if cfg.kind not in _DECODERS:
        raise ValueError(
            f"unknown decoder kind {cfg.kind!r}; expected 'tiny_diffusion' or one of {sorted(_DECODERS)}"
        )
    decoder_class = _DECODERS[cfg.kind]
    if decoder_class.modality is not modality:
        raise ValueError(
            f"decoder kind {cfg.kind!r} decodes {decoder_class.modality.value}, not {modality.value}"
        )
    if cfg.subfolder is None:
        raise ValueError(f"decoder kind {cfg.kind!r} loads a pipeline folder: set its subfolder")
    path = Path(folder) / cfg.subfolder
    if not path.is_dir():
        raise WeightsNotFoundError(f"{cfg.kind} decoder folder {path} does not exist")
    decoder: MediaDecoder = decoder_class.load(cfg, config, path, dtype)
    return decoder
