"""Diffusion decoders: feature vectors (c_MLLM, or C_x(x) when training) -> images / audio.

`TinyDiffusionDecoder` is ours: a diffusers `UNet2DModel` in pixel space (images) or log-mel space
(audio, inverted by Griffin-Lim), conditioned on the feature twice — through the time embedding
(`class_embed_type="identity"`) and as extra constant input channels — which the prototype in
docs/architecture.md §3 found to matter. v-prediction, DDPM training, DDIM sampling, classifier-free
guidance from a learned null feature.

Paper-scale decoders (`stable_unclip`, `audioldm2`) live in `paper_decoders.py`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from codi2_agent.media import Media, Modality
from codi2_agent.model.audio import MelSpectrogram
from codi2_agent.model.configuration_codi2 import CoDi2Config, DecoderConfig
from codi2_agent.model.placement import cast_floating

__all__ = ["MediaDecoder", "ProgressCallback", "TinyDiffusionDecoder"]

ProgressCallback = Callable[[int, int], None]  # (step, total)
# One generator for a whole batch, or one per row (diffusers' convention): per-row generators give
# each row the noise it would get decoded alone with that generator.
Generators = torch.Generator | Sequence[torch.Generator | None] | None


@functools.cache
def _unet_class() -> type[Any]:
    """diffusers' `UNet2DModel`, but its `dtype` reads one weight. `ModelMixin.dtype` walks every
    submodule looking for layerwise-casting hooks (about 1 ms on the tiny UNet, which has none), and
    `UNet2DModel.forward` asks for it twice per denoising step: 5 % of a tiny image's decoding time."""
    from diffusers import UNet2DModel

    class UNet2DModelDtypeOfWeights(UNet2DModel):
        @property
        def dtype(self) -> torch.dtype:
            weight: torch.Tensor = self.conv_in.weight  # type: ignore[attr-defined]
            return weight.dtype

    return UNet2DModelDtypeOfWeights


