"""The committed FSDP and DeepSpeed configs on a machine without a GPU, launched as a user launches them.

accelerate (1.x) runs FSDP and DeepSpeed only on GPUs and other accelerators: on the CPU its FSDP
plugin stops with "no available devices found" (the committed config syncs module states), and a
config without that sync is silently run as plain DDP over gloo. The trainer refuses such a launch
itself, before loading anything, with a message that names the way that does work on a CPU (DDP).

What FSDP does to the trainer's model is checked with torch's FSDP directly, which runs on the CPU
over gloo: the frozen weights must be stored in the dtype of the trained ones (each wrapped unit is
flattened into one tensor), and LoRA, the token rows and the heads train and save through it.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from paper_training_support import assemble_tiny

from codi2_agent.training.paper import PaperTrainingConfig
from codi2_agent.training.paper.trainer import (
    UnsupportedLaunchError,
    build_accelerator,
    refuse_rewrapping_under_fsdp,
)

TESTS = Path(__file__).resolve().parents[1]
CONFIGS = TESTS.parent / "codi2_agent" / "training" / "configs"
WORKER = """
from codi2_agent.training.paper import PaperTrainer, PaperTrainingConfig

# the trainer's constructor sets up accelerate; the model folder is read only when training starts
PaperTrainer({model!r}, {out!r}, {{"align": [], "instruct": []}}, PaperTrainingConfig(mixed_precision="no"))
print("accelerate set up")
"""
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="FSDP and DeepSpeed run on a GPU machine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accelerate_launch(config: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --config_file CONFIG --num_processes 2` of a script that builds a trainer."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(model=str(tmp_path / "model"), out=str(tmp_path / "run")))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    cmd += ["--num_processes", "2", "--main_process_ip", "127.0.0.1"]
    cmd += ["--main_process_port", str(_free_port()), str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)


@no_gpu
def test_the_committed_fsdp_config_on_a_cpu_stops_the_launch_with_a_named_error(tmp_path):
    run = _accelerate_launch(CONFIGS / "fsdp.yaml", tmp_path)

    assert run.returncode != 0
    assert "accelerate set up" not in run.stdout
    # the processes stop in the trainer, before accelerate's own less telling error (the launcher
    # may end the second process once the first has failed, so one refusal is printed at least)
    refusal = "UnsupportedLaunchError: the accelerate config asks for FSDP, which accelerate runs only on"
    assert refusal in run.stderr, run.stderr[-4000:]
    assert "ddp.yaml" in run.stderr
    assert "no available devices found" not in run.stderr
    assert not (tmp_path / "run").exists()  # nothing written, nothing loaded


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_the_committed_deepspeed_config_without_deepspeed_is_refused_by_the_launcher(tmp_path):
    run = _accelerate_launch(CONFIGS / "deepspeed_zero2.yaml", tmp_path)

    assert run.returncode != 0
    assert "DeepSpeed is not installed" in run.stderr, run.stderr[-4000:]
    assert "pip3 install deepspeed" in run.stderr
    assert "accelerate set up" not in run.stdout


@no_gpu
@pytest.mark.parametrize(
    ("variable", "mode"), [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")]
)
def test_a_mode_requested_through_the_environment_is_refused_on_the_cpu(
    monkeypatch, tmp_path, variable, mode
):
    # a launcher other than `accelerate launch` (torchrun with the variables exported) reaches the same check
    monkeypatch.setenv(variable, "true")
    with pytest.raises(UnsupportedLaunchError, match=f"asks for {mode}, which accelerate runs only on GPUs"):
        build_accelerator(PaperTrainingConfig(mixed_precision="no"), tmp_path)


def test_under_fsdp_align_and_instruct_are_refused_in_one_launch_before_anything_loads(tmp_path):
    both = ("bridge", "align", "instruct")
    advice = "--stages bridge,align, then launch again with --stages instruct"
    with pytest.raises(UnsupportedLaunchError, match=advice):
        refuse_rewrapping_under_fsdp("FSDP", tmp_path, both)
    refuse_rewrapping_under_fsdp("MULTI_GPU", tmp_path, both)  # DDP wraps a wrapper, not the LM
    (tmp_path / "align").mkdir()
    (tmp_path / "align" / "done").write_text("{}")
    refuse_rewrapping_under_fsdp("FSDP", tmp_path, both)  # align is loaded, only instruct is wrapped


FSDP_WORKER = """
import json, re, sys
import torch, torch.distributed as dist
from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, StateDictType
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer
sys.path.insert(0, {tests!r})
from paper_training_support import INSTRUCT, quick_config, world_samples
from codi2_agent.model import load_model
from codi2_agent.training.paper.checkpoint import save_adapter_checkpoint
from codi2_agent.training.paper.data import BatchStream
from codi2_agent.training.paper.trainer import (
    Objective, prepare_model, split_full_state, storage_dtype, trainable_parameters,
)

