"""Training: the accelerate loop resumes from its checkpoint; the tiny recipe learns from a fresh init."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from torch import nn

from codi2_agent.media import Modality
from codi2_agent.model import load_model
from codi2_agent.training import StageConfig, TinyRecipe, run_stage, train


def _regression(seed: int = 0) -> tuple[nn.Module, callable, callable]:
    torch.manual_seed(seed)
    net = nn.Linear(4, 1)
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])

    def batch_fn(step: int) -> torch.Tensor:
        return torch.randn(16, 4, generator=torch.Generator().manual_seed(step))

    def loss_fn(x: torch.Tensor):
        return nn.functional.mse_loss(net(x), x @ w.T), {}

    return net, batch_fn, loss_fn


def _killed_at(stop: int, batch_fn: callable) -> callable:
    """`batch_fn`, but the run is interrupted when it asks for batch `stop`."""

    def batches(step: int) -> torch.Tensor:
        if step == stop:
            raise KeyboardInterrupt
        return batch_fn(step)

    return batches


def test_stage_resumes_where_it_stopped(tmp_path):
    cfg = StageConfig("reg", steps=40, lr=0.05, warmup=1, save_every=10, log_every=10)
    reference, batch_fn, loss_fn = _regression()
    run_stage(cfg, reference, reference.parameters(), batch_fn, loss_fn, tmp_path / "a", progress=False)

    net, batch_fn, loss_fn = _regression()

    crashing = _killed_at(25, batch_fn)  # the run is killed between checkpoints
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, net, net.parameters(), crashing, loss_fn, tmp_path / "b", progress=False)
    state = torch.load(tmp_path / "b" / "reg" / "state.pt", weights_only=False)
    assert state["step"] == 20
    resumed, batch_fn, loss_fn = _regression(
        seed=123
    )  # another init: everything must come from the checkpoint
    run_stage(cfg, resumed, resumed.parameters(), batch_fn, loss_fn, tmp_path / "b", progress=False)
    torch.testing.assert_close(resumed.weight, reference.weight)
    assert not (tmp_path / "b" / "reg" / "state.pt").exists() and (tmp_path / "b" / "reg" / "done").exists()
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "b" / "reg" / "loss.jsonl").read_text().splitlines()
    ]
    assert steps == [10, 20, 30, 40]


def test_kept_snapshots_hold_the_weights_of_their_step(tmp_path):
    # The run killed at step 25 leaves its step-20 checkpoint: the kept step-20 snapshot of a whole run
    # must hold exactly those weights, and step 30's must differ from them and from the final weights.
    cfg = StageConfig("reg", steps=40, lr=0.05, warmup=1, save_every=10, log_every=10, keep_every=10)
    whole, batch_fn, loss_fn = _regression()
    run_stage(cfg, whole, whole.parameters(), batch_fn, loss_fn, tmp_path / "a", progress=False)
    stage = tmp_path / "a" / "reg"
    assert sorted(p.name for p in stage.glob("step*.pt")) == ["step10.pt", "step20.pt", "step30.pt"]

    killed, batch_fn, loss_fn = _regression()

    crashing = _killed_at(25, batch_fn)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, killed, killed.parameters(), crashing, loss_fn, tmp_path / "b", progress=False)
    at_20 = torch.load(tmp_path / "b" / "reg" / "state.pt", weights_only=False)["model"]
    kept = {n: torch.load(stage / f"step{n}.pt") for n in (20, 30)}
    torch.testing.assert_close(kept[20], at_20)
    assert not torch.equal(kept[30]["weight"], kept[20]["weight"])
    assert not torch.equal(kept[30]["weight"], whole.weight.detach())


def test_kept_snapshots_are_the_ema_copy_when_the_stage_keeps_an_ema(tmp_path):
    cfg = StageConfig("reg", steps=20, lr=0.05, warmup=1, ema=0.9, keep_every=10, save_every=10)
    net, batch_fn, loss_fn = _regression()

    crashing = _killed_at(15, batch_fn)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg, net, net.parameters(), crashing, loss_fn, tmp_path, progress=False)
    state = torch.load(tmp_path / "reg" / "state.pt", weights_only=False)
    kept = torch.load(tmp_path / "reg" / "step10.pt")
    torch.testing.assert_close(kept, state["ema"])
    assert not torch.equal(kept["weight"], state["model"]["weight"])  # the EMA, not the raw weights


def test_a_debiased_ema_is_the_plain_ema_with_the_start_weights_taken_out(tmp_path):
    # Same training twice: the plain EMA starts at the init and keeps decay**steps of it; the debiased
    # one must be exactly (plain - decay**steps * init) / (1 - decay**steps), at the end and in snapshots.
    decay, steps = 0.9, 20
    plain_cfg = StageConfig("reg", steps=steps, lr=0.05, warmup=1, ema=decay, keep_every=10)
    debiased_cfg = replace(plain_cfg, ema_debias=True)
    net, batch_fn, loss_fn = _regression()
    init = {k: v.clone() for k, v in net.state_dict().items()}
    plain = run_stage(plain_cfg, net, net.parameters(), batch_fn, loss_fn, tmp_path / "a", progress=False)
    net, batch_fn, loss_fn = _regression()
    fixed = run_stage(debiased_cfg, net, net.parameters(), batch_fn, loss_fn, tmp_path / "b", progress=False)
    for at, p, d in [
        (steps, plain.state_dict(), fixed.state_dict()),
        (10, torch.load(tmp_path / "a/reg/step10.pt"), torch.load(tmp_path / "b/reg/step10.pt")),
    ]:
        w = decay**at
        for k in init:
            torch.testing.assert_close(d[k], (p[k] - w * init[k]) / (1 - w), rtol=1e-5, atol=1e-6)
            assert not torch.allclose(d[k], p[k], atol=1e-3)  # the init's share is not negligible here
    torch.testing.assert_close(torch.load(tmp_path / "b/reg/final.pt"), fixed.state_dict())


def test_a_debiased_ema_resumes_where_it_stopped(tmp_path):
    cfg = StageConfig("reg", steps=40, lr=0.05, warmup=1, ema=0.95, ema_debias=True, save_every=10)
    net, batch_fn, loss_fn = _regression()
    whole = run_stage(cfg, net, net.parameters(), batch_fn, loss_fn, tmp_path / "a", progress=False)
    net, batch_fn, loss_fn = _regression()
    with pytest.raises(KeyboardInterrupt):
        run_stage(
            cfg, net, net.parameters(), _killed_at(25, batch_fn), loss_fn, tmp_path / "b", progress=False
        )
    net, batch_fn, loss_fn = _regression(seed=123)
    resumed = run_stage(cfg, net, net.parameters(), batch_fn, loss_fn, tmp_path / "b", progress=False)
    torch.testing.assert_close(resumed.state_dict(), whole.state_dict())
    # A finished stage is read back as it was written, not corrected twice.
    net, batch_fn, loss_fn = _regression(seed=7)
    again = run_stage(cfg, net, net.parameters(), batch_fn, loss_fn, tmp_path / "a", progress=False)
    torch.testing.assert_close(again.state_dict(), whole.state_dict())


def test_the_decoder_stages_keep_a_debiased_ema(tmp_path, monkeypatch):
    import codi2_agent.training.recipe as recipe_module

    seen = []
    real = recipe_module.run_stage

    def spy(cfg, *args, **kwargs):
        seen.append((cfg.name, cfg.ema, cfg.ema_debias))
        return real(cfg, *args, **kwargs)

    monkeypatch.setattr(recipe_module, "run_stage", spy)
    smoke = replace(TinyRecipe.smoke(), encoder_steps=2, image_decoder_steps=2, audio_decoder_steps=2)
    stages = ["encoders", "image_decoder", "audio_decoder"]
    train(tmp_path / "out", workdir=tmp_path / "work", recipe=smoke, stages=stages, progress=False)
    assert ("image_decoder", 0.999, True) in seen and ("audio_decoder", 0.999, True) in seen
    assert ("encoders", None, False) in seen


def _decoder_conditions(tmp_path, monkeypatch, **recipe) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(C_x of the batch from the frozen encoder, the conditions the audio decoder trained on) for each of
    two audio-decoder steps of a smoke recipe with `recipe`'s fields."""
    from codi2_agent.model.decoders import TinyDiffusionDecoder
    from codi2_agent.model.encoders import TinyAudioEncoder

    encoded, decoded = [], []
    encode, loss = TinyAudioEncoder.forward, TinyDiffusionDecoder.loss

    def encode_spy(self, values):
        out = encode(self, values)
        encoded.append((values.detach().clone(), out.detach().clone()))
        return out

    def loss_spy(self, values, features, generator=None):
        decoded.append((values.detach().clone(), features.detach().clone()))
        return loss(self, values, features, generator)

    monkeypatch.setattr(TinyAudioEncoder, "forward", encode_spy)
    monkeypatch.setattr(TinyDiffusionDecoder, "loss", loss_spy)
    smoke = replace(TinyRecipe.smoke(), encoder_steps=2, audio_decoder_steps=2, **recipe)
    stages = ["encoders", "audio_decoder"]
    train(tmp_path / "out", workdir=tmp_path / "work", recipe=smoke, stages=stages, progress=False)
    assert len(decoded) == 2
    pairs = []
    for values, features in decoded:
        # C_x of these very values, from the frozen encoder the stage ran
        (exact,) = [out for seen, out in encoded if seen.shape == values.shape and torch.equal(seen, values)]
        dim = exact.shape[-1]
        norms = torch.full(features.shape[:2], dim**0.5)  # the encoder's normalisation, always
        torch.testing.assert_close(features.norm(dim=-1), norms, rtol=1e-3, atol=0)
        pairs.append((exact, features))
    return pairs


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_the_decoders_train_on_noised_features_only_when_the_recipe_says(tmp_path, monkeypatch, noise):
    """`decoder_feature_noise`: each sample's C_x gets noise of its own scale, then the encoder's
    normalisation again; at 0 the decoders see C_x exactly."""
    for exact, features in _decoder_conditions(tmp_path, monkeypatch, decoder_feature_noise=noise):
        distance = (features - exact).norm(dim=-1).flatten()  # one per sample
        if noise == 0:
            assert distance.max() < 1e-5
        else:  # every sample moved, by amounts that differ from sample to sample
            assert distance.min() > 0 and distance.max() - distance.min() > 0.1