class MediaDecoder(nn.Module):
    """Base: `loss(values, features)` (L_DM) and `decode(features, ...) -> list[Media]`."""

    modality: Modality
    pretrained: bool = False
    # `decode` takes one generator per row (a list) and reads no prompt: `decode_batch` can then
    # decode all rows in one call.
    batches_rows: bool = False

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def loss(
        self, values: torch.Tensor, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def decode(
        self,
        features: torch.Tensor,
        *,
        generator: Generators = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        callback: ProgressCallback | None = None,
        prompt: str | None = None,
    ) -> list[Media]:
        """Features (B, K, D) -> B media; `generator` is one for the batch or a list of one per row."""
        raise NotImplementedError

    def decode_batch(
        self,
        features: torch.Tensor,
        *,
        generators: Sequence[torch.Generator | None],
        prompts: Sequence[str | None],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> list[Media]:
        """Decode B rows of features (B, K, D), row i with `generators[i]` and `prompts[i]`, so that
        each row's medium is the one `decode(features[i:i+1], generator=generators[i], ...)` gives.

        Decoders with `batches_rows` run all rows through one sampling loop; others go row by row.
        """
        if not len(generators) == len(prompts) == features.shape[0]:
            raise ValueError(
                f"decode_batch needs one generator and one prompt per row: {features.shape[0]} rows, "
                f"{len(generators)} generators, {len(prompts)} prompts"
            )
        if self.batches_rows:
            return self.decode(
                features,
                generator=list(generators),
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
            )
        return [
            media
            for row, generator, prompt in zip(features, generators, prompts, strict=True)
            for media in self.decode(
                row[None],
                generator=generator,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale,
                prompt=prompt,
            )
        ]

    def place(self, device: torch.device, dtype: torch.dtype, offload: bool = False) -> None:
        """Move to `device` and cast to `dtype`. `offload` matters only for pipeline decoders, which
        override this; a tiny decoder is a few MB and stays on `device`."""
        cast_floating(self.to(device), dtype)


class TinyDiffusionDecoder(MediaDecoder):
    """A small conditional UNet2DModel; images (3, S, S) or log-mel (1, M, T).

    `features` are (B, K, D); the K vectors are flattened into one conditioning vector.
    """

    batches_rows = True  # one UNet call per DDIM step for the whole batch

    def __init__(
        self,
        cfg: DecoderConfig,
        config: CoDi2Config,
        modality: Modality,
        feature_dim: int,
        num_feature_tokens: int,
    ) -> None:
        super().__init__(cfg)
        from diffusers import DDIMScheduler, DDPMScheduler

        self.modality = modality
        cond_dim = feature_dim * num_feature_tokens
        if modality is Modality.IMAGE:
            self.mel: MelSpectrogram | None = None
            self.channels, sample_size = 3, (config.image_size, config.image_size)
        else:
            self.mel = MelSpectrogram(config.sample_rate, n_mels=config.n_mels, num_frames=config.mel_frames)
            self.channels, sample_size = 1, (config.n_mels, config.mel_frames)
        if sample_size[0] % cfg.fold or sample_size[1] % cfg.fold:
            raise ValueError(f"decoder fold {cfg.fold} does not divide the sample size {sample_size}")
        # Denoise a pixel-unshuffled (space-to-depth) tensor: same information, fold^2 fewer positions.
        self.channels = self.channels * cfg.fold**2
        sample_size = (sample_size[0] // cfg.fold, sample_size[1] // cfg.fold)
        self.sample_size = sample_size
        time_dim = cfg.block_out_channels[0] * 4
        n = len(cfg.block_out_channels)
        self.unet: Any = _unet_class()(
            sample_size=sample_size,
            in_channels=self.channels + cfg.cond_channels,
            out_channels=self.channels,
            block_out_channels=cfg.block_out_channels,
            layers_per_block=cfg.layers_per_block,
            down_block_types=("DownBlock2D",) * n,
            up_block_types=("UpBlock2D",) * n,
            add_attention=False,  # attention: CPU time for nothing at this size (docs/architecture.md §3)
            class_embed_type="identity",  # the conditioning vector is added to the time embedding
            norm_num_groups=8,
        )
        self.cond_to_time = nn.Sequential(
            nn.Linear(cond_dim, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.cond_to_channels = nn.Linear(cond_dim, cfg.cond_channels)
        self.null_cond = nn.Parameter(torch.zeros(cond_dim))  # classifier-free guidance's "no condition"
        sched = dict(
            num_train_timesteps=cfg.num_train_timesteps,
            prediction_type=cfg.prediction_type,
            beta_schedule="squaredcos_cap_v2",
            clip_sample=False,
        )
        self.train_scheduler: Any = DDPMScheduler(**sched)
        self.sample_scheduler: Any = DDIMScheduler(**sched, set_alpha_to_one=True)

    # --- shared pieces ----------------------------------------------------------------------------
    def to_space(self, values: torch.Tensor) -> torch.Tensor:
        """Processor tensors -> the space the UNet denoises: pixels (or log-mel), space-to-depth folded."""
        x = self.mel(values) if self.mel is not None else values
        return nn.functional.pixel_unshuffle(x, self.cfg.fold) if self.cfg.fold > 1 else x

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(x, self.cfg.fold) if self.cfg.fold > 1 else x

    def _unet(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The UNet's prediction in float32. The UNet runs in the weights' dtype (bf16 too); the
        diffusion arithmetic around it (noising, scheduler steps, guidance, loss) stays float32."""
        b, _, h, w = x.shape
        dtype = self.null_cond.dtype
        cond = cond.to(dtype)
        extra = self.cond_to_channels(cond)[:, :, None, None].expand(b, -1, h, w)  # (B, Cc, H, W)
        x_in = torch.cat([x.to(dtype), extra], dim=1)
        return self.unet(x_in, t, class_labels=self.cond_to_time(cond)).sample.float()

    # --- training ---------------------------------------------------------------------------------
    def loss(
        self, values: torch.Tensor, features: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x0 = self.to_space(values)  # (B, C, H, W)
        cond = features.flatten(1)  # (B, K*D)
        drop = torch.rand(cond.shape[0], 1, device=cond.device, generator=generator) < self.cfg.cond_dropout
        cond = torch.where(drop, self.null_cond.expand_as(cond), cond)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        t = torch.randint(
            0, self.cfg.num_train_timesteps, (x0.shape[0],), device=x0.device, generator=generator
        )
        noisy = self.train_scheduler.add_noise(x0, noise, t)
        if self.cfg.prediction_type == "v_prediction":
            target = self.train_scheduler.get_velocity(x0, noise, t)
        else:
            target = noise
        return nn.functional.mse_loss(self._unet(noisy, t, cond), target)

    # --- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        features: torch.Tensor,
        *,
        generator: Generators = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        callback: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Features (B, K, D) -> samples (B, C, H, W) in pixel (or log-mel) space, in [-1, 1].

        `generator` may be a list of B generators (None: the global RNG for that row)."""
        steps = num_inference_steps or self.cfg.num_inference_steps
        scale = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        cond = features.flatten(1).to(self.null_cond.dtype)
        b = cond.shape[0]
        scheduler = self.sample_scheduler
        scheduler.set_timesteps(steps)
        # float32 state: bf16's 8-bit mantissa would compound over the DDIM steps
        x = self._initial_noise(b, generator).to(cond.device)
        for i, t in enumerate(scheduler.timesteps):
            tt = t.expand(b).to(cond.device)
            if scale != 1.0:
                both = self._unet(
                    torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([cond, self.null_cond.expand_as(cond)])
                )
                pred_cond, pred_null = both.chunk(2)
                pred = pred_null + scale * (pred_cond - pred_null)
            else:
                pred = self._unet(x, tt, cond)
            x = scheduler.step(pred, t, x).prev_sample
            if callback is not None:
                callback(i + 1, steps)
        return self.from_space(x).clamp(-1.0, 1.0)

    def _initial_noise(self, batch: int, generator: Generators) -> torch.Tensor:
        """x_T on the CPU (seeded draws are then the same on every device), drawn per row when given
        one generator per row: row i's noise is then what a batch of one with generator i draws."""
        if generator is None or isinstance(generator, torch.Generator):
            return torch.randn((batch, self.channels, *self.sample_size), generator=generator)
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch}")
        return torch.cat([torch.randn((1, self.channels, *self.sample_size), generator=g) for g in generator])

    def decode(
        self,
        features: torch.Tensor,
        *,
        generator: Generators = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        callback: ProgressCallback | None = None,
        prompt: str | None = None,
    ) -> list[Media]:
        x = self.sample(
            features,
            generator=generator,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=callback,
        )
        if self.mel is None:
            pixels = ((x + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
            return [Media.from_image(p.cpu().numpy()) for p in pixels]
        wav = self.mel.invert(x).cpu()
        return [Media.from_audio(w.numpy(), self.mel.sample_rate) for w in wav]
