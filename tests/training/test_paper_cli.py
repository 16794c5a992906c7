"""`codi2-agent train --preset paper` and `codi2-agent export` through the real command line, on a
dataset folder in a format people have (an image-caption JSONL), and the committed accelerate configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from paper_training_support import assemble_tiny, fresh_accelerate_state
from typer.testing import CliRunner, Result

from codi2_agent.cli import app
from codi2_agent.data import world

CONFIGS = Path(__file__).resolve().parents[2] / "codi2_agent" / "training" / "configs"


def _cli(*args: object) -> Result:
    """The `codi2-agent` command, invoked in this process (the imports are paid once)."""
    fresh_accelerate_state()
    try:
        return CliRunner().invoke(app, [str(a) for a in args])
    finally:
        fresh_accelerate_state()


def _caption_folder(folder: Path) -> Path:
    """Four pictures and an image-caption JSONL manifest beside them."""
    folder.mkdir()
    lines = []
    for i, (shape, colour) in enumerate(
        [("star", "red"), ("circle", "blue"), ("square", "green"), ("cross", "yellow")]
    ):
        attrs = {"shape": shape, "colour": colour, "size": "large", "scene": "snow"}
        world.render(attrs, i).save(folder / f"{i}.png")
        lines.append(json.dumps({"image": f"{i}.png", "caption": f"a large {colour} {shape} in the snow"}))
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_train_paper_then_export_from_the_command_line(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    data = _caption_folder(tmp_path / "pairs")
    run = _cli(
        "train", "--preset", "paper", "--model-dir", model_dir, "--data", data, "--out", tmp_path / "run",
        "--align-steps", "1", "--instruct-steps", "1", "--batch-size", "2", "--grad-accum", "1",
        "--lora-rank", "2", "--mixed-precision", "no", "--no-gradient-checkpointing", "--save-every", "1",
        "--bridge-steps", "3", "--bridge-lr", "0.002",
    )  # fmt: skip
    assert run.exit_code == 0, run.output[-3000:]
    final = tmp_path / "run" / "instruct" / "final"
    assert f"checkpoint written to {final}" in run.stdout
    settings = json.loads((tmp_path / "run" / "training.json").read_text())
    assert settings["config"]["lora"]["rank"] == 2 and settings["base_model"] == str(model_dir.resolve())
    assert (settings["config"]["bridge_steps"], settings["config"]["bridge_lr"]) == (3, 0.002)
    exported = _cli("export", final, tmp_path / "standalone")
    assert exported.exit_code == 0, exported.output[-3000:]
    assert (tmp_path / "standalone" / "language_model" / "config.json").is_file()
    again = _cli("export", final, tmp_path / "standalone")  # never over an existing model
    assert again.exit_code == 1 and "error: export folder" in again.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--data", "x"], 2, "--preset paper needs --model-dir"),
        (["--model-dir", "{model}"], 2, "no data for stage(s) align, instruct"),
        (["--model-dir", "{model}", "--data", "{missing}"], 1, "no dataset at"),
        (["--model-dir", "{model}", "--data", "{model}", "--mixed-precision", "fp8"], 2, "mixed_precision"),
    ],
)
def test_train_paper_refuses_bad_arguments_with_one_line(tmp_path, args, code, message):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    filled = [a.format(model=model, missing=tmp_path / "nowhere") for a in args]
    run = _cli("train", "--preset", "paper", "--out", tmp_path / "run", *filled)
    assert run.exit_code == code, run.output
    assert message in run.stderr and isinstance(run.exception, SystemExit)  # a clean exit, no traceback


def test_the_committed_accelerate_configs_parse_as_accelerate_reads_them():
    from accelerate.commands.config.config_args import ClusterConfig

    kinds = {f.name: ClusterConfig.from_yaml_file(f) for f in sorted(CONFIGS.glob("*.yaml"))}
    assert {name: str(c.distributed_type) for name, c in kinds.items()} == {
        "ddp.yaml": "DistributedType.MULTI_GPU",
        "deepspeed_zero2.yaml": "DistributedType.DEEPSPEED",
        "fsdp.yaml": "DistributedType.FSDP",
    }
    assert all(c.mixed_precision == "bf16" for c in kinds.values())
    assert kinds["fsdp.yaml"].fsdp_config["fsdp_use_orig_params"] is True  # frozen + trained in one unit
    assert kinds["deepspeed_zero2.yaml"].deepspeed_config["zero_stage"] == 2
