"""The `bridge` stage on tiny random paper components: the CLAP expansion is fitted to AudioLDM-2's
own caption conditioning, saved into every later checkpoint, resumed exactly, and refused bad data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from paper_training_support import PAIRS, assemble_tiny, fresh_accelerate_state, quick_config, world_samples
from safetensors.torch import load_file

from codi2_agent.model import load_model
from codi2_agent.training.paper import EmptyDataError, PaperTrainer, export_merged, train_paper
from codi2_agent.training.paper.bridge import CaptionConditioning, PairProcessor, audio_caption_pair
from codi2_agent.training.paper.checkpoint import TRAINABLE_WEIGHTS
from codi2_agent.training.paper.sources import dataset_sources

EXPAND = "encoders.audio.expand"
# four distinct clips with their captions: two asked about, two asked for
HANDFUL = ["caption_audio", "text_to_audio", "caption_audio", "text_to_audio"]


@pytest.fixture(autouse=True)
def _accelerate_state():
    fresh_accelerate_state()
    yield
    fresh_accelerate_state()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return assemble_tiny(tmp_path_factory.mktemp("bridge"))


def _log(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / stage / "log.jsonl").read_text().splitlines()]


def _expand(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.encoders["audio"].expand.state_dict().items()}


def _conditioning_mse(model, samples) -> float:
    """MSE between C_x(audio) and AudioLDM-2's conditioning for each pair's caption."""
    batch = PairProcessor(model.processor).collate([audio_caption_pair(s) for s in samples])
    encoder, pipe = model.encoders["audio"], model.decoders["audio"].pipe
    target = CaptionConditioning(pipe, encoder.num_feature_tokens, torch.device("cpu"))(batch["captions"])
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(encoder(batch["audio"]).float(), target))


def test_bridge_fits_c_x_of_audio_to_the_pipeline_s_caption_conditioning(model_dir, tmp_path):
    samples = world_samples(HANDFUL)
    config = quick_config(
        stages=("bridge",), bridge_steps=30, bridge_lr=1e-2, batch_size=4, save_every=100, warmup_steps=1
    )
    trainer = PaperTrainer(model_dir, tmp_path / "run", samples, config, progress=False)
    final = trainer.train()

    assert final == tmp_path / "run" / "bridge" / "final" and (tmp_path / "run" / "bridge" / "done").exists()
    log = _log(tmp_path / "run", "bridge")
    assert [r["step"] for r in log] == list(range(1, 31))
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    before = _conditioning_mse(load_model(model_dir), samples)
    reloaded = load_model(final)
    after = _conditioning_mse(reloaded, samples)
    assert after < 0.5 * before
    # the checkpoint carries the expansion the run trained, and load_model puts it in C_x
    assert trainer.model is not None
    trained = _expand(trainer.model)
    saved = load_file(final / TRAINABLE_WEIGHTS)
    for key, value in trained.items():
        torch.testing.assert_close(saved[f"{EXPAND}.{key}"], value, rtol=0, atol=0)
        torch.testing.assert_close(_expand(reloaded)[key], value, rtol=0, atol=0)
    assert not torch.equal(_expand(load_model(model_dir))["weight"], trained["weight"])
    # only the expansion trained: the projectors and heads are the base model's
    base = load_model(model_dir)
    for name, p in base.projectors.named_parameters():
        torch.testing.assert_close(reloaded.projectors.get_parameter(name), p, rtol=0, atol=0)


def test_later_stages_and_the_export_keep_the_bridged_expansion(model_dir, tmp_path):
    data = {"align": world_samples(PAIRS), "instruct": world_samples(["edit_audio", "caption_audio"])}
    config = quick_config(bridge_lr=1e-2)  # every stage: bridge, align, instruct
    final = train_paper(model_dir, tmp_path / "run", data, config, progress=False)

    bridged = load_file(tmp_path / "run" / "bridge" / "final" / TRAINABLE_WEIGHTS)
    bridged = {k[len(EXPAND) + 1 :]: v for k, v in bridged.items() if k.startswith(f"{EXPAND}.")}
    assert set(bridged) == {"weight", "bias"}
    assert not torch.equal(bridged["weight"], _expand(load_model(model_dir))["weight"])
    for folder in (tmp_path / "run" / "align" / "final", final):
        loaded = _expand(load_model(folder))  # align and instruct regress onto it: it stays fixed
        for key, value in bridged.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    exported = _expand(load_model(export_merged(final, tmp_path / "standalone")))
    for key, value in bridged.items():
        torch.testing.assert_close(exported[key], value, rtol=0, atol=0)


class _Crash(Exception):
    """The run is killed between two checkpoints."""


def test_a_killed_bridge_resumes_on_the_uninterrupted_trajectory(model_dir, tmp_path):
    samples = world_samples(HANDFUL * 2)
    config = quick_config(stages=("bridge",), bridge_steps=4, bridge_lr=1e-2, batch_size=2, save_every=2)
    reference = train_paper(model_dir, tmp_path / "a", lambda: iter(samples), config, progress=False)

    def crashing():  # killed drawing step 4's batch: step 2 is the last checkpoint
        for i, sample in enumerate(samples):
            if i == 6:
                raise _Crash
            yield sample

    with pytest.raises(_Crash):
        train_paper(model_dir, tmp_path / "b", crashing, config, progress=False)
    checkpoints = sorted((tmp_path / "b" / "bridge" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000002"]
    resumed = train_paper(model_dir, tmp_path / "b", lambda: iter(samples), config, progress=False)

    losses = [r["loss"] for r in _log(tmp_path / "a", "bridge")]
    assert len(losses) == 4 and [r["loss"] for r in _log(tmp_path / "b", "bridge")] == losses
    a, b = load_file(reference / TRAINABLE_WEIGHTS), load_file(resumed / TRAINABLE_WEIGHTS)
    for key in (f"{EXPAND}.weight", f"{EXPAND}.bias"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_bridge_without_audio_caption_pairs_is_a_named_error(model_dir, tmp_path):
    config = quick_config(stages=("bridge",))
    images_only = world_samples(["caption_image", "text_to_image", "edit_audio"])
    with pytest.raises(EmptyDataError, match="the bridge stage needs audio-caption pairs"):
        train_paper(model_dir, tmp_path / "run", images_only, config, progress=False)
    with pytest.raises(EmptyDataError, match="bridge: the data source yielded no samples"):
        train_paper(model_dir, tmp_path / "r2", [], config, progress=False)
    assert not (tmp_path / "run" / "bridge" / "done").exists()


def test_dataset_folders_give_the_bridge_each_audio_pair_once(tmp_path):
    folder = tmp_path / "sounds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        sf.write(folder / f"{i}.wav", rng.uniform(-0.5, 0.5, 1600).astype(np.float32), 16000)
    (folder / "sounds.csv").write_text("audio,caption\n0.wav,rain\n1.wav,wind\n2.wav,a bell\n")
    (folder / "pictures.jsonl").write_text('{"image": "missing.png", "caption": "never opened"}\n')

    sources = dataset_sources([folder], [folder], sample_rate=16000)
    pairs = [audio_caption_pair(s) for s in sources["bridge"]()]
    assert [caption for _, caption in pairs] == ["rain", "wind", "a bell"]
    assert all(media.audio.size == 1600 for media, _ in pairs)
    images = dataset_sources([tmp_path / "sounds" / "pictures.jsonl"], [], sample_rate=16000)
    assert list(images["bridge"]()) == []  # no audio manifest: nothing, which the stage then names


def test_the_command_line_names_a_bridge_without_audio_pairs(model_dir, tmp_path):
    from typer.testing import CliRunner

    from codi2_agent.cli import app

    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "pairs.jsonl").write_text('{"image": "a.png", "caption": "a red star"}\n')
    args = ["train", "--preset", "paper", "--model-dir", model_dir, "--data", folder]
    args += ["--out", tmp_path / "run", "--stages", "bridge", "--mixed-precision", "no"]
    run = CliRunner().invoke(app, [str(a) for a in args])
    assert run.exit_code == 2, run.output[-2000:]
    assert "error: the bridge stage needs audio-caption pairs" in run.stderr
    assert isinstance(run.exception, SystemExit)  # a clean exit, no traceback
