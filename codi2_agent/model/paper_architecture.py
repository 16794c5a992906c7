"""The paper preset's components as architectures: the published sizes, or tiny ones, random weights.

`PaperArchitecture` holds the transformers/diffusers config arguments of every part of a paper-preset
CoDi-2 model: LLaMA-2-7B (the LM), the OpenCLIP ViT-H/14 image tower (C_x for images and unCLIP's
`image_encoder`), SD-2.1-unCLIP-H (UNet, VAE, OpenCLIP-H text encoder), CLAP HTSAT-unfused (C_x for
audio and AudioLDM-2's `text_encoder`) and AudioLDM-2 (UNet, VAE, Flan-T5-large encoder, GPT-2,
HiFi-GAN vocoder). Two instances:

- `PUBLISHED`: the sizes the released checkpoints have (read off their hub configs and diffusers'
  conversion scripts; `build_random_paper_model` builds it straight on a GPU to time a paper-sized
  model where no weights can be downloaded);
- `TINY`: CPU-test sizes with the same classes and the same wiring (`paper_testing` saves it as a
  model folder in the real layout).

The tokenizers are byte-level alphabets built here (nothing is downloaded); their ids fit every
vocabulary, so the text paths run, with random meanings.

Example:
    >>> model = build_random_paper_model(TINY, seed=0)  # doctest: +SKIP
    >>> model.generate(["draw a red star"], output="image", num_inference_steps=2)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from codi2_agent.media import Modality
from codi2_agent.model.configuration_codi2 import CoDi2Config, DecoderConfig, EncoderConfig

__all__ = [
    "PUBLISHED",
    "TINY",
    "PaperArchitecture",
    "build_audioldm2_pipeline",
    "build_clap",
    "build_clip_vision",
    "build_llama",
    "build_random_paper_model",
    "build_unclip_pipeline",
]


@dataclass(frozen=True)
class PaperArchitecture:
    """Config arguments per component. Widths the parts share are named once, in `sizes`."""

    # image_size (pixels), clip_dim (unCLIP embedding = CLIP projection), gpt2_dim (AudioLDM-2 LM width =
    # audio feature width), t5_dim, clap_dim, n_mels, num_generated (K), sample_rate, audio_num_samples
    sizes: dict[str, int]
    llama: dict[str, Any]  # LlamaConfig; vocab_size grows to fit the tokenizer
    clip_vision: dict[str, Any]  # CLIPVisionConfig (projection_dim, image_size from sizes)
    clip_text: dict[str, Any]  # CLIPTextConfig of unCLIP's text encoder
    unclip_unet: dict[str, Any]  # UNet2DConditionModel
    image_vae: dict[str, Any]  # AutoencoderKL (3 channels)
    clap_text: dict[str, Any]  # ClapTextConfig
    clap_audio: dict[str, Any]  # ClapAudioConfig
    clap_extractor: dict[str, Any]  # ClapFeatureExtractor
    t5: dict[str, Any]  # T5Config (encoder only)
    gpt2: dict[str, Any]  # GPT2Config
    audioldm2_unet: dict[str, Any]  # AudioLDM2UNet2DConditionModel (cross-attention dims added)
    audio_vae: dict[str, Any]  # AutoencoderKL (1 channel)
    vocoder: dict[str, Any]  # SpeechT5HifiGanConfig
    tokenizer_lengths: dict[str, int] = field(default_factory=lambda: {"clip": 77, "clap": 512, "t5": 128})
    # CoDi2Config overrides beyond what `sizes` gives (step counts, max_length)
    codi2: dict[str, Any] = field(default_factory=dict)

    def config(self) -> CoDi2Config:
        """`CoDi2Config.paper()` with the widths and lengths of these components."""
        s = self.sizes
        overrides: dict[str, Any] = dict(
            image_size=s["image_size"],
            sample_rate=s["sample_rate"],
            audio_num_samples=s["audio_num_samples"],
            image_encoder=EncoderConfig("clip_vision", feature_dim=s["clip_dim"], subfolder="image_encoder"),
            audio_encoder=EncoderConfig(
                "clap_audio",
                feature_dim=s["gpt2_dim"],
                num_feature_tokens=s["num_generated"],
                subfolder="audio_encoder",
            ),
        )
        return CoDi2Config.paper(**{**overrides, **self.codi2})


# --- the two instances ------------------------------------------------------------------------------------
_UNET_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
)
_SD_VAE_BLOCKS = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)

# Published sizes. LLaMA-2-7B (hidden 4096, 32 layers, 32 heads, MLP 11008, vocab 32000); ViT-H/14
# (1280 wide, 32 layers, 16 heads, MLP 5120, patch 14 at 224 px, 1024-d projection); SD-2.1-unCLIP-H
# (UNet 320/640/1280/1280, 2 layers per block, 5/10/20/20 heads, cross-attention 1024, 2 x 1024-d class
# input; VAE 128/256/512/512; OpenCLIP-H text 1024 wide, 23 layers); CLAP HTSAT-unfused (transformers'
# ClapConfig defaults: RoBERTa-base text, HTSAT 2/2/6/2, 512-d projection); AudioLDM-2 base (UNet
# 128/256/384/640, 2 layers per block, cross-attention to GPT-2 768 and Flan-T5 1024, 8 latent channels;
# VAE 128/256/512 to 8 channels; Flan-T5-large encoder 24 x 1024; GPT-2 base 12 x 768; HiFi-GAN at
# 16 kHz, 64 mels, upsampling 5*4*2*2*2 = 160 from 1024 channels).
PUBLISHED = PaperArchitecture(
    sizes=dict(
        image_size=768,
        clip_dim=1024,
        gpt2_dim=768,
        t5_dim=1024,
        clap_dim=512,
        n_mels=64,
        num_generated=8,
        sample_rate=16000,
        audio_num_samples=160000,
    ),
    llama=dict(
        vocab_size=32000,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    ),
    clip_vision=dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=16,
        patch_size=14,
        image_size=224,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    ),
    clip_text=dict(
        vocab_size=49408,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        max_position_embeddings=77,
        projection_dim=512,
        hidden_act="gelu",
    ),
    unclip_unet=dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024,
        use_linear_projection=True,
        upcast_attention=True,
        **_UNET_BLOCKS,
    ),
    image_vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, **_SD_VAE_BLOCKS),
    clap_text=dict(vocab_size=50265),  # otherwise ClapTextConfig's defaults: RoBERTa-base, as CLAP's
    clap_audio=dict(enable_fusion=False),  # ClapAudioConfig defaults are HTSAT-unfused
    clap_extractor=dict(truncation="rand_trunc", padding="repeatpad"),  # 48 kHz, 64 mels, 10 s defaults
    t5=dict(
        vocab_size=32128,
        d_model=1024,
        d_kv=64,
        d_ff=2816,
        num_layers=24,
        num_heads=16,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    ),
    gpt2=dict(vocab_size=50257, n_layer=12, n_head=12, n_positions=1024),  # n_embd = sizes["gpt2_dim"]
    audioldm2_unet=dict(
        sample_size=256,
        in_channels=8,
        out_channels=8,
        block_out_channels=(128, 256, 384, 640),
        layers_per_block=2,
        attention_head_dim=8,  # diffusers' name for the number of heads
        down_block_types=(
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
        ),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
    audio_vae=dict(
        latent_channels=8,
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    ),
    vocoder=dict(
        upsample_initial_channel=1024,
        upsample_rates=[5, 4, 2, 2, 2],
        upsample_kernel_sizes=[16, 16, 8, 4, 4],
        resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
        normalize_before=False,
    ),
)

# CPU-test sizes: the image feature is still the unCLIP embedding width (CLIP projection_dim), the
# audio feature AudioLDM-2's GPT-2 width, K its 8 generated tokens; 32 px images, 0.64 s clips.
TINY = PaperArchitecture(
    sizes=dict(
        image_size=32,  # the VAE halves it once -> 16 x 16 latents
        clip_dim=32,
        gpt2_dim=16,
        t5_dim=32,
        clap_dim=16,
        n_mels=16,
        num_generated=8,
        sample_rate=16000,
        audio_num_samples=10240,  # 0.64 s -> 64 mel frames at hop 160
    ),
    llama=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    ),
    clip_vision=dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, patch_size=8
    ),
    clip_text=dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=16,
        projection_dim=32,
    ),
    unclip_unet=dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=(2, 4),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        use_linear_projection=True,
        upcast_attention=True,
    ),
    image_vae=dict(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ),
    clap_text=dict(
        hidden_size=16,
        intermediate_size=37,
        num_attention_heads=2,
        num_hidden_layers=1,
        max_position_embeddings=32,
    ),
    # HTSAT folds the (frames x mels) spectrogram into a spec_size square: 16 mels, <= 16 frames.
    clap_audio=dict(
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
        enable_fusion=False,
    ),
    # Real CLAP: 48 kHz, 64 mels, hop 480 over 10 s. Here: 1 s at hop 3200 -> 16 frames.
    clap_extractor=dict(
        feature_size=16,
        sampling_rate=48000,
        hop_length=3200,
        max_length_s=1,
        fft_window_size=1024,
        truncation="rand_trunc",
        padding="repeatpad",
    ),
    t5=dict(d_ff=37, d_kv=8, num_heads=2, num_layers=1),
    gpt2=dict(vocab_size=8, n_head=2, n_layer=1, n_positions=64),
    audioldm2_unet=dict(
        sample_size=32,
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 2),  # diffusers' name for the number of heads here
    ),
    audio_vae=dict(
        block_out_channels=(8, 16),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    ),
    # AudioLDM-2's vocoder upsamples by 160 (= the mel hop) at 16 kHz; so does this one.
    vocoder=dict(
        upsample_initial_channel=16,
        upsample_rates=[8, 4, 5],
        upsample_kernel_sizes=[16, 8, 10],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        normalize_before=False,
    ),
    tokenizer_lengths={"clip": 16, "clap": 16, "t5": 16},
    codi2=dict(
        max_length=256,
        image_decoder=DecoderConfig(
            "stable_unclip", subfolder="image_decoder", num_inference_steps=2, guidance_scale=7.5
        ),
        audio_decoder=DecoderConfig(
            "audioldm2", subfolder="audio_decoder", num_inference_steps=2, guidance_scale=3.5
        ),
    ),
)


# --- where new tensors land --------------------------------------------------------------------------------
@contextmanager
def _created_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """New tensors land on `device` in `dtype`: a 7B LM is initialised where it runs, in 16 bits,
    instead of in float32 CPU memory first (minutes and 28 GB, for weights that are random anyway)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


