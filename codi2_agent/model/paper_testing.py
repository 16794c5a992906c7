"""A tiny random `paper` model folder: the paper preset's classes and layout, at test size.

Every component is an instance of the class the real paper folder holds — `LlamaForCausalLM`,
`CLIPVisionModelWithProjection`, `ClapModel` + `ClapFeatureExtractor`, `StableUnCLIPImg2ImgPipeline`,
`AudioLDM2Pipeline` — built with random weights and widths small enough for a CPU, saved by each
library's own `save_pretrained` through `CoDi2Model.save_pretrained`. Loading it goes through
`CoDi2Model.from_pretrained`, exactly the code that loads a real paper folder. Nothing is downloaded:
the tokenizers the diffusers components need are built here from byte-level alphabets.

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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from codi2_agent.media import Modality
from codi2_agent.model.configuration_codi2 import CoDi2Config, DecoderConfig, EncoderConfig

__all__ = [
    "TINY_ASSEMBLE_OVERRIDES",
    "TINY_PAPER_SIZES",
    "TinyPaperSources",
    "build_tiny_paper_model",
    "build_tiny_paper_sources",
    "tiny_audioldm2_pipeline",
    "tiny_clap",
    "tiny_clip_vision",
    "tiny_llama",
    "tiny_llama_tokenizer",
    "tiny_paper_config",
    "tiny_unclip_pipeline",
]

# Widths chosen so the real constraints hold: the image feature is the unCLIP embedding width (CLIP
# projection_dim), the audio feature is AudioLDM-2's GPT-2 width, K = its 8 generated tokens.
TINY_PAPER_SIZES = dict(
    image_size=32,  # pixels; the VAE halves it once -> 16 x 16 latents
    clip_dim=32,  # CLIP projection_dim = unCLIP image-embedding width (1024 in SD-2.1-unCLIP-H)
    gpt2_dim=16,  # AudioLDM-2 language-model width (768 in AudioLDM-2)
    t5_dim=32,  # AudioLDM-2 T5 width (1024 in flan-t5-large)
    clap_dim=16,  # CLAP projection_dim (512 in clap-htsat-unfused)
    n_mels=16,  # AudioLDM-2 mel bins (64)
    num_generated=8,  # AudioLDM-2's generated prompt embeds per clip (8)
    sample_rate=16000,
    audio_num_samples=10240,  # 0.64 s -> 64 mel frames at hop 160
)


def tiny_paper_config() -> CoDi2Config:
    """`CoDi2Config.paper()` with widths and lengths overridden to the tiny components' sizes."""
    s = TINY_PAPER_SIZES
    return CoDi2Config.paper(
        image_size=s["image_size"],
        sample_rate=s["sample_rate"],
        audio_num_samples=s["audio_num_samples"],
        max_length=256,
        image_encoder=EncoderConfig("clip_vision", feature_dim=s["clip_dim"], subfolder="image_encoder"),
        audio_encoder=EncoderConfig(
            "clap_audio",
            feature_dim=s["gpt2_dim"],
            num_feature_tokens=s["num_generated"],
            subfolder="audio_encoder",
        ),
        image_decoder=DecoderConfig(
            "stable_unclip", subfolder="image_decoder", num_inference_steps=2, guidance_scale=7.5
        ),
        audio_decoder=DecoderConfig(
            "audioldm2", subfolder="audio_decoder", num_inference_steps=2, guidance_scale=3.5
        ),
    )


# What `assemble_paper_model` cannot read off the tiny sources: the clip length (a choice, 10 s in the
# preset) and the step counts. With these, assembling the tiny sources gives `tiny_paper_config()`.
TINY_ASSEMBLE_OVERRIDES: dict[str, Any] = dict(
    audio_num_samples=TINY_PAPER_SIZES["audio_num_samples"],
    image_decoder={"num_inference_steps": 2},
    audio_decoder={"num_inference_steps": 2},
)


# --- tokenizers (the hub's hf-internal-testing ones are out of reach; these are built from alphabets) ---
def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _clip_tokenizer(max_length: int) -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # CLIP's BPE marks word ends with </w>
        for ch in _byte_alphabet():
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _roberta_tokenizer(max_length: int) -> Any:
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_llama_tokenizer() -> Any:
    """A LLaMA-2-style tokenizer as a LLaMA-2-chat folder ships it: `<unk>`, `<s>`, `</s>`, byte
    fallback, no pad token and none of CoDi-2's tokens (assembling adds those)."""
    from transformers import LlamaTokenizer

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})  # LLaMA's byte-fallback rows, ids 3..258
    for ch in "▁" + "".join(chr(c) for c in range(33, 127)):
        vocab[ch] = len(vocab)
    return LlamaTokenizer(vocab=vocab, merges=[], model_max_length=256)


