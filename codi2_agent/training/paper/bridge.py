"""The `bridge` stage: teach the CLAP expansion to land where AudioLDM-2's own conditioning lies.

The paper preset's audio C_x is CLAP's pooled audio embedding (B, P) followed by a linear map
`expand` to the (B, K, 768) "generated prompt embeds" AudioLDM-2's UNet reads. CLAP and AudioLDM-2
are pretrained; `expand` is CoDi-2's own and starts random, so until it is trained C_x(audio) is a
random projection AudioLDM-2 never saw: c_MLLM regressed onto it decodes to noise-conditioned audio.

For each audio-caption pair the bridge regresses `expand(CLAP_audio(audio))` onto what AudioLDM-2
computes for the caption itself: `AudioLDM2Pipeline.encode_prompt` (CLAP text embeds + T5 hidden
states -> projection model -> GPT-2 generating K hidden states), called as the pipeline calls it.
Only `expand` trains (MSE; see `bridge_loss`); the targets depend on the caption alone and are
computed once per caption under no_grad (`CaptionConditioning`). It runs before `align`, whose
feature targets C_x(target) then live in AudioLDM-2's conditioning space.

Every process reads its own share of the pairs (the same `BatchStream` sharding as the other
stages) and the gradients of `expand` (a few million numbers) are averaged across processes by
hand, so the stage is the same under any launcher without wrapping another module.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codi2_agent.data.samples import Sample
from codi2_agent.media import Media, Modality
from codi2_agent.model.modeling_codi2 import CoDi2Model
from codi2_agent.model.processing_codi2 import CoDi2Processor
from codi2_agent.training.paper.checkpoint import load_trainable_weights, save_adapter_checkpoint
from codi2_agent.training.paper.data import BatchStream, DataSource, EmptyDataError
from codi2_agent.training.paper.settings import PaperTrainingConfig

__all__ = [
    "BRIDGE_TASKS",
    "CaptionConditioning",
    "NotAnAudioCaptionPairError",
    "PairProcessor",
    "audio_caption_pair",
    "bridge_loss",
    "bridge_module",
    "run_bridge",
]

logger = logging.getLogger(__name__)

BRIDGE_TASKS = frozenset({"caption_audio", "text_to_audio"})
BRIDGE_STATE = "bridge_state.pt"  # optimiser and scheduler of a bridge checkpoint
# Captions whose targets are kept (K x 768 floats each: ~24 kB, so ~200 MB at most)
CACHED_CAPTIONS = 8192


class NotAnAudioCaptionPairError(ValueError):
    """A sample the bridge cannot use: not an audio-caption pair (skipped and counted)."""


def audio_caption_pair(sample: Sample) -> tuple[Media, str]:
    """The (audio, caption) of a `caption_audio` or `text_to_audio` sample.

    `caption_audio`: the last audio of the conversation (the one asked about; earlier ones are
    exemplars) and the answer text. `text_to_audio`: the target audio and its caption.
    """
    if not isinstance(sample, Sample) or sample.task not in BRIDGE_TASKS:
        what = sample.task if isinstance(sample, Sample) else type(sample).__name__
        raise NotAnAudioCaptionPairError(f"{what} is not an audio-caption pair ({sorted(BRIDGE_TASKS)})")
    if sample.task == "caption_audio":
        audio = [m for m in sample.input_media() if m.modality is Modality.AUDIO]
        media, caption = (audio[-1] if audio else None), sample.target_text
    else:
        media = sample.target
        caption = (media.caption or "") if media is not None else ""
    if media is None or media.modality is not Modality.AUDIO or not caption.strip():
        raise NotAnAudioCaptionPairError(f"{sample.task} sample without its audio or its caption")
    return media, caption.strip()


class PairProcessor:
    """What `BatchStream` needs of a processor, for pairs: a sample -> (audio, caption), and a list
    of those -> {"audio": (B, N) waveforms as the model's processor pads them, "captions": [...]}."""

    def __init__(self, processor: CoDi2Processor) -> None:
        self.processor = processor

    def encode_sample(self, sample: Sample) -> tuple[Media, str]:
        return audio_caption_pair(sample)

    def collate(self, pairs: Sequence[tuple[Media, str]]) -> dict[str, Any]:
        audio = self.processor.media_tensor(Modality.AUDIO, [m for m, _ in pairs])
        return {"audio": audio, "captions": [c for _, c in pairs]}


def bridge_module(model: CoDi2Model) -> nn.Linear:
    """The audio encoder's `expand`, or a ValueError naming the encoder that has none."""
    encoder = model.encoder(Modality.AUDIO)
    expand = getattr(encoder, "expand", None)
    if not isinstance(expand, nn.Linear):
        raise ValueError(
            f"the bridge stage trains the CLAP audio encoder's expansion; this model's audio encoder "
            f"is {type(encoder).__name__}, which has none (drop 'bridge' from the stages)"
        )
    return expand


class CaptionConditioning:
    """AudioLDM-2's own conditioning for captions: the K "generated prompt embeds" of
    `AudioLDM2Pipeline.encode_prompt`, float32 on `device`, computed once per caption."""

    def __init__(self, pipe: Any, num_tokens: int, device: torch.device) -> None:
        self.pipe, self.num_tokens, self.device = pipe, num_tokens, device
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        todo = sorted({c for c in captions if c not in self.cache})
        if todo:
            _, _, generated = self.pipe.encode_prompt(
                todo,
                self.device,
                num_waveforms_per_prompt=1,
                do_classifier_free_guidance=False,
                max_new_tokens=self.num_tokens,
            )
            for caption, row in zip(todo, generated.float(), strict=True):
                self.cache[caption] = row
        for caption in captions:
            self.cache.move_to_end(caption)
        out = torch.stack([self.cache[c] for c in captions])
        while len(self.cache) > CACHED_CAPTIONS:
            self.cache.popitem(last=False)
        return out.to(self.device)


def bridge_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between C_x(audio) and the caption's conditioning, in float32: the UNet's cross-attention
    reads these vectors' scale as well as their direction, so a cosine loss alone would not do."""
    return nn.functional.mse_loss(features.float(), target.float())


def _text_features(pipe: Any, captions: Sequence[str], device: torch.device) -> torch.Tensor:
    """CLAP's pooled text embeddings of `captions`, tokenised as `encode_prompt` tokenises them for
    its CLAP text encoder (`pipe.tokenizer`, padded to its maximum length)."""
    tokens = pipe.tokenizer(
        list(captions),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    emb = pipe.text_encoder.get_text_features(
        tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
    )
    return getattr(emb, "pooler_output", emb)  # (B, P): transformers 5 returns an output object


# The pipeline parts `encode_prompt` runs (the UNet, VAE and vocoder stay where they are)
_PROMPT_PARTS = ("text_encoder", "text_encoder_2", "projection_model", "language_model")


def run_bridge(
    acc: Any,
    config: PaperTrainingConfig,
    model: CoDi2Model,
    source: DataSource,
    stage_dir: Path,
    *,
    base_model: Path,
    progress: bool | None,
) -> Path:
    """Train `expand` on `source`'s audio-caption pairs (see the module); return `stage_dir/final`.

    Resumes from the newest complete checkpoint in `stage_dir` as the other stages do.

    Raises:
        ValueError: the model's audio encoder has no expansion (not the CLAP encoder).
        EmptyDataError: `source` yields no audio-caption pair.
    """
    from tqdm.auto import tqdm

    from codi2_agent.training.paper.trainer import (
        _lr_lambda,
        _newest_checkpoint,
        _truncate_log,
        complete_checkpoint,
        log_record,
        mark_done,
        read_progress,
        stage_seed,
    )

    final = stage_dir / "final"
    if (stage_dir / "done").exists():
        load_trainable_weights(model, final)
        logger.info("stage bridge is done; loaded %s", final)
        return final
    expand = bridge_module(model)
    encoder = model.encoder(Modality.AUDIO)
    pipe = model.decoders[Modality.AUDIO.value].pipe
    params = list(expand.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.bridge_lr, weight_decay=config.weight_decay)
    total = config.bridge_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config.warmup_steps, total))
    step, positions = 0, [0] * acc.num_processes
    checkpoint = _newest_checkpoint(stage_dir)
    if checkpoint is not None:
        load_trainable_weights(model, checkpoint)
        state = torch.load(checkpoint / BRIDGE_STATE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, positions = read_progress(checkpoint, acc.num_processes)
        logger.info("resuming stage bridge at step %d from %s", step, checkpoint)
    stream = BatchStream(
        source,
        PairProcessor(model.processor),  # type: ignore[arg-type]  # a processor of pairs
        config.batch_size,
        rank=acc.process_index,
        world=acc.num_processes,
        position=positions[acc.process_index],
        shuffle_buffer=config.shuffle_buffer,
        seed=config.seed + stage_seed("bridge"),
        name="bridge",
    )
    device = acc.device
    homes = {name: next(getattr(pipe, name).parameters()).device for name in _PROMPT_PARTS}
    for name in _PROMPT_PARTS:
        getattr(pipe, name).to(device)
    encoder.eval()
    conditioning = CaptionConditioning(pipe, encoder.num_feature_tokens, device)
    log_path = stage_dir / "log.jsonl"
    if acc.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(log_path, step)
    hide = True if not acc.is_main_process else (None if progress is None else not progress)
    bar = tqdm(range(step, total), desc="bridge", initial=step, total=total, disable=hide)
    window: list[float] = []
    for step in bar:
        loss_sum = torch.zeros((), device=device)
        for _ in range(config.grad_accum):
            batch = _next_pairs(stream)
            target = conditioning(batch["captions"])
            loss = bridge_loss(encoder(batch["audio"].to(device)), target)
            if config.bridge_text_inputs:  # CLAP's text tower shares its audio tower's space
                with torch.no_grad():
                    text = _text_features(pipe, batch["captions"], device)
                predicted = expand(text.to(expand.weight.dtype)).view_as(target)
                loss = (loss + bridge_loss(predicted, target)) / 2
            (loss / config.grad_accum).backward()
            loss_sum += loss.detach()
        if acc.num_processes > 1:  # every process read other pairs: average their gradients
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(acc.reduce(p.grad, reduction="mean"))
        if config.max_grad_norm:
            nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(acc.reduce(loss_sum / config.grad_accum, reduction="mean")))
        done = step + 1
        if done % config.log_every == 0 or done == total:
            record = {"step": done, "lr": scheduler.get_last_lr()[0], "loss": sum(window) / len(window)}
            log_record(acc, log_path, "bridge", record)
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            window = []
        if done % config.save_every == 0 and done < total:
            folder = stage_dir / "checkpoints" / f"step-{done:07d}"
            state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            positions = acc.gather_for_metrics(torch.tensor([stream.position], device=device)).tolist()
            if acc.is_main_process:
                save_adapter_checkpoint(model, folder, base_model=base_model, stage="bridge", step=done)
                torch.save(state, folder / BRIDGE_STATE)
                complete_checkpoint(folder, done, positions, config.keep_checkpoints)
            acc.wait_for_everyone()
    for p in params:
        p.requires_grad_(False)  # the later stages regress onto C_x: it stays fixed from here
    for name, home in homes.items():
        getattr(pipe, name).to(home)
    if acc.is_main_process:
        save_adapter_checkpoint(model, final, base_model=base_model, stage="bridge", step=total)
        mark_done(stage_dir, total)
    acc.wait_for_everyone()
    return final


def _next_pairs(stream: BatchStream) -> dict[str, Any]:
    """The next batch of pairs, or an `EmptyDataError` that says what the bridge needs."""
    try:
        return stream.next_batch()
    except EmptyDataError as e:
        raise EmptyDataError(
            f"the bridge stage needs audio-caption pairs ({', '.join(sorted(BRIDGE_TASKS))} samples: "
            f"an audio clip and its caption) and its data has none ({e}); give it audio-caption "
            "data, or leave 'bridge' out of the stages"
        ) from None