def test_the_decoders_train_on_conditions_moved_part_way_to_another_sample(tmp_path, monkeypatch):
    """`decoder_feature_mix`: each sample's condition is its own C_x moved towards the previous sample's
    by a share of its own in [0, mix], then normalised again; the target stays the sample."""
    shares = torch.linspace(0, 0.4, 401)  # candidate shares, 0.001 apart
    found = []
    for exact, features in _decoder_conditions(tmp_path, monkeypatch, decoder_feature_mix=0.4):
        partner = exact.roll(1, dims=0)
        for own, other, seen in zip(exact, partner, features, strict=True):
            candidates = torch.stack([(1 - s) * own + s * other for s in shares])  # (401, K, D)
            normalised = nn.functional.layer_norm(candidates, candidates.shape[-1:])  # the tiny encoder's
            errors = (normalised - seen).norm(dim=(-2, -1))
            found.append(float(shares[errors.argmin()]))
            assert errors.min() < 0.05 * seen.norm()  # on the segment from C_x(x) to C_x(y), within [0, 0.4]
            assert (seen - own).norm() < (seen - other).norm()  # always nearer its own medium
    assert max(found) > 0.2 and max(found) - min(found) > 0.1  # shares of their own, not one constant


def test_the_recipe_keeps_snapshots_only_when_asked():
    from codi2_agent.training.reasoning import reasoning_stage_config

    assert all(reasoning_stage_config(TinyRecipe(), s).keep_every is None for s in ("align", "lm", "tune"))
    asked = TinyRecipe(keep_every=1000)
    assert all(reasoning_stage_config(asked, s).keep_every == 1000 for s in ("align", "lm", "tune"))
    assert TinyRecipe.from_fields({"keep_every": 500}).keep_every == 500
    with pytest.raises(ValueError, match="keep_every must be int"):
        TinyRecipe.from_fields({"keep_every": 0.5})