@contextmanager
def _cpu_float32() -> Iterator[None]:
    """Schedulers keep their tables on the CPU in float32 (diffusers moves what it needs per step)."""
    with _created_on(torch.device("cpu"), torch.float32):
        yield


# --- tokenizers (the hub's are out of reach; these are built from alphabets) -----------------------------
def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def clip_tokenizer(max_length: int) -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # CLIP's BPE marks word ends with </w>
        for ch in _byte_alphabet():
            vocab[ch + suffix] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def roberta_tokenizer(max_length: int) -> Any:
    from transformers import RobertaTokenizer

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for ch in _byte_alphabet():
        vocab[ch] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def t5_tokenizer(max_length: int) -> Any:
    from transformers import T5Tokenizer

    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    vocab += [("▁" + c, -1.5) for c in letters] + [(c, -2.0) for c in letters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=max_length)


# --- components -------------------------------------------------------------------------------------------
def build_llama(arch: PaperArchitecture, tokenizer: Any) -> Any:
    """`LlamaForCausalLM` with `arch.llama`'s shape, its vocabulary at least the tokenizer's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(arch.llama)
    kwargs["vocab_size"] = max(kwargs.get("vocab_size", 0), len(tokenizer))
    ids = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(LlamaConfig(**kwargs, **ids))


def build_clip_vision(arch: PaperArchitecture) -> Any:
    """unCLIP's `image_encoder` (and the image C_x): `CLIPVisionModelWithProjection`."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    kwargs = {"image_size": arch.sizes["image_size"], **arch.clip_vision}
    return CLIPVisionModelWithProjection(CLIPVisionConfig(projection_dim=arch.sizes["clip_dim"], **kwargs))


