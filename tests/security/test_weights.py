"""Damaged or doctored model folders are named errors before anything is loaded, never garbage output.

Every attack runs on a real copy of a folder written by `save_pretrained` (so it carries the sha256
`manifest.json`): one flipped byte in our weights, in the language model's, or in a tokenizer file;
truncated safetensors (with and without a manifest); a weight file slipped in; a file taken away; a
doctored manifest; and config.json values that would make the decoder divide by zero or draw black.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from codi2_agent.model import (
    ConfigError,
    CorruptWeightsError,
    ModelLoadError,
    WeightsNotFoundError,
    load_model,
    shipped_model_path,
)
from codi2_agent.model.integrity import MANIFEST_NAME, verify_folder, write_manifest
from codi2_agent.model.modeling_codi2 import CoDi2Model

from .conftest import STEPS


@pytest.fixture
def folder(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the saved tiny model (the session's original stays intact)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


def flip_data_byte(path: Path, *, at: float = 0.5) -> None:
    """Flip one byte of a safetensors file's tensor data (past its header), as bit rot would."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    start = 8 + header_len
    offset = start + int((len(data) - start) * at)
    data[offset] ^= 0x40  # an exponent bit of a float32: a real change, not a rounding error
    path.write_bytes(bytes(data))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, by: int = 1000) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-by])


def refused(folder: Path, error: type[Exception] = CorruptWeightsError, **kwargs: Any) -> str:
    with pytest.raises(error) as info:
        CoDi2Model.from_pretrained(folder, **kwargs)
    return str(info.value)


def edit_config(folder: Path, change: dict[str, Any], *, part: str | None = None) -> None:
    """Rewrite config.json (and, as an operator editing it on purpose would, its manifest entry)."""
    config = json.loads((folder / "config.json").read_text())
    (config[part] if part else config).update(change)
    # allow_nan: Python's json writes NaN / Infinity, as a hand edit or another tool could
    (folder / "config.json").write_text(json.dumps(config, allow_nan=True))
    write_manifest(folder)


# --- flipped bytes --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["codi2.safetensors", "language_model/model.safetensors", "tokenizer/tokenizer.json"]
)
def test_a_flipped_byte_anywhere_is_refused_naming_the_file_and_the_hashes(folder: Path, name: str) -> None:
    target = folder / name
    flip_data_byte(target) if target.suffix == ".safetensors" else flip_byte(target)
    message = refused(folder)
    assert message.startswith(f"{target}: sha256 differs from manifest.json (expected ")
    assert "the file changed after the model was saved" in message


def test_the_flipped_byte_was_a_real_attack_verify_false_loads_the_changed_weights(
    folder: Path, tiny_model_dir: Path
) -> None:
    """Without the manifest check the flip goes through silently: this is what `verify` guards."""
    flip_data_byte(folder / "codi2.safetensors")
    original = load_file(tiny_model_dir / "codi2.safetensors")
    flipped = load_file(folder / "codi2.safetensors")
    assert any(not torch.equal(original[k], flipped[k]) for k in original)
    model = CoDi2Model.from_pretrained(folder, verify=False)  # loads: the cost of skipping the check
    assert model.config.preset == "tiny"


def test_the_error_family(folder: Path) -> None:
    flip_data_byte(folder / "codi2.safetensors")
    with pytest.raises(CorruptWeightsError) as info:
        load_model(str(folder))
    error = info.value
    assert isinstance(error, ModelLoadError) and isinstance(error, ValueError)
    assert error.path == folder / "codi2.safetensors" and "sha256" in error.reason


# --- truncation ---------------------------------------------------------------------------------------
def test_truncated_weights_with_a_manifest_fail_on_size_before_any_hashing(folder: Path) -> None:
    target = folder / "codi2.safetensors"
    size = target.stat().st_size
    truncate(target)
    assert refused(folder) == (
        f"{target}: size differs from manifest.json (expected {size} bytes, got {size - 1000}): "
        "the file changed after the model was saved"
    )


@pytest.mark.parametrize("name", ["codi2.safetensors", "language_model/model.safetensors"])
def test_truncated_safetensors_without_a_manifest_is_named_not_a_raw_safetensor_error(
    folder: Path, name: str
) -> None:
    (folder / MANIFEST_NAME).unlink()
    truncate(folder / name)
    assert refused(folder) == (
        f"{folder / name}: not a readable safetensors file (Error while deserializing header: "
        "incomplete metadata, file not fully covered)"
    )


def test_garbage_safetensors_is_named_even_when_verification_is_off(folder: Path) -> None:
    (folder / "language_model" / "model.safetensors").write_bytes(b"not safetensors at all")
    message = refused(folder, verify=False)
    assert message.startswith(
        f"{folder / 'language_model' / 'model.safetensors'}: not a readable safetensors"
    )


