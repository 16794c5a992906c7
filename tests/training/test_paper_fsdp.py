"""The committed FSDP and DeepSpeed configs on a machine without a GPU, launched as a user launches them.

accelerate (1.x) runs FSDP and DeepSpeed only on GPUs and other accelerators: on the CPU its FSDP
plugin stops with "no available devices found" (the committed config syncs module states), and a
config without that sync is silently run as plain DDP over gloo. The trainer refuses such a launch
itself, before loading anything, with a message that names the way that does work on a CPU (DDP).

What FSDP does to the trainer's model is checked with torch's FSDP directly, which runs on the CPU
over gloo: the frozen weights must be stored in the dtype of the trained ones (each wrapped unit is
flattened into one tensor), and LoRA, the token rows and the heads train and save through it.
The saved adapter is checked in one process too, with the decoder layers wrapped for activation
checkpointing: like FSDP's units, the wrapper puts a segment into the LoRA layers' module names
(which peft selects the adapter by) but not into the state dict's keys.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from paper_training_support import assemble_tiny, quick_config
from safetensors.torch import load_file

from codi2_agent.training.paper import IncompleteCheckpointError, PaperTrainingConfig
from codi2_agent.training.paper.checkpoint import (
    save_adapter_checkpoint,
    trainable_state_dict,
    unwrapped_name,
    unwrapped_state_dict,
)
from codi2_agent.training.paper.trainer import (
    UnsupportedLaunchError,
    build_accelerator,
    prepare_model,
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
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
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
        saved = load_file(folder / "adapter" / "adapter_model.safetensors")
        loaded = load_model(folder)
        params = dict(loaded.lm.named_parameters())
        # the gathered adapter: LoRA A and B of every targeted layer, and the new tokens' rows
        adapter = {{k: v for k, v in lm_state.items() if "lora_" in k or "trainable_tokens_delta" in k}}
        # peft's names in the file (and in a loaded model) drop the adapter's name
        in_file = {{k: k.replace(".default", "") for k in adapter}}
        targeted = [n for n, m in loaded.lm.named_modules() if isinstance(m, LoraLayer)]
        report[mode] = dict(
            loss=float(loss), units=units, adapter=len(adapter), targeted=targeted,
            saved=sorted(saved),
            wrapped_names=sum("_fsdp_wrapped_module" in n for n, _ in model.lm.named_modules()),
            moved=sum(bool(v.abs().sum() > 0) for k, v in adapter.items() if "lora_A" not in k),
            saved_equal=sum(torch.equal(saved.get(in_file[k], v + 1), v) for k, v in adapter.items()),
            loaded_equal=sum(torch.allclose(params[k].float(), v.float()) for k, v in adapter.items()),
            heads=all(torch.allclose(v.float(), trained["projectors." + k])
                      for k, v in loaded.projectors.state_dict().items()),
            text=loaded.generate(["draw a small red star"], output="text", max_new_tokens=4).text,
        )
    dist.barrier()
if rank == 0:
    with open(out + "/report.json", "w") as f:
        json.dump(report, f)
dist.destroy_process_group()
"""


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
    # the LoRA layers' names inside the wrapped LM carry FSDP's segment (what peft selects by)
    assert fsdp["wrapped_names"] > 0
    # LoRA on the 4 attention projections of both decoder layers (each inside an FSDP unit), and
    # its A and B matrices in the saved adapter for every one of them
    assert len(fsdp["targeted"]) == 8
    expected = {f"{name}.{matrix}.weight" for name in fsdp["targeted"] for matrix in ("lora_A", "lora_B")}
    assert expected <= set(fsdp["saved"])
    # the two token-row deltas (input embeddings, LM head) besides the 16 LoRA matrices, nothing else
    assert fsdp["adapter"] == len(fsdp["saved"]) == 16 + 2
    # saved as gathered, bit for bit, and loaded back; every B matrix and token-row delta started at
    # zero and moved in the step
    assert fsdp["saved_equal"] == fsdp["loaded_equal"] == fsdp["adapter"]
    assert fsdp["moved"] == 8 + 2
    assert fsdp["heads"] is True
    assert isinstance(fsdp["text"], str) and fsdp["text"]  # load_model(final) serves: it generates


# --- the saved adapter of a wrapped LM, in one process -------------------------------------------------
def _with_wrapper_segment(key: str) -> str:
    """`key` as an FSDP gather that kept the unit's segment would name it."""
    return re.sub(r"(layers\.\d+)\.", r"\1._fsdp_wrapped_module.", key)