@pytest.mark.slow
def test_tiny_recipe_smoke_learns_and_writes_a_loadable_model(tmp_path):
    out = train(tmp_path / "model", recipe=TinyRecipe.smoke(), progress=False)
    assert out == tmp_path / "model"
    work = tmp_path / ".model-work"

    def losses(stage: str, key: str = "loss") -> list[float]:
        return [json.loads(line)[key] for line in (work / stage / "loss.jsonl").read_text().splitlines()]

    enc = losses("encoders")
    assert enc[-1] < 0.8 * enc[0]
    text = losses("align", "text")  # the LM's first stage starts from a fresh init
    assert text[-1] < 0.8 * text[0]
    assert losses("lm/branch0") and losses("lm/branch1")  # the task mixture, as two branches (the default)
    assert json.loads((work / "lm" / "done").read_text()) == {"steps": 10, "branches": 2}
    assert len(losses("tune")) >= 1  # then `tune` continued it
    model = load_model(str(out))
    assert model.config.preset == "tiny"
    result = model.generate(
        ["draw a small red star in the snow"], output="image", seed=0, num_inference_steps=2
    )
    assert result.modality is Modality.IMAGE and result.image.image.size == (32, 32)
    # Every stage is done: running again loads the results instead of training.
    assert train(tmp_path / "model", recipe=TinyRecipe.smoke(), progress=False) == out


def test_train_refuses_unknown_stages_and_presets(tmp_path):
    with pytest.raises(ValueError, match="unknown stages"):
        train(tmp_path / "m", stages=["warmup"], recipe=TinyRecipe.smoke())
    with pytest.raises(ValueError, match="paper"):
        train(tmp_path / "m", preset="paper")


def test_lm_stage_refuses_to_start_before_align(tmp_path):
    work = tmp_path / "work"
    (work / "encoders").mkdir(parents=True)
    (work / "encoders" / "done").touch()  # encoders "finished" (their weights stay at init)
    with pytest.raises(RuntimeError, match="stage 'align' must finish before 'lm'"):
        train(tmp_path / "m", workdir=work, stages=["lm"], recipe=TinyRecipe.smoke(), progress=False)
    assert not (work / "lm").exists() and not (tmp_path / "m").exists()


