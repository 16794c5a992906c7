"""`CoDi2Model`: encoders -> projector -> causal LM -> output head -> diffusion decoders.

Reading order: projector and output head, the output type, then the model — embedding
(placeholder check + `masked_scatter`), `forward` (the paper's loss), `generate`, and
`save_pretrained` / `from_pretrained`.

On-disk layout (both presets; the same loading code):
    config.json              CoDi2Config
    tokenizer/               tokenizer files (with the CoDi-2 special tokens)
    language_model/          transformers LlamaForCausalLM (config.json + model.safetensors)
    codi2.safetensors        projectors, output heads, and every non-pretrained encoder/decoder
    <subfolder>/             pretrained encoders/decoders (paper preset): CLIP, CLAP, unCLIP, AudioLDM-2
    manifest.json            sha256 and size of every file above (`codi2_agent.model.integrity`)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

from codi2_agent.media import Media, MediaError, Modality, OutputKind
from codi2_agent.model.configuration_codi2 import CONFIG_NAME, CoDi2Config, check_sampling_arguments
from codi2_agent.model.decoders import MediaDecoder, ProgressCallback, TinyDiffusionDecoder
from codi2_agent.model.encoders import MediaEncoder, build_encoder
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
    MARKER,
    PLACEHOLDER,
    SPECIAL_TOKENS,
    CoDi2Processor,
    Turn,
    build_tokenizer,
)
from codi2_agent.model.streaming import TextPieceDecoder
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
MAX_REPLY_TOKENS = 32
# Encoder features (C_x) kept per stored medium: a turn reads each medium several times (memory,
# prompt, caption), and at paper scale one C_x is a CLIP/CLAP forward pass.
FEATURE_CACHE_SIZE = 64


class PlaceholderMismatchError(ValueError):
    """The number of media placeholder tokens does not match the media given."""


@dataclass(frozen=True)
class _TextRules:
    """How one answer's text is decoded (`CoDi2Model._text_rules`)."""

    target: Modality | None  # the medium the answer must end in (None: the model decides, or text only)
    banned: list[int]  # token ids never chosen
    budget: int  # most text tokens


def _output_kind(output: OutputKind | Modality) -> str:
    kind = str(output.value if isinstance(output, Modality) else output)
    if kind not in ("auto", "text", "image", "audio"):
        raise ValueError(f"output must be 'auto', 'text', 'image' or 'audio', got {output!r}")
    return kind


def _seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with `seed` (None: the global RNG), as `generate` draws its noise."""
    return torch.Generator().manual_seed(seed) if seed is not None else None


def _per_row(value: Any, n: int, name: str) -> list[Any]:
    """`generate_batch`'s arguments: one value for every row, or a sequence of exactly one per row."""
    if value is None or isinstance(value, (str, Modality, int, float)):
        return [value] * n
    if not isinstance(value, Sequence) or len(value) != n:
        got = f"{len(value)} values" if isinstance(value, Sequence) else repr(value)
        raise ValueError(f"{name} must be one value or one per conversation ({n}), got {got}")
    return list(value)


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


@dataclass
class GenerationOutput:
    """`generate`'s result: the text answer and any generated media (with its c_MLLM features)."""

    text: str
    media: list[Media] = field(default_factory=list)
    features: torch.Tensor | None = None  # (K, D) c_MLLM of the generated medium
    modality: Modality = Modality.TEXT
    media_features: list[torch.Tensor] = field(default_factory=list)  # (K, D) C_x of each medium, if asked

    @property
    def image(self) -> Media | None:
        return next((m for m in self.media if m.modality is Modality.IMAGE), None)

    @property
    def audio(self) -> Media | None:
        return next((m for m in self.media if m.modality is Modality.AUDIO), None)


