"""Placement and precision: `load_model(device=, dtype=, device_map=, offload=)` and `CODI2_*` settings.

bf16 is checked on the CPU (every floating tensor of every component, then generation of each
medium); the paper preset is checked with the tiny random parts of its real classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from codi2_agent.media import Media
from codi2_agent.model import (
    FLOAT32_BUFFERS,
    CoDi2Config,
    CoDi2Model,
    DeviceUnavailableError,
    Placement,
    load_model,
)
from codi2_agent.model.paper_testing import build_tiny_paper_model
from codi2_agent.model.placement import parameter_placement
from codi2_agent.settings import SettingsError

CODI2_VARIABLES = ("CODI2_DEVICE", "CODI2_DTYPE", "CODI2_DEVICE_MAP", "CODI2_OFFLOAD")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from the defaults, whatever the shell running pytest exports."""
    for name in CODI2_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def off_dtype_tensors(module: nn.Module, dtype: torch.dtype) -> list[tuple[str, str, str, torch.dtype]]:
    """(module path, owner class, tensor name, dtype) of every floating tensor not in `dtype`."""
    found = []
    for path, owner in module.named_modules():
        tensors = [*owner._parameters.items(), *owner._buffers.items()]
        for name, tensor in tensors:
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                found.append((path, type(owner).__name__, name, tensor.dtype))
    return found


def assert_all_in(module: nn.Module, dtype: torch.dtype, device: str = "cpu") -> None:
    """Every floating parameter/buffer is `dtype` or a listed float32 exception; all on `device`."""
    for path, owner, name, found in off_dtype_tensors(module, dtype):
        assert name in FLOAT32_BUFFERS.get(owner, ()), f"{path}.{name} ({owner}) is {found}, not {dtype}"
        assert found == torch.float32, f"{path}.{name} is {found}"
    devices = {t.device.type for t in [*module.parameters(), *module.buffers()]}
    assert devices == {device}