torch.set_num_threads(1)
dist.init_process_group("gloo")
rank, world, out = dist.get_rank(), dist.get_world_size(), {out!r}
config = quick_config(mixed_precision="bf16")  # what a GPU run asks for
report = {{}}
for mode in ("MULTI_GPU", "FSDP"):  # DDP's storage dtype (frozen bf16), then FSDP's
    dtype = storage_dtype(config, mode)
    model = load_model({model!r}, device="cpu", dtype=dtype)
    model = prepare_model(model, config, torch.device("cpu"), dtype)
    # the optimizer is built before wrapping, as the trainer builds it (use_orig_params keeps them)
    optimizer = torch.optim.AdamW(trainable_parameters(model, "instruct"), lr=1e-2)
    objective = Objective(model, False)
    # fsdp_ignored_modules of codi2_agent/training/configs/fsdp.yaml, matched as accelerate matches it
    ignored = [m for n, m in objective.named_modules() if re.fullmatch({ignored!r}, n)]
    try:  # the wrapping accelerate does with that config
        wrapped = FSDP(objective, auto_wrap_policy=ModuleWrapPolicy({{LlamaDecoderLayer}}),
                       device_id=torch.device("cpu"), use_orig_params=True, ignored_modules=ignored)
    except ValueError as e:
        report[mode] = str(e)
        continue
    units = sum(isinstance(m, FSDP) for m in model.lm.modules())
    wrapped.train()
    stream = BatchStream(world_samples(INSTRUCT * 2), model.processor, 2, rank=rank, world=world)
    loss = wrapped(stream.next_batch()).loss
    loss.backward()
    optimizer.step()
    # offload_to_cpu=False: accelerate's gather offloads (GPU -> CPU); on tensors already on the CPU
    # that segfaults in FSDP's state-dict hook (torch 2.13)
    full_config = FullStateDictConfig(offload_to_cpu=False, rank0_only=True)
    with FSDP.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT, full_config):
        full = wrapped.state_dict()
    lm_state, trained = split_full_state(model, full)
    if rank == 0:
        folder = save_adapter_checkpoint(model, out + "/final", base_model={model!r}, stage="instruct",
                                         step=1, lm_state_dict=lm_state, trainable=trained)
        loaded = load_model(folder)
        params = dict(loaded.lm.named_parameters())
        adapter = {{k: v for k, v in lm_state.items() if "lora_B" in k or "trainable_tokens_delta" in k}}
        report[mode] = dict(
            loss=float(loss), units=units, adapter=len(adapter),
            moved=sum(bool(v.abs().sum() > 0) for v in adapter.values()),
            equal=sum(torch.allclose(params[k].float(), v.float()) for k, v in adapter.items()),
            heads=all(torch.allclose(v.float(), trained["projectors." + k])
                      for k, v in loaded.projectors.state_dict().items()),
        )
    dist.barrier()
if rank == 0:
    with open(out + "/report.json", "w") as f:
        json.dump(report, f)
dist.destroy_process_group()
"""


@pytest.mark.xfail(
    strict=True,
    reason="issue #16: under FSDP the saved adapter lacks the LoRA weights of the wrapped decoder layers "
    "(peft selects adapter entries by module name, and those names carry '_fsdp_wrapped_module.'), so "
    "load_model(final) raises CheckpointMismatchError; the wrap, forward, backward and step pass",
)
def test_torch_fsdp_on_the_cpu_trains_and_saves_lora_token_rows_and_heads_in_float32_storage(tmp_path):
    model_dir = assemble_tiny(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    script = tmp_path / "fsdp_worker.py"
    from accelerate.commands.config.config_args import ClusterConfig

    ignored = ClusterConfig.from_yaml_file(CONFIGS / "fsdp.yaml").fsdp_config["fsdp_ignored_modules"]
    worker = FSDP_WORKER.format(tests=str(TESTS), out=str(out), model=str(model_dir), ignored=ignored)
    script.write_text(worker)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-4000:]

    report = json.loads((out / "report.json").read_text())
    # frozen bf16 beside trained float32 in one decoder layer: FSDP cannot flatten the unit
    assert "Must flatten tensors with uniform dtype" in report["MULTI_GPU"]
    fsdp = report["FSDP"]
    assert math.isfinite(fsdp["loss"])
    assert fsdp["units"] == 2  # the tiny LM's decoder layers, each its own FSDP unit
    # every LoRA B matrix and token-row delta started at zero, moved in the step, and loads back
    assert fsdp["adapter"] > 0 and fsdp["moved"] == fsdp["adapter"] == fsdp["equal"]
    assert fsdp["heads"] is True