# --- files added or taken away -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra",
    [
        "language_model/model-00002-of-00002.safetensors",  # a shard transformers could pick up
        "extra.safetensors",
        "image_weights.bin",
        "tokenizer/added_tokens.json",  # tokenizers read every known file in their folder
    ],
)
def test_an_unexpected_file_the_loaders_could_read_is_refused(folder: Path, extra: str) -> None:
    source = folder / "language_model" / "model.safetensors"
    shutil.copyfile(source, folder / extra) if extra.endswith((".safetensors", ".bin")) else (
        folder / extra
    ).write_text("{}")
    message = refused(folder)
    assert message.startswith(f"{folder / extra}: not listed in manifest.json")


def test_notes_beside_the_weights_are_not_an_attack(folder: Path) -> None:
    """Top-level files no loader reads (notes, eval tables, a README) may be added freely."""
    (folder / "NOTES.md").write_text("trained on a Tuesday")
    (folder / "eval.json").write_text("{}")
    (folder / "tokenizer" / "README.md").write_text("docs")
    assert CoDi2Model.from_pretrained(folder, verify="strict").config.preset == "tiny"


@pytest.mark.parametrize(
    ("gone", "shown"),
    [
        ("tokenizer/tokenizer_config.json", "tokenizer/tokenizer_config.json"),
        ("language_model", "language_model/ (3 files)"),
    ],
)
def test_a_missing_file_is_refused_naming_it(folder: Path, gone: str, shown: str) -> None:
    target = folder / gone
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(CorruptWeightsError) as info:
        CoDi2Model.from_pretrained(folder)
    assert isinstance(info.value, WeightsNotFoundError)  # also the "incomplete folder" family
    assert str(info.value) == (
        f"model folder {folder} is incomplete: missing {shown} (listed in manifest.json)"
    )


# --- the manifest itself ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "codi2-manifest", "version": 1, "algorithm": "sha256", "files": []}', "files"),
        (
            '{"format": "codi2-manifest", "version": 1, "algorithm": "sha256", "files": '
            '{"../outside.json": {"sha256": "' + "0" * 64 + '", "size": 2}}}',
            "'../outside.json' is not a relative path inside the folder",
        ),
        (
            '{"format": "codi2-manifest", "version": 1, "algorithm": "md5", "files": {}}',
            "algorithm",
        ),
    ],
)
def test_a_doctored_manifest_is_refused(folder: Path, content: str, words: str) -> None:
    (folder / MANIFEST_NAME).write_text(content)
    message = refused(folder)
    assert message.startswith(f"{folder / MANIFEST_NAME}: not a valid manifest") and words in message


def test_a_folder_without_a_manifest_loads_with_a_warning_and_strict_refuses_it(
    folder: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (folder / MANIFEST_NAME).unlink()
    with caplog.at_level(logging.WARNING, logger="codi2_agent.model.integrity"):
        CoDi2Model.from_pretrained(folder)
    assert f"{folder} has no manifest.json: its files are loaded unverified" in caplog.text
    message = refused(folder, verify="strict")
    assert message.startswith(f"{folder / MANIFEST_NAME}: missing; verify='strict' loads only folders")
    assert CoDi2Model.from_pretrained(folder, verify=False).config.preset == "tiny"
    with pytest.raises(ValueError, match="verify must be True, False or 'strict'"):
        CoDi2Model.from_pretrained(folder, verify="yes")  # type: ignore[arg-type]


def test_rewriting_the_manifest_after_a_deliberate_change_is_the_way_to_vouch_for_it(folder: Path) -> None:
    flip_data_byte(folder / "codi2.safetensors")
    write_manifest(folder)
    assert verify_folder(folder, "strict") is True


# --- config.json values ------------------------------------------------------------------------------
NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("part", "change", "message"),
    [
        (
            "image_decoder",
            {"guidance_scale": NAN},
            "image_decoder.guidance_scale must be a finite number >= 0, got nan",
        ),
        (
            "image_decoder",
            {"guidance_scale": INF},
            "image_decoder.guidance_scale must be a finite number >= 0, got inf",
        ),
        (
            "audio_decoder",
            {"guidance_scale": -1.0},
            "audio_decoder.guidance_scale must be a finite number >= 0, got -1.0",
        ),
        (
            "image_decoder",
            {"num_inference_steps": 0},
            "image_decoder.num_inference_steps must be an integer >= 1, got 0",
        ),
        (
            "image_decoder",
            {"num_inference_steps": "20"},
            "image_decoder.num_inference_steps must be an integer >= 1, got '20'",
        ),
        (
            "image_decoder",
            {"num_inference_steps": True},
            "image_decoder.num_inference_steps must be an integer >= 1, got True",
        ),
        (
            "audio_decoder",
            {"num_train_timesteps": 0},
            "audio_decoder.num_train_timesteps must be an integer >= 1, got 0",
        ),
        (
            "image_decoder",
            {"prediction_type": "sample"},
            "image_decoder.prediction_type must be one of 'epsilon', 'v_prediction', got 'sample'",
        ),
        (
            "image_decoder",
            {"kind": "mystery"},
            "image_decoder.kind must be one of 'tiny_diffusion', 'stable_unclip', 'audioldm2', got 'mystery'",
        ),
        (
            "audio_encoder",
            {"kind": "tiny_image"},
            "audio_encoder.kind must be one of 'tiny_audio', 'clap_audio', 'imagebind', got 'tiny_image'",
        ),
        (
            "image_decoder",
            {"cond_dropout": 1.5},
            "image_decoder.cond_dropout must be a finite number in [0, 1], got 1.5",
        ),
        (
            "image_encoder",
            {"channels": [32, 0]},
            "image_encoder.channels must be a non-empty list of integers >= 1, got [32, 0]",
        ),
        ("image_decoder", {"extra": 1}, "image_decoder.extra is not a known field"),
        (None, {"image_size": 0}, "image_size must be an integer >= 1, got 0"),
        (None, {"sample_rate": 10}, "sample_rate must be an integer in [1000, 384000], got 10"),
        (None, {"num_media_tokens": 0}, "num_media_tokens must be an integer >= 1, got 0"),
        (None, {"alpha": NAN}, "alpha must be a finite number >= 0, got nan"),
        (None, {"alpha": -0.5}, "alpha must be a finite number >= 0, got -0.5"),
        (None, {"diffusion_loss_into_lm": "yes"}, "diffusion_loss_into_lm must be true or false, got 'yes'"),
        (
            None,
            {"projector_type": "qformer"},
            "projector_type must be one of 'linear', 'mlp2x_gelu_ln', got 'qformer'",
        ),
        (None, {"lm": {"rms_norm_eps": NAN}}, "lm.rms_norm_eps must be a finite number, got nan"),
        (
            None,
            {"vocabulary": {"reply": "hi", "colours": []}},
            "vocabulary is invalid: unknown vocabulary fields: ['colours']",
        ),
        (None, {"image_decoder": 3}, "image_decoder must be an object (a JSON mapping), got 3"),
    ],
)
def test_bad_config_values_are_a_config_error_naming_file_and_field(
    folder: Path, part: str | None, change: dict[str, Any], message: str
) -> None:
    edit_config(folder, change, part=part)
    with pytest.raises(ConfigError) as info:
        CoDi2Model.from_pretrained(folder)
    assert str(info.value) == f"{folder / 'config.json'}: {message}"
    assert info.value.field == message.split(" ")[0]
    assert isinstance(info.value, ModelLoadError) and isinstance(info.value, ValueError)


