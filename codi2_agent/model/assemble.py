"""Assemble a `paper` CoDi-2 model folder from the upstream checkpoints a user has on disk.

CoDi-2's weights were never released, so a paper-scale model starts from its pretrained parts:
LLaMA-2-chat, SD-2.1-unCLIP-H (whose `image_encoder/` is the CLIP-H tower C_x uses for images) and
AudioLDM-2 (whose CLAP `text_encoder/` is the model C_x uses for audio). `assemble_paper_model` checks
and loads them from local folders, adds CoDi-2's tokens to the LM, reads the feature widths off the
components, draws the parts CoDi-2 trains itself (projectors, output heads, CLAP expansion) from a
seed, and writes a folder that `CoDi2Model.from_pretrained` / `load_model` open. Nothing is downloaded.

Those CoDi-2 parts are untrained: the folder hosts the paper architecture with the pretrained
weights in place, the starting point of CoDi-2 training, not a model that follows instructions yet.

Example:
    >>> from codi2_agent.model import CoDi2Model
    >>> folder = assemble_paper_model(  # doctest: +SKIP
    ...     Path("models/codi2-paper"),
    ...     language_model=Path("weights/Llama-2-7b-chat-hf"),
    ...     unclip=Path("weights/stable-diffusion-2-1-unclip"),
    ...     audioldm2=Path("weights/audioldm2"),
    ... )
    >>> model = CoDi2Model.from_pretrained(folder, device="cuda")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from codi2_agent.media import Modality
from codi2_agent.model.configuration_codi2 import CoDi2Config
from codi2_agent.model.decoders import MediaDecoder
from codi2_agent.model.encoders import (
    ClapAudioEncoder,
    ClipImageEncoder,
    MediaEncoder,
    _require_transformers_files,
)
from codi2_agent.model.loading_bars import loading_bars_on_terminal_only
from codi2_agent.model.modeling_codi2 import CoDi2Model, WeightsNotFoundError
from codi2_agent.model.paper_decoders import AudioLDM2Decoder, UnCLIPImageDecoder, load_pipeline
from codi2_agent.model.processing_codi2 import SPECIAL_TOKENS

__all__ = ["assemble_paper_model"]

logger = logging.getLogger(__name__)

PAD_TOKEN = "<pad>"  # LLaMA-2 ships without a pad token; batches need one
PIPELINE_INDEX = "model_index.json"
CLAP_PREPROCESSOR = "preprocessor_config.json"
# transformers loads the first of these a folder has; an index (LLaMA-2's layout) names the shards
WEIGHTS_LOAD_ORDER = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# AudioLDM-2 generates this many GPT-2 tokens when its language model's config does not say
AUDIOLDM2_MAX_NEW_TOKENS = 8
# The component kinds this function builds; any other kind in `config_overrides` is refused.
_KINDS = {
    "image_encoder": "clip_vision",
    "audio_encoder": "clap_audio",
    "image_decoder": "stable_unclip",
    "audio_decoder": "audioldm2",
}


@loading_bars_on_terminal_only()
def assemble_paper_model(
    out: Path,
    *,
    language_model: Path,
    unclip: Path,
    audioldm2: Path,
    clap: Path | None = None,
    config_overrides: dict[str, Any] | None = None,
    seed: int = 0,
    link: bool = False,
) -> Path:
    """Write a CoDi-2 `paper` model folder at `out` from local upstream folders; return `out`.

    Args:
        out: the folder to write; it must not exist yet (or be empty). It appears only when complete.
        language_model: a LLaMA-2-chat folder (the paper's) or any other causal LM folder
            `AutoModelForCausalLM` loads (Mistral, Qwen2, ...), in transformers' layout (`config.json`,
            safetensors or bin weights, sharded or not, `tokenizer.json` or `tokenizer.model`).
        unclip: the `stabilityai/stable-diffusion-2-1-unclip` snapshot folder. Its pipeline is the image
            decoder; its `image_encoder/` (CLIP-H) is the image encoder C_x.
        audioldm2: the `cvssp/audioldm2` snapshot folder. Its pipeline is the audio decoder.
        clap: a CLAP folder (`config.json`, weights and `preprocessor_config.json`, as
            `laion/clap-htsat-unfused`) for the audio encoder. Default: AudioLDM-2's own CLAP,
            `audioldm2/text_encoder` with `audioldm2/feature_extractor`.
        config_overrides: `CoDi2Config` fields to set over the derived paper config, e.g.
            `{"audio_num_samples": 80000, "image_decoder": {"guidance_scale": 5.0}}`; a dict for a
            component changes only the fields it names. Widths the components fix cannot be overridden.
        seed: seeds the CoDi-2 parts that start random (projectors, output heads, CLAP expansion).
        link: make `image_encoder/`, `image_decoder/` and `audio_decoder/` symlinks to the source
            folders instead of copies (in float32 those copies are well over 10 GB). The folder is
            then not self-contained: it works only while the sources stay where they are, and saving a
            model loaded from it back into the same folder would write through the links into the
            sources (save to a new folder to get a self-contained copy). `language_model/` (its
            embeddings are resized) and `audio_encoder/` (it holds CoDi-2's CLAP expansion) are
            always written.

    Raises:
        WeightsNotFoundError: a source folder or a file in it is missing (the message names both).
        FileExistsError: `out` is not empty.
        ValueError: `config_overrides` contradicts the components (a feature width, a kind, ...).
    """
    out = Path(out).expanduser()
    language_model, unclip, audioldm2 = (Path(p).expanduser() for p in (language_model, unclip, audioldm2))
    clap = None if clap is None else Path(clap).expanduser()
    # 1. Check every source before loading anything (a 7B LM takes minutes to load)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"out folder {out} is not empty; assemble into a new folder")
    _check_sources(language_model, unclip, audioldm2, clap)
    overrides = dict(config_overrides or {})
    _configure(CoDi2Config.paper(), overrides)  # unknown fields, other kinds: refused before loading
    # 2. Load the decoders' pipelines; the encoders share their CLIP and (by default) CLAP instances
    pipes = _load_pipelines(unclip, audioldm2)
    clap_model, clap_extractor = _load_clap(clap, pipes["audio"])
    # 3. Load the LM and its tokenizer; add CoDi-2's tokens
    tokenizer, lm = _load_language_model(language_model)
    added = _add_codi2_tokens(tokenizer, lm)
    logger.info("added %d tokens to the tokenizer of %s", len(added), language_model)
    # 4. Read the feature widths off the components
    base, fixed = _paper_config(lm, pipes)
    config = _configure(base, overrides, fixed, max_positions=int(lm.config.max_position_embeddings))
    # 5. Build the model; seed only the CoDi-2 parts that start random, leaving the caller's RNG as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoders: dict[Modality, MediaEncoder] = {
            Modality.IMAGE: ClipImageEncoder(config.image_encoder, config, pipes["image"].image_encoder),
            Modality.AUDIO: ClapAudioEncoder(config.audio_encoder, config, clap_model, clap_extractor),
        }
        decoders: dict[Modality, MediaDecoder] = {
            Modality.IMAGE: UnCLIPImageDecoder(config.image_decoder, config, pipes["image"]),
            Modality.AUDIO: AudioLDM2Decoder(config.audio_decoder, config, pipes["audio"]),
        }
        model = CoDi2Model(config, tokenizer, lm, encoders, decoders)
    if link:
        _save_as_link(encoders[Modality.IMAGE], unclip / "image_encoder")
        _save_as_link(decoders[Modality.IMAGE], unclip)
        _save_as_link(decoders[Modality.AUDIO], audioldm2)
    # 6. Write next to `out`, then rename: a failed run leaves no half-written model folder behind
    partial = out.parent / f".{out.name}.partial"
    if partial.exists():
        shutil.rmtree(partial)  # a crashed earlier run's; rmtree removes symlinks without following them
    try:
        model.save_pretrained(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.replace(out)
    logger.info("wrote CoDi-2 paper model to %s", out)
    return out


# --- checks -------------------------------------------------------------------------------------------
def _require_folder(path: Path, what: str) -> None:
    if not path.is_dir():
        raise WeightsNotFoundError(f"{what} folder {path} does not exist")


def _require_transformers_folder(path: Path, what: str, extra: tuple[str, ...] = ()) -> None:
    """`config.json`, weights, `extra` files and every shard a weight index names, or WeightsNotFoundError."""
    _require_folder(path, what)
    _require_transformers_files(path, what, extra)
    # a sharded checkpoint passes that check on its index alone: check the shards it names, too
    weights = next((name for name in WEIGHTS_LOAD_ORDER if (path / name).is_file()), "")
    if weights.endswith(".index.json"):
        shards = sorted(set(json.loads((path / weights).read_text()).get("weight_map", {}).values()))
        missing = [shard for shard in shards if not (path / shard).is_file()]
        if missing:
            raise WeightsNotFoundError(f"{what} folder {path} is incomplete: missing {', '.join(missing)}")


def _check_sources(language_model: Path, unclip: Path, audioldm2: Path, clap: Path | None) -> None:
    """The files this module reads itself; `load_pipeline` checks each pipeline's component folders."""
    _require_transformers_folder(language_model, "language model")
    if not any((language_model / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise WeightsNotFoundError(
            f"language model folder {language_model} is incomplete: missing tokenizer.json or tokenizer.model"
        )
    for path, what in ((unclip, "stable-diffusion-2-1-unclip"), (audioldm2, "audioldm2")):
        _require_folder(path, what)
        if not (path / PIPELINE_INDEX).is_file():
            raise WeightsNotFoundError(f"{what} folder {path} is incomplete: missing {PIPELINE_INDEX}")
    _require_transformers_folder(unclip / "image_encoder", "CLIP image encoder (unCLIP's image_encoder)")
    if clap is None:
        _require_transformers_folder(audioldm2 / "text_encoder", "CLAP (AudioLDM-2's text_encoder)")
        extractor = audioldm2 / "feature_extractor" / CLAP_PREPROCESSOR
        if not extractor.is_file():
            raise WeightsNotFoundError(f"audioldm2 folder {audioldm2} is incomplete: missing {extractor}")
    else:
        _require_transformers_folder(clap, "CLAP", extra=(CLAP_PREPROCESSOR,))


# --- loading ------------------------------------------------------------------------------------------
def _load_pipelines(unclip: Path, audioldm2: Path) -> dict[str, Any]:
    from diffusers import AudioLDM2Pipeline, StableUnCLIPImg2ImgPipeline

    logger.info("loading %s and %s", unclip, audioldm2)
    return {
        "image": load_pipeline(StableUnCLIPImg2ImgPipeline, unclip),
        "audio": load_pipeline(AudioLDM2Pipeline, audioldm2),
    }


def _load_clap(clap: Path | None, audio_pipe: Any) -> tuple[Any, Any]:
    """CLAP model and feature extractor: `clap`'s, or the AudioLDM-2 pipeline's own (shared, not reloaded)."""
    if clap is None:
        return audio_pipe.text_encoder, audio_pipe.feature_extractor
    from transformers import ClapFeatureExtractor, ClapModel

    return (
        ClapModel.from_pretrained(clap, local_files_only=True),
        ClapFeatureExtractor.from_pretrained(clap, local_files_only=True),
    )


def _load_language_model(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("loading the language model from %s", path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # the checkpoint's own dtype (fp16 for LLaMA-2): no fp32 copy of 7B weights in memory or on disk;
        # any causal LM family (Llama, Mistral, Qwen2, ...): its config.json names the class
        lm = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype="auto")
    except OSError as e:
        raise WeightsNotFoundError(f"cannot load the language model from {path}: {e}") from None
    return tokenizer, lm


def _add_codi2_tokens(tokenizer: Any, lm: Any) -> list[int]:
    """Add CoDi-2's special tokens (and a pad token if missing) and grow `lm`'s embeddings to match.

    Returns the new token ids. Their embedding rows, input and output, are set to the mean of the
    pretrained rows. Why: a random row can have a norm unlike the trained ones and, in LLaMA's
    untied output matrix, give its token a large logit, so the chat model would emit `<boi>` and
    friends before any training. At the mean each new token's logit is the average of the old ones,
    so (Jensen) it takes at most ~1/V of the probability and the pretrained LM's next-token
    distribution barely moves (Hewitt, 2021, "Initializing New Word Embeddings for Pretrained
    Language Models"). transformers' `mean_resizing` samples around that mean from the rows'
    covariance; the mean itself is deterministic, so the LM part does not depend on the seed.
    """
    n_before = len(tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.add_special_tokens({"extra_special_tokens": SPECIAL_TOKENS}, replace_extra_special_tokens=False)
    new_ids = list(range(n_before, len(tokenizer)))
    # a checkpoint may carry spare rows past its vocabulary; new ids use them before the matrix grows
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    with torch.no_grad():
        for embedding in (lm.get_input_embeddings(), lm.get_output_embeddings()):
            weight = embedding.weight  # (V, H)
            weight[new_ids] = weight[:n_before].float().mean(dim=0).to(weight.dtype)
    lm.config.pad_token_id = tokenizer.pad_token_id
    if lm.generation_config is not None:
        lm.generation_config.pad_token_id = tokenizer.pad_token_id
    return new_ids


# --- config -------------------------------------------------------------------------------------------
def _paper_config(lm: Any, pipes: dict[str, Any]) -> tuple[CoDi2Config, dict[str, int]]:
    """`CoDi2Config.paper()` with what the components fix read off them; the widths overrides must keep."""
    unclip, audioldm2 = pipes["image"], pipes["audio"]
    clip_dim = int(unclip.image_encoder.config.projection_dim)
    if clip_dim != unclip.image_normalizer.mean.shape[-1]:
        raise ValueError(
            f"unCLIP's image_encoder has projection_dim {clip_dim} but its image_normalizer expects "
            f"{unclip.image_normalizer.mean.shape[-1]}-d embeddings: the unclip folder mixes checkpoints"
        )
    generated = audioldm2.language_model.config
    # K: the GPT-2 sequence length AudioLDM-2's UNet was trained on (`max_new_tokens` in its config)
    k = int(getattr(generated, "max_new_tokens", None) or AUDIOLDM2_MAX_NEW_TOKENS)
    fixed = {
        "image_encoder.feature_dim": clip_dim,  # unCLIP's image-embedding width (1024 for CLIP-H)
        "image_encoder.num_feature_tokens": 1,  # unCLIP takes one embedding per image
        "audio_encoder.feature_dim": int(generated.hidden_size),  # AudioLDM-2's GPT-2 width (768)
    }
    base = CoDi2Config.paper()
    config = base.replace(
        image_size=int(unclip.unet.config.sample_size) * unclip.vae_scale_factor,  # 768 for SD-2.1-unCLIP
        sample_rate=int(audioldm2.vocoder.config.sampling_rate),  # 16 kHz for AudioLDM-2
        max_length=int(lm.config.max_position_embeddings),  # 4096 for LLaMA-2
        image_encoder=dataclasses.replace(base.image_encoder, feature_dim=clip_dim),
        audio_encoder=dataclasses.replace(
            base.audio_encoder, feature_dim=fixed["audio_encoder.feature_dim"], num_feature_tokens=k
        ),
    )
    return config, fixed


def _configure(
    base: CoDi2Config,
    overrides: dict[str, Any],
    fixed: dict[str, int] | None = None,
    max_positions: int | None = None,
) -> CoDi2Config:
    """`overrides` over `base`, checked: the paper kinds, relative subfolders, `fixed` widths unchanged."""
    config = _apply_overrides(base, overrides)
    for part, kind in _KINDS.items():
        cfg = getattr(config, part)
        if cfg.kind != kind:
            raise ValueError(f"config_overrides: {part}.kind must be {kind!r} here, got {cfg.kind!r}")
        # save_pretrained writes each part to `out / subfolder`: an absolute one would land outside `out`
        if cfg.subfolder is None or Path(cfg.subfolder).is_absolute():
            raise ValueError(
                f"config_overrides: {part}.subfolder must be a relative folder name, got {cfg.subfolder!r}"
            )
    for name, value in (fixed or {}).items():
        part, field = name.split(".")
        if getattr(getattr(config, part), field) != value:
            raise ValueError(f"config_overrides: {name} is fixed by the components at {value}")
    if max_positions is not None and config.max_length > max_positions:
        raise ValueError(
            f"config_overrides: max_length {config.max_length} exceeds the language model's "
            f"max_position_embeddings {max_positions}"
        )
    return config


def _apply_overrides(config: CoDi2Config, overrides: dict[str, Any]) -> CoDi2Config:
    """`config.replace(**overrides)`, where a dict for a component changes only the fields it names."""
    overrides = dict(overrides)
    for part in _KINDS:
        if isinstance(overrides.get(part), dict):
            try:
                overrides[part] = dataclasses.replace(getattr(config, part), **overrides[part])
            except TypeError as e:
                raise ValueError(f"config_overrides[{part!r}]: {e}") from None
    return config.replace(**overrides)


# --- links --------------------------------------------------------------------------------------------
def _save_as_link(part: Any, source: Path) -> None:
    """Make `CoDi2Model.save_pretrained` write `part` as a symlink to `source` instead of a copy.

    `save_pretrained` asks each pretrained part to `save(path)` itself into its subfolder; this part
    answers with a link. The target is absolute, so the model folder can move (the sources cannot).
    """
    target = source.resolve()

    def save(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target, target_is_directory=True)

    part.save = save
