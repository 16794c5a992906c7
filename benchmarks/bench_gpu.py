"""GPU benchmark: every GPU check in one run, one table.

Parts, each in its own subprocess under its own time limit (a part that fails or runs out of time
prints an error row; the others still run):
- tiny:    `load_model("tiny")` on `--device` in `--dtype`: load time, seconds per text / image /
           audio turn (median of `--repeats` after a warm-up), peak memory.
- paper:   the paper preset at its published sizes (LLaMA-2-7B, CLIP ViT-H/14, SD-2.1-unCLIP-H,
           CLAP, AudioLDM-2; `codi2_agent.model.paper_architecture.PUBLISHED`) with random weights,
           built on the device directly in `--dtype` (or loaded from `--paper-folder` when real weights
           are there): build/load time, seconds per text / image / audio turn at `--paper-steps`
           diffusion steps, peak memory.
- batched: `generate_batch` of N image (and N audio) turns vs N sequential `generate` calls, for tiny
           and the paper preset (batch sizes `--batch-sizes`): turns/s each way and the ratio.

Run on a GPU host:   python benchmarks/bench_gpu.py            (table -> benchmarks/results/gpu.txt)
Smoke test on a CPU: python benchmarks/bench_gpu.py --dry-run  (= --device cpu --small, 2 steps, 1 repeat;
                     the table goes to a temporary folder unless --out is given)
Exit status: 0 when every part measured, 1 when a part failed or timed out (the table is written anyway).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for folder in (ROOT, ROOT / "benchmarks"):  # a bare checkout (a GPU host without the package installed)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
import _gpu_parts as runner  # noqa: E402 (after the path set-up above; sets HF_HUB_OFFLINE)

RESULTS = ROOT / "benchmarks" / "results" / "gpu.txt"
PARTS = ("tiny", "paper", "batched")


def _median_turn(
    device: Any, run: Callable[[int], Any], warmup: int, repeats: int, check: Callable[[Any], str]
) -> tuple[str, str]:
    for i in range(warmup):
        run(1000 + i)
    times, last = [], None
    for i in range(repeats):
        seconds, last = runner.timed(device, partial(run, i))
        times.append(seconds)
    spread = f"min {min(times):.3f}, max {max(times):.3f}" if len(times) > 1 else "one run"
    return f"{statistics.median(times):.3f} s", f"{check(last)}; median of {repeats} ({spread})"


def _inputs(image_size: int, sample_rate: int, seconds: float) -> tuple[Any, Any]:
    import numpy as np

    from codi2_agent.media import Media

    rng = np.random.default_rng(0)
    image = Media.from_image(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    tone = Media.from_audio((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sample_rate)
    return image, tone


def _check_image(out: Any) -> str:
    import numpy as np

    pixels = np.asarray(out.image.image)
    return f"{pixels.shape[1]}x{pixels.shape[0]} image"


def _check_audio(out: Any) -> str:
    import numpy as np

    wave = np.asarray(out.audio.audio)
    if not np.isfinite(wave).all():
        raise ValueError("the generated audio has non-finite samples")
    return f"{wave.size / out.audio.sample_rate:.2f} s audio"


def _turns(
    rec: runner.Recorder, model: Any, device: Any, args: argparse.Namespace, steps: int | None
) -> None:
    """Text, image and audio turns on `model`: medians after warm-up, each failure its own row."""
    image, tone = _inputs(model.config.image_size, model.config.sample_rate, args.audio_s)
    lm_calls = [0]  # LM forward passes of the last turn: the prompt, one per reply token, the gen block
    model.lm.register_forward_hook(lambda *_: lm_calls.__setitem__(0, lm_calls[0] + 1))

    def counted(check: Callable[[Any], str]) -> Callable[[Any], str]:
        def with_passes(out: Any) -> str:
            return f"{check(out)}, {lm_calls[0]} LM passes"

        return with_passes

    def text_check(out: Any) -> str:
        return f"{len(out.text)} chars of text"

    step_note = "the model's default steps" if steps is None else f"{steps} diffusion steps"
    turns: list[tuple[str, list[Any], str, dict[str, Any], Callable[[Any], str]]] = [
        ("text turn (image in, <=32 tokens)", ["describe this picture", image], "text", {}, text_check),
        ("image turn (image edit)", ["make it blue", image], "image", {}, _check_image),
        ("audio turn (audio edit)", ["raise the pitch", tone], "audio", {}, _check_audio),
    ]
    for name, prompt, output, kwargs, check in turns:
        if output == "text":
            kwargs, suffix = {**kwargs, "max_new_tokens": 32}, ""
        else:
            kwargs, suffix = {**kwargs, "num_inference_steps": steps}, f"; {step_note}"

        def run(seed: int, prompt: list[Any] = prompt, output: str = output, kwargs: Any = kwargs) -> Any:
            lm_calls[0] = 0
            return model.generate(prompt, output=output, seed=seed, **kwargs)

        def measure(
            run: Callable[[int], Any] = run, check: Callable[[Any], str] = check, suffix: str = suffix
        ) -> tuple[str, str]:
            value, note = _median_turn(device, run, args.warmup, args.repeats, counted(check))
            return value, note + suffix

        rec.measure(name, measure)


def run_tiny(rec: runner.Recorder, args: argparse.Namespace) -> None:
    import torch

    from codi2_agent.model import Placement, load_model

    device = Placement.resolve(device=args.device, dtype=args.dtype).device or torch.device("cpu")
    runner.reset_peak(device)
    seconds, model = runner.timed(device, lambda: load_model("tiny", device=device, dtype=args.dtype))
    rec.row("load_model('tiny'), first", f"{seconds:.3f} s", "first call: one-time start-up included")
    loads = [
        runner.timed(device, lambda: load_model("tiny", device=device, dtype=args.dtype))[0] for _ in range(3)
    ]
    rec.row("load_model('tiny')", f"{statistics.median(loads):.3f} s", "median of 3 warm loads")
    rec.row("parameters", f"{model.num_parameters() / 1e6:.2f} M", f"dtype {model.lm.dtype}")
    runner.reset_peak(device)
    _turns(rec, model, device, args, args.tiny_steps)
    rec.row("peak memory (turns)", runner.memory(device))


def run_paper(rec: runner.Recorder, args: argparse.Namespace) -> None:
    import torch

    from codi2_agent.model import Placement

    device = Placement.resolve(device=args.device, dtype=args.dtype).device or torch.device("cpu")
    runner.reset_peak(device)
    model = _paper_model(rec, args, device)
    rec.row("parameters", f"{model.num_parameters() / 1e9:.3f} B", f"dtype {model.lm.dtype}")
    rec.row("peak memory (build)", runner.memory(device))
    runner.reset_peak(device)
    _turns(rec, model, device, args, args.paper_steps)
    rec.row("peak memory (turns)", runner.memory(device))


def _paper_model(rec: runner.Recorder, args: argparse.Namespace, device: Any) -> Any:
    from codi2_agent.model import load_model
    from codi2_agent.model.paper_architecture import PUBLISHED, TINY, build_random_paper_model

    if args.paper_folder and Path(args.paper_folder, "config.json").is_file():
        seconds, model = runner.timed(
            device, lambda: load_model(args.paper_folder, device=device, dtype=args.dtype)
        )
        rec.row("load paper model", f"{seconds:.3f} s", f"weights from {args.paper_folder}")
        return model
    arch, label = (TINY, "TINY test sizes") if args.small else (PUBLISHED, "published sizes")
    seconds, model = runner.timed(
        device, lambda: build_random_paper_model(arch, device=device, dtype=args.dtype, seed=0)
    )
    rec.row("build paper model", f"{seconds:.3f} s", f"random weights at {label}, made on {device}")
    return model


def _throughput(
    rec: runner.Recorder,
    label: str,
    model: Any,
    device: Any,
    output: str,
    sizes: list[int],
    steps: int | None,
) -> None:
    """N `output` turns as one `generate_batch` vs N `generate` calls: turns/s each way."""
    prompts = {
        "image": [f"draw a {c} star" for c in ("red", "green", "blue", "yellow", "purple", "white")],
        "audio": [f"play a {s} tone with {a}" for s in ("sine", "saw", "pluck") for a in ("wind", "rain")],
    }[output]
    model.generate_batch([[prompts[0]]], output, seeds=[0], num_inference_steps=steps)  # warm-up

    for n in sizes:
        convs = [[prompts[i % len(prompts)]] for i in range(n)]

        def both(convs: list[list[str]] = convs, n: int = n) -> tuple[str, str]:
            runner.reset_peak(device)
            batched, outs = runner.timed(
                device,
                lambda: model.generate_batch(convs, output, seeds=list(range(n)), num_inference_steps=steps),
            )
            if len(outs) != n:
                raise ValueError(f"generate_batch returned {len(outs)} results for {n} prompts")
            peak = runner.memory(device)
            sequential, _ = runner.timed(
                device,
                lambda: [
                    model.generate(c, output=output, seed=i, num_inference_steps=steps)
                    for i, c in enumerate(convs)
                ],
            )
            return (
                f"{n / batched:.2f} turns/s",
                f"sequential {n / sequential:.2f} turns/s, ratio {sequential / batched:.2f}x; peak {peak}",
            )

        rec.measure(f"{label} {output} x{n}", both)


def run_batched(rec: runner.Recorder, args: argparse.Namespace) -> None:
    import torch

    from codi2_agent.model import Placement, load_model

    device = Placement.resolve(device=args.device, dtype=args.dtype).device or torch.device("cpu")
    sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    tiny = load_model("tiny", device=device, dtype=args.dtype)
    for output in ("image", "audio"):
        _throughput(rec, "tiny", tiny, device, output, sizes, args.tiny_steps)
    del tiny
    paper = _paper_model(rec, args, device)
    for output in ("image", "audio"):
        _throughput(
            rec, "paper", paper, device, output, sizes[:2] if not args.small else sizes, args.paper_steps
        )


def parent(args: argparse.Namespace) -> int:
    limits = {"tiny": args.tiny_limit_s, "paper": args.paper_limit_s, "batched": args.batched_limit_s}
    rows, all_ok = runner.run_parts(
        Path(__file__), args.parts, _forwarded(args), limits, args.budget_s, "subprocess, imports included"
    )
    steps = "model default" if args.tiny_steps is None else str(args.tiny_steps)
    header = [
        f"# codi2-agent GPU benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        f"# {runner.environment(args.device, ('torch', 'transformers', 'diffusers', 'accelerate'))}",
        f"# device {args.device}, dtype {args.dtype}; turns: median of {args.repeats} after {args.warmup} "
        f"warm-up; diffusion steps: tiny {steps}, paper {args.paper_steps}; paper sizes: "
        f"{'TINY (small)' if args.small else 'published'}",
    ]
    return runner.write_table(rows, header, args.out, all_ok)


def _forwarded(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats)]
    out += [
        "--warmup",
        str(args.warmup),
        "--paper-steps",
        str(args.paper_steps),
        "--audio-s",
        str(args.audio_s),
    ]
    if args.tiny_steps is not None:
        out += ["--tiny-steps", str(args.tiny_steps)]
    out += ["--batch-sizes", args.batch_sizes]
    if args.small:
        out.append("--small")
    if args.paper_folder:
        out += ["--paper-folder", args.paper_folder]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runner.add_arguments(p, PARTS, RESULTS, budget_s=480.0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--small", action="store_true", help="the paper part at TINY sizes (CPU smoke test)")
    p.add_argument(
        "--dry-run", action="store_true", help="--device cpu --small, 2 steps, 1 repeat, no warm-up"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument(
        "--tiny-steps", type=int, default=None, help="diffusion steps, tiny (default: its own, 20)"
    )
    p.add_argument("--paper-steps", type=int, default=10, help="diffusion steps per paper image/audio turn")
    p.add_argument("--audio-s", type=float, default=2.0, help="length of the input audio clip")
    p.add_argument("--paper-folder", default=None, help="a real paper model folder, if this host has one")
    p.add_argument("--tiny-limit-s", type=float, default=100.0)
    p.add_argument("--paper-limit-s", type=float, default=240.0)
    p.add_argument("--batched-limit-s", type=float, default=200.0)
    p.add_argument(
        "--batch-sizes", default="4,16,64", help="batch sizes of the batched part (paper: first two)"
    )
    args = p.parse_args(argv)
    if args.part:
        runner.run_child(args, {"tiny": run_tiny, "paper": run_paper, "batched": run_batched}[args.part])
        return 0
    if args.dry_run:
        args.device, args.small, args.repeats, args.warmup = "cpu", True, 1, 0
        args.tiny_steps, args.paper_steps, args.batch_sizes = 2, 2, "2"
        args.out = runner.dry_run_out(args.out, "codi2-bench-gpu-", "gpu.txt")
    args.out = args.out or RESULTS
    args.parts = runner.chosen_parts(p, args.parts, PARTS)
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
