"""GPU training benchmark: the paper preset at its published sizes, trained as `codi2-agent train
--preset paper` trains it, on one GPU, with random weights.

The model is `paper_architecture.PUBLISHED` (LLaMA-2-7B, CLIP ViT-H/14, CLAP, SD-2.1-unCLIP-H,
AudioLDM-2) built on the GPU in bf16; the training step is the trainer's own (`prepare_model`,
`trainable_parameters`, `Objective`, `optimizer_step` of `codi2_agent.training.paper.trainer`):
LoRA r=16 on q/k/v/o, the new token rows, projectors and output heads in float32, bf16 autocast,
gradient checkpointing, gradient accumulation, the diffusion loss off (its decoders moved off the GPU,
as the trainer keeps them). Parts, each in its own subprocess under its own time limit (a part that
fails or runs out of time prints an error row; the others still run):

- align:    the align stage (LoRA frozen) on caption pairs: caption an image, draw a caption;
- instruct: the instruct stage (LoRA trained) on in-context samples: one or two solved image edits
            shown as exemplars, then a new image to edit (3-5 images in, one image out).

Each part reports the model's parameter counts, memory after set-up, seconds per optimiser step
(median over `--steps` after `--warmup` steps), samples/s and tokens/s (attention-mask tokens), the
peak GPU memory over the timed steps, and the loss of the first and last step.

Run on a GPU host:   python benchmarks/bench_train_gpu.py  (table -> benchmarks/results/train_gpu.txt)
Smoke test on a CPU: python benchmarks/bench_train_gpu.py --dry-run  (= --device cpu --small, float32,
                     batch 2, 1 step after none; the table goes to a temporary folder unless --out is given)
Exit status: 0 when every part measured, 1 when a part failed or timed out (the table is written anyway).

Imports: the standard library, torch, numpy, accelerate, peft, transformers, diffusers, safetensors,
pillow, pydantic and pydantic-settings (through `codi2_agent.model` and `codi2_agent.media`) — no
LangChain, LangGraph, Chroma or tokenizer downloads (the tokenizer is built from an alphabet).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # a bare checkout (a GPU host without the package installed)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
import _gpu_parts as runner  # noqa: E402 (after the path set-up above; sets HF_HUB_OFFLINE)

RESULTS = ROOT / "benchmarks" / "results" / "train_gpu.txt"
PARTS = ("align", "instruct")
EDIT_WORDS = (
    "make the sky a deep orange sunset, keep every object where it is and add long soft shadows on the ground"
)


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def _picture(rng: Any, size: int) -> Any:
    from codi2_agent.media import Media

    return Media.from_image(rng.integers(0, 256, (size, size, 3), dtype="uint8"))


def _samples(part: str, n: int, size: int) -> list[Any]:
    """`n` training samples of the part's kind, random pictures at the model's image size."""
    import numpy as np

    from codi2_agent.data.samples import Message, Sample

    rng = np.random.default_rng(0)
    caption = "a red fox sitting on a snowy hill under a pale winter sky with pine trees behind it"
    out = []
    for i in range(n):
        if part == "align" and i % 2 == 0:
            ask = [Message("user", ["describe this picture in one sentence.", _picture(rng, size)])]
            out.append(Sample("caption_image", ask, caption, None, None))
        elif part == "align":
            out.append(
                Sample("text_to_image", [Message("user", [f"draw {caption}"])], "", _picture(rng, size), None)
            )
        else:
            shots = 1 + i % 2  # one or two solved exemplars before the query
            content: list[Any] = []
            for _ in range(shots):
                content += [
                    "here is an edit:",
                    _picture(rng, size),
                    "becomes",
                    _picture(rng, size),
                    EDIT_WORDS,
                ]
            content += ["do the same to this picture:", _picture(rng, size)]
            out.append(
                Sample("analogy_image", [Message("user", content)], "Here it is.", _picture(rng, size), None)
            )
    return out


def run_part(rec: runner.Recorder, args: argparse.Namespace) -> None:
    import torch

    from codi2_agent.model.paper_architecture import PUBLISHED, TINY, build_random_paper_model
    from codi2_agent.training.paper import LoraSettings, PaperTrainingConfig
    from codi2_agent.training.paper.data import BatchStream
    from codi2_agent.training.paper.trainer import (
        Objective,
        build_accelerator,
        optimizer_step,
        prepare_model,
        trainable_parameters,
    )

    device = torch.device(args.device)
    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    mixed = "bf16" if dtype is torch.bfloat16 else "no"
    arch = TINY if args.small else PUBLISHED
    seconds, model = runner.timed(
        device, lambda: build_random_paper_model(arch, device=device, dtype=dtype, seed=0)
    )
    rec.row(
        "build model",
        f"{seconds:.1f} s",
        f"random weights, {'TINY' if args.small else 'PUBLISHED'} sizes, {args.dtype}",
    )
    counts = {"LM": model.num_parameters("lm"), "encoders": model.num_parameters("encoders")}
    own = model.num_parameters("projectors") + model.num_parameters("output_heads")
    # the decoders hold the encoders' CLIP and CLAP too: count each shared tensor once
    counts["decoders"] = model.num_parameters() - counts["LM"] - counts["encoders"] - own
    counts["projectors + heads"] = own
    rec.row(
        "parameters", _count(sum(counts.values())), ", ".join(f"{k} {_count(v)}" for k, v in counts.items())
    )
    for modality in ("image", "audio"):  # the trainer keeps the decoders off the GPU when L_DM is off
        model.decoders[modality].place(torch.device("cpu"), dtype)
    config = PaperTrainingConfig(
        stages=(args.part,),
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        mixed_precision=mixed,
        gradient_checkpointing=not args.no_checkpointing,
        lora=LoraSettings(rank=args.lora_rank, alpha=2 * args.lora_rank, dropout=0.05),
    )
    model = prepare_model(model, config, device)
    params = trainable_parameters(model, args.part)
    rec.row(
        "trained parameters",
        _count(sum(p.numel() for p in params)),
        f"{args.part} stage, float32 (LoRA r={args.lora_rank}, token rows, projectors, heads)",
    )
    accelerator = build_accelerator(config, Path(tempfile.mkdtemp(prefix="codi2-bench-train-")))
    optimizer = torch.optim.AdamW(params, lr=config.lr(args.part))
    wrapped, optimizer = accelerator.prepare(Objective(model, diffusion=False), optimizer)
    wrapped.train()
    size = arch.sizes["image_size"]
    n = args.batch_size * args.grad_accum * (args.warmup + args.steps)
    stream = BatchStream(_samples(args.part, n, size), model.processor, args.batch_size, name=args.part)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    runner.reset_peak(device)
    rec.row(
        "memory after set-up",
        runner.memory(device, peak=False),
        "weights, LoRA and the optimiser before its first step",
    )
    losses, times, tokens = [], [], []
    for i in range(args.warmup + args.steps):
        seconds, logs = runner.timed(
            device, lambda: optimizer_step(accelerator, config, wrapped, optimizer, params, stream)
        )
        if i >= args.warmup:
            times.append(seconds)
            tokens.append(logs["tokens"])
        losses.append(logs["loss"])
    step = statistics.median(times)
    samples = args.batch_size * args.grad_accum
    spread = f"min {min(times):.3f}, max {max(times):.3f}" if len(times) > 1 else "one step"
    rec.row(
        "optimiser step",
        f"{step:.3f} s",
        f"median of {len(times)} after {args.warmup} warm-up ({spread}); "
        f"{args.batch_size} x {args.grad_accum} accumulated",
    )
    rec.row("samples/s", f"{samples / step:.2f}", f"{samples} samples per step")
    rec.row(
        "tokens/s",
        f"{statistics.mean(tokens) / step:.0f}",
        f"{statistics.mean(tokens):.0f} tokens per step (attention mask; media are 1 token each)",
    )
    rec.row("peak memory", runner.memory(device), "over the warm-up and timed steps")
    finite = all(v == v and abs(v) != float("inf") for v in losses)
    rec.row("loss first/last", f"{losses[0]:.3f} / {losses[-1]:.3f}", "finite" if finite else "NOT FINITE")
    if not finite:
        raise SystemExit("a training loss was not finite")


# --- parent side: the parts' arguments and the table's header ------------------------------------------
def _forwarded(args: argparse.Namespace) -> list[str]:
    out = [
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    ]
    out += [
        "--batch-size",
        str(args.batch_size),
        "--grad-accum",
        str(args.grad_accum),
        "--lora-rank",
        str(args.lora_rank),
    ]
    if args.small:
        out.append("--small")
    if args.no_checkpointing:
        out.append("--no-checkpointing")
    return out


def parent(args: argparse.Namespace) -> int:
    rows, all_ok = runner.run_parts(
        Path(__file__),
        args.parts,
        _forwarded(args),
        dict.fromkeys(args.parts, args.part_limit_s),
        args.budget_s,
        "subprocess, imports and model build included",
    )
    header = [
        f"# codi2-agent GPU training benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        f"# {runner.environment(args.device, ('torch', 'transformers', 'diffusers', 'accelerate', 'peft'))}",
        f"# device {args.device}, {args.dtype}; paper sizes: {'TINY (small)' if args.small else 'published'};"
        f" batch {args.batch_size} x {args.grad_accum} per optimiser step; LoRA r={args.lora_rank};"
        f" gradient checkpointing {'off' if args.no_checkpointing else 'on'}; 1 process",
    ]
    return runner.write_table(rows, header, args.out, all_ok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runner.add_arguments(p, PARTS, RESULTS, budget_s=540.0)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--small", action="store_true", help="TINY sizes (CPU smoke test)")
    p.add_argument("--dry-run", action="store_true", help="--device cpu --small, float32, batch 2, 1 step")
    p.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimiser step")
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    p.add_argument("--part-limit-s", type=float, default=270.0)
    args = p.parse_args(argv)
    if args.part:
        runner.run_child(args, run_part)
        return 0
    if args.dry_run:
        args.device, args.small, args.dtype = "cpu", True, "float32"
        args.batch_size, args.grad_accum, args.steps, args.warmup = 2, 1, 1, 0
        args.out = runner.dry_run_out(args.out, "codi2-bench-train-", "train_gpu.txt")
    args.out = args.out or RESULTS
    args.parts = runner.chosen_parts(p, args.parts, PARTS)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
