"""Model benchmark: import time, tiny model load time, per-modality `generate` latency (CPU).

Run: `.venv/bin/python benchmarks/bench_model.py [--model tiny|PATH] [--repeats N]`.
Prints a table and writes it to benchmarks/results/model.txt. Uses the shipped tiny weights when
present; otherwise seeded random weights of the same architecture (same cost), and says so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "model.txt"


def import_time(repeats: int) -> list[float]:
    code = "import time; t = time.perf_counter(); import codi2_agent; print(time.perf_counter() - t)"
    return [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent.media import Media
    from codi2_agent.model import CoDi2Config, CoDi2Model, WeightsNotFoundError, load_model

    rows: list[tuple[str, list[float]]] = [("import codi2_agent", import_time(args.repeats))]
    try:
        load_model(args.model)
        source = args.model
        path = args.model
    except WeightsNotFoundError:
        source = "random tiny weights (shipped weights absent)"
        path = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).save_pretrained(
            Path(tempfile.mkdtemp()) / "tiny"
        )
    loads = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model = load_model(str(path)) if source != args.model else load_model(args.model)
        loads.append(time.perf_counter() - t)
    rows.append(("load model", loads))

    img = Media.from_image(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    wav = Media.from_audio(
        (0.3 * np.sin(np.arange(16000) / 16000 * 2 * np.pi * 440)).astype(np.float32), 16000
    )
    cases = [
        (
            "generate text (caption, <=16 tokens)",
            ["describe this picture", img],
            "text",
            {"max_new_tokens": 16},
        ),
        ("generate image (edit, 20 DDIM steps)", ["make it blue", img], "image", {}),
        ("generate audio (edit, 20 DDIM steps + Griffin-Lim)", ["raise the pitch", wav], "audio", {}),
        ("generate image from image+audio", ["this picture", img, "in the ambience of", wav], "image", {}),
    ]
    for name, prompt, output, kwargs in cases:
        model.generate(prompt, output=output, seed=0, **kwargs)  # warm-up
        times = []
        for i in range(args.repeats):
            t = time.perf_counter()
            model.generate(prompt, output=output, seed=i, **kwargs)
            times.append(time.perf_counter() - t)
        rows.append((name, times))

    lines = [
        f"# codi2-agent model benchmark ({time.strftime('%Y-%m-%d')})",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} threads; model: {source}; {args.repeats} repeats",
        f"# parameters: {model.num_parameters() / 1e6:.2f} M",
        "",
        f"{'what':<52} {'median s':>9} {'p90 s':>9} {'min s':>9}",
    ]
    for name, xs in rows:
        xs_sorted = sorted(xs)
        p90 = xs_sorted[min(len(xs) - 1, int(0.9 * len(xs)))]
        lines.append(f"{name:<52} {statistics.median(xs):>9.3f} {p90:>9.3f} {min(xs):>9.3f}")
    table = "\n".join(lines)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table + "\n")


if __name__ == "__main__":
    main()