@pytest.mark.slow
def test_a_run_adopts_a_finished_models_perception_and_trains_only_the_lm(tmp_path):
    recipe = TinyRecipe.smoke()
    recipe.align_steps, recipe.lm_steps = 4, 2
    work = tmp_path / "work"
    out = train(tmp_path / "m", workdir=work, recipe=recipe, perception_from="tiny", progress=False)
    assert out == tmp_path / "m"
    shipped, trained = load_model("tiny"), load_model(str(out))
    for m in ("image", "audio"):  # encoders and decoders are the shipped ones, bit for bit
        for part in ("encoders", "decoders"):
            mine, theirs = getattr(trained, part)[m].state_dict(), getattr(shipped, part)[m].state_dict()
            assert mine.keys() == theirs.keys()
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not (work / "encoders" / "loss.jsonl").exists()  # adopted, never trained
    assert all((work / "lm" / f"branch{b}" / "loss.jsonl").exists() for b in (0, 1))  # two by default
    lm_mine = dict(trained.lm.named_parameters())
    lm_theirs = dict(shipped.lm.named_parameters())
    assert any(not torch.equal(p, lm_theirs[k]) for k, p in lm_mine.items())  # the LM is this run's own
    assert trained.processor.tokenizer.get_vocab() == shipped.processor.tokenizer.get_vocab()
    # A rerun resumes (same source); a workdir with its own perception refuses another model's.
    assert train(tmp_path / "m", workdir=work, recipe=recipe, perception_from="tiny", progress=False) == out
    (work / "encoders" / "done").write_text("{}")
    with pytest.raises(ValueError, match="already has its own perception"):
        train(tmp_path / "m", workdir=work, recipe=recipe, perception_from="tiny", progress=False)


def test_lm_as_a_soup_averages_branches_that_start_from_align_and_draw_their_own_samples(
    tmp_path, monkeypatch
):
    from codi2_agent.training import reasoning as reasoning_module

    recipe = replace(TinyRecipe.smoke(), align_steps=4, lm_steps=3, lm_batch=4, tune_steps=0, lm_branches=1)
    plain, soup = tmp_path / "plain", tmp_path / "soup"
    train(tmp_path / "a", workdir=plain, recipe=recipe, perception_from="tiny", stages=["align", "lm"])
    starts = []
    run_branch = reasoning_module._run_reasoning_stage

    def recording(model, recipe, workdir, progress, stage, branch=0):
        parts = reasoning_module._reasoning_parts(model)
        starts.append({k: v.clone() for k, v in parts.state_dict().items()})
        run_branch(model, recipe, workdir, progress, stage, branch)

    monkeypatch.setattr(reasoning_module, "_run_reasoning_stage", recording)
    branched = replace(recipe, lm_branches=2)
    train(tmp_path / "b", workdir=soup, recipe=branched, perception_from="tiny", stages=["align", "lm"])

    align = torch.load(soup / "align" / "final.pt")
    torch.testing.assert_close(align, torch.load(plain / "align" / "final.pt"))  # the same align stage
    assert len(starts) == 3  # align, then the two branches: each branch starts from align's weights
    for start in starts[1:]:
        torch.testing.assert_close(start, align)
    branches = [torch.load(soup / "lm" / f"branch{b}" / "final.pt") for b in (0, 1)]
    # Branch 0 draws what a single run draws, so it is that run; branch 1 draws its own samples.
    torch.testing.assert_close(branches[0], torch.load(plain / "lm" / "final.pt"))
    assert any(not torch.equal(branches[0][k], branches[1][k]) for k in branches[0])
    soup_weights = torch.load(soup / "lm" / "final.pt")
    for k, v in soup_weights.items():
        torch.testing.assert_close(v, (branches[0][k] + branches[1][k]) / 2)
    assert json.loads((soup / "lm" / "done").read_text()) == {"steps": 3, "branches": 2}
    assert not list(plain.glob("lm/branch*"))  # a single run keeps the old layout

    # A finished soup is loaded, never retrained: the model written holds the soup.
    logged = (soup / "lm" / "branch1" / "loss.jsonl").read_text()
    done = replace(branched, tune_steps=0)
    out = train(tmp_path / "m", workdir=soup, recipe=done, perception_from="tiny", progress=False)
    assert (soup / "lm" / "branch1" / "loss.jsonl").read_text() == logged
    lm = load_model(str(out)).lm.state_dict()
    assert all(torch.equal(lm[k[len("lm.") :]], v) for k, v in soup_weights.items() if k.startswith("lm."))

    with pytest.raises(ValueError, match="lm_branches must be 1 or more, got 0"):
        train(tmp_path / "c", recipe=replace(recipe, lm_branches=0), perception_from="tiny")


