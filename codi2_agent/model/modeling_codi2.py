"""`CoDi2Model`: encoders -> projector -> causal LM -> output head -> diffusion decoders.

Reading order: projector and output head, the output type, then the model — embedding
(placeholder check + `masked_scatter`), `forward` (the paper's loss), and `save_pretrained` /
`from_pretrained`. Generation (`generate`, `generate_batch`, `generate_stream`) is mixed in from
`codi2_agent.model.generation`.

On-disk layout (both presets; the same loading code):
    config.json              CoDi2Config
    tokenizer/               tokenizer files (with the CoDi-2 special tokens)
    language_model/          a transformers causal LM (config.json + model.safetensors)
    codi2.safetensors        projectors, output heads, and every non-pretrained encoder/decoder
    <subfolder>/             pretrained encoders/decoders (paper preset): CLIP, CLAP, unCLIP, AudioLDM-2
    manifest.json            sha256 and size of every file above (`codi2_agent.model.integrity`)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from codi2_agent.media import Media, MediaError, Modality
from codi2_agent.model.configuration_codi2 import CONFIG_NAME, CoDi2Config
from codi2_agent.model.decoders import MediaDecoder, TinyDiffusionDecoder
from codi2_agent.model.encoders import MediaEncoder, build_encoder
from codi2_agent.model.generation import MAX_REPLY_TOKENS, GenerationMixin, GenerationOutput
from codi2_agent.model.integrity import (
    CorruptWeightsError,
    WeightsNotFoundError,
    verify_folder,
    write_manifest,
)
from codi2_agent.model.loading_bars import loading_bars_on_terminal_only
from codi2_agent.model.placement import Placement, cast_floating
from codi2_agent.model.processing_codi2 import (
    GEN,
    PLACEHOLDER,
    SPECIAL_TOKENS,
    CoDi2Processor,
    Turn,
    build_tokenizer,
)
from codi2_agent.model.vocabulary import Vocabulary

__all__ = [
    "MAX_REPLY_TOKENS",
    "CoDi2Model",
    "CoDi2Output",
    "GenerationOutput",
    "PlaceholderMismatchError",
    "WeightsNotFoundError",
]

WEIGHTS_NAME = "codi2.safetensors"
TOKENIZER_FOLDER = "tokenizer"
MODALITIES = (Modality.IMAGE, Modality.AUDIO)
# Text allowed before a forced medium's marker: replies in the tiny world are under 20 tokens, and an
# untrained model that never writes the marker must not spend `max_new_tokens` LM steps first.
# Encoder features (C_x) kept per stored medium: a turn reads each medium several times (memory,
# prompt, caption), and at paper scale one C_x is a CLIP/CLAP forward pass.
FEATURE_CACHE_SIZE = 64


class PlaceholderMismatchError(ValueError):
    """The number of media placeholder tokens does not match the media given."""


# --- small modules ----------------------------------------------------------------------------------
def build_projector(kind: str, in_dim: int, width: int, num_tokens: int) -> nn.Module:
    """Input projector factory (keyed by name, as LLaVA does): (B, F*D) -> (B, N*H)."""
    if kind == "linear":
        return nn.Linear(in_dim, width * num_tokens)
    if kind == "mlp2x_gelu_ln":  # CoDi-2: Linear, GELU, LayerNorm, Linear
        return nn.Sequential(
            nn.Linear(in_dim, width), nn.GELU(), nn.LayerNorm(width), nn.Linear(width, width * num_tokens)
        )
    raise ValueError(f"unknown projector_type {kind!r}; expected 'linear' or 'mlp2x_gelu_ln'")


class OutputHead(nn.Module):
    """LM hidden states at the K gen positions (B, K, H) -> c_MLLM (B, K, D)."""

    def __init__(self, width: int, feature_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, feature_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net(hidden)


@dataclass
class CoDi2Output:
    """`forward`'s result. `loss = alpha * loss_feature + w * loss_diffusion + loss_text`."""

    loss: torch.Tensor
    loss_text: torch.Tensor
    loss_feature: torch.Tensor
    loss_diffusion: torch.Tensor
    logits: torch.Tensor
    features: dict[Modality, torch.Tensor] = field(default_factory=dict)  # c_MLLM per output modality