def test_an_edited_config_without_a_new_manifest_is_refused_before_it_is_parsed(folder: Path) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    assert config["image_decoder"]["guidance_scale"] == 3.5
    config["image_decoder"]["guidance_scale"] = 7.5  # a valid value, and the same size: only the hash tells
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    assert refused(folder).startswith(f"{path}: sha256 differs from manifest.json (expected ")


@pytest.mark.parametrize(("content", "words"), [("[1, 2]", "must be a JSON object"), ("{", "not valid JSON")])
def test_a_config_that_is_not_a_json_object_is_a_config_error(folder: Path, content: str, words: str) -> None:
    (folder / "config.json").write_text(content)
    write_manifest(folder)
    with pytest.raises(ConfigError, match=words) as info:
        CoDi2Model.from_pretrained(folder)
    assert str(info.value).startswith(f"{folder / 'config.json'}: ")


# --- call-time generation arguments ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1, got 0"),
        ({"num_inference_steps": -3}, "num_inference_steps must be an integer >= 1, got -3"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be an integer >= 1, got 2.5"),
        ({"guidance_scale": NAN}, "guidance_scale must be a finite number >= 0, got nan"),
        ({"guidance_scale": -INF}, "guidance_scale must be a finite number >= 0, got -inf"),
        ({"guidance_scale": "7"}, "guidance_scale must be a finite number >= 0, got '7'"),
    ],
)
def test_generate_refuses_bad_sampling_arguments_before_running_anything(
    tiny_model: CoDi2Model, kwargs: dict[str, Any], message: str
) -> None:
    calls = tiny_model.encoder_calls
    with pytest.raises(ValueError) as info:
        tiny_model.generate(["draw a red star"], output="image", seed=0, **kwargs)
    assert str(info.value) == message
    assert tiny_model.encoder_calls == calls


# --- intact folders --------------------------------------------------------------------------------
def test_an_intact_saved_folder_loads_strictly_and_generates(folder: Path) -> None:
    model = CoDi2Model.from_pretrained(folder, verify="strict")
    out = model.generate(["draw a red star"], output="image", seed=0, num_inference_steps=STEPS)
    assert out.image is not None and out.image.image.size == (32, 32)


def test_the_shipped_tiny_weights_carry_a_manifest_that_matches_them() -> None:
    folder = shipped_model_path("tiny")
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert {"config.json", "codi2.safetensors", "language_model/model.safetensors"} <= set(manifest["files"])
    assert "tokenizer/tokenizer.json" in manifest["files"] and "REPRODUCE.md" not in manifest["files"]
    assert verify_folder(folder, "strict") is True
    assert load_model("tiny", verify="strict").config.preset == "tiny"