def test_a_run_continues_a_finished_model_and_trains_only_tune(tmp_path):
    recipe = TinyRecipe.smoke()
    recipe.tune_steps = 3
    work = tmp_path / "work"
    out = train(tmp_path / "m", workdir=work, recipe=recipe, continue_from="tiny", progress=False)
    assert out == tmp_path / "m"
    trained_stages = sorted(p.parent.name for p in work.glob("*/loss.jsonl"))
    assert trained_stages == ["tune"]  # every other stage adopted, never trained
    shipped, tuned = load_model("tiny"), load_model(str(out))
    for part in ("encoders", "decoders"):  # the perception is the source's, bit for bit
        mine, theirs = getattr(tuned, part).state_dict(), getattr(shipped, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    before, after = dict(shipped.lm.named_parameters()), dict(tuned.lm.named_parameters())
    moved = [k for k, p in after.items() if not torch.equal(p, before[k])]
    # The LM moved from the source's weights, a little (3 steps, warm-up): tune continued them.
    assert moved and max((after[k] - before[k]).abs().max().item() for k in moved) < 0.05
    with pytest.raises(ValueError, match="adopts the whole model"):
        train(tmp_path / "n", recipe=recipe, continue_from="tiny", perception_from="tiny")


def test_a_run_continues_a_finished_model_and_retrains_only_a_decoder(tmp_path):
    # How a shipped model gets a better decoder and nothing else: --continue-from, --retrain, and
    # --stages without tune (so the LM is adopted whole, not tuned again).
    recipe = replace(TinyRecipe.smoke(), image_decoder_steps=3)
    work = tmp_path / "work"
    kwargs = dict(
        workdir=work, recipe=recipe, continue_from="tiny", retrain=["image_decoder"], progress=False
    )
    out = train(tmp_path / "m", stages=["image_decoder"], **kwargs)
    assert out == tmp_path / "m"
    assert sorted(p.parent.name for p in work.glob("*/loss.jsonl")) == ["image_decoder"]
    assert not (work / "tune" / "final.pt").exists()  # tune adopted: marked done, nothing trained
    shipped, swapped = load_model("tiny"), load_model(str(out))
    for part in ("encoders", "projectors", "output_heads", "lm"):  # everything but the decoder: bit for bit
        mine, theirs = getattr(swapped, part).state_dict(), getattr(shipped, part).state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    mine, theirs = swapped.decoders["audio"].state_dict(), shipped.decoders["audio"].state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    mine, theirs = swapped.decoders["image"].state_dict(), shipped.decoders["image"].state_dict()
    assert any(not torch.equal(mine[k], theirs[k]) for k in theirs)  # trained anew
    # Resumed with the same arguments: recognised, nothing trains again.
    logged = (work / "image_decoder" / "loss.jsonl").read_text()
    assert train(tmp_path / "m", stages=["image_decoder"], **kwargs) == out
    assert (work / "image_decoder" / "loss.jsonl").read_text() == logged
    with pytest.raises(ValueError, match=r"cannot retrain \['lm'\]"):
        train(tmp_path / "n", recipe=recipe, continue_from="tiny", retrain=["lm"])


def test_tune_needs_lm_and_zero_steps_skip_it(tmp_path):
    work = tmp_path / "work"
    (work / "encoders").mkdir(parents=True)
    (work / "encoders" / "done").touch()
    with pytest.raises(RuntimeError, match="stage 'lm' must finish before 'tune'"):
        train(tmp_path / "m", workdir=work, stages=["tune"], recipe=TinyRecipe.smoke(), progress=False)
    recipe = replace(TinyRecipe.smoke(), tune_steps=0)
    (work / "lm").mkdir()
    (work / "lm" / "done").touch()
    train(tmp_path / "m", workdir=work, stages=["tune"], recipe=recipe, progress=False)
    assert (work / "tune" / "done").read_text() == "0 steps" and not (work / "tune" / "loss.jsonl").exists()


def test_the_recipe_sets_the_lms_depth_and_weights_of_another_depth_are_refused(tmp_path):
    recipe = replace(
        TinyRecipe.smoke(),
        lm_layers=1,
        threads=1,
        encoder_steps=2,
        encoder_batch=8,
        image_decoder_steps=1,
        audio_decoder_steps=1,
        decoder_batch=4,
        pool_images=32,
        pool_audio=16,
        align_steps=2,
        lm_steps=1,
        lm_branches=1,
        lm_batch=4,
        tune_steps=0,
    )
    work = tmp_path / "work"
    out = train(tmp_path / "m", workdir=work, recipe=recipe, progress=False)
    model = load_model(str(out))
    assert model.config.lm["num_hidden_layers"] == 1 and len(model.lm.model.layers) == 1
    saved = torch.load(work / "lm" / "final.pt")
    assert any(".layers.0." in k for k in saved) and not any(".layers.1." in k for k in saved)
    assert json.loads((work / "recipe.json").read_text())["lm_layers"] == 1
    # The same workdir under a deeper recipe: its finished 1-layer stages do not fit, and the error
    # says so before anything is written.
    with pytest.raises(ValueError, match=r"align/final\.pt does not fit .*lm_layers=2"):
        train(tmp_path / "deeper", workdir=work, recipe=replace(recipe, lm_layers=2), progress=False)
    assert not (tmp_path / "deeper").exists()
    assert json.loads((work / "recipe.json").read_text())["lm_layers"] == 1  # still the run's own
    # Continuing the shipped 4-layer model under a 2-layer recipe: the same clear error.
    with pytest.raises(ValueError, match=r"lm/final\.pt does not fit .*lm_layers=2"):
        train(
            tmp_path / "cont",
            workdir=tmp_path / "cont-work",
            recipe=replace(recipe, lm_layers=2),
            continue_from="tiny",
            progress=False,
        )
    assert not (tmp_path / "cont").exists()


def _model_with_audio_decoder(folder, block_out_channels):
    """A tiny model folder (shipped encoders and tokenizer) whose audio decoder has other shapes."""
    from codi2_agent.model import CoDi2Model
    from codi2_agent.model.configuration_codi2 import DecoderConfig

    shipped = load_model("tiny")
    decoder = DecoderConfig("tiny_diffusion", block_out_channels=block_out_channels, fold=2)
    config = shipped.config.replace(audio_decoder=decoder)
    model = CoDi2Model.from_config(config, shipped.processor.tokenizer, seed=3)
    model.encoders.load_state_dict(shipped.encoders.state_dict())
    model.save_pretrained(folder)
    return model


def test_an_adopted_perception_keeps_its_own_shapes(tmp_path):
    """A workdir built on a source whose decoder differs from the recipe's defaults loads that decoder
    (its shapes are recorded in perception.json), and weights that do not fit are a named error."""
    from codi2_agent.training.recipe import PERCEPTION_FILE, _build_model, _restore_done, adopt_perception

    source = _model_with_audio_decoder(tmp_path / "src", (16, 32, 32))
    work = tmp_path / "work"
    work.mkdir()
    adopt_perception(work, tmp_path / "src")
    recorded = json.loads((work / PERCEPTION_FILE).read_text())
    assert recorded["audio_decoder"]["block_out_channels"] == [16, 32, 32]
    assert recorded["image_decoder"] == json.loads(json.dumps(source.config.to_dict()["image_decoder"]))
    model = _build_model(TinyRecipe.smoke(), work)
    _restore_done(model, work)
    mine, theirs = model.decoders["audio"].state_dict(), source.decoders["audio"].state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)

    recorded["audio_decoder"]["block_out_channels"] = [32, 64, 64]  # a hand edit that lies
    (work / PERCEPTION_FILE).write_text(json.dumps(recorded))
    with pytest.raises(
        ValueError, match=r"audio_decoder/final\.pt does not fit the model built for its workdir"
    ):
        _restore_done(_build_model(TinyRecipe.smoke(), work), work)
    (work / PERCEPTION_FILE).write_text(json.dumps({"lm": {"hidden_size": 8}}))
    with pytest.raises(ValueError, match="must be a JSON object of perception fields"):
        _build_model(TinyRecipe.smoke(), work)