def test_unwrapped_names_drop_fsdp_checkpoint_and_compile_segments_only():
    wrapped = {
        "lm.base_model.model.model.layers.0._fsdp_wrapped_module._checkpoint_wrapped_module"
        ".self_attn.q_proj.lora_A.default.weight": torch.zeros(1),
        "_orig_mod.projectors.image.0.weight": torch.ones(1),
        "output_heads.my_orig_mod.bias": torch.full((1,), 2.0),  # a segment that only looks alike
    }
    clean = unwrapped_state_dict(wrapped)
    assert list(clean) == [
        "lm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "projectors.image.0.weight",
        "output_heads.my_orig_mod.bias",
    ]
    assert [float(v) for v in clean.values()] == [0.0, 1.0, 2.0]  # the tensors themselves, unchanged
    assert unwrapped_name("layers.1._fsdp_wrapped_module") == "layers.1"
    with pytest.raises(ValueError, match=r"both name 'a\.weight' once unwrapped"):
        unwrapped_state_dict({"a.weight": torch.zeros(1), "_fsdp_wrapped_module.a.weight": torch.zeros(1)})


@pytest.fixture(scope="module")
def checkpointed_lm(tmp_path_factory) -> tuple[Path, Any]:
    """(base folder, LoRA-prepared tiny model) whose decoder layers are wrapped for activation
    checkpointing as accelerate wraps them (`fsdp_activation_checkpointing`): the LoRA layers' module
    names carry `_checkpoint_wrapped_module`, their state-dict keys do not (as under FSDP)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from codi2_agent.model import load_model

    model_dir = assemble_tiny(tmp_path_factory.mktemp("wrapped"))
    model = prepare_model(load_model(model_dir, device="cpu"), quick_config(), torch.device("cpu"))
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking values: B (zero at the start) and the token rows
        for name, p in model.lm.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.normal_()
    apply_activation_checkpointing(model.lm, check_fn=lambda m: isinstance(m, LlamaDecoderLayer))
    return model_dir, model


def _lora_names(lm: Any) -> list[str]:
    from peft.tuners.lora import LoraLayer

    return [n for n, m in lm.named_modules() if isinstance(m, LoraLayer)]


def test_peft_alone_drops_the_lora_of_wrapped_layers_and_the_checkpoint_keeps_it(checkpointed_lm, tmp_path):
    from peft import PeftModel

    from codi2_agent.model import load_model

    model_dir, model = checkpointed_lm
    wrapped_names = _lora_names(model.lm)
    assert len(wrapped_names) == 8 and all("._checkpoint_wrapped_module." in n for n in wrapped_names)
    state = model.lm.state_dict()
    assert not any("_checkpoint_wrapped_module" in k for k in state)
    # the cause: peft selects the adapter by module names, which carry the wrapper's segment
    model.lm.save_pretrained(tmp_path / "peft", state_dict=state, save_embedding_layers=False)
    assert not any("lora_" in k for k in load_file(tmp_path / "peft" / "adapter_model.safetensors"))

    gathered = {_with_wrapper_segment(k): v for k, v in state.items()}  # a gather that kept FSDP's
    final = save_adapter_checkpoint(
        model, tmp_path / "final", base_model=model_dir, stage="instruct", step=1,
        lm_state_dict=gathered, trainable=trainable_state_dict(model),
    )  # fmt: skip
    assert _lora_names(model.lm) == wrapped_names  # the wrappers are back in place
    saved = load_file(final / "adapter" / "adapter_model.safetensors")
    clean_names = [unwrapped_name(n) for n in wrapped_names]
    for name in clean_names:  # A and B of every LoRA layer, with the trained values
        for matrix in ("lora_A", "lora_B"):
            assert torch.equal(saved[f"{name}.{matrix}.weight"], state[f"{name}.{matrix}.default.weight"])
    loaded = load_model(final)
    assert isinstance(loaded.lm, PeftModel) and _lora_names(loaded.lm) == clean_names
    params = dict(loaded.lm.named_parameters())
    for key, value in state.items():
        if "lora_" in key or "trainable_tokens_delta" in key:
            assert torch.equal(params[key], value), key
    assert isinstance(loaded.generate(["draw a star"], output="text", max_new_tokens=2).text, str)


def test_a_state_without_a_layer_s_lora_or_a_head_is_refused_and_nothing_is_written(
    checkpointed_lm, tmp_path
):
    model_dir, model = checkpointed_lm
    state = model.lm.state_dict()
    without_layer = {k: v for k, v in state.items() if not ("layers.1." in k and "lora_" in k)}
    with pytest.raises(IncompleteCheckpointError, match=r"LM adapter to save lacks 8 .*layers\.1\.self_attn"):
        save_adapter_checkpoint(
            model,
            tmp_path / "final",
            base_model=model_dir,
            stage="instruct",
            step=1,
            lm_state_dict=without_layer,
        )
    trainable = trainable_state_dict(model)
    head = next(k for k in trainable if k.startswith("output_heads."))
    with pytest.raises(IncompleteCheckpointError, match=f"trained modules' state to save lacks 1 .*{head}"):
        save_adapter_checkpoint(
            model, tmp_path / "final", base_model=model_dir, stage="instruct", step=1,
            trainable={k: v for k, v in trainable.items() if k != head},
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # neither the checkpoint nor its partial folder
