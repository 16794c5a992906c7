"""A tiny random `paper` model folder: the paper preset's classes and layout, at test size.

Every component is an instance of the class the real paper folder holds (built by
`paper_architecture` at its `TINY` sizes) — `LlamaForCausalLM`,
`CLIPVisionModelWithProjection`, `ClapModel` + `ClapFeatureExtractor`, `StableUnCLIPImg2ImgPipeline`,
`AudioLDM2Pipeline` — built with random weights and widths small enough for a CPU, saved by each
library's own `save_pretrained` through `CoDi2Model.save_pretrained`. Loading it goes through
`CoDi2Model.from_pretrained`, exactly the code that loads a real paper folder. Nothing is downloaded:
the tokenizers the diffusers components need are built from byte-level alphabets.

Where a real paper component is shared between parts, it is shared here too: the unCLIP pipeline's
`image_encoder` is the CLIP tower that C_x uses, and AudioLDM-2's CLAP `text_encoder` is the model
whose audio tower C_x uses.

Two entry points share the `tiny_*` part builders:
- `build_tiny_paper_model` writes a finished CoDi-2 paper folder;
- `build_tiny_paper_sources` writes the *upstream* folders a user would have (a LLaMA-2-chat folder,
  the `stable-diffusion-2-1-unclip` and `cvssp/audioldm2` snapshots), the inputs of
  `codi2_agent.model.assemble.assemble_paper_model`.

Example:
    >>> import tempfile
    >>> from codi2_agent.model import CoDi2Model
    >>> with tempfile.TemporaryDirectory() as tmp:  # doctest: +SKIP
    ...     model = CoDi2Model.from_pretrained(build_tiny_paper_model(Path(tmp) / "paper"))
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from codi2_agent.model.configuration_codi2 import CoDi2Config
from codi2_agent.model.paper_architecture import (
    TINY,
    build_audioldm2_pipeline,
    build_clap,
    build_clip_vision,
    build_llama,
    build_random_paper_model,
    build_unclip_pipeline,
)

__all__ = [
    "LM_FAMILIES",
    "TINY_ASSEMBLE_OVERRIDES",
    "TINY_PAPER_SIZES",
    "TinyPaperSources",
    "build_tiny_paper_model",
    "build_tiny_paper_sources",
    "tiny_audioldm2_pipeline",
    "tiny_clap",
    "tiny_clip_vision",
    "tiny_language_model",
    "tiny_llama",
    "tiny_llama_tokenizer",
    "tiny_paper_config",
    "tiny_qwen2_tokenizer",
    "tiny_unclip_pipeline",
]

# The tiny sizes, named: the image feature is the unCLIP embedding width (CLIP projection_dim), the audio
# feature AudioLDM-2's GPT-2 width, K = its 8 generated tokens (see `paper_architecture.TINY`).
TINY_PAPER_SIZES = TINY.sizes


def tiny_paper_config() -> CoDi2Config:
    """`CoDi2Config.paper()` with widths and lengths overridden to the tiny components' sizes."""
    return TINY.config()


# What `assemble_paper_model` cannot read off the tiny sources: the clip length (a choice, 10 s in the
# preset) and the step counts. With these, assembling the tiny sources gives `tiny_paper_config()`.
TINY_ASSEMBLE_OVERRIDES: dict[str, Any] = dict(
    audio_num_samples=TINY_PAPER_SIZES["audio_num_samples"],
    image_decoder={"num_inference_steps": 2},
    audio_decoder={"num_inference_steps": 2},
)


def tiny_llama_tokenizer() -> Any:
    """A LLaMA-2-style tokenizer as a LLaMA-2-chat folder ships it: `<unk>`, `<s>`, `</s>`, byte
    fallback, no pad token and none of CoDi-2's tokens (assembling adds those)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})  # LLaMA's byte-fallback rows, ids 3..258
    for ch in "▁" + "".join(chr(c) for c in range(33, 127)):
        vocab[ch] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[], model_max_length=256)


def tiny_qwen2_tokenizer() -> Any:
    """A Qwen2-style byte-level BPE tokenizer as a Qwen2 folder ships it: no BOS token at all, and
    `<|endoftext|>` as both EOS and pad (the cases a LLaMA-only processor gets wrong)."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=256)


# The causal-LM families the paper preset is tested with, and the folder name each source LM gets.
LM_FAMILIES = {
    "llama": "Llama-2-7b-chat-hf",
    "mistral": "Mistral-7B-Instruct-v0.2",
    "qwen2": "Qwen2-7B-Instruct",
}


# --- components: the paper classes at `TINY` sizes -------------------------------------------------------
def tiny_llama(tokenizer: Any) -> Any:
    """`LlamaForCausalLM` with untied input/output embeddings (as LLaMA-2), sized to `tokenizer`."""
    return build_llama(TINY, tokenizer)