def test_retrain_names_only_decoders_and_needs_an_adopted_perception(tmp_path):
    with pytest.raises(ValueError, match=r"cannot retrain \['encoders'\]"):
        train(tmp_path / "m", perception_from="tiny", retrain=["encoders"], recipe=TinyRecipe.smoke())
    with pytest.raises(ValueError, match="--perception-from"):
        train(tmp_path / "m", retrain=["audio_decoder"], recipe=TinyRecipe.smoke())
    assert not (tmp_path / ".m-work").exists()  # refused before anything is written


@pytest.mark.slow
def test_a_run_retrains_a_named_decoder_on_adopted_encoders(tmp_path):
    from codi2_agent.model import CoDi2Config
    from codi2_agent.training.recipe import PERCEPTION_FILE

    recipe = replace(TinyRecipe.smoke(), align_steps=2, lm_steps=2, audio_decoder_steps=3)
    work = tmp_path / "work"
    out = train(
        tmp_path / "m", workdir=work, recipe=recipe, perception_from="tiny", retrain=["audio_decoder"],
        progress=False,
    )  # fmt: skip
    assert out == tmp_path / "m"
    shipped, trained = load_model("tiny"), load_model(str(out))
    for part, m in (("encoders", "image"), ("encoders", "audio"), ("decoders", "image")):
        mine, theirs = getattr(trained, part)[m].state_dict(), getattr(shipped, part)[m].state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert len((work / "audio_decoder" / "loss.jsonl").read_text().splitlines()) >= 1  # trained here
    today = json.loads(json.dumps(CoDi2Config.tiny().to_dict()["audio_decoder"]))  # tuples as lists
    assert json.loads((work / PERCEPTION_FILE).read_text())["audio_decoder"] == today
    assert json.loads(json.dumps(trained.config.to_dict()["audio_decoder"])) == today
    # resumable: the same adoption is recognised, nothing retrains
    before = (work / "audio_decoder" / "loss.jsonl").read_text()
    assert (
        train(tmp_path / "m", workdir=work, recipe=recipe, perception_from="tiny", retrain=["audio_decoder"])
        == out
    )
    assert (work / "audio_decoder" / "loss.jsonl").read_text() == before
    # the same folder adopted *without* the retrain is another perception: refused
    with pytest.raises(ValueError, match="already has its own perception"):
        train(tmp_path / "m", workdir=work, recipe=recipe, perception_from="tiny")


