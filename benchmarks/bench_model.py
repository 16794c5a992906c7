"""Model benchmark: import time, tiny model load time, per-modality `generate` latency (CPU).

Run: `.venv/bin/python benchmarks/bench_model.py [--model tiny|PATH|random] [--repeats N] [--out FILE]`.
Prints a table and writes it to FILE (default benchmarks/results/model.txt).

`--model` is a shipped model or a model folder; a name that is neither is a one-line error (exit
2), and so (exit 1) are shipped weights that are absent or a folder that does not load: timing
something else under that name would publish wrong figures. `--model random` times seeded random
weights of the tiny architecture (the same cost), for a checkout without trained weights; the
table says so.
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
RANDOM = "random"
RANDOM_LABEL = "RANDOM tiny weights (seeded; timing only, not a trained model)"


def import_time(repeats: int) -> list[float]:
    code = "import time; t = time.perf_counter(); import codi2_agent; print(time.perf_counter() - t)"
    return [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    ]


def check_model_name(parser: argparse.ArgumentParser, model: str) -> None:
    """Exit 2 with one line unless `model` is 'random', a shipped model or a folder with a config.json."""
    from codi2_agent.model import SHIPPED_MODELS

    if model == RANDOM or model in SHIPPED_MODELS or (Path(model).expanduser() / "config.json").is_file():
        return
    parser.exit(
        2,
        f"error: --model {model!r} is neither a shipped model ({', '.join(SHIPPED_MODELS)}), "
        f"a model folder (no config.json in it) nor {RANDOM!r}\n",
    )


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Import, load and generate latency of a CoDi-2 model.")
    parser.add_argument(
        "--model", default="tiny", help=f"'tiny' (shipped), a model folder, or {RANDOM!r} (smoke tests)"
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS})")
    args = parser.parse_args(argv)
    check_model_name(parser, args.model)  # before anything is timed

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent.media import Media
    from codi2_agent.model import CoDi2Config, CoDi2Model, WeightsNotFoundError, load_model

    with tempfile.TemporaryDirectory(prefix="bench-model-") as scratch:
        path, source = args.model, args.model
        if args.model == RANDOM:  # saved and loaded like any folder: "load model" times the same work
            random_model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
            path, source = str(random_model.save_pretrained(Path(scratch) / "tiny")), RANDOM_LABEL
        try:
            load_model(path)  # also warms the file cache, as a second load would
        except (WeightsNotFoundError, ValueError, OSError) as e:
            hint = (
                f"; or time random weights with --model {RANDOM}"
                if isinstance(e, WeightsNotFoundError)
                else ""
            )
            parser.exit(1, f"error: {e}{hint}\n")

        rows: list[tuple[str, list[float]]] = [("import codi2_agent", import_time(args.repeats))]
        loads = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            model = load_model(path)
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
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
