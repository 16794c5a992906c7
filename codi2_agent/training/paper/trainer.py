"""`PaperTrainer`: the paper preset's training on accelerate (1 GPU, DDP, FSDP or DeepSpeed ZeRO-2).

One process per device, started by `accelerate launch` (or plain `python` for one device). Each
process loads the assembled model folder, freezes the encoders and decoders, wraps the LM in LoRA
(peft) and trains the parts its stage trains (see `settings`):

    bridge    the CLAP audio encoder's expand (see `paper.bridge`)  (audio-caption pairs)
    align     projectors + output heads + CoDi-2's token rows       (paired data)
    instruct  the same + LoRA on the LM's attention projections     (in-context instruction data)

Layout of the run folder (`out`):

    training.json                  the PaperTrainingConfig and the base model folder
    <stage>/log.jsonl              one line per logged step: loss, L_t, feature MSE, L_DM, lr
    <stage>/checkpoints/step-N/    accelerate state (optimiser, scheduler, every process's RNG),
                                   the trainable weights (adapter + heads, as `checkpoint` writes
                                   them), and progress.json (step, data position per process)
    <stage>/final/                 the stage's result: a checkpoint `load_model` serves
    <stage>/done

A killed run started again with the same arguments continues from the newest complete checkpoint:
same weights, optimiser moments, learning rate, RNG and data position, so the loss trajectory is
the one an uninterrupted run would have had. A finished stage is loaded, not retrained.

Memory: the frozen weights are held in the mixed-precision dtype (bf16), the trained ones in
float32 (their optimiser state too); with `diffusion=False` the diffusion pipelines stay on the CPU
and out of the wrapped module (DDP would otherwise broadcast 2 B frozen parameters at start).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from codi2_agent.model.modeling_codi2 import CoDi2Model, CoDi2Output
from codi2_agent.training.paper.checkpoint import (
    load_trainable_weights,
    save_adapter_checkpoint,
    trainable_state_names,
    unwrapped_state_dict,
)
from codi2_agent.training.paper.data import BatchStream, DataSource
from codi2_agent.training.paper.lora import attach_lora, new_token_ids
from codi2_agent.training.paper.settings import PAPER_STAGES, PaperTrainingConfig

__all__ = [
    "Objective",
    "PaperTrainer",
    "UnsupportedLaunchError",
    "build_accelerator",
    "optimizer_step",
    "prepare_model",
    "refuse_rewrapping_under_fsdp",
    "split_full_state",
    "stage_seed",
    "storage_dtype",
    "train_paper",
    "trainable_parameters",
]

logger = logging.getLogger(__name__)

PROGRESS = "progress.json"
RUN_INFO = "training.json"
_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Per-stage seed offsets: align and instruct keep the ones they had before bridge came first
_STAGE_SEEDS = {"align": 0, "instruct": 1, "bridge": 2}


def stage_seed(stage: str) -> int:
    """The offset added to `config.seed` for `stage`'s RNG and data order."""
    return _STAGE_SEEDS[stage]


class Objective(nn.Module):
    """What accelerate wraps: the modules a training step touches, registered once each.

    The `CoDi2Model` itself is held unregistered, so DDP/FSDP see the LM, encoders, projectors and
    heads (and the decoders when L_DM is on) but not the idle decoders.
    """

    def __init__(self, model: CoDi2Model, diffusion: bool) -> None:
        super().__init__()
        object.__setattr__(self, "model", model)  # not a submodule
        self.lm, self.encoders = model.lm, model.encoders
        self.projectors, self.output_heads = model.projectors, model.output_heads
        self.diffusion = diffusion
        if diffusion:
            self.decoders = model.decoders

    def forward(self, batch: dict[str, Any]) -> CoDi2Output:
        return cast(CoDi2Model, self.model).forward(**batch, compute_diffusion_loss=self.diffusion)

    def train(self, mode: bool = True) -> Objective:
        super().train(mode)
        self.encoders.eval()  # frozen: no dropout, batch statistics or caches of their own
        if self.diffusion:
            self.decoders.eval()
        return self