def test_reasoning_stages_draw_the_concept_and_paired_tasks_as_often_as_the_recipe_says():
    from collections import Counter

    from codi2_agent.data.tasks import TASKS
    from codi2_agent.training.reasoning import ALIGN_TASKS, task_draw

    assert task_draw(TinyRecipe(), "align") == list(ALIGN_TASKS)
    for stage in ("lm", "tune"):
        counts = Counter(task_draw(TinyRecipe(align_replay=1, concept_replay=3), stage))
        assert set(counts) == set(TASKS)
        assert counts["concept_image"] == 4 and counts["caption_image"] == 2 and counts["edit_image"] == 1
        assert counts["analogy_image"] == counts["analogy_audio"] == 3 and counts["edit_audio"] == 1
        fewer = Counter(task_draw(TinyRecipe(analogy_replay=1), stage))
        assert fewer["analogy_image"] == fewer["analogy_audio"] == 2 and fewer["concept_image"] == 4
    plain = Counter(task_draw(TinyRecipe(align_replay=0, concept_replay=0, analogy_replay=0), "lm"))
    assert set(plain.values()) == {1}
    assert (TinyRecipe().concept_replay, TinyRecipe().analogy_replay) == (3, 2)  # the shipped recipe's
    # The sound replay reaches `tune` alone: `lm`'s draw is the same with or without it.
    loud = TinyRecipe(tune_sound_replay=2)
    assert task_draw(loud, "lm") == task_draw(TinyRecipe(), "lm")
    extra = Counter(task_draw(loud, "tune")) - Counter(task_draw(TinyRecipe(), "tune"))
    assert extra == Counter({"analogy_audio": 2, "edit_audio": 2, "text_to_audio": 2})
    with pytest.raises(ValueError, match="'image_decoder' is not a reasoning stage"):
        task_draw(TinyRecipe(), "image_decoder")


def test_reasoning_stages_take_the_recipes_rates_and_weight_decay():
    from codi2_agent.training.reasoning import reasoning_stage_config

    recipe = TinyRecipe(
        align_steps=80, lm_steps=600, lm_lr=3e-4, tune_steps=50, tune_lr=1e-4, lm_weight_decay=1.0
    )
    align, lm, tune = (reasoning_stage_config(recipe, s) for s in ("align", "lm", "tune"))
    assert (align.steps, align.lr, align.weight_decay, align.warmup, align.ema) == (80, 3e-4, 1.0, 11, None)
    assert (lm.steps, lm.lr, lm.weight_decay, lm.warmup) == (600, 3e-4, 1.0, 76)
    assert (tune.steps, tune.lr, tune.weight_decay, tune.warmup, tune.ema) == (50, 1e-4, 1.0, 50, 0.998)
    assert reasoning_stage_config(TinyRecipe(), "lm").weight_decay == 0.1  # the default: v6's LM decay
    with pytest.raises(ValueError, match="'encoders' is not a reasoning stage"):
        reasoning_stage_config(recipe, "encoders")


def test_parameter_groups_take_their_own_weight_decay_and_the_stage_default_otherwise(tmp_path):
    # A zero gradient leaves AdamW's step at zero, so each weight only shrinks by its group's decoupled
    # decay: (1 - lr * decay) per step.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    body, head = net[0], net[1]
    before = [p.detach().clone() for p in net.parameters()]
    frozen = nn.Linear(3, 3).requires_grad_(False)  # not trained: dropped from its group, never decayed
    frozen_before = frozen.weight.detach().clone()
    cfg = StageConfig("decay", steps=1, lr=0.1, weight_decay=0.5, warmup=1, clip=0.0)
    groups = [
        {"params": [*body.parameters(), *frozen.parameters()]},
        {"params": list(head.parameters()), "weight_decay": 2.0},
    ]

    def zero_loss(_batch):
        return sum(p.sum() for p in net.parameters()) * 0.0, {}

    run_stage(cfg, net, groups, lambda step: None, zero_loss, tmp_path, progress=False)
    for p, old in zip(body.parameters(), before[:2], strict=True):
        torch.testing.assert_close(p.detach(), old * (1 - 0.1 * 0.5))  # the stage's decay
    for p, old in zip(head.parameters(), before[2:], strict=True):
        torch.testing.assert_close(p.detach(), old * (1 - 0.1 * 2.0))  # the group's own
    assert torch.equal(frozen.weight, frozen_before)
    with pytest.raises(TypeError, match="not a mix"):
        run_stage(
            cfg, net, [groups[0], head.weight], lambda s: None, zero_loss, tmp_path / "b", progress=False
        )


def test_the_output_heads_get_their_own_decay_only_when_the_recipe_sets_one(tiny_model):
    from codi2_agent.training.reasoning import reasoning_param_groups

    trained = [*tiny_model.lm.parameters(), *tiny_model.projectors.parameters()]
    heads = list(tiny_model.output_heads.parameters())
    (one,) = reasoning_param_groups(tiny_model, TinyRecipe(lm_weight_decay=0.01, head_weight_decay=None))
    assert [id(p) for p in one["params"]] == [id(p) for p in trained + heads] and "weight_decay" not in one
    body, own = reasoning_param_groups(tiny_model, TinyRecipe())  # the default: v6's, heads at 1.0
    assert [id(p) for p in body["params"]] == [id(p) for p in trained] and "weight_decay" not in body
    assert [id(p) for p in own["params"]] == [id(p) for p in heads] and own["weight_decay"] == 1.0
    assert heads and not {id(p) for p in heads} & {id(p) for p in trained}


