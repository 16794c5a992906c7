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
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # a bare checkout (a GPU host without the package installed)
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download: GPU hosts have no network anyway
RESULTS = ROOT / "benchmarks" / "results" / "gpu.txt"
PARTS = ("tiny", "paper", "batched")


@dataclass
class Row:
    part: str
    name: str
    value: str
    note: str = ""


# --- child side: one part, rows appended to a JSON-lines file as they are measured ----------------------
class Recorder:
    def __init__(self, part: str, path: Path) -> None:
        self.part, self.path = part, path

    def row(self, name: str, value: str, note: str = "") -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"part": self.part, "name": name, "value": value, "note": note}) + "\n")

    def measure(self, name: str, fn: Callable[[], tuple[str, str]]) -> None:
        """Run one measurement, `fn() -> (value, note)`; an exception becomes an error row and the
        part goes on to its next measurement."""
        try:
            value, note = fn()
        except Exception as e:  # a benchmark reports every failure as a row
            first_line = str(e).splitlines()[0][:160] if str(e) else ""
            self.row(name, "ERROR", f"{type(e).__name__}: {first_line}")
            return
        self.row(name, value, note)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t, out


def _median_turn(
    device: Any, run: Callable[[int], Any], warmup: int, repeats: int, check: Callable[[Any], str]
) -> tuple[str, str]:
    for i in range(warmup):
        run(1000 + i)
    times, last = [], None
    for i in range(repeats):
        seconds, last = _timed(device, partial(run, i))
        times.append(seconds)
    spread = f"min {min(times):.3f}, max {max(times):.3f}" if len(times) > 1 else "one run"
    return f"{statistics.median(times):.3f} s", f"{check(last)}; median of {repeats} ({spread})"


def _memory(device: Any) -> str:
    import torch

    if device.type == "cuda":
        gib = torch.cuda.max_memory_allocated(device) / 2**30
        reserved = torch.cuda.max_memory_reserved(device) / 2**30
        return f"{gib:.2f} GiB (reserved {reserved:.2f})"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def _reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


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


def _turns(rec: Recorder, model: Any, device: Any, args: argparse.Namespace, steps: int | None) -> None:
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


def run_tiny(rec: Recorder, args: argparse.Namespace) -> None:
    import torch

    from codi2_agent.model import Placement, load_model

    device = Placement.resolve(device=args.device, dtype=args.dtype).device or torch.device("cpu")
    _reset_peak(device)
    seconds, model = _timed(device, lambda: load_model("tiny", device=device, dtype=args.dtype))
    rec.row("load_model('tiny'), first", f"{seconds:.3f} s", "first call: one-time start-up included")
    loads = [_timed(device, lambda: load_model("tiny", device=device, dtype=args.dtype))[0] for _ in range(3)]
    rec.row("load_model('tiny')", f"{statistics.median(loads):.3f} s", "median of 3 warm loads")
    rec.row("parameters", f"{model.num_parameters() / 1e6:.2f} M", f"dtype {model.lm.dtype}")
    _reset_peak(device)
    _turns(rec, model, device, args, args.tiny_steps)
    rec.row("peak memory (turns)", _memory(device))


def run_paper(rec: Recorder, args: argparse.Namespace) -> None:
    import torch

    from codi2_agent.model import Placement

    device = Placement.resolve(device=args.device, dtype=args.dtype).device or torch.device("cpu")
    _reset_peak(device)
    model = _paper_model(rec, args, device)
    rec.row("parameters", f"{model.num_parameters() / 1e9:.3f} B", f"dtype {model.lm.dtype}")
    rec.row("peak memory (build)", _memory(device))
    _reset_peak(device)
    _turns(rec, model, device, args, args.paper_steps)
    rec.row("peak memory (turns)", _memory(device))


def _paper_model(rec: Recorder, args: argparse.Namespace, device: Any) -> Any:
    from codi2_agent.model import load_model
    from codi2_agent.model.paper_architecture import PUBLISHED, TINY, build_random_paper_model

    if args.paper_folder and Path(args.paper_folder, "config.json").is_file():
        seconds, model = _timed(
            device, lambda: load_model(args.paper_folder, device=device, dtype=args.dtype)
        )
        rec.row("load paper model", f"{seconds:.3f} s", f"weights from {args.paper_folder}")
        return model
    arch, label = (TINY, "TINY test sizes") if args.small else (PUBLISHED, "published sizes")
    seconds, model = _timed(
        device, lambda: build_random_paper_model(arch, device=device, dtype=args.dtype, seed=0)
    )
    rec.row("build paper model", f"{seconds:.3f} s", f"random weights at {label}, made on {device}")
    return model


