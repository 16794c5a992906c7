"""Serving benchmark: concurrent sessions in-process vs on `codi2-agent serve` (Ray Serve, loopback).

Run: `.venv/bin/python benchmarks/bench_serve.py [--model tiny|PATH] [--sessions 1,2,4,8]
[--steps N] [--threads 2] [--out FILE]`. Prints a table and writes it to FILE (default
benchmarks/results/serve.txt).

Each session is a real `Session` thread doing a three-turn edit ("draw a large red star in the
desert", "make it blue", "now put it in the snow"; each session its own subject), and N sessions run
at once, one Python thread each, all opened on one session folder (`Session.open_thread`: one model,
store, memory and checkpoint database, as a server hosting many users has). Three ways to run them:

- ``in-process``: today's `LocalBackend` in this process, one turn at a time (its lock);
- ``served, unbatched``: `RemoteBackend` against `codi2-agent serve` with ``max_batch_size: 1``;
- ``served, batched``: the same server with ``max_batch_size: 8`` (``@serve.batch``).

Reported per mode and N: turns/s over the whole run, and p50 / p95 of one turn's latency (what a
user waits, queueing included). Cold start: loading the model and answering a first turn in-process,
and `codi2-agent serve` from launch to ``/ready`` (Ray, the replica, the model) plus a first turn.
The server gets the same torch threads as the in-process runs; the client sessions share the CPUs.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
RESULTS = Path(__file__).resolve().parent / "results" / "serve.txt"

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["star", "circle", "square", "triangle"]
SCENES = ["in the desert", "at night", "in the forest", "on a sunny day"]
EDITS = ["blue", "green", "red", "yellow", "purple", "orange"]
PLACES = ["snow", "rain", "desert", "forest"]


def script(i: int) -> list[str]:
    """Session i's three turns: a picture of its own subject, then two edits of it."""
    return [
        f"draw a large {COLOURS[i % 6]} {SHAPES[i % 4]} {SCENES[(i // 4) % 4]}",
        f"make it {EDITS[(i + 2) % 6]}",
        f"now put it in the {PLACES[(i + 1) % 4]}",
    ]


@dataclass
class Run:
    mode: str
    sessions: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def turns_per_s(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_sessions(base: Any, mode: str, n: int, label: str) -> Run:
    """n sessions at once, each its three turns; every turn's latency and the wall time."""
    sessions = [base.open_thread(f"{label}-n{n}-s{i}") for i in range(n)]
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(n + 1)

    def work(i: int) -> None:
        start.wait()
        try:
            for text in script(i):
                t = time.perf_counter()
                result = sessions[i].say(text)
                elapsed = time.perf_counter() - t
                if not result.refs:
                    raise RuntimeError(f"session {i}: {text!r} gave no medium ({result.text!r})")
                with lock:
                    latencies.append(elapsed)
        except BaseException as e:  # reported after the run
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return Run(mode, n, seconds, latencies)


# --- the server -----------------------------------------------------------------------------------
def start_server(
    folder: Path, model: str, *, batch: int, threads: int, steps: int | None
) -> tuple[Any, str, float]:
    """`codi2-agent serve` with a config written here; returns (process, url, seconds to /ready)."""
    import socket

    import yaml

    from codi2_agent.serving.launch import default_config, with_overrides

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = with_overrides(
        default_config(model, port=port),
        artifacts=str(folder / "server-artifacts"),
        threads=threads,
        num_inference_steps=steps,
    ).model_dump(mode="json", exclude_unset=True)
    (deployment,) = config["applications"][0]["deployments"]
    deployment["user_config"] = {"max_batch_size": batch, "batch_wait_timeout_s": 0.05}
    deployment["ray_actor_options"] = {"num_cpus": 1}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    log = (folder / "server.log").open("wb")
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "codi2_agent.cli", "serve", "--config", str(path), "--num-cpus", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {folder / 'server.log'}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as response:
                if response.status == 200:
                    return process, url, time.perf_counter() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server was not ready within 300 s")


def stop_server(process: Any) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def batch_stats(url: str) -> dict[str, Any]:
    import httpx

    return dict(httpx.get(url + "/v1/stats").json())


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description="Concurrent sessions: in-process vs served vs served+batched."
    )
    parser.add_argument("--model", default="tiny", help="'tiny' (shipped) or a model folder")
    parser.add_argument("--sessions", default="1,2,4,8", help="concurrent session counts")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, in-process and per replica")
    parser.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS})")
    parser.add_argument("--note", default="", help="a line added to the table's header")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.sessions.split(",")]
    load_start = os.getloadavg()[0]

    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent import Session, load_model
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.backends import LocalBackend

    options: dict[str, Any] = {"progress": False}
    if args.steps is not None:
        options["num_inference_steps"] = args.steps
    runs: list[Run] = []
    cold: dict[str, float] = {}
    stats: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        # 1. in-process: cold start, then N sessions on one LocalBackend
        t0 = time.perf_counter()
        model = load_model(args.model)
        backend = LocalBackend(model, ArtifactStore(root / "local" / "artifacts"))
        base = Session(backend, thread="warm-up", root=root / "local", **options)
        base.say(script(0)[0])
        cold["in-process: load + first turn"] = time.perf_counter() - t0
        for n in levels:
            runs.append(run_sessions(base, "in-process", n, "local"))
            print(f"in-process n={n}: {runs[-1].turns_per_s:.2f} turns/s", flush=True)
        base.close()

        # 2. served, unbatched and batched
        for mode, batch in (("served, unbatched", 1), ("served, batched", 8)):
            folder = root / f"server-b{batch}"
            folder.mkdir()
            process, url, ready_s = start_server(
                folder, args.model, batch=batch, threads=args.threads, steps=args.steps
            )
            try:
                t0 = time.perf_counter()
                remote = Session(url, thread="warm-up", root=root / f"client-b{batch}", **options)
                remote.say(script(0)[0])
                cold[f"{mode}: serve to /ready"] = ready_s
                cold[f"{mode}: first remote turn"] = time.perf_counter() - t0
                for n in levels:
                    runs.append(run_sessions(remote, mode, n, f"b{batch}"))
                    print(f"{mode} n={n}: {runs[-1].turns_per_s:.2f} turns/s", flush=True)
                stats[mode] = batch_stats(url)
                remote.close()
            finally:
                stop_server(process)
    return report(args, runs, cold, stats, load_start, model)