def test_lm_dropout_acts_in_training_only_and_leaves_the_model_as_it_was(tiny_model):
    from codi2_agent.training.reasoning import training_dropout

    attentions = [m for m in tiny_model.lm.modules() if hasattr(m, "attention_dropout")]
    assert len(attentions) == tiny_model.lm.config.num_hidden_layers
    head = tiny_model.output_heads["audio"]
    hidden = torch.randn(3, 1, tiny_model.lm.config.hidden_size, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[5, 9, 11, 7, 13, 6]])
    was_training = tiny_model.training
    try:
        tiny_model.train()
        plain_head, plain_lm = head(hidden), tiny_model.lm(input_ids=ids).logits
        torch.testing.assert_close(tiny_model.lm(input_ids=ids).logits, plain_lm)  # no dropout of its own
        with training_dropout(tiny_model, 0.25):
            assert [m.attention_dropout for m in attentions] == [0.25] * len(attentions)
            torch.manual_seed(1)
            first, second = head(hidden), head(hidden)
            assert not torch.allclose(first, plain_head) and not torch.allclose(first, second)
            assert not torch.allclose(tiny_model.lm(input_ids=ids).logits, plain_lm)
            tiny_model.eval()  # generation inside a stage (none today) would see the plain model
            torch.testing.assert_close(head(hidden), plain_head)
            torch.testing.assert_close(tiny_model.lm(input_ids=ids).logits, plain_lm)
            tiny_model.train()
        assert [m.attention_dropout for m in attentions] == [0.0] * len(attentions)
        torch.testing.assert_close(head(hidden), plain_head)
        torch.testing.assert_close(tiny_model.lm(input_ids=ids).logits, plain_lm)
        assert tiny_model.lm.config.attention_dropout == 0.0  # what a saved model records
        with training_dropout(tiny_model, 0.0):  # the shipped recipe's: nothing is touched
            torch.testing.assert_close(head(hidden), plain_head)
        for bad in (-0.1, 1.0):
            with pytest.raises(ValueError, match="lm_dropout must be in"), training_dropout(tiny_model, bad):
                pass
    finally:
        tiny_model.train(was_training)


def test_a_recipe_file_sets_fields_over_the_defaults_and_refuses_what_it_cannot_set(tmp_path):
    v4 = tmp_path / "v4.json"
    v4.write_text(json.dumps({"analogy_replay": 0, "tune_steps": 1500, "tune_lr": 1e-4}))
    recipe = TinyRecipe.from_json_file(v4)
    assert (recipe.analogy_replay, recipe.tune_lr, recipe.concept_replay) == (
        0,
        1e-4,
        3,
    )  # the rest: defaults
    smoke = TinyRecipe.from_json_file(v4, base=TinyRecipe.smoke())
    assert (smoke.analogy_replay, smoke.tune_steps, smoke.lm_steps) == (0, 1500, TinyRecipe.smoke().lm_steps)
    shipped = Path(__file__).resolve().parents[2] / "codi2_agent" / "weights" / "tiny" / "recipe.json"
    assert asdict(TinyRecipe.from_json_file(shipped)) == json.loads(shipped.read_text())  # a whole recipe
    # The shipped weights were made by today's defaults (REPRODUCE.md's plain command): v7, two `lm` branches.
    made_with = replace(TinyRecipe(), threads=2)
    assert TinyRecipe.from_json_file(shipped) == made_with and made_with.lm_branches == 2

    bad = tmp_path / "bad.json"
    for text, needle in [
        ('{"analogy_replays": 2}', "unknown fields ['analogy_replays']"),
        ('{"tune_steps": "1500"}', "tune_steps must be int, got '1500'"),
        ('{"tune_steps": true}', "tune_steps must be int, got True"),
        ('{"tune_ema": "high"}', "tune_ema must be int or float or NoneType"),
        ('{"head_weight_decay": "1"}', "head_weight_decay must be int or float or NoneType"),
        ('{"head_weight_decay": -1.0}', "head_weight_decay must not be negative, got -1.0"),
        ('{"analogy_replay": -1}', "analogy_replay must not be negative, got -1"),
        ('{"lm_dropout": 1.0}', "lm_dropout must be below 1, got 1.0"),
        ('{"decoder_feature_mix": 2}', "decoder_feature_mix must be below 1, got 2"),
        ('{"lm_layers": 0}', "lm_layers must be 1 or more, got 0"),
        ("[1, 2]", "expected a JSON object of TinyRecipe fields"),
        ("{not json", "cannot read it as JSON"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(needle)):
            TinyRecipe.from_json_file(bad)
    assert TinyRecipe.from_json_file(tmp_path / "v4.json").tune_ema == 0.998
    heads = tmp_path / "heads.json"
    heads.write_text('{"head_weight_decay": 2}')
    assert TinyRecipe.from_json_file(heads).head_weight_decay == 2
    heads.write_text('{"head_weight_decay": null}')  # v5 and older: the heads at the LM's decay
    assert TinyRecipe.from_json_file(heads).head_weight_decay is None
    with pytest.raises(ValueError, match="cannot read it as JSON"):
        TinyRecipe.from_json_file(tmp_path / "missing.json")
