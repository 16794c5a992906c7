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
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # a bare checkout (a GPU host without the package installed)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
from bench_gpu import Recorder, Row, _sync, _table  # noqa: E402 (the rows, parts and table of bench_gpu)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download: GPU hosts have no network anyway
RESULTS = ROOT / "benchmarks" / "results" / "train_gpu.txt"
PARTS = ("align", "instruct")
EDIT_WORDS = (
    "make the sky a deep orange sunset, keep every object where it is and add long soft shadows on the ground"
)


def _memory(device: Any, peak: bool) -> str:
    import torch

    if device.type == "cuda":
        if peak:
            gib = torch.cuda.max_memory_allocated(device) / 2**30
            reserved = torch.cuda.max_memory_reserved(device) / 2**30
            return f"{gib:.2f} GiB (reserved {reserved:.2f})"
        return f"{torch.cuda.memory_allocated(device) / 2**30:.2f} GiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS (process peak)"


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


def run_part(rec: Recorder, args: argparse.Namespace) -> None:
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
    t = time.perf_counter()
    model = build_random_paper_model(arch, device=device, dtype=dtype, seed=0)
    _sync(device)
    rec.row(
        "build model",
        f"{time.perf_counter() - t:.1f} s",
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
        torch.cuda.reset_peak_memory_stats(device)
    rec.row(
        "memory after set-up",
        _memory(device, peak=False),
        "weights, LoRA and the optimiser before its first step",
    )
    losses, times, tokens = [], [], []
    for i in range(args.warmup + args.steps):
        _sync(device)
        t = time.perf_counter()
        logs = optimizer_step(accelerator, config, wrapped, optimizer, params, stream)
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
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
    rec.row("peak memory", _memory(device, peak=True), "over the warm-up and timed steps")
    finite = all(v == v and abs(v) != float("inf") for v in losses)
    rec.row("loss first/last", f"{losses[0]:.3f} / {losses[-1]:.3f}", "finite" if finite else "NOT FINITE")
    if not finite:
        raise SystemExit("a training loss was not finite")


def child(args: argparse.Namespace) -> None:
    import torch

    rec = Recorder(args.part, Path(args.rows))
    torch.manual_seed(0)
    if args.device.startswith("cuda") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        run_part(rec, args)
    except Exception as e:  # a benchmark reports every failure as a row (and a non-zero exit)
        first_line = str(e).splitlines()[0][:160] if str(e) else ""
        rec.row("part", "ERROR", f"{type(e).__name__}: {first_line}")
        raise


# --- parent side: run the parts, bound them in time, print and write the table -------------------------
def _environment(device: str) -> str:
    versions = []
    for name in ("torch", "transformers", "diffusers", "accelerate", "peft"):
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    gpu = "no GPU query"
    if device.startswith("cuda"):
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
            gpu = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or "none"
        except (OSError, subprocess.TimeoutExpired):
            gpu = "nvidia-smi unavailable"
    return f"GPU: {gpu}; {', '.join(versions)}"


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


def _run_part(part: str, args: argparse.Namespace, limit: float) -> tuple[list[Row], bool]:
    """Run one part in a subprocess for at most `limit` seconds; its rows, and whether it completed."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.touch()
        argv = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--rows", str(rows_file)]
        argv += _forwarded(args)
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole part: its threads and any workers
            output, _ = proc.communicate()
            timed_out = True
        elapsed = time.perf_counter() - started
        rows = [Row(**json.loads(line)) for line in rows_file.read_text().splitlines() if line.strip()]
    ok = not timed_out and proc.returncode == 0 and all(r.value != "ERROR" for r in rows)
    if timed_out:
        rows.append(
            Row(part, "time limit", "ERROR", f"stopped after {limit:.0f} s; rows above were measured")
        )
    elif proc.returncode != 0:
        tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        rows.append(Row(part, "part failed", "ERROR", f"exit {proc.returncode}: {tail[0][:200]}"))
    rows.append(
        Row(part, "part wall time", f"{elapsed:.1f} s", "subprocess, imports and model build included")
    )
    return rows, ok


def parent(args: argparse.Namespace) -> int:
    deadline = time.perf_counter() + args.budget_s
    rows: list[Row] = []
    all_ok = True
    for part in args.parts:
        remaining = deadline - time.perf_counter()
        if remaining < 5:
            rows.append(Row(part, "skipped", "ERROR", f"the {args.budget_s:.0f} s budget was spent"))
            all_ok = False
            continue
        part_rows, ok = _run_part(part, args, min(args.part_limit_s, remaining))
        rows += part_rows
        all_ok &= ok
        print("\n".join(f"{r.part:<9} {r.name}: {r.value} {r.note}" for r in part_rows), flush=True)
    header = [
        f"# codi2-agent GPU training benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        f"# {_environment(args.device)}",
        f"# device {args.device}, {args.dtype}; paper sizes: {'TINY (small)' if args.small else 'published'};"
        f" batch {args.batch_size} x {args.grad_accum} per optimiser step; LoRA r={args.lora_rank};"
        f" gradient checkpointing {'off' if args.no_checkpointing else 'on'}; 1 process",
    ]
    table = _table(rows, header)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    print(f"table written to {args.out}")
    return 0 if all_ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    p.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS})")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--small", action="store_true", help="TINY sizes (CPU smoke test)")
    p.add_argument("--dry-run", action="store_true", help="--device cpu --small, float32, batch 2, 1 step")
    p.add_argument("--batch-size", type=int, default=4, help="samples per micro-batch")
    p.add_argument("--grad-accum", type=int, default=2, help="micro-batches per optimiser step")
    p.add_argument("--steps", type=int, default=5, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed optimiser steps first")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    p.add_argument("--budget-s", type=float, default=540.0, help="whole-run limit (parts share it)")
    p.add_argument("--part-limit-s", type=float, default=270.0)
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        child(args)
        return 0
    if args.dry_run:
        args.device, args.small, args.dtype = "cpu", True, "float32"
        args.batch_size, args.grad_accum, args.steps, args.warmup = 2, 1, 1, 0
        if args.out is None:
            args.out = Path(tempfile.mkdtemp(prefix="codi2-bench-train-")) / "train_gpu.txt"
    args.out = args.out or RESULTS
    args.parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = [s for s in args.parts if s not in PARTS]
    if unknown or not args.parts:
        p.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