class CoDi2Model(GenerationMixin, nn.Module):
    """CoDi-2 as one module. Build with `from_config` (random weights) or `from_pretrained` (a folder)."""

    def __init__(
        self,
        config: CoDi2Config,
        tokenizer: Any,
        lm: Any,
        encoders: dict[Modality, MediaEncoder],
        decoders: dict[Modality, MediaDecoder],
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.lm = lm
        width = lm.config.hidden_size
        self.encoders = nn.ModuleDict({m.value: encoders[m] for m in MODALITIES})
        self.decoders = nn.ModuleDict({m.value: decoders[m] for m in MODALITIES})
        self.projectors = nn.ModuleDict(
            {
                m.value: build_projector(
                    config.projector_type,
                    enc.feature_dim * enc.num_feature_tokens,
                    width,
                    config.num_media_tokens,
                )
                for m, enc in encoders.items()
            }
        )
        self.output_heads = nn.ModuleDict(
            {m.value: OutputHead(width, enc.feature_dim) for m, enc in encoders.items()}
        )
        self.processor = CoDi2Processor(
            tokenizer,
            image_size=config.image_size,
            sample_rate=config.sample_rate,
            audio_num_samples=config.audio_num_samples,
            num_media_tokens=config.num_media_tokens,
            num_output_tokens={m: encoders[m].num_feature_tokens for m in MODALITIES},
            max_length=config.max_length,
        )
        self._ids = {t: self.processor.token_id(t) for t in SPECIAL_TOKENS}
        self._feature_cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.encoder_calls = 0  # media run through an encoder at inference (tests and benchmarks count it)

    @property
    def vocabulary(self) -> Vocabulary:
        """The words and prompt shapes this model was trained on (from its config)."""
        return Vocabulary.from_dict(self.config.vocabulary)

    def train(self, mode: bool = True) -> CoDi2Model:
        if mode:  # features cached at inference go stale as soon as weights move
            self._feature_cache.clear()
        return super().train(mode)

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: CoDi2Config, tokenizer: Any = None, *, seed: int | None = None
    ) -> CoDi2Model:
        """Random weights (tiny preset). A seed makes them reproducible."""
        from transformers import LlamaConfig, LlamaForCausalLM

        if any(
            c.kind not in ("tiny_image", "tiny_audio", "tiny_diffusion")
            for c in (config.image_encoder, config.audio_encoder, config.image_decoder, config.audio_decoder)
        ):
            raise ValueError(
                "from_config builds tiny components only; load pretrained ones with from_pretrained"
            )
        if seed is not None:
            torch.manual_seed(seed)
        tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
        lm_config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **config.lm,
        )
        lm = LlamaForCausalLM(lm_config)
        encoders = {
            Modality.IMAGE: build_encoder(config.image_encoder, config, Modality.IMAGE, None),
            Modality.AUDIO: build_encoder(config.audio_encoder, config, Modality.AUDIO, None),
        }
        decoders = {m: _tiny_decoder(config, m, encoders[m]) for m in MODALITIES}
        return cls(config, tokenizer, lm, encoders, decoders)

    # --- typed access to the per-modality parts ----------------------------------------------------
    def encoder(self, modality: Modality | str) -> MediaEncoder:
        return cast(MediaEncoder, self.encoders[Modality.parse(modality).value])

    def decoder(self, modality: Modality | str) -> MediaDecoder:
        return cast(MediaDecoder, self.decoders[Modality.parse(modality).value])

    def num_parameters(self, part: str | None = None) -> int:
        module = self if part is None else getattr(self, part)
        return sum(p.numel() for p in module.parameters())

    # --- embedding --------------------------------------------------------------------------------
    def encode_media(self, modality: Modality | str, values: torch.Tensor) -> torch.Tensor:
        """C_x: processor tensors -> (B, K, D) features."""
        return self.encoder(modality)(values)

    @torch.no_grad()
    def media_features(self, modality: Modality | str, media: Sequence[Media]) -> torch.Tensor:
        """C_x of decoded media at inference: (N, K, D), each medium encoded at most once.

        Media that came from an `ArtifactStore` carry their `content_id`; their features are kept in
        a small LRU, so the memory's embedding, the prompt and a caption share one encoder pass.
        """
        modality = Modality.parse(modality)
        device = self.lm.get_input_embeddings().weight.device
        out: list[torch.Tensor | None] = []
        for m in media:
            key = (modality.value, m.content_id) if m.content_id else None
            cached = self._feature_cache.get(key) if key is not None and not self.training else None
            if cached is not None:
                self._feature_cache.move_to_end(key)  # type: ignore[arg-type]
            out.append(cached)
        missing = [i for i, f in enumerate(out) if f is None]
        if missing:
            values = self.processor.media_tensor(modality, [media[i] for i in missing]).to(device)
            feats = self.encode_media(modality, values)  # (M, K, D)
            self.encoder_calls += len(missing)
            for i, feat in zip(missing, feats, strict=True):
                out[i] = feat
                self.cache_features(modality, media[i], feat)
        return torch.stack(cast(list[torch.Tensor], out))

    def cache_features(self, modality: Modality | str, media: Media, features: torch.Tensor) -> None:
        """Remember C_x (K, D) of a stored medium (one with a `content_id`) for later reads."""
        if media.content_id is None or self.training:
            return
        self._feature_cache[(Modality.parse(modality).value, media.content_id)] = features.detach()
        while len(self._feature_cache) > FEATURE_CACHE_SIZE:
            self._feature_cache.popitem(last=False)

    def embed(
        self,
        input_ids: torch.Tensor,
        media_values: dict[Modality, torch.Tensor] | None = None,
        *,
        media_features: dict[Modality, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token embeddings with projected media features written into their placeholders.

        Media come as processor tensors (`media_values`, encoded here) or as ready C_x features
        (`media_features`, (N, K, D) per modality, e.g. from `media_features`).
        """
        media_values = media_values or {}
        media_features = media_features or {}
        embeds = self.lm.get_input_embeddings()(input_ids)  # (B, T, H)
        for modality in MODALITIES:
            mask = input_ids == self._ids[PLACEHOLDER[modality]]  # (B, T)
            values = media_features.get(modality, media_values.get(modality))
            n_media = 0 if values is None else values.shape[0]
            expected = n_media * self.config.num_media_tokens
            if int(mask.sum()) != expected:
                raise PlaceholderMismatchError(
                    f"{int(mask.sum())} {PLACEHOLDER[modality]} placeholder tokens but "
                    f"{n_media} {modality.value} "
                    f"input(s) x {self.config.num_media_tokens} tokens each = {expected}"
                )
            if values is None or n_media == 0:
                continue
            feats = values if modality in media_features else self.encode_media(modality, values)  # (N, K, D)
            proj = self.projectors[modality.value](feats.flatten(1))  # (N, T_m * H)
            proj = proj.reshape(-1, embeds.shape[-1]).to(embeds.dtype)  # (N * T_m, H)
            embeds = embeds.masked_scatter(mask.unsqueeze(-1).expand_as(embeds), proj)
        return embeds

    def _media_inputs(self, batch: dict[str, Any], prefix: str = "") -> dict[Modality, torch.Tensor]:
        return {
            m: batch[f"{prefix}{m.value}_values"]
            for m in MODALITIES
            if batch.get(f"{prefix}{m.value}_values") is not None
        }

    # --- training forward -------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        image_values: torch.Tensor | None = None,
        audio_values: torch.Tensor | None = None,
        output_image_values: torch.Tensor | None = None,
        output_audio_values: torch.Tensor | None = None,
        compute_diffusion_loss: bool = True,
        generator: torch.Generator | None = None,
    ) -> CoDi2Output:
        """The paper's loss: `alpha * MSE(c_MLLM, C_x(target)) + w * L_DM + L_t`.

        `output_*_values` are the targets of the gen blocks, in order. L_DM is conditioned on c_MLLM
        when `config.diffusion_loss_into_lm` (gradients reach the LM, as in the paper), otherwise on
        C_x(target) (the decoder learns as an autoencoder of encoder features).
        """
        inputs = {
            m: v for m, v in ((Modality.IMAGE, image_values), (Modality.AUDIO, audio_values)) if v is not None
        }
        targets = {
            m: v
            for m, v in ((Modality.IMAGE, output_image_values), (Modality.AUDIO, output_audio_values))
            if v is not None
        }
        embeds = self.embed(input_ids, inputs)
        out = self.lm(
            inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, output_hidden_states=True
        )
        zero = embeds.new_zeros(())
        loss_text = out.loss if labels is not None and out.loss is not None else zero
        hidden = out.hidden_states[-1]  # (B, T, H)
        loss_feature, loss_diffusion, features = zero, zero, {}
        for modality in MODALITIES:
            gen_mask = input_ids == self._ids[GEN[modality]]  # (B, T)
            k = self.encoder(modality).num_feature_tokens
            n_blocks = int(gen_mask.sum()) // k
            target_values = targets.get(modality)
            n_targets = 0 if target_values is None else target_values.shape[0]
            if n_blocks != n_targets or int(gen_mask.sum()) % k:
                raise PlaceholderMismatchError(
                    f"{int(gen_mask.sum())} {GEN[modality]} tokens ({k} per block) but {n_targets} "
                    f"{modality.value} target(s)"
                )
            if target_values is None or n_targets == 0:
                continue
            c_mllm = self.output_heads[modality.value](hidden[gen_mask].view(n_targets, k, -1))  # (M, K, D)
            with torch.no_grad():
                c_target = self.encode_media(modality, target_values)  # (M, K, D)
            features[modality] = c_mllm
            loss_feature = loss_feature + nn.functional.mse_loss(c_mllm, c_target)
            if compute_diffusion_loss and self.config.diffusion_loss_weight > 0:
                cond = c_mllm if self.config.diffusion_loss_into_lm else c_target
                loss_diffusion = loss_diffusion + self.decoder(modality).loss(target_values, cond, generator)
        loss = (
            self.config.alpha * loss_feature + self.config.diffusion_loss_weight * loss_diffusion + loss_text
        )
        return CoDi2Output(loss, loss_text, loss_feature, loss_diffusion, out.logits, features)

    @torch.no_grad()
    def embed_media(self, media: Sequence[Media]) -> torch.Tensor:
        """C_x features of images/audio, pooled to one vector each: (N, D). Used by the memory."""
        out = []
        for m in media:
            if m.modality is Modality.TEXT:
                raise MediaError("embed_media takes images and audio; use embed_text for text")
            out.append(self.media_features(m.modality, [m]).mean(dim=1)[0])
        return torch.stack(out)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str], modality: Modality | str = Modality.IMAGE) -> torch.Tensor:
        """Text -> (N, D) in `modality`'s feature space: the c_MLLM the model predicts for it.

        This is CoDi-2's own text-to-media path, stopped before the decoder, so a text query and
        the stored media embeddings are comparable.
        """
        modality = Modality.parse(modality)
        if self.training:  # eval() walks every submodule: a measurable share of a short text turn
            self.eval()
        device = self.lm.get_input_embeddings().weight.device
        out = []
        for text in texts:
            enc = self.processor.encode([Turn("user", [text])])
            ids = torch.cat([enc.input_ids, torch.tensor(self.processor.gen_block(modality))])[None].to(
                device
            )
            hidden = self.lm(inputs_embeds=self.embed(ids, {}), output_hidden_states=True).hidden_states[-1]
            k = self.encoder(modality).num_feature_tokens
            out.append(self.output_heads[modality.value](hidden[:, -k:]).mean(dim=1)[0])
        return torch.stack(out)

    # --- persistence ------------------------------------------------------------------------------
    def _tiny_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything not saved in a subfolder of its own (LM and pretrained components are)."""
        skip = ["lm."] + [
            f"{kind}.{m.value}."
            for kind, parts in (("encoders", self.encoders), ("decoders", self.decoders))
            for m in MODALITIES
            if getattr(parts[m.value], "pretrained", False)
        ]
        return {
            k: v.detach().contiguous().cpu()
            for k, v in self.state_dict().items()
            if not any(k.startswith(s) for s in skip)
        }

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write config, tokenizer, LM and weights (safetensors) to `folder`, then its `manifest.json`
        (sha256 and size of every file, checked by `from_pretrained`)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(folder / CONFIG_NAME)
        self.tokenizer.save_pretrained(folder / TOKENIZER_FOLDER)
        self.lm.save_pretrained(folder / self.config.lm_subfolder, safe_serialization=True)
        for m in MODALITIES:
            for kind, part in (("encoder", self.encoder(m)), ("decoder", self.decoder(m))):
                if part.pretrained:
                    cast(Any, part).save(folder / getattr(self.config, f"{m.value}_{kind}").subfolder)
        save_file(
            self._tiny_state_dict(),
            folder / WEIGHTS_NAME,
            metadata={"format": "pt", "preset": self.config.preset},
        )
        write_manifest(folder)  # last: it vouches for exactly what was written above
        return folder

    @classmethod
    @loading_bars_on_terminal_only()
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict[str, Any] | None = None,
        offload: bool | None = None,
        verify: bool | Literal["strict"] = True,
    ) -> CoDi2Model:
        """Load a model folder written by `save_pretrained` (local files only; never a hub call).

        Before anything loads, the folder is checked against its `manifest.json` (see
        `codi2_agent.model.integrity`): a changed, missing or slipped-in file is a
        `CorruptWeightsError` naming it. `verify="strict"` also refuses a folder without a manifest
        (by default it loads with a warning); `verify=False` skips the hashing (about 0.1 s for the
        tiny folder, tens of seconds for a paper-size one) — and with it any protection against a
        damaged file. A bad config.json is a `ConfigError` naming the file and the field.

        Placement applies to every component (see `codi2_agent.model.placement`): `dtype` ("float32",
        "bfloat16", "float16", a torch.dtype, or "auto" = the LM checkpoint's dtype) is what each
        pretrained part is loaded in and what our own modules are cast to; `device_map` dispatches
        the LM through accelerate, everything else goes to `device` (default: the LM's first device);
        `offload` lets each diffusers pipeline move its models to the GPU only while they run.
        Unset arguments come from the `CODI2_*` environment variables, then cpu / float32.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM, AutoTokenizer

        placement = Placement.resolve(device, dtype, device_map, offload)  # bad requests fail first
        folder = Path(folder).expanduser()
        # 1. Check the folder before loading anything
        if not folder.is_dir():
            raise WeightsNotFoundError(f"model folder {folder} does not exist")
        verify_folder(folder, verify)
        config_path = folder / CONFIG_NAME
        if not config_path.is_file():
            raise WeightsNotFoundError(f"model folder {folder} is incomplete: missing {CONFIG_NAME}")
        config = CoDi2Config.from_json_file(config_path)
        needed = [TOKENIZER_FOLDER, config.lm_subfolder, WEIGHTS_NAME]
        for part in (config.image_encoder, config.audio_encoder, config.image_decoder, config.audio_decoder):
            if part.subfolder is not None:
                needed.append(part.subfolder)
        missing = [name for name in needed if not (folder / name).exists()]
        if missing:
            raise WeightsNotFoundError(f"model folder {folder} is incomplete: missing {', '.join(missing)}")
        # 2. Build the components
        tokenizer = AutoTokenizer.from_pretrained(folder / TOKENIZER_FOLDER, local_files_only=True)
        try:
            # any transformers causal LM (Llama, Mistral, Qwen2, ...): its config.json names the class
            lm = AutoModelForCausalLM.from_pretrained(
                folder / config.lm_subfolder, local_files_only=True, **placement.lm_kwargs()
            )
        except OSError as e:
            raise WeightsNotFoundError(
                f"cannot load the language model from {folder / config.lm_subfolder}: {e}"
            ) from None
        dtype = placement.dtype or lm.dtype  # "auto": the LM checkpoint's dtype, for every part
        encoders = {
            Modality.IMAGE: build_encoder(config.image_encoder, config, Modality.IMAGE, folder, dtype),
            Modality.AUDIO: build_encoder(config.audio_encoder, config, Modality.AUDIO, folder, dtype),
        }
        decoders = {m: _build_decoder(config, m, encoders[m], folder, dtype) for m in MODALITIES}
        model = cls(config, tokenizer, lm, encoders, decoders)
        # 3. Load our own weights strictly: a missing tensor is an incomplete checkpoint, not a silent init
        try:
            state = load_file(folder / WEIGHTS_NAME)
        except SafetensorError as e:
            raise CorruptWeightsError(
                folder / WEIGHTS_NAME, f"not a readable safetensors file ({e})"
            ) from None
        except OSError as e:
            raise WeightsNotFoundError(f"cannot read {folder / WEIGHTS_NAME}: {e}") from None
        expected = model._tiny_state_dict()
        missing_keys = sorted(set(expected) - set(state))
        if missing_keys:
            shown = ", ".join(missing_keys[:5]) + (" ..." if len(missing_keys) > 5 else "")
            raise WeightsNotFoundError(f"{folder / WEIGHTS_NAME} lacks {len(missing_keys)} tensors: {shown}")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise CorruptWeightsError(
                folder / WEIGHTS_NAME, f"has tensors this config does not use: {unexpected[:5]}"
            )
        model.load_state_dict(state, strict=False)
        return model.place(placement).eval()

    def place(self, placement: Placement) -> CoDi2Model:
        """Move and cast every component as `placement` says; returns self.

        With a device map the LM stays where loading put it (maps apply at load time); everything
        else goes to `placement.device`, by default the LM's input-embedding device. Floating tensors
        become `placement.dtype` (None: the LM's), except `FLOAT32_BUFFERS`. Offload hands each
        pipeline decoder to diffusers' model CPU offload.

        Example:
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> model = model.place(Placement.resolve(device="cpu", dtype="bfloat16"))
            >>> model.projectors["image"][0].weight.dtype
            torch.bfloat16
        """
        device = placement.device or self.lm.get_input_embeddings().weight.device
        dtype = placement.dtype or self.lm.dtype
        if placement.device_map is None:
            self.lm.to(device)
        cast_floating(self.lm, dtype)
        for part in (*self.encoders.values(), *self.decoders.values()):
            cast(MediaEncoder | MediaDecoder, part).place(device, dtype, offload=placement.offload)
        for heads in (self.projectors, self.output_heads):
            cast_floating(heads.to(device), dtype)
        return self

    def identity(self) -> str:
        """A short name for this model's feature space (recorded by the memory)."""
        return json.dumps(
            {
                "preset": self.config.preset,
                "image": self.config.image_encoder.kind,
                "audio": self.config.audio_encoder.kind,
            },
            sort_keys=True,
        )


def _tiny_decoder(config: CoDi2Config, modality: Modality, encoder: MediaEncoder) -> MediaDecoder:
    cfg = config.image_decoder if modality is Modality.IMAGE else config.audio_decoder
    return TinyDiffusionDecoder(cfg, config, modality, encoder.feature_dim, encoder.num_feature_tokens)


def _build_decoder(
    config: CoDi2Config, modality: Modality, encoder: MediaEncoder, folder: Path, dtype: torch.dtype
) -> MediaDecoder:
    cfg = config.image_decoder if modality is Modality.IMAGE else config.audio_decoder
    if cfg.kind == "tiny_diffusion":
        return _tiny_decoder(config, modality, encoder)
    if cfg.kind not in ("stable_unclip", "audioldm2"):
        raise ValueError(
            f"unknown decoder kind {cfg.kind!r}; expected 'tiny_diffusion', 'stable_unclip' or 'audioldm2'"
        )
    from codi2_agent.model.paper_decoders import build_paper_decoder

    return build_paper_decoder(cfg, config, modality, folder, dtype)