def build_clap(arch: PaperArchitecture) -> tuple[Any, Any]:
    """CLAP (RoBERTa text tower + HTSAT audio tower) and its feature extractor."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    dim = arch.sizes["clap_dim"]
    text = dict(vocab_size=len(roberta_tokenizer(16)), bos_token_id=0, eos_token_id=2, pad_token_id=1)
    text = {**text, **arch.clap_text, "projection_dim": dim}
    audio = {**arch.clap_audio, "projection_dim": dim}
    model = ClapModel(ClapConfig(text_config=text, audio_config=audio, projection_dim=dim))
    return model, ClapFeatureExtractor(**arch.clap_extractor)


def build_unclip_pipeline(arch: PaperArchitecture, image_encoder: Any) -> Any:
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

    s = arch.sizes
    with _cpu_float32():
        noising = DDPMScheduler(beta_schedule="squaredcos_cap_v2")  # as SD-2.1-unCLIP
        scheduler = DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        )
    tokenizer = clip_tokenizer(arch.tokenizer_lengths["clip"])
    text = {"vocab_size": len(tokenizer), **arch.clip_text}
    text_encoder = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **text))
    vae_kwargs = {"sample_size": s["image_size"], **arch.image_vae}
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **vae_kwargs)
    latent_size = s["image_size"] // 2 ** (len(arch.image_vae["block_out_channels"]) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        # unCLIP: the noise-augmented image embedding and its noise-level embedding, concatenated
        class_embed_type="projection",
        projection_class_embeddings_input_dim=2 * s["clip_dim"],
        **arch.unclip_unet,
    )
    return StableUnCLIPImg2ImgPipeline(
        # CLIPImageProcessor's PIL backend, named explicitly: the default backend would need torchvision
        feature_extractor=CLIPImageProcessorPil(
            crop_size=image_encoder.config.image_size, size=image_encoder.config.image_size
        ),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=s["clip_dim"]),
        image_noising_scheduler=noising,
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        vae=vae,
    )


def build_audioldm2_pipeline(arch: PaperArchitecture, clap: Any, extractor: Any) -> Any:
    """`AudioLDM2Pipeline` with `clap` as its `text_encoder`; its GPT-2 emits `num_generated` tokens."""
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

    s = arch.sizes
    with _cpu_float32():
        scheduler = DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.0015,
            beta_end=0.0195,
            clip_sample=False,
            set_alpha_to_one=False,
        )
    tokenizer_2 = t5_tokenizer(arch.tokenizer_lengths["t5"])
    t5 = T5EncoderModel(T5Config(**{"vocab_size": len(tokenizer_2), **arch.t5, "d_model": s["t5_dim"]}))
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=s["gpt2_dim"], bos_token_id=0, eos_token_id=0, **arch.gpt2))
    gpt2.config.max_new_tokens = s["num_generated"]
    # Each cross-attention block has AudioLDM-2's three slots: self-attention (None), the GPT-2
    # sequence (`encoder_hidden_states`) and the T5 sequence (`encoder_hidden_states_1`).
    cross = (None, s["gpt2_dim"], s["t5_dim"])
    blocks = len(arch.audioldm2_unet["block_out_channels"])
    unet_kwargs = {"in_channels": 4, "out_channels": 4, **arch.audioldm2_unet}
    unet = AudioLDM2UNet2DConditionModel(cross_attention_dim=(cross,) * blocks, **unet_kwargs)
    vae_kwargs = {"latent_channels": unet_kwargs["in_channels"], **arch.audio_vae}
    vae = AutoencoderKL(in_channels=1, out_channels=1, **vae_kwargs)
    vocoder = SpeechT5HifiGan(
        SpeechT5HifiGanConfig(model_in_dim=s["n_mels"], sampling_rate=s["sample_rate"], **arch.vocoder)
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
        tokenizer=roberta_tokenizer(arch.tokenizer_lengths["clap"]),
        tokenizer_2=tokenizer_2,
        feature_extractor=extractor,
        unet=unet,
        scheduler=scheduler,
        vocoder=vocoder,
    )


# --- a whole model ----------------------------------------------------------------------------------------
def build_random_paper_model(
    arch: PaperArchitecture = PUBLISHED,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.bfloat16,
    seed: int = 0,
) -> Any:
    """A paper-preset `CoDi2Model` with random weights, built on `device` in `dtype`.

    The same classes and wiring `CoDi2Model.from_pretrained` gives a real paper folder: unCLIP's
    `image_encoder` is the image C_x's CLIP tower and AudioLDM-2's `text_encoder` the CLAP whose audio
    tower is the audio C_x. Schedulers and tokenizers are made outside the device context (they hold
    CPU tensors on purpose).
    """
    from codi2_agent.model.decoders import MediaDecoder
    from codi2_agent.model.encoders import ClapAudioEncoder, ClipImageEncoder, MediaEncoder
    from codi2_agent.model.modeling_codi2 import CoDi2Model
    from codi2_agent.model.paper_decoders import AudioLDM2Decoder, UnCLIPImageDecoder
    from codi2_agent.model.placement import Placement
    from codi2_agent.model.processing_codi2 import build_tokenizer

    # no device map: the whole model is built on `device` (CODI2_DEVICE_MAP is for loading folders)
    placement = replace(Placement.resolve(device=device, dtype=dtype, offload=False), device_map=None)
    target = placement.device or torch.device("cpu")
    torch_dtype = placement.dtype or torch.float32  # "auto": random weights have no dtype of their own
    config = arch.config()
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    with _created_on(target, torch_dtype):
        lm = build_llama(arch, tokenizer)
        clip_vision = build_clip_vision(arch)
        clap, extractor = build_clap(arch)
    encoders: dict[Modality, MediaEncoder] = {
        Modality.IMAGE: ClipImageEncoder(config.image_encoder, config, clip_vision),
        Modality.AUDIO: ClapAudioEncoder(config.audio_encoder, config, clap, extractor),
    }
    with _created_on(target, torch_dtype):
        unclip = build_unclip_pipeline(arch, clip_vision)
        audioldm2 = build_audioldm2_pipeline(arch, clap, extractor)
    for pipe in (unclip, audioldm2):
        pipe.set_progress_bar_config(disable=True)  # as `load_pipeline` does for loaded ones
    decoders: dict[Modality, MediaDecoder] = {
        Modality.IMAGE: UnCLIPImageDecoder(config.image_decoder, config, unclip),
        Modality.AUDIO: AudioLDM2Decoder(config.audio_decoder, config, audioldm2),
    }
    model = CoDi2Model(config, tokenizer, lm, encoders, decoders)
    return model.place(replace(placement, device=target, dtype=torch_dtype)).eval()