def tiny_language_model(family: str, tokenizer: Any, initializer_range: float | None = None) -> Any:
    """A tiny random causal LM of `family` (see `LM_FAMILIES`), sized to `tokenizer`, at `TINY` width.

    Mistral: grouped-query attention (2 query heads, 1 key/value head) and a sliding window, untied
    embeddings; Qwen2: grouped-query attention, biased q/k/v projections and tied embeddings.
    `initializer_range` (default: transformers' 0.02): at width 32 the default gives logits within
    about +-0.6, a next-token distribution close to uniform that no adapter can sharpen much; a
    larger one (0.3) makes the random LM as opinionated as a pretrained one, for training tests.
    """
    init = {} if initializer_range is None else {"initializer_range": initializer_range}
    if family == "llama":
        return build_llama(replace(TINY, llama={**TINY.llama, **init}), tokenizer)
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = {k: TINY.llama[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers")}
    shape.update(num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256, **init)
    ids = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if family == "mistral":
        return MistralForCausalLM(
            MistralConfig(**shape, **ids, sliding_window=128, tie_word_embeddings=False)
        )
    if family == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**shape, **ids, tie_word_embeddings=True))
    raise ValueError(f"unknown LM family {family!r}; expected one of {sorted(LM_FAMILIES)}")


def tiny_clip_vision() -> Any:
    """unCLIP's `image_encoder`: `CLIPVisionModelWithProjection` with `projection_dim` = clip_dim."""
    return build_clip_vision(TINY)


def tiny_clap() -> tuple[Any, Any]:
    """CLAP (HTSAT audio tower + RoBERTa text tower) and its 48 kHz feature extractor, at toy size."""
    return build_clap(TINY)


def tiny_unclip_pipeline(image_encoder: Any) -> Any:
    """`StableUnCLIPImg2ImgPipeline` around `image_encoder`, with SD-2.1-unCLIP's schedulers."""
    return build_unclip_pipeline(TINY, image_encoder)


def tiny_audioldm2_pipeline(clap: Any, extractor: Any) -> Any:
    """`AudioLDM2Pipeline` with `clap` as its `text_encoder`; its GPT-2 emits num_generated tokens."""
    return build_audioldm2_pipeline(TINY, clap, extractor)


def build_tiny_paper_model(folder: Path, seed: int = 0) -> Path:
    """Write a random paper-preset model folder at `folder` (seeded) and return its path.

    The folder is laid out as a real paper folder (`config.json`, `tokenizer/`, `language_model/`,
    `image_encoder/`, `audio_encoder/`, `image_decoder/`, `audio_decoder/`, `codi2.safetensors`),
    written by `CoDi2Model.save_pretrained`; load it with `CoDi2Model.from_pretrained(folder)`.
    """
    model = build_random_paper_model(TINY, device="cpu", dtype=torch.float32, seed=seed)
    return model.save_pretrained(folder)


@dataclass(frozen=True)
class TinyPaperSources:
    """Where `build_tiny_paper_sources` wrote each upstream folder."""

    language_model: Path  # as meta-llama/Llama-2-7b-chat-hf: sharded safetensors + index, tokenizer files
    unclip: Path  # as stabilityai/stable-diffusion-2-1-unclip: model_index.json + one folder per component
    audioldm2: Path  # as cvssp/audioldm2: model_index.json + one folder per component


def build_tiny_paper_sources(
    folder: Path, seed: int = 0, lm_family: str = "llama", initializer_range: float | None = None
) -> TinyPaperSources:
    """Write tiny random upstream folders, in the layouts their hub repos have, under `folder`.

    Unlike `build_tiny_paper_model`, nothing here knows CoDi-2: the LLaMA tokenizer has no pad
    token and no CoDi-2 tokens, and there is no projector, output head or CLAP expansion.
    `lm_family` picks the language model (`LM_FAMILIES`): a LLaMA-2-chat, Mistral or Qwen2 folder;
    `initializer_range` its weights' spread (see `tiny_language_model`).
    """
    folder = Path(folder)
    if lm_family not in LM_FAMILIES:
        raise ValueError(f"unknown LM family {lm_family!r}; expected one of {sorted(LM_FAMILIES)}")
    torch.manual_seed(seed)
    sources = TinyPaperSources(
        language_model=folder / LM_FAMILIES[lm_family],
        unclip=folder / "stable-diffusion-2-1-unclip",
        audioldm2=folder / "audioldm2",
    )
    tokenizer = tiny_qwen2_tokenizer() if lm_family == "qwen2" else tiny_llama_tokenizer()
    # small shards, so the folder has LLaMA-2's model-0000i-of-0000n.safetensors + index layout
    lm = tiny_language_model(lm_family, tokenizer, initializer_range)
    lm.save_pretrained(sources.language_model, max_shard_size="100KB")
    tokenizer.save_pretrained(sources.language_model)
    tiny_unclip_pipeline(tiny_clip_vision()).save_pretrained(sources.unclip)
    tiny_audioldm2_pipeline(*tiny_clap()).save_pretrained(sources.audioldm2)
    return sources