def _t5_tokenizer(max_length: int) -> Any:
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [("▁" + c, -1.5) for c in letters] + [(c, -2.0) for c in letters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


# --- components -----------------------------------------------------------------------------------
def tiny_llama(tokenizer: Any) -> Any:
    """`LlamaForCausalLM` with untied input/output embeddings (as LLaMA-2), sized to `tokenizer`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    )


def tiny_clip_vision() -> Any:
    """unCLIP's `image_encoder`: `CLIPVisionModelWithProjection` with `projection_dim` = clip_dim."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    s = TINY_PAPER_SIZES
    return CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=32,
            projection_dim=s["clip_dim"],
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=s["image_size"],
            patch_size=8,
        )
    )


def tiny_clap() -> tuple[Any, Any]:
    """CLAP (HTSAT audio tower + RoBERTa text tower) and its 48 kHz feature extractor, at toy size."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    s = TINY_PAPER_SIZES
    text = dict(
        vocab_size=len(_roberta_tokenizer(16)),
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=1,
        max_position_embeddings=32,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        projection_dim=s["clap_dim"],
    )
    # HTSAT folds the (frames x mels) spectrogram into a spec_size square: 16 mels, <= 16 frames.
    audio = dict(
        spec_size=16,
        num_mel_bins=16,
        window_size=4,
        patch_size=2,
        patch_stride=2,
        depths=[1, 1],
        num_attention_heads=[1, 1],
        patch_embeds_hidden_size=16,
        hidden_size=32,
        intermediate_size=37,
        projection_dim=s["clap_dim"],
        enable_fusion=False,
    )
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=s["clap_dim"]))
    # Real CLAP: 48 kHz, 64 mels, hop 480 over 10 s. Here: 1 s at hop 3200 -> 16 frames.
    extractor = ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=48000,
        hop_length=3200,
        max_length_s=1,
        fft_window_size=1024,
        truncation="rand_trunc",
        padding="repeatpad",
    )
    return model, extractor


def tiny_unclip_pipeline(image_encoder: Any) -> Any:
    """`StableUnCLIPImg2ImgPipeline` around `image_encoder`, with SD-2.1-unCLIP's schedulers."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessorPil, CLIPTextConfig, CLIPTextModel

    s = TINY_PAPER_SIZES
    tokenizer = _clip_tokenizer(16)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            projection_dim=32,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=s["image_size"],
    )
    unet = UNet2DConditionModel(
        sample_size=s["image_size"] // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        use_linear_projection=True,
        upcast_attention=True,
        # unCLIP: the noise-augmented image embedding and its noise-level embedding, concatenated
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * s["clip_dim"],
    )
    return StableUnCLIPImg2ImgPipeline(
        # CLIPImageProcessor's PIL backend, named explicitly: the default backend would need torchvision
        feature_extractor=CLIPImageProcessorPil(crop_size=s["image_size"], size=s["image_size"]),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=s["clip_dim"]),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),  # as SD-2.1-unCLIP
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        vae=vae,
    )


def tiny_audioldm2_pipeline(clap: Any, extractor: Any) -> Any:
    """`AudioLDM2Pipeline` with `clap` as its `text_encoder`; its GPT-2 emits num_generated tokens."""
    from diffusers import (
        AudioLDM2Pipeline,
        AudioLDM2ProjectionModel,
        AudioLDM2UNet2DConditionModel,
        AutoencoderKL,
        DDIMScheduler,
    )
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
        T5Config,
        T5EncoderModel,
    )

    s = TINY_PAPER_SIZES
    tokenizer_2 = _t5_tokenizer(16)
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(tokenizer_2), d_model=s["t5_dim"], d_ff=37, d_kv=8, num_heads=2, num_layers=1)
    )
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=8,
            n_embd=s["gpt2_dim"],
            n_head=2,
            n_layer=1,
            n_positions=64,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    gpt2.config.max_new_tokens = s["num_generated"]
    # Each cross-attention block has AudioLDM-2's three slots: self-attention (None), the GPT-2
    # sequence (`encoder_hidden_states`) and the T5 sequence (`encoder_hidden_states_1`).
    cross = (None, s["gpt2_dim"], s["t5_dim"])
    unet = AudioLDM2UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=(cross, cross),
        attention_head_dim=(2, 2),  # diffusers' name for the number of heads here
    )
    vae = AutoencoderKL(
        in_channels=1,
        out_channels=1,
        latent_channels=4,
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    # AudioLDM-2's vocoder upsamples by 160 (= the mel hop) at 16 kHz; so does this one.
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=s["n_mels"],
            sampling_rate=s["sample_rate"],
            upsample_initial_channel=16,
            upsample_rates=[8, 4, 5],
            upsample_kernel_sizes=[16, 8, 10],
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3]],
            normalize_before=False,
        )
    )
    return AudioLDM2Pipeline(
        vae=vae,
        text_encoder=clap,
        text_encoder_2=t5,
        projection_model=AudioLDM2ProjectionModel(  # sic: diffusers spells it "langauge"
            text_encoder_dim=s["clap_dim"],
            text_encoder_1_dim=s["t5_dim"],
            langauge_model_dim=s["gpt2_dim"],
        ),
        language_model=gpt2,
        tokenizer=_roberta_tokenizer(16),
        tokenizer_2=tokenizer_2,
        feature_extractor=extractor,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.0015,
            beta_end=0.0195,
            clip_sample=False,
            set_alpha_to_one=False,
        ),
        vocoder=vocoder,
    )