def _lr_lambda(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _newest_checkpoint(stage_dir: Path) -> Path | None:
    """The newest checkpoint whose progress.json was written (the last file of a complete one)."""
    found = sorted((stage_dir / "checkpoints").glob("step-*"), key=lambda p: p.name)
    complete = [p for p in found if (p / PROGRESS).is_file()]
    return complete[-1] if complete else None


def read_progress(checkpoint: Path, processes: int) -> tuple[int, list[int]]:
    """(step, data position per process) of a checkpoint, refused when another number of
    processes wrote it (each one's position is its own shard's)."""
    progress = json.loads((checkpoint / PROGRESS).read_text())
    step, positions = int(progress["step"]), list(progress["positions"])
    if len(positions) != processes:
        raise ValueError(
            f"{checkpoint} was written by {len(positions)} processes; resume it with as many "
            f"(this run has {processes})"
        )
    return step, positions


def complete_checkpoint(folder: Path, step: int, positions: list[int], keep: int) -> None:
    """Write progress.json (the mark of a complete checkpoint), then drop all but the newest `keep`."""
    (folder / PROGRESS).write_text(json.dumps({"step": step, "positions": positions}) + "\n")
    for old in sorted(folder.parent.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def mark_done(stage_dir: Path, steps: int) -> None:
    """`final/` is written: mark the stage done and drop its checkpoints (the final holds the weights)."""
    (stage_dir / "done").write_text(json.dumps({"steps": steps}) + "\n")
    shutil.rmtree(stage_dir / "checkpoints", ignore_errors=True)


def log_record(acc: Any, log_path: Path, stage: str, record: dict[str, Any]) -> None:
    """One logged step: a line of `<stage>/log.jsonl` (main process) and the trackers' `<stage>/...`."""
    if acc.is_main_process:
        with log_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    if acc.log_with:
        acc.log({f"{stage}/{k}": v for k, v in record.items() if k != "step"}, step=record["step"])


class UnsupportedLaunchError(RuntimeError):
    """`accelerate launch` asked for a distributed mode (FSDP, DeepSpeed) this machine cannot run."""


# The variable `accelerate launch` sets for a distributed mode (from the config's distributed_type)
_MODE_VARIABLES = {"FSDP": "ACCELERATE_USE_FSDP", "DeepSpeed": "ACCELERATE_USE_DEEPSPEED"}


def _refuse_modes_without_gpu(cpu: bool) -> None:
    """accelerate (1.x) runs FSDP and DeepSpeed only on GPUs and other accelerators: on the CPU it
    either stops in its FSDP plugin ("no available devices found", when the config syncs module
    states) or drops the request and runs plain DDP, replicating a model FSDP was meant to shard.
    Say so before anything loads."""
    requested = [m for m, v in _MODE_VARIABLES.items() if os.environ.get(v, "").lower() == "true"]
    if cpu and requested:
        raise UnsupportedLaunchError(
            f"the accelerate config asks for {requested[0]}, which accelerate runs only on GPUs, and "
            "this machine has none (torch.cuda.is_available() is False). On the CPU, launch "
            "with codi2_agent/training/configs/ddp.yaml (processes talk over gloo) or without a config"
        )


def build_accelerator(config: PaperTrainingConfig, out: Path, trackers: Sequence[Any] = ()) -> Any:
    """The `accelerate.Accelerator` paper training runs under; the launch (processes, DDP, FSDP,
    DeepSpeed) comes from the environment `accelerate launch` sets. `trackers`: accelerate
    `GeneralTracker` instances to log to besides the named `config.log_with` ones.

    Raises:
        UnsupportedLaunchError: the launch asks for FSDP or DeepSpeed on a machine without a GPU.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    # without a GPU: the CPU, and gloo between processes when a launcher started several
    cpu = not torch.cuda.is_available()
    _refuse_modes_without_gpu(cpu)
    log_with = [*config.log_with, *trackers]
    return Accelerator(
        cpu=cpu,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
        # a batch without an audio answer leaves the audio head without a gradient
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # the schedule is in optimiser steps, whatever the number of processes
        step_scheduler_with_optimizer=False,
    )


def storage_dtype(config: PaperTrainingConfig, distributed_type: Any = None) -> torch.dtype:
    """The dtype the frozen weights are held in: the mixed-precision one, except under FSDP.

    FSDP (1) flattens each wrapped unit's parameters into one tensor of one dtype ("Must flatten
    tensors with uniform dtype"), and LoRA's float32 weights sit in the decoder layers beside the
    frozen ones; so under FSDP every weight is stored in float32, sharded across the GPUs, and
    FSDP's mixed-precision policy (accelerate's bf16) computes in bf16."""
    return torch.float32 if _is_fsdp(distributed_type) else _DTYPES[config.mixed_precision]


def _is_fsdp(distributed_type: Any) -> bool:
    """accelerate's `DistributedType.FSDP` (or its name)."""
    return getattr(distributed_type, "name", str(distributed_type)) == "FSDP"


# The stages accelerate wraps the model for (bridge trains the audio encoder's `expand` unwrapped)
_WRAPPED_STAGES = ("align", "instruct")


def refuse_rewrapping_under_fsdp(distributed_type: Any, out: Path, stages: Sequence[str]) -> None:
    """FSDP's auto-wrap replaces the LM's decoder layers by FSDP units in place, and torch refuses to
    wrap a module holding such units again ("FSDP auto wrapping requires modules to not already
    have FSDP applied"): under FSDP one launch trains one of align / instruct (the next launch loads
    the finished stage's result). Raised before anything loads, not after the first stage."""
    pending = [s for s in stages if s in _WRAPPED_STAGES and not (out / s / "done").exists()]
    if _is_fsdp(distributed_type) and len(pending) > 1:
        earlier = ",".join(s for s in stages if s not in _WRAPPED_STAGES[1:])
        raise UnsupportedLaunchError(
            f"under FSDP one launch trains one of the stages {pending}: FSDP wraps the LM's layers in "
            f"place and cannot wrap them a second time. Launch with --stages {earlier}, then launch "
            f"again with --stages {pending[-1]} (it loads {pending[0]}'s result)"
        )


def prepare_model(
    model: CoDi2Model,
    config: PaperTrainingConfig,
    device: torch.device,
    frozen_dtype: torch.dtype | None = None,
) -> CoDi2Model:
    """Freeze `model`, wrap its LM in LoRA (with the token rows), keep trained weights in float32 and
    move what a step touches to `device` (the decoders only when L_DM is on). Frozen weights are
    held in `frozen_dtype` (default: the mixed-precision dtype; see `storage_dtype`). Returns `model`."""
    frozen_dtype = frozen_dtype or _DTYPES[config.mixed_precision]
    model.requires_grad_(False)
    lm = model.lm
    if config.gradient_checkpointing:
        # non-reentrant: works with frozen inputs, DDP's unused-parameter search, and LoRA
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lm.config.use_cache = False
    model.lm = attach_lora(lm, config.lora, new_token_ids(model.tokenizer))
    trained = [p for p in model.lm.parameters() if p.requires_grad]
    trained += [*model.projectors.parameters(), *model.output_heads.parameters()]
    for p in trained:
        p.data = p.data.float()  # trained weights and their Adam moments in float32
    model.lm.to(device)
    model.projectors.to(device)
    model.output_heads.to(device)
    for modality in ("image", "audio"):
        model.encoders[modality].place(device, frozen_dtype)  # type: ignore[operator]
        if config.diffusion:
            model.decoders[modality].place(device, frozen_dtype)  # type: ignore[operator]
    expand = getattr(model.encoders["audio"], "expand", None)
    if isinstance(expand, nn.Module):  # trained by `bridge`: float32 like the other trained weights
        expand.float()
    return model


def trainable_parameters(model: CoDi2Model, stage: str) -> list[nn.Parameter]:
    """Set requires_grad for `stage` (see `settings`); return the trained parameters in a fixed order."""
    for name, p in model.lm.named_parameters():
        is_token_row = "trainable_tokens_delta" in name
        is_lora = "lora_" in name
        p.requires_grad_(is_token_row or (is_lora and stage == "instruct"))
    model.projectors.requires_grad_(True)
    model.output_heads.requires_grad_(True)
    params = [p for p in model.lm.parameters() if p.requires_grad]
    params += list(model.projectors.parameters()) + list(model.output_heads.parameters())
    return params


def optimizer_step(
    acc: Any,
    config: PaperTrainingConfig,
    wrapped: Any,
    optimizer: Any,
    params: list[nn.Parameter],
    stream: BatchStream,
) -> dict[str, float]:
    """One optimiser step over `grad_accum` micro-batches; losses averaged over them and processes,
    plus this process's token count ("tokens").

    accelerate's `accumulate` does the bookkeeping, so the same code is right under DDP (no
    all-reduce before the last micro-batch), FSDP and DeepSpeed (whose engine steps itself).
    """
    sums = torch.zeros(4, device=acc.device)
    tokens = 0
    for _ in range(config.grad_accum):
        batch = _to_device(stream.next_batch(), acc.device)
        tokens += int(batch["attention_mask"].sum())
        with acc.accumulate(wrapped):
            out = wrapped(batch)
            acc.backward(out.loss)  # divided by grad_accum inside
            if acc.sync_gradients and config.max_grad_norm:
                acc.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()  # a no-op until the last micro-batch
            optimizer.zero_grad(set_to_none=True)
        parts = (out.loss, out.loss_text, out.loss_feature, out.loss_diffusion)
        sums += torch.stack([p.detach().float() for p in parts])
    if not acc.sync_gradients:
        raise RuntimeError("gradient accumulation is out of step with the optimiser steps")
    mean = acc.reduce(sums / config.grad_accum, reduction="mean")
    names = ("loss", "text", "feature", "diffusion")
    return {**{n: float(v) for n, v in zip(names, mean.tolist(), strict=True)}, "tokens": float(tokens)}


class PaperTrainer:
    """Train a paper-preset model folder (see `codi2_agent.model.assemble_paper_model`).

    Args:
        model_dir: the assembled model folder (frozen parts, the LM, the untrained projectors/heads).
        out: the run folder (created; an existing one is resumed).
        data: one source for every stage, or {"align": source, "instruct": source} (and "bridge";
            without it the bridge reads the audio-caption pairs of "align"'s source). A source is
            a re-iterable of `Sample`s or a callable returning one (see `paper.data`).
        config: steps, batch, LoRA, precision; default `PaperTrainingConfig()`.
        progress: tqdm bar on the main process (None: only when stderr is a terminal).
        trackers: accelerate `GeneralTracker` instances that get the logged losses too (named
            trackers such as "tensorboard" go in `config.log_with`).
    """

    def __init__(
        self,
        model_dir: str | Path,
        out: str | Path,
        data: DataSource | Mapping[str, DataSource],
        config: PaperTrainingConfig | None = None,
        *,
        progress: bool | None = None,
        trackers: Sequence[Any] = (),
    ) -> None:
        self.model_dir = Path(model_dir).expanduser().resolve()
        self.out = Path(out).expanduser()
        self.config = config or PaperTrainingConfig()
        self.data = dict(data) if isinstance(data, Mapping) else dict.fromkeys(PAPER_STAGES, data)
        if "bridge" not in self.data and "align" in self.data:
            self.data["bridge"] = self.data["align"]
        missing = [s for s in self.config.stages if s not in self.data]
        if missing:
            raise ValueError(f"no data for stage(s) {missing}; pass data={{'align': ..., 'instruct': ...}}")
        self.progress = progress
        self.accelerator = build_accelerator(self.config, self.out, trackers)
        self.model: CoDi2Model | None = None

    # --- set-up -----------------------------------------------------------------------------------
    def _load_model(self) -> CoDi2Model:
        """The base model from its folder, frozen parts in the training dtype, prepared for training."""
        from codi2_agent.model import load_model

        dtype = storage_dtype(self.config, self.accelerator.distributed_type)
        model = load_model(self.model_dir, device="cpu", dtype=dtype)
        if model.config.preset != "paper":
            raise ValueError(
                f"{self.model_dir} holds a {model.config.preset!r} model; paper training needs 'paper'"
            )
        return prepare_model(model, self.config, self.accelerator.device, dtype)

    def _configure_deepspeed(self) -> None:
        """DeepSpeed sizes its engine from the batch; there is no DataLoader for it to read that from."""
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if plugin is None:
            return
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = self.config.batch_size
        plugin.deepspeed_config["gradient_accumulation_steps"] = self.config.grad_accum
        plugin.deepspeed_config["gradient_clipping"] = self.config.max_grad_norm

    # --- the run ------------------------------------------------------------------------------------
    def train(self) -> Path:
        """Run (or resume) every stage of the config; return the last stage's `final/` checkpoint."""
        acc = self.accelerator
        refuse_rewrapping_under_fsdp(acc.distributed_type, self.out, self.config.stages)
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            info = {"base_model": str(self.model_dir), "config": self.config.to_dict()}
            (self.out / RUN_INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if acc.log_with:  # the trackers accelerate found installed (or was given)
            acc.init_trackers("codi2-paper", config=_flat(self.config.to_dict()))
        torch.manual_seed(self.config.seed)
        model = self.model = self._load_model()
        final = self.out
        for stage in PAPER_STAGES:
            stage_dir = self.out / stage
            if stage in self.config.stages:
                final = self._run_stage(model, stage, stage_dir)
            elif (stage_dir / "done").exists():  # an earlier run's stage: continue from its result
                load_trainable_weights(model, stage_dir / "final")
                final = stage_dir / "final"
        if acc.log_with:
            acc.end_training()
        return final

    def _run_stage(self, model: CoDi2Model, stage: str, stage_dir: Path) -> Path:
        from tqdm.auto import tqdm

        acc, cfg = self.accelerator, self.config
        if stage == "bridge":
            from codi2_agent.training.paper.bridge import run_bridge

            data = self.data[stage]
            return run_bridge(
                acc, cfg, model, data, stage_dir, base_model=self.model_dir, progress=self.progress
            )
        final = stage_dir / "final"
        if (stage_dir / "done").exists():
            load_trainable_weights(model, final)
            logger.info("stage %s is done; loaded %s", stage, final)
            return final
        params = trainable_parameters(model, stage)
        checkpoint = _newest_checkpoint(stage_dir)
        if checkpoint is not None:
            load_trainable_weights(model, checkpoint)  # before wrapping: DDP broadcasts rank 0's weights
        objective = Objective(model, cfg.diffusion)
        optimizer = torch.optim.AdamW(params, lr=cfg.lr(stage), weight_decay=cfg.weight_decay)
        total = cfg.steps(stage)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.warmup_steps, total))
        self._configure_deepspeed()
        wrapped, optimizer, scheduler = acc.prepare(objective, optimizer, scheduler)
        hooks = [
            acc.register_save_state_pre_hook(_keep_weights_out),  # trainable weights are saved by us
            acc.register_load_state_pre_hook(lambda models, _dir: models.clear()),
        ]
        step, positions = 0, [0] * acc.num_processes
        if checkpoint is not None:
            step, positions = read_progress(checkpoint, acc.num_processes)
            acc.load_state(str(checkpoint))
            logger.info("resuming stage %s at step %d from %s", stage, step, checkpoint)
        else:
            torch.manual_seed(cfg.seed + stage_seed(stage))
        stream = BatchStream(
            self.data[stage],
            model.processor,
            cfg.batch_size,
            rank=acc.process_index,
            world=acc.num_processes,
            position=positions[acc.process_index],
            shuffle_buffer=cfg.shuffle_buffer,
            seed=cfg.seed + stage_seed(stage),
            name=stage,
        )
        log_path = stage_dir / "log.jsonl"
        if acc.is_main_process:
            stage_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(log_path, step)
        hide = True if not acc.is_main_process else (None if self.progress is None else not self.progress)
        bar = tqdm(range(step, total), desc=stage, initial=step, total=total, disable=hide)
        wrapped.train()
        t0, window, tokens = time.perf_counter(), [], 0
        for step in bar:
            logs = optimizer_step(acc, cfg, wrapped, optimizer, params, stream)
            scheduler.step()
            tokens += int(logs.pop("tokens"))
            window.append(logs)
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                mean = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
                record = {"step": done, "lr": scheduler.get_last_lr()[0], **mean}
                record["tokens_per_s"] = tokens * acc.num_processes / max(time.perf_counter() - t0, 1e-9)
                log_record(acc, log_path, stage, record)
                bar.set_postfix(loss=f"{mean['loss']:.4f}")
                t0, window, tokens = time.perf_counter(), [], 0
            if done % cfg.save_every == 0 and done < total:
                self._save_checkpoint(model, wrapped, stage, stage_dir, done, stream)
        for handle in hooks:
            handle.remove()
        self._save_final(model, wrapped, stage, stage_dir, total)
        acc.free_memory(wrapped, optimizer, scheduler)  # the next stage prepares its own
        return final

    # --- saving ----------------------------------------------------------------------------------------
    def _gathered(
        self, model: CoDi2Model, wrapped: Any
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The LM's and the trained modules' full state (gathered from every process under FSDP)."""
        return split_full_state(model, self.accelerator.get_state_dict(wrapped))

    def _save_checkpoint(
        self, model: CoDi2Model, wrapped: Any, stage: str, stage_dir: Path, step: int, stream: BatchStream
    ) -> None:
        acc = self.accelerator
        folder = stage_dir / "checkpoints" / f"step-{step:07d}"
        lm_state, trained = self._gathered(model, wrapped)
        if acc.is_main_process:
            save_adapter_checkpoint(
                model, folder, base_model=self.model_dir, stage=stage, step=step,
                lm_state_dict=lm_state, trainable=trained,
            )  # fmt: skip
        acc.wait_for_everyone()
        acc.save_state(str(folder))
        positions = acc.gather_for_metrics(torch.tensor([stream.position], device=acc.device)).tolist()
        if acc.is_main_process:
            complete_checkpoint(folder, step, positions, self.config.keep_checkpoints)
        acc.wait_for_everyone()

    def _save_final(self, model: CoDi2Model, wrapped: Any, stage: str, stage_dir: Path, step: int) -> None:
        acc = self.accelerator
        lm_state, trained = self._gathered(model, wrapped)
        if acc.is_main_process:
            save_adapter_checkpoint(
                model, stage_dir / "final", base_model=self.model_dir, stage=stage, step=step,
                lm_state_dict=lm_state, trainable=trained,
            )  # fmt: skip
            mark_done(stage_dir, step)
        acc.wait_for_everyone()


def split_full_state(
    model: CoDi2Model, full: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The wrapped `Objective`'s full state dict -> (the LM's state, the trained modules' state), as
    `save_adapter_checkpoint` takes them. Under FSDP the modules' own tensors are shards; `full` is
    what the FSDP state-dict gather returned (empty on all but the main process), the only source:
    a tensor it lacks stays missing, and `save_adapter_checkpoint` refuses the state."""
    full = unwrapped_state_dict(full)
    lm_state = {k[len("lm.") :]: v for k, v in full.items() if k.startswith("lm.")}
    trained = {
        key: full[key].detach().float().cpu().contiguous()
        for key in trainable_state_names(model)
        if key in full
    }
    return lm_state, trained


def _keep_weights_out(models: list[Any], weights: list[Any], output_dir: str) -> None:
    """accelerate's save_state would write every wrapped module's full state (the frozen 7B LM
    included); the trainable weights are written by `save_adapter_checkpoint` instead."""
    weights.clear()


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (written by a run killed after its last checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in lines))


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {"lora.rank": 16, ...} with plain values (what trackers accept)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def train_paper(
    model_dir: str | Path,
    out: str | Path,
    data: DataSource | Mapping[str, DataSource],
    config: PaperTrainingConfig | None = None,
    *,
    progress: bool | None = None,
) -> Path:
    """Train (or resume) a paper-preset model; returns the last stage's checkpoint folder.

    See `PaperTrainer`. Load the result with `codi2_agent.model.load_model(path)` (adapters attached,
    or `merge_adapters=True`), or make a standalone folder with `codi2-agent export`.
    """
    return PaperTrainer(model_dir, out, data, config, progress=progress).train()
