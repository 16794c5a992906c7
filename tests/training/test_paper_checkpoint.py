"""Paper training checkpoints: served by load_model (attached or merged), through a Session, exported
to a standalone folder, and refused when tampered with."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
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
from safetensors.torch import load_file, save_file

from codi2_agent.model import CorruptWeightsError, WeightsNotFoundError, load_model
from codi2_agent.model.integrity import write_manifest
from codi2_agent.training.paper import (
    CheckpointMismatchError,
    export_merged,
    load_adapter_checkpoint,
    train_paper,
)
from codi2_agent.training.paper.checkpoint import ADAPTER_FOLDER, TRAINABLE_WEIGHTS

PROMPT = ["draw a small red star in the snow"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(base model folder, instruct checkpoint) of a short run with non-zero LoRA weights."""
    root = tmp_path_factory.mktemp("paper-ckpt")
    base = assemble_tiny(root)
    data = {"align": world_samples(PAIRS), "instruct": world_samples(INSTRUCT)}
    fresh_accelerate_state()
    try:
        final = train_paper(base, root / "run", data, quick_config(instruct_lr=1e-2), progress=False)
    finally:
        fresh_accelerate_state()
    return base, final


def _outputs(model) -> tuple[str, torch.Tensor]:
    text = model.generate(PROMPT, output="text", max_new_tokens=8).text
    image = model.generate(PROMPT, output="image", seed=0, num_inference_steps=2)
    return text, image.features


def test_checkpoint_loads_with_the_adapter_attached_and_answers_a_session_turn(trained, tmp_path):
    from peft import PeftModel

    from codi2_agent import Session

    model = load_model(trained[1])
    assert isinstance(model.lm, PeftModel)
    with model.lm.disable_adapter():  # the adapter changes the LM: without it the answer differs
        bare = model.generate(PROMPT, output="image", seed=0, num_inference_steps=2).features
    assert bare is not None and not torch.allclose(bare, _outputs(model)[1])
    session = Session(model=model, root=tmp_path / "session", thread="t")
    turn = session.say("draw a small red star in the snow", output="image", num_inference_steps=2)
    assert turn.image is not None and turn.image.image.size == (32, 32)
    assert len(session.history()) == 1


def test_merged_and_exported_models_give_the_attached_model_s_outputs(trained, tmp_path):
    attached = _outputs(load_model(trained[1]))
    merged_model = load_model(trained[1], merge_adapters=True)
    assert type(merged_model.lm).__name__ == "LlamaForCausalLM"
    merged = _outputs(merged_model)
    exported_dir = export_merged(trained[1], tmp_path / "exported")
    exported = _outputs(load_model(exported_dir))

    assert attached[0] == merged[0] == exported[0]
    torch.testing.assert_close(merged[1], attached[1], rtol=1e-5, atol=1e-5)  # W + BA vs Wx + B(Ax)
    assert torch.equal(exported[1], merged[1])  # the export round-trip is exact
    assert not (exported_dir / ADAPTER_FOLDER).exists() and (exported_dir / "language_model").is_dir()
    with pytest.raises(FileExistsError, match="not empty"):
        export_merged(trained[1], exported_dir)
    # a standalone folder: it loads and answers in a process where peft cannot be imported
    script = (
        "import sys; sys.modules['peft'] = None\n"
        "from codi2_agent.model import load_model\n"
        f"m = load_model({str(exported_dir)!r})\n"
        f"print(repr(m.generate({PROMPT!r}, output='text', max_new_tokens=8).text))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines()[-1] == repr(exported[0])


def _tampered(trained, tmp_path, change) -> Path:
    """A copy of the checkpoint changed by `change(folder)`, its manifest rewritten to match (the
    attacker controls every file, the manifest included)."""
    copy = tmp_path / "tampered"
    shutil.copytree(trained[1], copy)
    change(copy)
    write_manifest(copy)
    return copy


def test_tampered_or_mismatched_checkpoints_are_named_errors(trained, tmp_path):
    def reshape_head(folder: Path) -> None:
        state = load_file(folder / TRAINABLE_WEIGHTS)
        key = next(k for k in state if k.endswith("weight"))
        state[key] = torch.zeros(state[key].shape[0] + 1, state[key].shape[1])
        save_file(state, folder / TRAINABLE_WEIGHTS)

    with pytest.raises(CheckpointMismatchError, match="wrong shape"):
        load_model(_tampered(trained, tmp_path / "a", reshape_head))

    def drop_lora(folder: Path) -> None:
        path = folder / ADAPTER_FOLDER / "adapter_model.safetensors"
        state = load_file(path)
        del state[next(k for k in state if "lora_A" in k)]
        save_file(state, path)

    with pytest.raises(CheckpointMismatchError, match=r"lacks .*lora_A"):
        load_model(_tampered(trained, tmp_path / "b", drop_lora))

    def other_config(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        config["alpha"] = 2.0
        (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(CheckpointMismatchError, match=r"differs from the base model's config in \['alpha'\]"):
        load_model(_tampered(trained, tmp_path / "c", other_config))

    with pytest.raises(WeightsNotFoundError, match=r"missing .*adapter_config\.json"):
        load_model(
            _tampered(
                trained, tmp_path / "d", lambda f: (f / ADAPTER_FOLDER / "adapter_config.json").unlink()
            )
        )

    def retarget(folder: Path) -> None:
        path = folder / ADAPTER_FOLDER / "adapter_config.json"
        config = json.loads(path.read_text())
        config["target_modules"] = ["gate_proj_that_is_not_there"]
        path.write_text(json.dumps(config))

    with pytest.raises(CheckpointMismatchError, match="does not fit the base model's LM"):
        load_model(_tampered(trained, tmp_path / "f", retarget))

    # changed after saving, manifest untouched: the integrity check catches it before loading
    changed = tmp_path / "e"
    shutil.copytree(trained[1], changed)
    with (changed / TRAINABLE_WEIGHTS).open("r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CorruptWeightsError, match="sha256 differs"):
        load_model(changed)

    # another base model than the one it was trained from
    other_base = assemble_tiny(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointMismatchError, match="is not the base model"):
        load_adapter_checkpoint(trained[1], base_model=other_base)