def report(
    args: Any, runs: list[Run], cold: dict[str, float], stats: dict[str, Any], load_start: float, model: Any
) -> str:
    import torch

    steps = args.steps or model.config.image_decoder.num_inference_steps
    sequential = {r.sessions: r for r in runs if r.mode == "in-process"}
    lines = [
        f"# codi2-agent serving on Ray Serve, loopback ({time.strftime('%Y-%m-%d')})",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} torch thread(s) in-process and per replica; model: {args.model}; "
        f"{steps} image DDIM steps; output captions on (the session default)",
        "# each session: 3 turns (draw, edit, edit) through Session; N sessions at once, one thread each",
        f"# load average at start: {load_start:.2f}, at end: {os.getloadavg()[0]:.2f}",
    ]
    if args.note:
        lines.append(f"# {args.note}")
    lines += [
        "",
        f"{'mode':<18} {'sessions':>8} {'turns':>6} {'turns/s':>8} {'p50 s':>7} {'p95 s':>7} "
        f"{'vs in-process':>14}",
    ]
    for r in runs:
        base = sequential.get(r.sessions)
        speedup = f"{r.turns_per_s / base.turns_per_s:.2f}x" if base else "-"
        lines.append(
            f"{r.mode:<18} {r.sessions:>8} {len(r.latencies):>6} {r.turns_per_s:>8.2f} "
            f"{r.percentile(0.5):>7.3f} {r.percentile(0.95):>7.3f} {speedup:>14}"
        )
    lines += ["", "cold start"]
    lines += [f"  {name:<40} {seconds:>7.2f} s" for name, seconds in cold.items()]
    lines += ["", "server batching (GET /v1/stats: model calls by batch size)"]
    lines += [
        f"  {mode:<18} {s['batches']} calls for {s['requests']} requests, sizes {s['batch_sizes']}"
        for mode, s in stats.items()
    ]
    batched = {r.sessions: r for r in runs if r.mode == "served, batched"}
    lines += ["", "targets"]
    if 8 in batched and 8 in sequential:
        ratio = batched[8].turns_per_s / sequential[8].turns_per_s
        lines.append(
            f"  batched throughput at 8 sessions >= 2.5x in-process: {ratio:.2f}x "
            f"({'met' if ratio >= 2.5 else 'NOT met'})"
        )
    if 4 in batched and 1 in batched:
        lone, p95 = batched[1].percentile(0.5), batched[4].percentile(0.95)
        lines.append(
            f"  p95 at 4 sessions <= 2x a lone request: {p95:.3f} s vs 2 x {lone:.3f} s = "
            f"{p95 / lone:.2f}x ({'met' if p95 <= 2 * lone else 'NOT met'})"
        )
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text(), end="")
    return out.read_text()


if __name__ == "__main__":
    main()
