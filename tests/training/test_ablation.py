"""The reasoning-stage ablation: frozen perception, variants x seeds trained, scored without diffusion."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from codi2_agent.data import world
from codi2_agent.media import Modality
from codi2_agent.model import load_model
from codi2_agent.training import TinyRecipe, train
from codi2_agent.training.ablation import base_recipe, load_variants, run_ablation
from codi2_agent.training.ablation_readout import ClassMeanReadout, eval_samples, predict_answers
from codi2_agent.training.recipe import _build_model, _restore_done

# Smoke settings cut further: the ablation never trains perception, it only needs finished stages.
PERCEPTION = replace(
    TinyRecipe.smoke(),
    threads=1,  # two threads on a busy two-core machine spin against each other: 5-10x slower
    encoder_steps=4,
    encoder_batch=16,
    image_decoder_steps=1,
    audio_decoder_steps=1,
    decoder_batch=4,
    pool_images=32,
    pool_audio=16,
    align_steps=3,
    lm_steps=2,
    lm_batch=4,
)
TASKS = ["caption_image", "multi_round", "text_to_image"]  # multi_round: image and audio answers


@pytest.fixture(scope="module")
def perception(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("perception")
    stages = ["encoders", "image_decoder", "audio_decoder"]
    assert train(work / "model", workdir=work, recipe=PERCEPTION, stages=stages, progress=False) is None
    return work


def test_ablation_trains_each_variant_on_the_frozen_perception_and_scores_it(perception, tmp_path):
    variants = load_variants(
        {"base": {}, "narrow": {"lm_lr": 1e-3, "num_media_tokens": 1, "lm": {"num_hidden_layers": 2}}}
    )
    out = tmp_path / "ablation"
    rows = run_ablation(perception, variants, [0], out, tasks=TASKS, per_task=3, progress=False, threads=1)

    data = json.loads((out / "scores.json").read_text())
    assert [(r["variant"], r["task"]) for r in data["rows"]] == [
        (v, t) for v in ("base", "narrow") for t in TASKS
    ]
    assert len(rows) == 6 and data["seeds"] == [0] and data["variants"]["narrow"]["lm_lr"] == 1e-3
    for row in data["rows"]:
        assert 0.0 <= row["accuracy"] <= 1.0 and row["n"] == 3
        assert row["per_attribute"] and all(0.0 <= v <= 1.0 for v in row["per_attribute"].values())
        if row["task"] == "caption_image":  # a text answer: parsed, no features
            assert row["feature_mse"] is None and set(row["per_attribute"]) == set(world.IMAGE_ATTRIBUTES)
        else:
            if row["task"] == "multi_round":  # 2 sounds and 1 picture to edit: both read-outs
                assert set(row["per_attribute"]) == set(world.AUDIO_ATTRIBUTES) | set(world.IMAGE_ATTRIBUTES)
            assert row["feature_mse"] > 0.0 and 0.0 <= row["readout_ceiling"] <= 1.0
    assert set(data["compare"]) == {"base", "narrow"}
    assert data["compare"]["base"]["all_tasks"]["accuracy"]["std"] == 0.0  # one seed: no spread
    table = (out / "scores.txt").read_text()
    assert all(name in table for name in ("base", "narrow", *TASKS, "all_tasks"))

    for name in ("base", "narrow"):
        run = out / "runs" / name / "seed0"
        assert (run / "align" / "done").exists() and (run / "lm" / "done").exists()
        # the perception is shared, not retrained: the very same file
        assert os.path.samefile(run / "encoders" / "final.pt", perception / "encoders" / "final.pt")
    # A second call resumes: nothing trains again, the scores are the same; other overrides under a
    # used name are refused rather than mixed into the finished runs.
    log = (out / "runs/base/seed0/lm/branch1/loss.jsonl").read_text()  # `lm`: two branches by default
    again = run_ablation(perception, variants, [0], out, tasks=TASKS, per_task=3, progress=False, threads=1)
    timeless = [replace(r, seconds=0.0) for r in rows]
    assert [replace(r, seconds=0.0) for r in again] == timeless and (
        out / "runs/base/seed0/lm/branch1/loss.jsonl"
    ).read_text() == log
    with pytest.raises(ValueError, match="runs/base/seed0 was made for"):
        run_ablation(perception, load_variants({"base": {"lm_steps": 5}}), [0], out, tasks=TASKS, threads=1)
    # the model overrides took effect: 1 media token and 2 layers in the narrow run's weights
    base = torch.load(out / "runs/base/seed0/lm/final.pt")
    narrow = torch.load(out / "runs/narrow/seed0/lm/final.pt")
    width = base["projectors.image.3.weight"].shape[1]
    assert base["projectors.image.3.weight"].shape[0] == 2 * width
    assert narrow["projectors.image.3.weight"].shape[0] == width
    assert any(".layers.3." in k for k in base) and not any(".layers.2." in k for k in narrow)
    # Each run's recipe names the depth it trained (the narrow run's from its `lm` override), so a run
    # workdir rebuilds to its own depth (how benchmarks/bench_additivity.py loads a run).
    base_run = out / "runs/base/seed0"
    assert base_recipe(base_run).lm_layers == 4 and base_recipe(out / "runs/narrow/seed0").lm_layers == 2
    rebuilt = _build_model(base_recipe(base_run), base_run)
    _restore_done(rebuilt, base_run)
    last = torch.load(base_run / "tune" / "final.pt")  # `tune` continued `lm`: its weights are the run's
    assert torch.equal(
        rebuilt.lm.model.layers[3].mlp.up_proj.weight, last["lm.model.layers.3.mlp.up_proj.weight"]
    )
    with pytest.raises(ValueError, match=r"align/final\.pt does not fit .*lm_layers=2"):
        _restore_done(_build_model(replace(base_recipe(base_run), lm_layers=2), base_run), base_run)


@pytest.fixture(scope="module")
def shipped():
    """The shipped tiny model: trained encoders, so the read-out has something to read."""
    return load_model("tiny")


def test_predicted_features_are_what_generate_decodes(shipped):
    samples = eval_samples(["analogy_image", "multi_round"], 3, seed=1234)  # image and audio answers
    items = samples["analogy_image"] + samples["multi_round"]
    texts, features = predict_answers(shipped, items)
    for item, text, feature in zip(items, texts, features, strict=True):
        out = shipped.generate(item.messages, output=item.target.modality.value, num_inference_steps=1)
        assert text == out.text
        torch.testing.assert_close(feature, out.features, atol=1e-5, rtol=1e-4)


def test_class_mean_readout_reads_true_features_and_is_fooled_by_other_values(shipped):
    model = shipped
    readout = ClassMeanReadout.fit(model)
    rng = np.random.default_rng(5)
    for kind, attributes in world.ATTRIBUTES.items():
        targets = [world.random_attrs(kind, rng, "test") for _ in range(24)]

        def features(attrs, kind=kind):
            media = [world.render(a, world.render_seed(rng, "test")) for a in attrs]
            with torch.no_grad():
                return model.encode_media(kind, model.processor.media_tensor(Modality(kind), media))

        assert readout.accuracy(kind, features(targets), targets)["all"] == 1.0
        for attribute, values in attributes.items():
            shifted = [
                world.edit(a, attribute, values[(values.index(a[attribute]) + 1) % len(values)])
                for a in targets
            ]
            wrong = readout.accuracy(kind, features(shifted), targets)[attribute]
            assert wrong <= 1.0 / len(values), (kind, attribute, wrong)


def test_bad_input_is_a_value_error_naming_it(perception, tmp_path):
    with pytest.raises(ValueError, match="unknown override field 'lm_steps_typo'"):
        load_variants({"v": {"lm_steps_typo": 3}})
    with pytest.raises(ValueError, match="'encoder_steps' configures the frozen perception"):
        load_variants({"v": {"encoder_steps": 3}})
    with pytest.raises(ValueError, match=r"unknown lm override field\(s\) \['vocab_size'\]"):
        load_variants({"v": {"lm": {"vocab_size": 10}}})
    with pytest.raises(ValueError, match="lm_lr must be a learning rate"):
        load_variants({"v": {"lm_lr": -1}})
    with pytest.raises(ValueError, match=r"lm_weight_decay must be a weight decay in \[0, 10\]"):
        load_variants({"v": {"lm_weight_decay": -0.5}})
    assert load_variants({"v": {"lm_weight_decay": 1}})[0].recipe_for(TinyRecipe(), 3).lm_weight_decay == 1
    with pytest.raises(ValueError, match=r"head_weight_decay must be a weight decay in \[0, 10\]"):
        load_variants({"v": {"head_weight_decay": "1.0"}})
    with pytest.raises(ValueError, match="lm_branches must be an integer >= 1, got 0"):
        load_variants({"v": {"lm_branches": 0}})
    assert load_variants({"v": {"lm_branches": 2}})[0].recipe_for(TinyRecipe(), 3).lm_branches == 2
    with pytest.raises(ValueError, match="lm_layers must be an integer >= 1, got 0"):
        load_variants({"v": {"lm_layers": 0}})
    with pytest.raises(ValueError, match="sets the LM's depth twice"):
        load_variants({"v": {"lm_layers": 2, "lm": {"num_hidden_layers": 3}}})
    shallow = load_variants({"v": {"lm_layers": 2}})[0]
    assert (
        shallow.recipe_for(TinyRecipe(), 3).lm_layers == 2 and shallow.config().lm["num_hidden_layers"] == 2
    )
    # no depth of its own: the base recipe's
    assert load_variants({"v": {}})[0].config(lm_layers=3).lm["num_hidden_layers"] == 3
    heads = load_variants({"v": {"head_weight_decay": 2.0}})[0].recipe_for(TinyRecipe(), 3)
    assert (heads.head_weight_decay, heads.lm_weight_decay) == (2.0, TinyRecipe().lm_weight_decay)
    assert load_variants({"v": {"lm_dropout": 0.1}})[0].recipe_for(TinyRecipe(), 3).lm_dropout == 0.1
    with pytest.raises(ValueError, match=r"lm_dropout must be a dropout rate in \[0, 1\), got 1"):
        load_variants({"v": {"lm_dropout": 1}})

    partial = tmp_path / "partial"
    for stage in ("encoders", "image_decoder"):  # audio_decoder never trained
        (partial / stage).mkdir(parents=True)
        for name in ("done", "final.pt"):
            (partial / stage / name).write_bytes((perception / stage / name).read_bytes())
    with pytest.raises(ValueError, match="lacks the finished stage 'audio_decoder'"):
        run_ablation(partial, load_variants({"v": {}}), [0], tmp_path / "out")

    # the command line: `python -m codi2_agent.training.ablation` (= `codi2-agent train-ablate`)
    (tmp_path / "variants.json").write_text(json.dumps({"v": {"steps": 1}}))
    proc = subprocess.run(
        [sys.executable, "-m", "codi2_agent.training.ablation", "--workdir", str(perception),
         "--variants", str(tmp_path / "variants.json"), "--seeds", "0,1", "--out", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: variant 'v': unknown override field 'steps'")


def test_the_base_recipe_is_the_workdirs_own_with_fields_it_cannot_use_dropped(tmp_path, caplog):
    assert base_recipe(tmp_path) == TinyRecipe()  # no recipe.json: the defaults
    (tmp_path / "recipe.json").write_text(json.dumps({"lm_steps": 123, "from_a_newer_version": 1}))
    with caplog.at_level("WARNING"):
        assert base_recipe(tmp_path) == replace(TinyRecipe(), lm_steps=123)
    assert "from_a_newer_version" in caplog.text
    (tmp_path / "recipe.json").write_text(json.dumps({"lm_steps": "many"}))
    with pytest.raises(ValueError, match=r"recipe\.json: lm_steps must be int, got 'many'"):
        base_recipe(tmp_path)