def _throughput(
    rec: Recorder, label: str, model: Any, device: Any, output: str, sizes: list[int], steps: int | None
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
            _reset_peak(device)
            batched, outs = _timed(
                device,
                lambda: model.generate_batch(convs, output, seeds=list(range(n)), num_inference_steps=steps),
            )
            if len(outs) != n:
                raise ValueError(f"generate_batch returned {len(outs)} results for {n} prompts")
            peak = _memory(device)
            sequential, _ = _timed(
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


def run_batched(rec: Recorder, args: argparse.Namespace) -> None:
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


def child(args: argparse.Namespace) -> None:
    import torch

    rec = Recorder(args.part, Path(args.rows))
    torch.manual_seed(0)
    if args.device.startswith("cuda") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    {"tiny": run_tiny, "paper": run_paper, "batched": run_batched}[args.part](rec, args)


# --- parent side: run the parts, bound them in time, print and write the table -------------------------
def _environment(device: str) -> str:
    versions = []
    for name in ("torch", "transformers", "diffusers", "accelerate"):
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
    rows.append(Row(part, "part wall time", f"{elapsed:.1f} s", "subprocess, imports included"))
    return rows, ok


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


def _table(rows: list[Row], header: list[str]) -> str:
    width_name = max(len(r.name) for r in rows) + 2
    width_value = max(len(r.value) for r in rows) + 2
    lines = [*header, "", f"{'part':<8} {'measurement':<{width_name}} {'value':<{width_value}} notes"]
    lines += [f"{r.part:<8} {r.name:<{width_name}} {r.value:<{width_value}} {r.note}".rstrip() for r in rows]
    return "\n".join(lines) + "\n"


def parent(args: argparse.Namespace) -> int:
    deadline = time.perf_counter() + args.budget_s
    limits = {"tiny": args.tiny_limit_s, "paper": args.paper_limit_s, "batched": args.batched_limit_s}
    rows: list[Row] = []
    all_ok = True
    for part in args.parts:
        remaining = deadline - time.perf_counter()
        if remaining < 5:
            rows.append(Row(part, "skipped", "ERROR", f"the {args.budget_s:.0f} s budget was spent"))
            all_ok = False
            continue
        part_rows, ok = _run_part(part, args, min(limits[part], remaining))
        rows += part_rows
        all_ok &= ok
        print("\n".join(f"{r.part:<8} {r.name}: {r.value} {r.note}" for r in part_rows), flush=True)
    steps = "model default" if args.tiny_steps is None else str(args.tiny_steps)
    header = [
        f"# codi2-agent GPU benchmark ({time.strftime('%Y-%m-%d %H:%M')})",
        f"# {_environment(args.device)}",
        f"# device {args.device}, dtype {args.dtype}; turns: median of {args.repeats} after {args.warmup} "
        f"warm-up; diffusion steps: tiny {steps}, paper {args.paper_steps}; paper sizes: "
        f"{'TINY (small)' if args.small else 'published'}",
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
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS})")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
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
    p.add_argument("--budget-s", type=float, default=480.0, help="whole-run limit (parts share it)")
    p.add_argument("--tiny-limit-s", type=float, default=100.0)
    p.add_argument("--paper-limit-s", type=float, default=240.0)
    p.add_argument("--batched-limit-s", type=float, default=200.0)
    p.add_argument(
        "--batch-sizes", default="4,16,64", help="batch sizes of the batched part (paper: first two)"
    )
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.part:
        child(args)
        return 0
    if args.dry_run:
        args.device, args.small, args.repeats, args.warmup = "cpu", True, 1, 0
        args.tiny_steps, args.paper_steps, args.batch_sizes = 2, 2, "2"
        args.out = args.out or Path(tempfile.mkdtemp(prefix="codi2-bench-gpu-")) / "gpu.txt"
    args.out = args.out or RESULTS
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