def build_tiny_paper_model(folder: Path, seed: int = 0) -> Path:
    """Write a random paper-preset model folder at `folder` (seeded) and return its path.

    The folder is laid out as a real paper folder (`config.json`, `tokenizer/`, `language_model/`,
    `image_encoder/`, `audio_encoder/`, `image_decoder/`, `audio_decoder/`, `codi2.safetensors`),
    written by `CoDi2Model.save_pretrained`; load it with `CoDi2Model.from_pretrained(folder)`.
    """
    from codi2_agent.model.decoders import MediaDecoder
    from codi2_agent.model.encoders import ClapAudioEncoder, ClipImageEncoder, MediaEncoder
    from codi2_agent.model.modeling_codi2 import CoDi2Model
    from codi2_agent.model.paper_decoders import AudioLDM2Decoder, UnCLIPImageDecoder
    from codi2_agent.model.processing_codi2 import build_tokenizer

    config = tiny_paper_config()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    lm = tiny_llama(tokenizer)
    clip_vision = tiny_clip_vision()
    clap, extractor = tiny_clap()
    encoders: dict[Modality, MediaEncoder] = {
        Modality.IMAGE: ClipImageEncoder(config.image_encoder, config, clip_vision),
        Modality.AUDIO: ClapAudioEncoder(config.audio_encoder, config, clap, extractor),
    }
    unclip, audioldm2 = tiny_unclip_pipeline(clip_vision), tiny_audioldm2_pipeline(clap, extractor)
    decoders: dict[Modality, MediaDecoder] = {
        Modality.IMAGE: UnCLIPImageDecoder(config.image_decoder, config, unclip),
        Modality.AUDIO: AudioLDM2Decoder(config.audio_decoder, config, audioldm2),
    }
    model = CoDi2Model(config, tokenizer, lm, encoders, decoders)
    return model.save_pretrained(folder)


@dataclass(frozen=True)
class TinyPaperSources:
    """Where `build_tiny_paper_sources` wrote each upstream folder."""

    language_model: Path  # as meta-llama/Llama-2-7b-chat-hf: sharded safetensors + index, tokenizer files
    unclip: Path  # as stabilityai/stable-diffusion-2-1-unclip: model_index.json + one folder per component
    audioldm2: Path  # as cvssp/audioldm2: model_index.json + one folder per component


def build_tiny_paper_sources(folder: Path, seed: int = 0) -> TinyPaperSources:
    """Write tiny random upstream folders, in the layouts their hub repos have, under `folder`.

    Unlike `build_tiny_paper_model`, nothing here knows CoDi-2: the LLaMA tokenizer has no pad
    token and no CoDi-2 tokens, and there is no projector, output head or CLAP expansion.
    """
    folder = Path(folder)
    torch.manual_seed(seed)
    sources = TinyPaperSources(
        language_model=folder / "Llama-2-7b-chat-hf",
        unclip=folder / "stable-diffusion-2-1-unclip",
        audioldm2=folder / "audioldm2",
    )
    tokenizer = tiny_llama_tokenizer()
    # small shards, so the folder has LLaMA-2's model-0000i-of-0000n.safetensors + index layout
    tiny_llama(tokenizer).save_pretrained(sources.language_model, max_shard_size="100KB")
    tokenizer.save_pretrained(sources.language_model)
    tiny_unclip_pipeline(tiny_clip_vision()).save_pretrained(sources.unclip)
    tiny_audioldm2_pipeline(*tiny_clap()).save_pretrained(sources.audioldm2)
    return sources
