"""Batched generation benchmark: `generate_batch` of N turns vs N sequential `generate` calls (CPU).

Run: `.venv/bin/python benchmarks/bench_batch.py [--model tiny|PATH] [--batch 8] [--threads 1]
[--dtype float32|bfloat16] [--repeats 3] [--out FILE]`. Prints a table and writes it to FILE (default
benchmarks/results/batch.txt).

Each workload is N different prompts (varied lengths) with the config's diffusion steps; the
sequential side calls `generate` once per prompt, the batched side `generate_batch` once. Both
produce the same answers (tests/model/test_batch_generate.py), so turns/s compare like for like.
Then the image denoiser alone, per row at growing batch sizes: the part of a turn batching cannot
share, and so the most it can gain on this machine. `--dtype` loads every part in that precision
(`load_model(dtype=)`): on a CPU with bf16 matrix units (AMX) a bf16 batch fills them far better than
one turn does, so batching gains more there than in float32.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_line

RESULTS = Path(__file__).resolve().parent / "results" / "batch.txt"

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["star", "circle", "square", "triangle", "cross"]
SCENES = ["in the snow", "at night", "in the desert", "in the forest", "in the rain"]
SOUNDS = ["sine", "saw", "pluck"]
AMBIENCES = ["wind", "birds", "crickets", "waves", "rain", "fire"]


def workloads(n: int) -> dict[str, tuple[list[list[Any]], list[str]]]:
    """Name -> (prompts, outputs): n image turns, n audio turns, n captions (text), and a mix."""
    import numpy as np

    from codi2_agent.media import Media

    images = [
        [f"draw a {'large ' if i % 2 else ''}{COLOURS[i % 8]} {SHAPES[i % 5]} {SCENES[i % 5]}"]
        for i in range(n)
    ]
    sounds = [
        [f"play a {'high' if i % 2 else 'low'} {SOUNDS[i % 3]} tone with {AMBIENCES[i % 6]}"]
        for i in range(n)
    ]
    rng = np.random.default_rng(0)
    texts = [
        [Media.from_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), "describe this picture."]
        for _ in range(n)
    ]
    mixed = [(images, sounds, texts)[i % 3][i] for i in range(n)]
    mixed_outputs = [("image", "audio", "text")[i % 3] for i in range(n)]
    return {
        f"{n} image turns": (images, ["image"] * n),
        f"{n} audio turns": (sounds, ["audio"] * n),
        f"{n} text turns": (texts, ["text"] * n),
        f"{n} mixed turns": (mixed, mixed_outputs),
    }


def run_sequential(model: Any, prompts: list[list[Any]], outputs: list[str]) -> None:
    for seed, (prompt, output) in enumerate(zip(prompts, outputs, strict=True)):
        model.generate(prompt, output, seed=seed)


def run_batched(model: Any, prompts: list[list[Any]], outputs: list[str]) -> None:
    model.generate_batch(prompts, outputs, seeds=list(range(len(prompts))))


def timed(fn: Any, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def unet_row_costs(model: Any, modality: str, rows: list[int], repeats: int) -> dict[int, float]:
    """Seconds per row of one denoiser call at each batch size in `rows` (median of `repeats`, sizes
    interleaved so load drift hits all alike). A lone guided turn runs 2 rows per step (with and
    without the condition), a batch of N turns 2N: the rows' cost is what batching cannot share."""
    import torch

    decoder = model.decoders[modality]
    null = decoder.null_cond.reshape(1, -1)
    x = decoder._initial_noise(max(rows), None)
    times: dict[int, list[float]] = {n: [] for n in rows}
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first round warms up and is dropped
            for n in rows:
                t = time.perf_counter()
                decoder._unet(x[:n], torch.full((n,), 500), null.expand(n, -1))
                times[n].append((time.perf_counter() - t) / n)
    return {n: statistics.median(ts[1:]) for n, ts in times.items()}


def ceiling_lines(model: Any, batch: int, lone_image_turn_s: float, repeats: int) -> list[str]:
    """How far batching image turns can go on this machine: even if everything but the denoiser cost
    nothing in a batch, a turn still pays its rows (2 per step) at the batch's per-row cost."""
    steps = model.config.image_decoder.num_inference_steps
    rows = sorted({2, 4, 8, 2 * batch})
    costs = unet_row_costs(model, "image", rows, repeats * 3)
    floor = costs[2 * batch] * 2 * steps
    lines = [
        "",
        f"image denoiser cost per row, by rows per call (median of {repeats * 3}; "
        f"a lone guided turn is 2 rows, a batch of {batch} turns {2 * batch})",
    ]
    lines += [
        f"  {n:>3} rows   {costs[n] * 1e3:7.2f} ms per row   {costs[2] / costs[n]:.2f}x the 2-row cost"
        for n in rows
    ]
    lines += [
        f"  a lone image turn: {lone_image_turn_s:.3f} s, of which its {2 * steps} denoiser rows "
        f"{costs[2] * 2 * steps:.3f} s ({costs[2] * 2 * steps / lone_image_turn_s:.0%})",
        f"  ceiling: a turn in a batch of {batch} costs at least {floor:.3f} s (its rows at "
        f"{2 * batch}-row cost, nothing else), so batching gives at most {lone_image_turn_s / floor:.2f}x "
        "a lone turn's throughput on this machine and thread count",
    ]
    return lines


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="generate_batch vs sequential generate throughput.")
    parser.add_argument("--model", default="tiny", help="'tiny' (shipped) or a model folder")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32", help="precision of every part (load_model's dtype)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS})")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent.model import load_model
    from codi2_agent.model.placement import parameter_placement

    model = load_model(args.model, dtype=args.dtype)
    lines = [
        f"# codi2-agent batched generation ({time.strftime('%Y-%m-%d')})",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s); model: {args.model}, "
        f"parameters in {', '.join(parameter_placement(model)['dtypes'])}; "
        f"{model.config.image_decoder.num_inference_steps} "
        f"image / {model.config.audio_decoder.num_inference_steps} audio DDIM steps; "
        f"median of {args.repeats} after a warm-up",
        f"# {cpu_line()}",
        f"# load average at start: {os.getloadavg()[0]:.2f} (a shared machine makes the figures noisy)",
        "",
        f"{'workload':<18} {'sequential s':>13} {'batched s':>10} {'seq turns/s':>12} "
        f"{'batch turns/s':>14} {'speed-up':>9}",
    ]
    lone_image_turn_s = 0.0
    for name, (prompts, outputs) in workloads(args.batch).items():
        seq = timed(partial(run_sequential, model, prompts, outputs), args.repeats)
        bat = timed(partial(run_batched, model, prompts, outputs), args.repeats)
        n = len(prompts)
        lines.append(
            f"{name:<18} {seq:>13.3f} {bat:>10.3f} {n / seq:>12.2f} {n / bat:>14.2f} {seq / bat:>8.2f}x"
        )
        if outputs == ["image"] * n:
            lone_image_turn_s = seq / n
    lines += ceiling_lines(model, args.batch, lone_image_turn_s, args.repeats)
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text(), end="")
    return out.read_text()


if __name__ == "__main__":
    main()