def _image() -> Media:
    return Media.from_image(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


def _tone() -> Media:
    t = np.arange(16000) / 16000
    return Media.from_audio((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def tiny_bf16() -> CoDi2Model:
    return load_model("tiny", dtype="bfloat16")


# --- the tiny preset in bf16 on the CPU ----------------------------------------------------------------
def test_every_tensor_of_every_component_is_bf16_on_cpu(tiny_bf16: CoDi2Model) -> None:
    model = tiny_bf16
    for part in ("lm", "encoders", "projectors", "output_heads", "decoders"):
        assert_all_in(getattr(model, part), torch.bfloat16)
    exceptions = {(owner, name) for _, owner, name, _ in off_dtype_tensors(model, torch.bfloat16)}
    # the exceptions are real: the STFT constants and RoPE frequencies stayed float32
    assert ("MelSpectrogram", "filters_pinv") in exceptions
    assert ("LlamaRotaryEmbedding", "inv_freq") in exceptions
    # casting kept the LM's tied input/output embeddings one tensor
    assert model.lm.lm_head.weight is model.lm.model.embed_tokens.weight


def test_the_decoders_unet_reports_its_weights_dtype_and_predicts_as_diffusers_does(
    tiny_bf16: CoDi2Model,
) -> None:
    from diffusers import UNet2DModel

    for modality in ("image", "audio"):
        unet = tiny_bf16.decoder(modality).unet
        assert unet.dtype == torch.bfloat16  # read from a weight, not by walking every submodule
        stock = UNet2DModel.from_config(unet.config).to(torch.bfloat16)
        stock.load_state_dict(unet.state_dict())
        x = torch.randn(2, unet.config.in_channels, *unet.config.sample_size, dtype=torch.bfloat16)
        label = torch.randn(2, unet.time_embedding.linear_2.out_features, dtype=torch.bfloat16)
        with torch.no_grad():
            ours = unet(x, torch.tensor([10, 500]), class_labels=label).sample
            theirs = stock(x, torch.tensor([10, 500]), class_labels=label).sample
        assert torch.equal(ours, theirs)


def test_bf16_generates_valid_text_image_and_audio(tiny_bf16: CoDi2Model) -> None:
    text = tiny_bf16.generate(["describe this picture", _image()], output="text", max_new_tokens=16)
    assert text.text.strip() and not text.media

    image = tiny_bf16.generate(["make it blue", _image()], output="image", seed=0, num_inference_steps=2)
    pixels = np.asarray(image.image.image)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 1.0  # an image, not a flat fill from NaNs clamped away
    assert image.features is not None and torch.isfinite(image.features.float()).all()

    audio = tiny_bf16.generate(["raise the pitch", _tone()], output="audio", seed=0, num_inference_steps=2)
    clip = audio.audio
    assert clip.sample_rate == tiny_bf16.config.sample_rate
    wave = np.asarray(clip.audio)
    assert wave.dtype == np.float32 and wave.size > 1000
    assert np.isfinite(wave).all() and 0 < np.abs(wave).max() <= 1.0


def test_bf16_image_stays_close_to_float32(tiny_bf16: CoDi2Model) -> None:
    """The UNet runs in bf16 but the DDIM state stays float32: the picture barely moves."""
    fp32 = load_model("tiny")
    prompt = ["draw a red star"]
    a = np.asarray(fp32.generate(prompt, output="image", seed=0, num_inference_steps=4).image.image)
    b = np.asarray(tiny_bf16.generate(prompt, output="image", seed=0, num_inference_steps=4).image.image)
    assert np.abs(a.astype(float) - b.astype(float)).mean() < 4.0  # of 255


def test_auto_dtype_follows_the_checkpoint() -> None:
    model = load_model("tiny", dtype="auto")
    assert model.lm.dtype == torch.float32  # the shipped tiny is saved in float32
    assert_all_in(model, torch.float32)


def test_place_casts_a_model_built_from_config() -> None:
    model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
    model.place(Placement.resolve(device="cpu", dtype=torch.bfloat16))
    assert_all_in(model, torch.bfloat16)


def test_device_map_loads_the_lm_through_accelerate() -> None:
    model = load_model("tiny", device_map="cpu", dtype="bf16")
    assert model.lm.dtype == torch.bfloat16
    assert_all_in(model, torch.bfloat16)
    assert model.generate(["describe a red star"], output="text", max_new_tokens=8).text.strip()


# --- the paper preset (tiny random parts of the real classes) --------------------------------------------
@pytest.fixture(scope="module")
def paper_bf16(tmp_path_factory: pytest.TempPathFactory) -> CoDi2Model:
    folder = build_tiny_paper_model(tmp_path_factory.mktemp("paper") / "codi2-paper-tiny", seed=0)
    return load_model(str(folder), dtype="bfloat16")


def test_paper_preset_loads_every_pipeline_component_in_bf16(paper_bf16: CoDi2Model) -> None:
    model = paper_bf16
    assert_all_in(model, torch.bfloat16)
    for modality in ("image", "audio"):
        pipe = model.decoders[modality].pipe
        modules = {k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)}
        assert {"unet", "vae", "text_encoder"} <= set(modules)
        for name, module in modules.items():
            assert off_dtype_tensors(module, torch.bfloat16) == [], f"{modality} pipeline {name}"
    assert model.encoders["image"].model.dtype == torch.bfloat16  # CLIP
    assert model.encoders["audio"].model.dtype == torch.bfloat16  # CLAP
    assert model.encoders["audio"].expand.weight.dtype == torch.bfloat16


def test_paper_preset_generates_in_bf16(paper_bf16: CoDi2Model) -> None:
    image = paper_bf16.generate(["draw it", _image()], output="image", seed=0, num_inference_steps=2)
    pixels = np.asarray(image.image.image)
    size = paper_bf16.config.image_size
    assert pixels.shape == (size, size, 3) and pixels.dtype == np.uint8
    audio = paper_bf16.generate(["hear it", _tone()], output="audio", seed=0, num_inference_steps=2)
    wave = np.asarray(audio.audio.audio)
    assert np.isfinite(wave).all() and wave.size > 0


# --- settings from the environment -----------------------------------------------------------------------
def test_environment_sets_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODI2_DTYPE", "bf16")
    monkeypatch.setenv("CODI2_DEVICE", "cpu")
    model = load_model("tiny")
    assert model.lm.dtype == torch.bfloat16
    assert_all_in(model, torch.bfloat16)


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODI2_DTYPE", "bfloat16")
    monkeypatch.setenv("CODI2_OFFLOAD", "false")
    placement = Placement.resolve(dtype="float32")
    assert placement.dtype == torch.float32 and placement.offload is False
    assert Placement.resolve().dtype == torch.bfloat16
    monkeypatch.setenv("CODI2_DEVICE_MAP", "auto")
    placement = Placement.resolve()
    assert placement.device_map == "auto" and placement.device is None  # follows the LM
    assert placement.lm_kwargs() == {"dtype": torch.bfloat16, "device_map": "auto"}


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CODI2_DTYPE", "float8"),
        ("CODI2_DEVICE", "gpu0"),
        ("CODI2_DEVICE_MAP", "everywhere"),
        ("CODI2_OFFLOAD", "sometimes"),
    ],
)
def test_an_invalid_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=f"{variable}='{value}'"):
        load_model("tiny")


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(SettingsError, match="argument dtype='int4'"):
        load_model("tiny", dtype="int4")
    with pytest.raises(SettingsError, match="argument dtype"):
        load_model("tiny", dtype=torch.int8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeviceUnavailableError, match=r"argument device asks for 'cuda'.*not available"):
        load_model("tiny", device="cuda")
    monkeypatch.setenv("CODI2_DEVICE", "cuda:1")
    with pytest.raises(DeviceUnavailableError, match="CODI2_DEVICE asks for 'cuda:1'"):
        load_model("tiny")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_offload_needs_an_accelerator() -> None:
    with pytest.raises(SettingsError, match=r"argument offload .*needs device='cuda'"):
        load_model("tiny", offload=True)


def test_a_bf16_model_saves_bf16_and_auto_reloads_it_in_bf16(tiny_bf16: CoDi2Model, tmp_path: Path) -> None:
    """Saving a bf16 model writes bf16 tensors: a user's explicit choice, not a silent change."""
    from safetensors.torch import load_file

    folder = tiny_bf16.save_pretrained(tmp_path / "bf16")
    state = load_file(folder / "codi2.safetensors")
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.bfloat16}
    reloaded = load_model(str(folder), dtype="auto")
    assert reloaded.lm.dtype == torch.bfloat16
    assert reloaded.projectors["image"][0].weight.dtype == torch.bfloat16


def test_parameter_placement_reads_every_parameter_and_shows_a_part_left_behind() -> None:
    module = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    assert parameter_placement(module) == {"dtypes": ["float32"], "devices": ["cpu"]}
    module[1].to(torch.bfloat16)  # one part that ignored a float32 placement
    assert parameter_placement(module) == {"dtypes": ["bfloat16", "float32"], "devices": ["cpu"]}
