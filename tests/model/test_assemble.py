"""`assemble_paper_model`: upstream folders (LLaMA-2-chat, SD-2.1-unCLIP, AudioLDM-2) -> a paper folder.

The sources are tiny random folders in the upstream layouts (`build_tiny_paper_sources`: a sharded
LLaMA checkpoint whose tokenizer has no pad and no CoDi-2 tokens, two diffusers pipeline folders);
the result loads through `CoDi2Model.from_pretrained`, the path a real assembled folder takes.
Offline, CPU, seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from codi2_agent.media import Media, Modality
from codi2_agent.model import CoDi2Model, Turn, WeightsNotFoundError, assemble_paper_model
from codi2_agent.model.paper_testing import (
    TINY_ASSEMBLE_OVERRIDES,
    TINY_PAPER_SIZES,
    TinyPaperSources,
    build_tiny_paper_sources,
    tiny_clap,
    tiny_paper_config,
)
from codi2_agent.model.processing_codi2 import SPECIAL_TOKENS

NEW_TOKENS = ["<pad>", *SPECIAL_TOKENS]  # LLaMA-2 has no pad token
PRETRAINED = ("image_encoder", "audio_encoder", "image_decoder", "audio_decoder")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> TinyPaperSources:
    return build_tiny_paper_sources(tmp_path_factory.mktemp("upstream"), seed=0)


def _paths(sources: TinyPaperSources) -> dict[str, Any]:
    return dict(language_model=sources.language_model, unclip=sources.unclip, audioldm2=sources.audioldm2)


@pytest.fixture(scope="module")
def assembled(sources: TinyPaperSources, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("assembled") / "codi2-paper"
    return assemble_paper_model(out, **_paths(sources), config_overrides=TINY_ASSEMBLE_OVERRIDES, seed=0)


@pytest.fixture(scope="module")
def model(assembled: Path) -> CoDi2Model:
    """Loaded once, used read-only (generation); the forward test loads its own copy."""
    return CoDi2Model.from_pretrained(assembled)


def _image(seed: int) -> Media:
    return Media.from_image(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8))


def _audio(seed: int) -> Media:
    wav = 0.1 * np.random.default_rng(seed).standard_normal(8000).astype(np.float32)
    return Media.from_audio(wav, 16000)


# --- what assembling produces --------------------------------------------------------------------------
def test_config_is_read_off_the_components(assembled: Path, model: CoDi2Model) -> None:
    for name in ("config.json", "codi2.safetensors", "tokenizer", "language_model", *PRETRAINED):
        assert (assembled / name).exists(), name
    assert not any(p.is_symlink() for p in assembled.iterdir())  # link=False: self-contained
    # widths from CLIP's projection_dim, AudioLDM-2's GPT-2 width and max_new_tokens, image size from
    # the unCLIP UNet x VAE factor, rate from the vocoder, max_length from the LM; the rest overridden
    assert model.config == tiny_paper_config()
    s = TINY_PAPER_SIZES
    image, audio = model.encoder("image"), model.encoder("audio")
    assert (image.feature_dim, image.num_feature_tokens) == (s["clip_dim"], 1)
    assert (audio.feature_dim, audio.num_feature_tokens) == (s["gpt2_dim"], s["num_generated"])


def test_tokenizer_gets_the_codi2_tokens_and_the_embeddings_grow_to_match(
    sources: TinyPaperSources, model: CoDi2Model
) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    source_tokenizer = AutoTokenizer.from_pretrained(sources.language_model, local_files_only=True)
    source_lm = LlamaForCausalLM.from_pretrained(sources.language_model, local_files_only=True)
    assert source_tokenizer.pad_token is None  # as LLaMA-2 ships
    n = len(source_tokenizer)
    tokenizer = model.tokenizer
    assert len(tokenizer) == n + len(NEW_TOKENS)
    assert sorted(tokenizer.convert_tokens_to_ids(NEW_TOKENS)) == list(range(n, n + len(NEW_TOKENS)))
    assert tokenizer.pad_token == "<pad>" and model.lm.config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer("<boi><image_gen>", add_special_tokens=False)["input_ids"] == (
        tokenizer.convert_tokens_to_ids(["<boi>", "<image_gen>"])
    )
    pairs = (
        (model.lm.get_input_embeddings(), source_lm.get_input_embeddings()),
        (model.lm.get_output_embeddings(), source_lm.get_output_embeddings()),  # untied, as LLaMA-2
    )
    for new, old in pairs:
        assert new.weight.shape == (n + len(NEW_TOKENS), old.weight.shape[1])
        torch.testing.assert_close(new.weight[:n], old.weight)  # pretrained rows untouched
        mean = old.weight.mean(dim=0).expand(len(NEW_TOKENS), -1)
        torch.testing.assert_close(new.weight[n:], mean)  # new rows start at the mean


def test_forward_gives_finite_losses(assembled: Path) -> None:
    model = CoDi2Model.from_pretrained(assembled).train()
    p = model.processor
    batch = p.collate(
        [
            p.encode(
                [Turn("user", ["make", _image(0), "sound like", _audio(1)])],
                answer_text="ok",
                answer_media=_image(2),
            ),
            p.encode([Turn("user", ["now hear", _audio(3)])], answer_media=_audio(4)),
        ]
    )
    out = model(**batch, generator=torch.Generator().manual_seed(0))
    for name in ("loss", "loss_text", "loss_feature", "loss_diffusion"):
        value = getattr(out, name)
        assert value.shape == () and torch.isfinite(value) and value > 0, name


def test_generate_image_and_audio(model: CoDi2Model) -> None:
    image = model.generate(["draw this again", _image(5)], output="image", seed=0, num_inference_steps=2)
    assert image.modality is Modality.IMAGE and image.image is not None
    assert image.image.image.size == (TINY_PAPER_SIZES["image_size"],) * 2
    audio = model.generate(["play it with rain", _audio(6)], output="audio", seed=0, num_inference_steps=2)
    assert audio.modality is Modality.AUDIO and audio.audio is not None
    assert audio.audio.audio.shape == (model.config.audio_num_samples,)
    assert np.isfinite(audio.audio.audio).all()


# --- options -------------------------------------------------------------------------------------------
def test_link_makes_symlinks_to_the_sources_and_the_same_seed_the_same_model(
    sources: TinyPaperSources, assembled: Path, model: CoDi2Model, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    out = assemble_paper_model(
        tmp_path / "linked", **_paths(sources), config_overrides=TINY_ASSEMBLE_OVERRIDES, seed=0, link=True
    )
    links = {
        "image_encoder": sources.unclip / "image_encoder",
        "image_decoder": sources.unclip,
        "audio_decoder": sources.audioldm2,
    }
    for name, target in links.items():
        assert (out / name).is_symlink() and (out / name).resolve() == target.resolve(), name
    for name in ("language_model", "audio_encoder", "tokenizer"):  # changed or CoDi-2's own: written
        assert (out / name).is_dir() and not (out / name).is_symlink(), name
    # the seed fixes the random CoDi-2 parts: the same seed gives the same projectors and heads
    ours, copied = load_file(out / "codi2.safetensors"), load_file(assembled / "codi2.safetensors")
    assert ours.keys() == copied.keys()
    assert all(torch.equal(ours[k], copied[k]) for k in ours)
    linked = CoDi2Model.from_pretrained(out)
    prompt = ["draw", _image(7)]
    a = linked.generate(prompt, output="image", seed=3, num_inference_steps=2)
    b = model.generate(prompt, output="image", seed=3, num_inference_steps=2)
    assert np.array_equal(a.image.image_array(), b.image.image_array())


def test_an_explicit_clap_folder_is_the_audio_encoder(sources: TinyPaperSources, tmp_path: Path) -> None:
    torch.manual_seed(1)  # a CLAP unlike the one inside the AudioLDM-2 folder
    clap, extractor = tiny_clap()
    clap.save_pretrained(tmp_path / "clap-htsat-unfused")  # one folder, as laion/clap-htsat-unfused
    extractor.save_pretrained(tmp_path / "clap-htsat-unfused")
    out = assemble_paper_model(
        tmp_path / "m",
        **_paths(sources),
        clap=tmp_path / "clap-htsat-unfused",
        config_overrides=TINY_ASSEMBLE_OVERRIDES,
    )
    loaded = CoDi2Model.from_pretrained(out).encoder("audio").model.state_dict()
    name = "audio_projection.linear1.weight"  # randomly initialised, so the two CLAPs differ here
    torch.testing.assert_close(loaded[name], clap.state_dict()[name])
    from transformers import ClapModel

    audioldm2_clap = ClapModel.from_pretrained(sources.audioldm2 / "text_encoder", local_files_only=True)
    assert not torch.equal(loaded[name], audioldm2_clap.state_dict()[name])


# --- refusals --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "missing",
    [
        "Llama-2-7b-chat-hf",
        "Llama-2-7b-chat-hf/config.json",
        "Llama-2-7b-chat-hf/model-00002-of-00002.safetensors",
        "Llama-2-7b-chat-hf/tokenizer.json",
        "stable-diffusion-2-1-unclip/model_index.json",
        "stable-diffusion-2-1-unclip/image_encoder/model.safetensors",
        "stable-diffusion-2-1-unclip/unet",
        "audioldm2/text_encoder/config.json",
        "audioldm2/feature_extractor/preprocessor_config.json",
        "audioldm2/vocoder",
    ],
)
def test_a_missing_source_file_raises_weights_not_found_naming_it(
    sources: TinyPaperSources, tmp_path: Path, missing: str
) -> None:
    root = Path(shutil.copytree(sources.language_model.parent, tmp_path / "upstream"))
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    copies = TinyPaperSources(
        *(root / p.name for p in (sources.language_model, sources.unclip, sources.audioldm2))
    )
    out = tmp_path / "out"
    with pytest.raises(WeightsNotFoundError) as info:
        assemble_paper_model(out, **_paths(copies))
    message = str(info.value)
    assert target.name in message and str(root / missing.split("/")[0]) in message, message
    assert not out.exists() and not (tmp_path / ".out.partial").exists()


def test_a_non_empty_out_folder_is_refused(sources: TinyPaperSources, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        assemble_paper_model(tmp_path / "out", **_paths(sources))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"image_encoder": {"kind": "imagebind"}}, "image_encoder.kind must be 'clip_vision'"),
        ({"audio_decoder": {"subfolder": "/elsewhere"}}, "audio_decoder.subfolder must be a relative"),
        ({"no_such_field": 1}, "unknown CoDi2Config fields"),
        (
            {"image_encoder": {"feature_dim": 1024}},
            "image_encoder.feature_dim is fixed by the components at 32",
        ),
        ({"max_length": 4096}, "exceeds the language model's max_position_embeddings 256"),
    ],
)
def test_overrides_that_contradict_the_components_are_refused(
    sources: TinyPaperSources, tmp_path: Path, overrides: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        assemble_paper_model(tmp_path / "out", **_paths(sources), config_overrides=overrides)
    assert not (tmp_path / "out").exists()