class CoDi2Model(nn.Module):
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

    # --- generation -------------------------------------------------------------------------------
    def _turns(self, inputs: Sequence[Any]) -> list[Any]:
        if not inputs:
            raise ValueError("generate needs at least one input (text or media)")
        if all(hasattr(x, "role") and hasattr(x, "content") for x in inputs):
            return list(inputs)  # already a conversation
        return [Turn("user", list(inputs))]

    @torch.no_grad()
    def generate(
        self,
        inputs: Sequence[str | Media] | Sequence[Any],
        output: OutputKind | Modality = "auto",
        *,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        max_new_tokens: int = 64,
        callback: ProgressCallback | None = None,
        return_media_features: bool = False,
    ) -> GenerationOutput:
        """Answer an interleaved prompt (or a conversation of turns) with text and/or media.

        `output="auto"` follows the model: it writes text and, if it emits a generation marker
        (`<boi>` / `<boa>`), the medium that follows. `"text"` forbids markers; `"image"` /
        `"audio"` make the answer end in that medium: the model's reply text comes first (at most
        `MAX_REPLY_TOKENS`), then the marker, forced if the model does not write it. Decoding is
        greedy; `seed` fixes the diffusion noise, so equal inputs and seed give equal outputs.
        `return_media_features` also encodes each produced medium once (C_x, for memory and captions).
        `generate_stream` gives the same answer with its text as it is decoded; `generate_batch`
        answers several prompts at once.

        Example:
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> model.generate(["draw a red star"], output="image", num_inference_steps=2).image.image.size
            (32, 32)
        """
        steps = self._generation_steps(
            inputs,
            output,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_new_tokens=max_new_tokens,
            callback=callback,
            return_media_features=return_media_features,
        )
        return next(step for step in steps if isinstance(step, GenerationOutput))

    def generate_stream(
        self,
        inputs: Sequence[str | Media] | Sequence[Any],
        output: OutputKind | Modality = "auto",
        *,
        seed: int | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        max_new_tokens: int = 64,
        callback: ProgressCallback | None = None,
        return_media_features: bool = False,
    ) -> Iterator[str | GenerationOutput]:
        """`generate`, streamed: text pieces (`str`) as the LM decodes them, then the `GenerationOutput`.

        The pieces join to the output's `text`, and all of them come before the medium (if any) is
        decoded, which is most of a turn's time. The arguments are checked and the prompt's media
        encoded when this is called; the answer is generated as the iterator is consumed.

        Example:
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> *pieces, out = model.generate_stream(["draw"], output="image", num_inference_steps=2)
            >>> "".join(pieces) == out.text and out.image is not None
            True
        """
        steps = self._generation_steps(
            inputs,
            output,
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            max_new_tokens=max_new_tokens,
            callback=callback,
            return_media_features=return_media_features,
        )
        return self._text_pieces(steps)

    def _text_pieces(
        self, steps: Iterator[int | GenerationOutput | None]
    ) -> Iterator[str | GenerationOutput]:
        pieces = TextPieceDecoder(self.processor.decode)
        for step in steps:
            if isinstance(step, GenerationOutput):
                yield step
                return
            piece = pieces.push(step) if step is not None else pieces.finish()  # None: the text is complete
            if piece:
                yield piece

    def _generation_steps(
        self,
        inputs: Sequence[str | Media] | Sequence[Any],
        output: OutputKind | Modality,
        *,
        seed: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        max_new_tokens: int,
        callback: ProgressCallback | None,
        return_media_features: bool,
    ) -> Iterator[int | GenerationOutput | None]:
        """`generate` step by step. The arguments are checked and the prompt read now; the iterator
        then yields each text token id as it is chosen, None once the text is complete, and last the
        `GenerationOutput`."""
        # 1. Check inputs and build the prompt
        kind = _output_kind(output)
        check_sampling_arguments(num_inference_steps, guidance_scale)  # not a ZeroDivisionError later
        if self.training:  # eval() walks every submodule: a measurable share of a short text turn
            self.eval()
        prompt_ids, feats = self._prompt(inputs)
        return self._decode_steps(
            prompt_ids,
            feats,
            self._text_rules(kind, max_new_tokens),
            seed=seed,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=callback,
            return_media_features=return_media_features,
        )

    @torch.no_grad()
    def _decode_steps(
        self,
        prompt_ids: torch.Tensor,
        feats: dict[Modality, torch.Tensor],
        rules: _TextRules,
        *,
        seed: int | None,
        num_inference_steps: int | None,
        guidance_scale: float | None,
        callback: ProgressCallback | None,
        return_media_features: bool,
    ) -> Iterator[int | GenerationOutput | None]:
        # 2. Read the prompt
        ids = prompt_ids[None].to(self._input_device)  # (1, T)
        target = rules.target
        out = self.lm(inputs_embeds=self.embed(ids, media_features=feats), use_cache=True)
        past, logits = out.cache, out.logits[:, -1].float()  # greedy choice in fp32: no bf16 ties
        # 3. Decode text greedily until </s>, a generation marker or the budget (see `_text_rules`)
        eos = self.tokenizer.eos_token_id
        text_ids: list[int] = []
        marker: Modality | None = None
        for _ in range(rules.budget):
            logits[:, rules.banned] = float("-inf")
            nxt = int(logits.argmax(-1))
            if nxt == eos:
                break
            marker = self._marker(nxt)
            step = self.lm(input_ids=ids.new_tensor([[nxt]]), cache=past, use_cache=True)
            past, logits = step.cache, step.logits[:, -1].float()
            if marker is not None:
                target = marker
                break
            text_ids.append(nxt)
            yield nxt
        yield None
        if target is not None and marker is None:  # a forced modality whose reply ran out of budget
            past = self.lm(
                input_ids=ids.new_tensor([[self._ids[MARKER[target]]]]), cache=past, use_cache=True
            ).cache
        text = self.processor.decode(text_ids)
        if target is None:
            yield GenerationOutput(text=text)
            return
        # 4. Feed the K gen tokens; their last hidden states are c_MLLM's source
        k = self.encoder(target).num_feature_tokens
        gen_ids = ids.new_full((1, k), self._ids[GEN[target]])
        step = self.lm(input_ids=gen_ids, cache=past, use_cache=True, output_hidden_states=True)
        c_mllm = self._c_mllm(target, step.hidden_states[-1])  # (1, K, D)
        # 5. Decode the medium
        generator = _seeded_generator(seed)
        media = self.decoder(target).decode(
            c_mllm,
            generator=generator,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=callback,
            prompt=text or None,
        )
        # 6. C_x of the result, once: what the memory stores and a caption reads
        media_features = self._output_features(target, media) if return_media_features else []
        yield GenerationOutput(
            text=text, media=media, features=c_mllm[0], modality=target, media_features=media_features
        )

    @torch.no_grad()
    def generate_batch(
        self,
        conversations: Sequence[Sequence[str | Media] | Sequence[Any]],
        output: OutputKind | Modality | Sequence[OutputKind | Modality] = "auto",
        *,
        seeds: int | Sequence[int | None] | None = None,
        num_inference_steps: int | Sequence[int | None] | None = None,
        guidance_scale: float | Sequence[float | None] | None = None,
        max_new_tokens: int | Sequence[int] = 64,
        return_media_features: bool = False,
    ) -> list[GenerationOutput]:
        """`generate` for several prompts at once: result i is `generate(conversations[i], output[i],
        seed=seeds[i], ...)`, up to float rounding in the media.

        Each argument but `conversations` is one value for every row or a sequence of one per row.
        The prompts are left-padded and read together, then decoded together with one KV cache (one
        LM step per token for the batch; a row that has stopped is fed pads that nothing attends to).
        The media are decoded one batch per modality (and per steps/guidance pair), each row with its
        own seeded generator, so each row's noise is the noise it gets alone. Texts equal the
        unbatched ones; the media differ only by the float rounding of batched matrix products
        (tests/model/test_batch_generate.py bounds it).

        Example:
            >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            >>> outs = model.generate_batch([["draw"], ["play a tone"]], ["image", "audio"], seeds=[0, 1],
            ...                             num_inference_steps=2)
            >>> [o.modality.value for o in outs]
            ['image', 'audio']
        """
        n = len(conversations)
        kinds = [_output_kind(o) for o in _per_row(output, n, "output")]
        row_seeds = _per_row(seeds, n, "seeds")
        row_steps = _per_row(num_inference_steps, n, "num_inference_steps")
        row_scales = _per_row(guidance_scale, n, "guidance_scale")
        row_budgets = _per_row(max_new_tokens, n, "max_new_tokens")
        for steps, scale in zip(row_steps, row_scales, strict=True):
            check_sampling_arguments(steps, scale)
        if n == 0:
            return []
        if self.training:  # eval() walks every submodule: a measurable share of a short text turn
            self.eval()
        prompts = [self._prompt(c) for c in conversations]
        rules = [self._text_rules(k, m) for k, m in zip(kinds, row_budgets, strict=True)]
        texts, targets, c_mllm = self._decode_texts_together(prompts, rules)
        results = [GenerationOutput(text=text) for text in texts]
        # Decode the media, one batch per (modality, steps, guidance)
        groups: dict[tuple[Modality, int | None, float | None], list[int]] = {}
        for i, target in enumerate(targets):
            if target is not None:
                groups.setdefault((target, row_steps[i], row_scales[i]), []).append(i)
        for (modality, steps, scale), rows in groups.items():
            media = self.decoder(modality).decode_batch(
                torch.stack([c_mllm[i] for i in rows]),
                generators=[_seeded_generator(row_seeds[i]) for i in rows],
                prompts=[texts[i] or None for i in rows],
                num_inference_steps=steps,
                guidance_scale=scale,
            )
            features = self._output_features(modality, media) if return_media_features else []
            for j, i in enumerate(rows):
                results[i] = GenerationOutput(
                    text=texts[i],
                    media=[media[j]],
                    features=c_mllm[i],
                    modality=modality,
                    media_features=[features[j]] if features else [],
                )
        return results

    def _decode_texts_together(
        self,
        prompts: Sequence[tuple[torch.Tensor, dict[Modality, torch.Tensor]]],
        rules: Sequence[_TextRules],
    ) -> tuple[list[str], list[Modality | None], dict[int, torch.Tensor]]:
        """`generate`'s steps 2-4 for a batch: each row's text, its medium (None: text only) and, for
        rows with a medium, c_MLLM (K, D)."""
        n, device = len(prompts), self._input_device
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        # 2. Read the prompts, left-padded so that every row's next token goes in the last column
        width = max(len(ids) for ids, _ in prompts)
        ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for i, (row, _) in enumerate(prompts):
            ids[i, width - len(row) :], mask[i, width - len(row) :] = row, 1
        ids, mask = ids.to(device), mask.to(device)
        feats = {  # row-major, the order `embed` scatters placeholders in
            m: torch.cat([f[m] for _, f in prompts if m in f])
            for m in MODALITIES
            if any(m in f for _, f in prompts)
        }
        out = self.lm(
            inputs_embeds=self.embed(ids, media_features=feats),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
        )
        past, logits = out.cache, out.logits[:, -1].float()
        next_position = mask.sum(-1)  # (n,): real tokens so far = the next token's position
        # 3. Decode greedily, each row by its own rules (see `_decode_steps`)
        banned = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
        for i, r in enumerate(rules):
            banned[i, r.banned] = True
        targets = [r.target for r in rules]
        text_ids: list[list[int]] = [[] for _ in range(n)]
        marker_fed = [False] * n
        active = [r.budget > 0 for r in rules]
        while any(active):
            choices = logits.masked_fill(banned, float("-inf")).argmax(-1).tolist()
            feed, fed = [pad] * n, [False] * n
            for i in (i for i in range(n) if active[i]):
                nxt = choices[i]
                if nxt == eos:
                    active[i] = False
                    continue
                feed[i], fed[i] = nxt, True
                marker = self._marker(nxt)
                if marker is not None:
                    targets[i], marker_fed[i], active[i] = marker, True, False
                    continue
                text_ids[i].append(nxt)
                active[i] = len(text_ids[i]) < rules[i].budget
            if not any(fed):
                break
            past, logits, mask, next_position = self._feed(
                [[t] for t in feed], [[f] for f in fed], past, mask, next_position
            )
            logits = logits[:, -1]
        texts = [self.processor.decode(t) for t in text_ids]
        # 4. Feed each medium's marker (where the budget ran out first) and K gen tokens, all rows at once
        tails = {
            i: [self._ids[MARKER[t]]] * (not marker_fed[i]) + [self._ids[GEN[t]]] * self._num_gen(t)
            for i, t in enumerate(targets)
            if t is not None
        }
        if not tails:
            return texts, targets, {}
        longest = max(len(tail) for tail in tails.values())
        feed_rows = [tails.get(i, []) + [pad] * (longest - len(tails.get(i, []))) for i in range(n)]
        fed_rows = [[j < len(tails.get(i, [])) for j in range(longest)] for i in range(n)]
        hidden = self._feed(feed_rows, fed_rows, past, mask, next_position, output_hidden_states=True)[1]
        c_mllm: dict[int, torch.Tensor] = {}
        for modality in MODALITIES:
            rows = [i for i in tails if targets[i] is modality]
            if rows:
                k = self._num_gen(modality)
                gen_hidden = torch.stack([hidden[i, len(tails[i]) - k : len(tails[i])] for i in rows])
                c_mllm.update(zip(rows, self._c_mllm(modality, gen_hidden), strict=True))  # (K, D) each
        return texts, targets, c_mllm

    def _feed(
        self,
        tokens: list[list[int]],
        real: list[list[bool]],
        past: Any,
        mask: torch.Tensor,
        next_position: torch.Tensor,
        *,
        output_hidden_states: bool = False,
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One LM step of a batch on its KV cache: `tokens` (n, L), of which only `real` ones are
        attended to later and take positions. Returns the cache, the fp32 logits (or, with
        `output_hidden_states`, the last hidden states) (n, L, ·), the mask and the next positions."""
        device = mask.device
        real_t = torch.tensor(real, dtype=torch.long, device=device)
        positions = next_position[:, None] + (real_t.cumsum(-1) - real_t).clamp(min=0)
        mask = torch.cat([mask, real_t], dim=-1)
        step = self.lm(
            input_ids=torch.tensor(tokens, dtype=torch.long, device=device),
            attention_mask=mask,
            position_ids=positions,
            cache=past,
            use_cache=True,
            output_hidden_states=output_hidden_states,
        )
        out = step.hidden_states[-1] if output_hidden_states else step.logits.float()
        return step.cache, out, mask, next_position + real_t.sum(-1)

    # --- the steps generate and generate_batch share ------------------------------------------------
    @property
    def _input_device(self) -> torch.device:
        return cast(torch.device, self.lm.get_input_embeddings().weight.device)

    def _prompt(self, inputs: Sequence[Any]) -> tuple[torch.Tensor, dict[Modality, torch.Tensor]]:
        """A prompt's token ids (T,) and the C_x features (N, K, D) of its media, per modality."""
        enc = self.processor.encode(self._turns(inputs))
        return enc.input_ids, {m: self.media_features(m, media) for m, media in enc.input_media.items()}

    def _text_rules(self, kind: str, max_new_tokens: int) -> _TextRules:
        """How the answer's text is decoded for `output=kind`.

        Greedy until </s> or a generation marker. A forced modality keeps the answer's text (a reply
        that may state what the medium will be, e.g. the edit an analogy implies) but must end in its
        marker: </s> and the other markers are banned, and the marker is fed when the reply budget
        runs out.
        """
        if kind in ("auto", "text"):
            return _TextRules(None, self._banned_ids(MODALITIES if kind == "auto" else ()), max_new_tokens)
        target = Modality(kind)
        banned = [*self._banned_ids((target,)), self.tokenizer.eos_token_id]
        return _TextRules(target, banned, min(max_new_tokens, MAX_REPLY_TOKENS))

    def _marker(self, token_id: int) -> Modality | None:
        """The modality whose generation marker `token_id` is, if it is one."""
        return next((m for m in MODALITIES if token_id == self._ids[MARKER[m]]), None)

    def _num_gen(self, modality: Modality) -> int:
        return int(self.encoder(modality).num_feature_tokens)

    def _c_mllm(self, modality: Modality, hidden: torch.Tensor) -> torch.Tensor:
        """Last hidden states at the gen positions (B, K, H) -> c_MLLM (B, K, D)."""
        head = self.output_heads[modality.value]
        # with a device map the LM's last layer may sit on another device than the head
        return cast(torch.Tensor, head(hidden.to(next(head.parameters()).device)))

    def _output_features(self, modality: Modality, media: Sequence[Media]) -> list[torch.Tensor]:
        """C_x (K, D) of each produced medium, in one encoder pass."""
        values = self.processor.media_tensor(modality, media).to(self._input_device)
        self.encoder_calls += len(media)
        return list(self.encode_media(modality, values))

    def _banned_ids(self, allowed_markers: Sequence[Modality]) -> list[int]:
        banned = [self._ids[t] for t in (*PLACEHOLDER.values(), *GEN.values())]
        banned += [self.tokenizer.pad_token_id, self.tokenizer.bos_token_id]
        banned += [self._ids[MARKER[m]] for m in MODALITIES if m not in allowed_markers]
        return banned

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
        from transformers import AutoTokenizer, LlamaForCausalLM

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
            lm = LlamaForCausalLM.from_pretrained(
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
