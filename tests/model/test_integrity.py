"""`codi2_agent.model.integrity` (the sha256 manifest) and `CoDi2Config` validation, piece by piece.

The attacks on whole model folders are in tests/security/test_weights.py; here: what a manifest
covers, streaming hashes, the save -> load -> generate round trip under ``verify="strict"``, the
error families, and the config's bounds and messages field by field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import pickle
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from codi2_agent.model import (
    CoDi2Config,
    CoDi2Model,
    ConfigError,
    CorruptWeightsError,
    DecoderConfig,
    EncoderConfig,
    IncompleteWeightsError,
    ModelLoadError,
    WeightsNotFoundError,
    shipped_model_path,
)
from codi2_agent.model.integrity import (
    CHUNK_SIZE,
    MANIFEST_NAME,
    file_sha256,
    manifest_files,
    read_manifest,
    verify_folder,
    write_manifest,
)


# --- hashing --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE + 7])
def test_file_sha256_matches_hashlib_across_chunk_boundaries(tmp_path: Path, size: int) -> None:
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    (tmp_path / "f.bin").write_bytes(data)
    assert file_sha256(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()


def test_hashing_streams_a_large_file_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:
        for _ in range(16):
            f.write(os.urandom(CHUNK_SIZE))
    tracemalloc.start()
    try:
        file_sha256(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * CHUNK_SIZE  # one reused buffer, never the 16 MB file


# --- what a manifest covers ----------------------------------------------------------------------------
def test_manifest_covers_loadable_files_and_skips_docs_hidden_files_and_itself(tmp_path: Path) -> None:
    for name in [
        "config.json",
        "codi2.safetensors",
        "tokenizer/tokenizer.json",
        "unet/deep/weights.bin",
        "README.md",
        "unet/NOTES.md",
        ".gitattributes",
        ".cache/huggingface/download.lock",
        "unet/.hidden.json",
    ]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    write_manifest(tmp_path)
    assert manifest_files(tmp_path) == [
        "codi2.safetensors",
        "config.json",
        "tokenizer/tokenizer.json",
        "unet/deep/weights.bin",
    ]
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["format"] == "codi2-manifest" and manifest["version"] == 1
    assert manifest["algorithm"] == "sha256"
    assert manifest["files"]["config.json"] == {
        "sha256": hashlib.sha256(b"config.json").hexdigest(),
        "size": len("config.json"),
    }
    assert sorted(manifest["files"]) == manifest_files(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(f".{MANIFEST_NAME}")]  # no temp file left


def test_symlinked_component_folders_are_followed_and_their_sources_checked(tmp_path: Path) -> None:
    """`assemble_paper_model(link=True)` links decoder folders to their sources: those bytes count."""
    source = tmp_path / "unclip-snapshot"
    (source / "unet").mkdir(parents=True)
    (source / "unet" / "model.safetensors").write_bytes(b"weights")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "image_decoder").symlink_to(source, target_is_directory=True)
    (source / "unet" / "loop").symlink_to(source, target_is_directory=True)  # a loop is walked once
    write_manifest(model)
    assert manifest_files(model) == ["config.json", "image_decoder/unet/model.safetensors"]
    (source / "unet" / "model.safetensors").write_bytes(b"WEIGHTS")  # the source changed under the link
    with pytest.raises(CorruptWeightsError, match=r"image_decoder/unet/model\.safetensors: sha256 differs"):
        verify_folder(model)


def test_a_manifest_for_a_missing_folder_is_weights_not_found(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        write_manifest(tmp_path / "nowhere")
    assert read_manifest(tmp_path) is None


def test_missing_files_are_summarised_by_the_folder_that_vanished(tmp_path: Path) -> None:
    for name in ["a/x.json", "a/y.json", "b/z.json", "c.json"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    write_manifest(tmp_path)
    for name in ["a/x.json", "a/y.json", "b/z.json", "c.json"]:
        (tmp_path / name).unlink()
    (tmp_path / "a").rmdir()
    with pytest.raises(IncompleteWeightsError) as info:
        verify_folder(tmp_path)
    assert str(info.value) == (
        f"model folder {tmp_path} is incomplete: "
        "missing a/ (2 files), b/z.json, c.json (listed in manifest.json)"
    )


# --- the error families ---------------------------------------------------------------------------------
def test_errors_keep_their_family_and_survive_pickling(tmp_path: Path) -> None:
    corrupt = CorruptWeightsError(tmp_path / "w.safetensors", "sha256 differs")
    incomplete = IncompleteWeightsError(tmp_path, "missing tokenizer/")
    config = ConfigError(
        [("image_decoder.guidance_scale", "must be a finite number >= 0, got nan")], "c.json"
    )
    for error in (corrupt, incomplete, config):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert isinstance(error, ModelLoadError) and isinstance(error, ValueError)
    assert isinstance(incomplete, WeightsNotFoundError) and isinstance(incomplete, FileNotFoundError)
    assert str(incomplete) == f"model folder {tmp_path} is incomplete: missing tokenizer/"
    assert isinstance(WeightsNotFoundError("x"), ModelLoadError)
    assert (config.field, config.source) == ("image_decoder.guidance_scale", "c.json")
    assert str(config) == "c.json: image_decoder.guidance_scale must be a finite number >= 0, got nan"


# --- save -> load -> generate ---------------------------------------------------------------------------
def test_save_writes_a_manifest_of_exactly_what_it_wrote_and_the_round_trip_is_exact(tmp_path: Path) -> None:
    model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=3).eval()
    folder = model.save_pretrained(tmp_path / "saved")
    written = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert sorted([*read_manifest(folder).files, MANIFEST_NAME]) == written  # type: ignore[union-attr]
    loaded = CoDi2Model.from_pretrained(folder, verify="strict")
    assert loaded.config == model.config
    prompt = ["draw a red star"]
    a = model.generate(prompt, output="image", seed=1, num_inference_steps=2)
    b = loaded.generate(prompt, output="image", seed=1, num_inference_steps=2)
    assert np.array_equal(a.image.image_array(), b.image.image_array())  # type: ignore[union-attr]
    # saving again over the folder refreshes the manifest: it still vouches for every file
    loaded.save_pretrained(folder)
    assert verify_folder(folder, "strict") is True


def test_the_shipped_manifest_lists_every_file_the_folder_holds() -> None:
    folder = shipped_model_path("tiny")
    manifest = read_manifest(folder)
    assert manifest is not None and sorted(manifest.files) == manifest_files(folder)


# --- config validation ----------------------------------------------------------------------------------
def test_presets_validate_and_round_trip_through_json(tmp_path: Path) -> None:
    for cfg in (CoDi2Config.tiny(), CoDi2Config.paper(), CoDi2Config.tiny(alpha=0, sample_rate=48000)):
        cfg.to_json_file(tmp_path / "c.json")
        assert CoDi2Config.from_json_file(tmp_path / "c.json") == cfg
    vocabulary = {"reply": "Voilà.", "attributes": {"image": {"colour": ["red"]}}}
    assert CoDi2Config.tiny(vocabulary=vocabulary).vocabulary == vocabulary  # passed through as given
    assert CoDi2Config.tiny(vocabulary=vocabulary).to_dict()["vocabulary"] == vocabulary


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: DecoderConfig("tiny_diffusion", guidance_scale=math.nan),
            "guidance_scale must be a finite number >= 0, got nan",
        ),
        (lambda: EncoderConfig("tiny_image", feature_dim=0), "feature_dim must be an integer >= 1, got 0"),
        (
            lambda: EncoderConfig("vit"),
            "kind must be one of 'tiny_image', 'clip_vision', 'imagebind', "
            "'tiny_audio', 'clap_audio', got 'vit'",
        ),
        (
            lambda: dataclasses.replace(DecoderConfig("tiny_diffusion"), fold=0),
            "fold must be an integer >= 1, got 0",
        ),
        (
            lambda: DecoderConfig("tiny_diffusion", num_inference_steps=1001),
            "num_inference_steps must be <= num_train_timesteps (1000), got 1001",
        ),
        (lambda: CoDi2Config.tiny(max_length=-1), "max_length must be an integer >= 1, got -1"),
        (lambda: CoDi2Config.tiny(image_size=32.0), "image_size must be an integer >= 1, got 32.0"),
        (
            lambda: CoDi2Config.tiny(sample_rate=10**6),
            "sample_rate must be an integer in [1000, 384000], got 1000000",
        ),
        (lambda: CoDi2Config.tiny(preset="huge"), "preset must be one of 'tiny', 'paper', got 'huge'"),
        (lambda: CoDi2Config.tiny(lm_subfolder=""), "lm_subfolder must be a non-empty string, got ''"),
        (
            lambda: CoDi2Config.tiny(lm={"rope_scaling": {"factor": -math.inf}}),
            "lm.rope_scaling.factor must be a finite number, got -inf",
        ),
        (
            lambda: CoDi2Config.tiny(image_decoder=DecoderConfig("audioldm2")),
            "image_decoder.kind must be one of 'tiny_diffusion', 'stable_unclip', got 'audioldm2'",
        ),
        (lambda: CoDi2Config.tiny(alfa=1), "unknown CoDi2Config fields: ['alfa']"),
        (
            lambda: CoDi2Config.tiny(alpha=math.inf, diffusion_loss_weight=-1),
            "alpha must be a finite number >= 0, got inf; "
            "diffusion_loss_weight must be a finite number >= 0, got -1",
        ),
    ],
)
def test_every_way_of_building_a_config_validates_it(build, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value) == message and info.value.source is None


def test_a_config_file_error_names_the_file_and_reads_json_nan_literals(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    data = CoDi2Config.tiny().to_dict()
    data["audio_decoder"]["guidance_scale"] = math.nan
    path.write_text(json.dumps(data))
    assert '"guidance_scale": NaN' in path.read_text()  # what a hand edit or another tool can write
    with pytest.raises(ConfigError) as info:
        CoDi2Config.from_json_file(path)
    assert str(info.value) == f"{path}: audio_decoder.guidance_scale must be a finite number >= 0, got nan"
    assert (info.value.field, info.value.source) == ("audio_decoder.guidance_scale", path)
    path.write_bytes(b"\xff\xfe not text")
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        CoDi2Config.from_json_file(path)
