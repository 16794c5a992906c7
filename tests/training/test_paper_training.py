"""Paper training on tiny random components of the real classes: stages, LM families, loss, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from paper_training_support import (
    INSTRUCT,
    PAIRS,
    assemble_tiny,
    fresh_accelerate_state,
    quick_config,
    world_samples,
)
from safetensors.torch import load_file

from codi2_agent.training.paper import (
    EmptyDataError,
    LoraSettings,
    PaperTrainingConfig,
    attention_targets,
    train_paper,
)
from codi2_agent.training.paper.checkpoint import ADAPTER_FOLDER, TRAINABLE_WEIGHTS


@pytest.fixture(autouse=True)
def _accelerate_state():
    fresh_accelerate_state()
    yield
    fresh_accelerate_state()


def _log(run: Path, stage: str) -> list[dict]:
    return [json.loads(line) for line in (run / stage / "log.jsonl").read_text().splitlines()]


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / ADAPTER_FOLDER / "adapter_model.safetensors")


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_both_stages_run_on_each_lm_family(tmp_path, family):
    model_dir = assemble_tiny(tmp_path, family)
    data = {"align": world_samples(PAIRS), "instruct": world_samples(INSTRUCT)}
    final = train_paper(model_dir, tmp_path / "run", data, quick_config(), progress=False)

    assert final == tmp_path / "run" / "instruct" / "final"
    for stage in ("align", "instruct"):
        assert [r["step"] for r in _log(tmp_path / "run", stage)] == [1, 2]
        assert (tmp_path / "run" / stage / "done").exists()
        assert not (tmp_path / "run" / stage / "checkpoints").exists()  # the final replaces them
    align, instruct = _adapter(tmp_path / "run" / "align" / "final"), _adapter(final)
    lora_b = [k for k in align if "lora_B" in k]
    assert {k.split(".")[-3] for k in lora_b} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    # align trains the token rows (LoRA B stays at its zero init); instruct trains LoRA too
    assert all(float(align[k].abs().max()) == 0.0 for k in lora_b)
    assert any(float(instruct[k].abs().max()) > 0.0 for k in lora_b)
    rows = [k for k in align if "trainable_tokens_delta" in k]
    # untied embeddings get their own output rows; Qwen2 ties them, so one set serves both
    assert len(rows) == (1 if family == "qwen2" else 2)
    heads = load_file(final / TRAINABLE_WEIGHTS)
    assert any(k.startswith("projectors.image") for k in heads) and any(
        k.startswith("output_heads.audio") for k in heads
    )


def test_loss_falls_when_overfitting_a_handful_of_samples(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    samples = world_samples(["caption_image", "text_to_image", "caption_image", "text_to_image"])
    config = quick_config(
        stages=("instruct",),
        instruct_steps=25,
        batch_size=4,
        instruct_lr=1e-2,
        save_every=100,
        gradient_checkpointing=False,
        lora=LoraSettings(rank=8, alpha=16, dropout=0.0),
    )
    train_paper(model_dir, tmp_path / "run", samples, config, progress=False)
    log = _log(tmp_path / "run", "instruct")
    assert log[-1]["loss"] < 0.5 * log[0]["loss"]
    assert log[-1]["feature"] < 0.2 * log[0]["feature"]  # c_MLLM moves onto C_x(target)
    assert log[-1]["text"] < log[0]["text"] - 2.0


class _Crash(Exception):
    """The run is killed (a stand-in for SIGKILL between two checkpoints)."""


def _crashing(samples, at: int):
    def stream():
        for i, sample in enumerate(samples):
            if i == at:
                raise _Crash
            yield sample

    return stream


def test_resume_gives_the_same_trajectory_as_an_uninterrupted_run(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    samples = world_samples(["caption_image", "text_to_image"] * 6)  # 12 samples: 6 steps of 2
    # LoRA dropout on: the RNG state must come back too, not only weights and optimiser moments
    # two micro-batches of one per step: accumulation state must line up with the checkpoints too
    config = quick_config(
        stages=("instruct",),
        instruct_steps=6,
        save_every=2,
        batch_size=1,
        grad_accum=2,
        shuffle_buffer=4,  # the buffer's state must come back too
        lora=LoraSettings(rank=4, alpha=8, dropout=0.2),
    )
    reference = train_paper(model_dir, tmp_path / "a", lambda: iter(samples), config, progress=False)

    # killed while drawing step 5's batch (sample 9 of the order leaves a 4-sample buffer once the
    # source's sample 11 is read): step 4 is the last checkpoint
    with pytest.raises(_Crash):
        train_paper(model_dir, tmp_path / "b", _crashing(samples, at=11), config, progress=False)
    checkpoints = sorted((tmp_path / "b" / "instruct" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step-0000002", "step-0000004"]  # keep_checkpoints=2
    resumed = train_paper(model_dir, tmp_path / "b", lambda: iter(samples), config, progress=False)

    losses = [r["loss"] for r in _log(tmp_path / "a", "instruct")]
    assert [r["loss"] for r in _log(tmp_path / "b", "instruct")] == losses
    assert len(losses) == 6
    for name in (TRAINABLE_WEIGHTS, f"{ADAPTER_FOLDER}/adapter_model.safetensors"):
        a, b = load_file(reference / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_a_finished_stage_is_loaded_not_retrained(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    data = {"align": world_samples(PAIRS[:2]), "instruct": world_samples(INSTRUCT[:2])}
    train_paper(model_dir, tmp_path / "run", data, quick_config(stages=("align",)), progress=False)
    before = (tmp_path / "run" / "align" / "log.jsonl").read_text()
    # instruct alone continues from align's result; align is neither rerun nor logged again
    train_paper(model_dir, tmp_path / "run", data, quick_config(stages=("instruct",)), progress=False)
    assert (tmp_path / "run" / "align" / "log.jsonl").read_text() == before
    align = load_file(tmp_path / "run" / "align" / "final" / TRAINABLE_WEIGHTS)
    assert (tmp_path / "run" / "instruct" / "done").exists() and align


def test_bf16_keeps_frozen_weights_in_bf16_and_trains_float32(tmp_path):
    from codi2_agent.training.paper import PaperTrainer

    model_dir = assemble_tiny(tmp_path)
    trainer = PaperTrainer(
        model_dir,
        tmp_path / "run",
        world_samples(PAIRS[:2]),
        quick_config(stages=("instruct",), instruct_steps=1, mixed_precision="bf16"),
        progress=False,
    )
    trainer.train()
    model = trainer.model
    assert model is not None
    trained = {n: p for n, p in model.lm.named_parameters() if "lora_" in n or "trainable_tokens" in n}
    assert trained and all(p.dtype == torch.float32 for p in trained.values())
    assert all(p.dtype == torch.float32 for p in model.projectors.parameters())
    frozen = model.lm.get_base_model().model.layers[0].mlp.up_proj.weight
    assert frozen.dtype == torch.bfloat16 and not frozen.requires_grad
    assert all(not p.requires_grad for p in model.encoders.parameters())
    assert _log(tmp_path / "run", "instruct")[0]["loss"] > 0


def test_lora_targets_are_the_attention_projections_of_each_family():
    from codi2_agent.model.paper_testing import (
        tiny_language_model,
        tiny_llama_tokenizer,
        tiny_qwen2_tokenizer,
    )

    assert attention_targets(tiny_language_model("mistral", tiny_llama_tokenizer())) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    assert attention_targets(tiny_language_model("qwen2", tiny_qwen2_tokenizer())) == [
        "k_proj",
        "o_proj",
        "q_proj",
        "v_proj",
    ]
    with pytest.raises(ValueError, match="no attention projections in Linear"):
        attention_targets(torch.nn.Linear(2, 2))


def test_bad_data_and_settings_are_named_errors(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    with pytest.raises(EmptyDataError, match="instruct: the data source yielded no samples"):
        train_paper(model_dir, tmp_path / "run", [], quick_config(stages=("instruct",)), progress=False)
    with pytest.raises(EmptyDataError, match="could not be used"):  # nothing but junk: refused, not looped on
        train_paper(
            model_dir,
            tmp_path / "r2",
            ["not a sample"] * 20_000,  # type: ignore[list-item]
            quick_config(stages=("instruct",)),
            progress=False,
        )
    with pytest.raises(ValueError, match="no data for stage"):
        train_paper(model_dir, tmp_path / "r3", {"align": []}, quick_config(), progress=False)
    with pytest.raises(ValueError, match="stages must be some of"):
        PaperTrainingConfig(stages=("pretrain",))
    with pytest.raises(ValueError, match=r"lora\.dropout"):
        LoraSettings(dropout=1.5)
    with pytest.raises(ValueError, match="mixed_precision"):
        PaperTrainingConfig(mixed_precision="fp8")


def test_losses_reach_any_accelerate_tracker(tmp_path):
    from accelerate.tracking import GeneralTracker

    from codi2_agent.training.paper import PaperTrainer

    class Recording(GeneralTracker):
        name, requires_logging_directory = "recording", False

        def __init__(self) -> None:
            super().__init__()
            self.config: dict = {}
            self.logged: list[tuple[int | None, dict]] = []

        @property
        def tracker(self):
            return self

        def store_init_configuration(self, values: dict) -> None:
            self.config = dict(values)

        def log(self, values: dict, step: int | None = None, **kwargs) -> None:
            self.logged.append((step, dict(values)))

    recording = Recording()
    model_dir = assemble_tiny(tmp_path)
    config = quick_config(stages=("instruct",))
    PaperTrainer(
        model_dir, tmp_path / "run", world_samples(PAIRS[:2]), config, progress=False, trackers=[recording]
    ).train()
    assert recording.config["lora.rank"] == 4 and recording.config["stages"] == "['instruct']"
    assert [step for step, _ in recording.logged] == [1, 2]
    assert {"instruct/loss", "instruct/feature", "instruct/text", "instruct/lr"} <= set(
        recording.logged[0][1]
    )


def test_the_diffusion_term_trains_through_the_frozen_decoders(tmp_path):
    from codi2_agent.training.paper import PaperTrainer

    model_dir = assemble_tiny(tmp_path)
    samples = world_samples(["text_to_image", "text_to_audio"])
    config = quick_config(stages=("instruct",), instruct_steps=1, diffusion=True)
    trainer = PaperTrainer(model_dir, tmp_path / "run", samples, config, progress=False)
    trainer.train()
    record = _log(tmp_path / "run", "instruct")[0]
    assert record["diffusion"] > 0 and record["feature"] > 0  # L_DM of both pipelines, through c_MLLM
    assert record["loss"] > record["diffusion"] + record["text"]
    model = trainer.model
    assert model is not None and all(not p.requires_grad for p in model.decoders.parameters())
