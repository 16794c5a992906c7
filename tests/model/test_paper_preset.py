"""The `paper` preset, wired end to end with tiny random components of the paper's own classes.

`build_tiny_paper_model` writes a folder in the real paper layout; everything here loads it through
`CoDi2Model.from_pretrained`, the code path a real LLaMA-2 / CLIP / CLAP / SD-2.1-unCLIP / AudioLDM-2
folder takes. Offline, CPU, seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from codi2_agent.media import Media, Modality
from codi2_agent.model import CoDi2Config, CoDi2Model, EncoderConfig, Turn, WeightsNotFoundError
from codi2_agent.model.paper_decoders import AudioLDM2Decoder, UnCLIPImageDecoder
from codi2_agent.model.paper_testing import TINY_PAPER_SIZES, build_tiny_paper_model, tiny_paper_config

SUBFOLDERS = (
    "tokenizer",
    "language_model",
    "image_encoder",
    "audio_encoder",
    "image_decoder",
    "audio_decoder",
)


@pytest.fixture(scope="session")
def paper_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_paper_model(tmp_path_factory.mktemp("paper") / "codi2-paper-tiny", seed=0)


@pytest.fixture(scope="session")
def paper_model(paper_folder: Path) -> CoDi2Model:
    """Loaded once, used read-only (generation); tests that train load their own copy."""
    return CoDi2Model.from_pretrained(paper_folder)


@pytest.fixture
def copy_folder(paper_folder: Path, tmp_path: Path):
    def copy() -> Path:
        return Path(shutil.copytree(paper_folder, tmp_path / "copy"))

    return copy


def _image(seed: int) -> Media:
    rng = np.random.default_rng(seed)
    return Media.from_image(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))


def _audio(seed: int, seconds: float = 0.5) -> Media:
    rng = np.random.default_rng(seed)
    return Media.from_audio(0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32), 16000)


# --- layout and classes -------------------------------------------------------------------------------
def test_folder_has_the_paper_layout(paper_folder: Path) -> None:
    for name in (*SUBFOLDERS, "config.json", "codi2.safetensors"):
        assert (paper_folder / name).exists(), name
    for name in ("image_decoder", "audio_decoder"):
        assert (paper_folder / name / "model_index.json").is_file()
    index = json.loads((paper_folder / "image_decoder" / "model_index.json").read_text())
    assert index["_class_name"] == "StableUnCLIPImg2ImgPipeline"
    assert json.loads((paper_folder / "audio_decoder" / "model_index.json").read_text())["_class_name"] == (
        "AudioLDM2Pipeline"
    )
    config = CoDi2Config.from_json_file(paper_folder / "config.json")
    paper = CoDi2Config.paper()
    assert config == tiny_paper_config()
    for part in ("image_encoder", "audio_encoder", "image_decoder", "audio_decoder"):
        assert (getattr(config, part).kind, getattr(config, part).subfolder) == (
            getattr(paper, part).kind,
            getattr(paper, part).subfolder,
        )


def test_loads_the_paper_classes(paper_model: CoDi2Model) -> None:
    from diffusers import AudioLDM2Pipeline, StableUnCLIPImg2ImgPipeline
    from transformers import ClapFeatureExtractor, ClapModel, CLIPVisionModelWithProjection, LlamaForCausalLM

    model = paper_model
    assert model.config.preset == "paper"
    assert isinstance(model.lm, LlamaForCausalLM)
    assert isinstance(model.encoders["image"].model, CLIPVisionModelWithProjection)
    assert isinstance(model.encoders["audio"].model, ClapModel)
    assert isinstance(model.encoders["audio"].feature_extractor, ClapFeatureExtractor)
    assert isinstance(model.decoders["image"], UnCLIPImageDecoder)
    assert isinstance(model.decoders["image"].pipe, StableUnCLIPImg2ImgPipeline)
    assert isinstance(model.decoders["audio"], AudioLDM2Decoder)
    assert isinstance(model.decoders["audio"].pipe, AudioLDM2Pipeline)
    # c_MLLM reaches the pipelines as the heads predict it: the pretrained encoders add no normalisation
    x = torch.randn(2, 1, 7)
    assert all(model.encoders[m].onto_features(x) is x for m in ("image", "audio"))
    # the tokenizer carries the CoDi-2 special tokens
    assert all(t in model.tokenizer.get_vocab() for t in ("<image>", "<audio>", "<boi>", "<boa>"))


# --- training forward ---------------------------------------------------------------------------------
def _batch(model: CoDi2Model) -> dict:
    p = model.processor
    samples = [
        p.encode(
            [Turn("user", ["make", _image(0), "sound like", _audio(1)])],
            answer_text="ok",
            answer_media=_image(2),
        ),
        p.encode([Turn("user", ["now hear", _audio(3)])], answer_media=_audio(4)),
    ]
    return p.collate(samples)


def test_forward_gives_finite_losses_and_diffusion_gradients_reach_the_lm(paper_folder: Path) -> None:
    model = CoDi2Model.from_pretrained(paper_folder).train()
    assert model.config.diffusion_loss_into_lm  # the paper's setting
    model.encoders.requires_grad_(False)  # frozen, as in the paper (and the training recipe)
    model.decoders.requires_grad_(False)
    out = model(**_batch(model), generator=torch.Generator().manual_seed(0))
    for name in ("loss", "loss_text", "loss_feature", "loss_diffusion"):
        value = getattr(out, name)
        assert value.shape == () and torch.isfinite(value) and value > 0, name
    s = TINY_PAPER_SIZES
    assert out.features[Modality.IMAGE].shape == (1, 1, s["clip_dim"])
    assert out.features[Modality.AUDIO].shape == (1, s["num_generated"], s["gpt2_dim"])
    # L_DM alone reaches the LM through c_MLLM: both decoders' conditioning paths are differentiable
    out.loss_diffusion.backward()
    lm_grad = model.lm.model.layers[-1].mlp.down_proj.weight.grad
    assert lm_grad is not None and lm_grad.abs().sum() > 0
    for m in ("image", "audio"):
        head_grad = model.output_heads[m].net[-1].weight.grad
        assert head_grad is not None and head_grad.abs().sum() > 0, m
    # freezing the decoders reached the pipelines' own modules (UNet, VAE, text encoders)
    unet = model.decoders["image"].pipe.unet
    assert not any(p.requires_grad for p in unet.parameters())
    assert all(p.grad is None for p in model.decoders.parameters())


def test_without_diffusion_loss_into_lm_the_lm_gets_no_diffusion_gradient(paper_folder: Path) -> None:
    model = CoDi2Model.from_pretrained(paper_folder).train()
    model.config.diffusion_loss_into_lm = False  # condition L_DM on C_x(target) instead
    out = model(**_batch(model), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss_diffusion) and out.loss_diffusion > 0
    out.loss_diffusion.backward()
    assert model.lm.model.layers[-1].mlp.down_proj.weight.grad is None


# --- generation ---------------------------------------------------------------------------------------
def test_generate_image_has_the_configured_size_and_follows_the_seed(paper_model: CoDi2Model) -> None:
    steps: list[tuple[int, int]] = []
    prompt = ["draw this again", _image(5)]
    a = paper_model.generate(
        prompt, output="image", seed=0, num_inference_steps=2, callback=lambda i, n: steps.append((i, n))
    )
    b = paper_model.generate(prompt, output="image", seed=0, num_inference_steps=2)
    c = paper_model.generate(prompt, output="image", seed=1, num_inference_steps=2)
    assert a.modality is Modality.IMAGE and a.image is not None
    size = TINY_PAPER_SIZES["image_size"]
    assert a.image.image.size == (size, size)
    assert a.features is not None and a.features.shape == (1, TINY_PAPER_SIZES["clip_dim"])
    assert steps == [(1, 2), (2, 2)]
    assert np.array_equal(a.image.image_array(), b.image.image_array())
    assert not np.array_equal(a.image.image_array(), c.image.image_array())


def test_generate_audio_has_the_configured_rate_and_length_and_seed(paper_model: CoDi2Model) -> None:
    prompt = ["play it with rain", _audio(6)]
    a = paper_model.generate(prompt, output="audio", seed=0, num_inference_steps=2)
    b = paper_model.generate(prompt, output="audio", seed=0, num_inference_steps=2)
    c = paper_model.generate(prompt, output="audio", seed=1, num_inference_steps=2)
    assert a.modality is Modality.AUDIO and a.audio is not None
    assert a.audio.sample_rate == paper_model.config.sample_rate
    assert a.audio.audio.shape == (paper_model.config.audio_num_samples,)
    assert np.isfinite(a.audio.audio).all()
    assert np.array_equal(a.audio.audio, b.audio.audio)
    assert not np.array_equal(a.audio.audio, c.audio.audio)


def test_unclip_training_augmentation_matches_the_pipelines(paper_model: CoDi2Model) -> None:
    decoder = paper_model.decoders["image"]
    embeds = torch.randn(2, TINY_PAPER_SIZES["clip_dim"], generator=torch.Generator().manual_seed(0))
    noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(1))
    ours = decoder.augment(embeds, torch.tensor([250, 250]), torch.Generator().manual_seed(1))
    theirs = decoder.pipe.noise_image_embeddings(embeds, 250, noise=noise)
    torch.testing.assert_close(ours, theirs)


def test_decoders_refuse_features_of_the_wrong_shape(paper_model: CoDi2Model) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, 32\)"):
        paper_model.decoders["image"].decode(torch.zeros(1, 2, 32))
    with pytest.raises(ValueError, match=r"\(B, K, 16\)"):
        paper_model.decoders["audio"].decode(torch.zeros(1, 8, 15))


def test_save_and_load_round_trip_gives_identical_outputs(paper_model: CoDi2Model, tmp_path: Path) -> None:
    again = CoDi2Model.from_pretrained(paper_model.save_pretrained(tmp_path / "saved"))
    for output, prompt in (("image", ["draw", _image(7)]), ("audio", ["play", _audio(8)])):
        a = paper_model.generate(prompt, output=output, seed=3, num_inference_steps=2)
        b = again.generate(prompt, output=output, seed=3, num_inference_steps=2)
        assert torch.equal(a.features, b.features), output
        ma, mb = a.media[0], b.media[0]
        assert np.array_equal(
            ma.image_array() if output == "image" else ma.audio,
            mb.image_array() if output == "image" else mb.audio,
        ), output


# --- missing weights and optional encoders ----------------------------------------------------------------
@pytest.mark.parametrize("name", SUBFOLDERS[1:])
def test_missing_subfolder_raises_weights_not_found_naming_it(copy_folder, name: str) -> None:
    folder = copy_folder()
    shutil.rmtree(folder / name)
    with pytest.raises(WeightsNotFoundError, match=name):
        CoDi2Model.from_pretrained(folder)


@pytest.mark.parametrize(
    "missing",
    [
        "image_encoder/model.safetensors",
        "audio_encoder/config.json",
        "audio_encoder/preprocessor_config.json",
        "image_decoder/model_index.json",
        "image_decoder/unet",
        "image_decoder/unet/config.json",
        "audio_decoder/vocoder",
        "audio_decoder/tokenizer_2",
        "audio_encoder/expand.safetensors",
    ],
)
def test_missing_file_inside_a_component_raises_weights_not_found(copy_folder, missing: str) -> None:
    folder = copy_folder()
    target = folder / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    *parent, name = missing.split("/")
    with pytest.raises(WeightsNotFoundError, match=name if not parent else f"{parent[0]}.*{name}"):
        CoDi2Model.from_pretrained(folder)


def test_imagebind_encoder_without_the_package_raises_import_error_with_a_hint(copy_folder) -> None:
    try:
        import imagebind  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("ImageBind is installed here")
    folder = copy_folder()
    config = json.loads((folder / "config.json").read_text())
    config["image_encoder"]["kind"] = "imagebind"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ImportError, match="pip install"):
        CoDi2Model.from_pretrained(folder, verify=False)  # the edited config no longer matches the manifest


def _fake_imagebind(monkeypatch: pytest.MonkeyPatch, calls: list) -> None:
    """Stand-ins for the `imagebind` package's model and mel function: they record what they are given."""
    import sys
    import types

    from torch import nn

    class FakeImageBind(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(1, 1024)

        def forward(self, inputs: dict) -> dict:
            calls.extend(("model", k, tuple(x.shape)) for k, x in inputs.items())
            return {k: self.proj(x.flatten(1).mean(1, keepdim=True)) for k, x in inputs.items()}

    def waveform2melspec(waveform, sample_rate, num_mel_bins, target_length):
        calls.append(("mel", tuple(waveform.shape), sample_rate))
        return torch.zeros(1, num_mel_bins, target_length)

    model_module = types.SimpleNamespace(imagebind_huge=lambda pretrained: FakeImageBind())
    package = types.ModuleType("imagebind")
    monkeypatch.setitem(sys.modules, "imagebind", package)
    monkeypatch.setitem(sys.modules, "imagebind.models", types.SimpleNamespace(imagebind_model=model_module))
    monkeypatch.setitem(sys.modules, "imagebind.models.imagebind_model", model_module)
    data_module = types.SimpleNamespace(waveform2melspec=waveform2melspec)
    monkeypatch.setitem(sys.modules, "imagebind.data", data_module)


def test_imagebind_encoder_prepares_inputs_as_imagebind_does(monkeypatch, tmp_path: Path) -> None:
    from codi2_agent.model.encoders import ImageBindEncoder, build_encoder

    calls: list = []
    _fake_imagebind(monkeypatch, calls)
    config = CoDi2Config.tiny()
    cfg = EncoderConfig("imagebind", feature_dim=1024, subfolder="imagebind")
    with pytest.raises(WeightsNotFoundError, match=r"imagebind_huge\.pth"):
        build_encoder(cfg, config, Modality.IMAGE, tmp_path)
    (tmp_path / "imagebind").mkdir()
    fake_state = {"proj.weight": torch.zeros(1024, 1), "proj.bias": torch.zeros(1024)}
    torch.save(fake_state, tmp_path / "imagebind" / ImageBindEncoder.WEIGHTS)

    image = build_encoder(cfg, config, Modality.IMAGE, tmp_path)
    assert image(torch.zeros(2, 3, 32, 32)).shape == (2, 1, 1024)
    assert ("model", "vision", (2, 3, 224, 224)) in calls

    calls.clear()
    audio = build_encoder(cfg, config, Modality.AUDIO, tmp_path)
    assert audio(torch.zeros(2, 5 * config.sample_rate)).shape == (2, 1, 1024)
    assert calls.count(("mel", (1, 32000), 16000)) == 6  # 3 clips of 2 s per waveform
    assert ("model", "audio", (2, 3, 1, 128, 204)) in calls

    audio.save(tmp_path / "saved")
    assert (tmp_path / "saved" / ImageBindEncoder.WEIGHTS).is_file()
