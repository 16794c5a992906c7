"""Serving benchmark: concurrent sessions in-process vs on `codi2-agent serve` (Ray Serve, loopback).

Run: `.venv/bin/python benchmarks/bench_serve.py [--model tiny|PATH] [--sessions 1,2,4,8]
[--steps N] [--threads 1] [--dtype float32|bfloat16] [--repeats 2] [--batch-wait S] [--out FILE]
[--note TEXT]`. Prints a table and writes it to FILE (default benchmarks/results/serve.txt).

Each session is a real `Session` thread doing a three-turn edit ("draw a large red star in the
desert", "make it blue", "now put it in the snow"; each session its own subject), and N sessions run
at once, one Python thread each, all opened on one session folder (`Session.open_thread`: one model,
store, memory and checkpoint database, as a server hosting many users has). Three ways to run them:

- ``in-process``: today's `LocalBackend` in this process, one turn at a time (its lock);
- ``in-process, 2 thr``: the same with two torch threads: what one process gets from the second core;
- ``served, unbatched``: `RemoteBackend` against `codi2-agent serve`, ``max_batch_size: 1``;
- ``served, batched``: the same with the shipped batching (``serve_config.yaml``'s ``user_config``:
  ``max_batch_size: 8``, ``batch_wait_timeout_s``, ``max_batch_wait_s``);
- ``batched, 2 replicas``: that deployment with ``num_replicas: 2`` (one model per core), each
  session's turns on one replica (the shipped ``SessionAffinityRouter``, keyed by the thread);
- ``2 replicas, Ray default``: the same two replicas behind Ray Serve's default router (the less
  queued of two, per request), the comparison for the routing;
- ``batched, 1 rep x 2 thr``: one batching replica with two torch threads (the other way to use two
  cores: one model whose batched calls are split over both).

One server process (one Ray instance) hosts the served modes as one application each, and the
modes take turns level by level, `--repeats` rounds: a shared machine's load drifts over minutes,
and interleaving spreads that drift over all modes alike.

Reported per mode and N, pooled over the rounds: turns/s, and p50 / p95 of one turn's latency
(what a user waits, queueing included), this process's CPU per turn, the served model's time per
turn (every replica's, summed) and how busy the replicas' models were (model time over wall time
times replicas). Cold start: loading the model and answering a first turn in-process, and
`codi2-agent serve` from launch to ``/ready`` (Ray, the replicas, the models) plus a first turn.
Last, with the server stopped, one in-process model call on N image requests at once, per turn:
the most batching can gain on this machine, whatever the server does.
The server gets the same torch threads as the in-process runs (``--threads``), except the modes
named "2 thr"; the client sessions share the CPUs. ``--dtype`` is the precision of every model,
in-process and served (``load_model``'s and the serve config's ``dtype``). "vs in-process" compares
with the in-process mode of the same torch threads per process as the row's model (1 thread:
``in-process``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_line

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
    client_cpu: float = 0.0  # CPU seconds of this process (sessions; the model too, in-process)
    server_busy: float = 0.0  # seconds the server's model spent on generate calls

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
class Mode(NamedTuple):
    app: str  # the application's name and route prefix
    batch: int  # max_batch_size
    replicas: int
    by_session: bool  # the shipped SessionAffinityRouter (else Ray Serve's default router)
    threads: int | None = None  # torch threads per replica (None: --threads)


MODES = {
    "served, unbatched": Mode("unbatched", 1, 1, True),
    "served, batched": Mode("batched", 8, 1, True),
    "batched, 2 replicas": Mode("batched2", 8, 2, True),
    "2 replicas, Ray default": Mode("batched2ray", 8, 2, False),
    "batched, 1 rep x 2 thr": Mode("batched2thr", 8, 1, True, threads=2),
}
# in-process modes -> torch threads (None: --threads)
IN_PROCESS = {"in-process": None, "in-process, 2 thr": 2}
REPLICAS = sum(mode.replicas for mode in MODES.values())


def start_server(
    folder: Path,
    model: str,
    *,
    threads: int,
    steps: int | None,
    dtype: str | None,
    batching: dict[str, Any],
) -> tuple[Any, dict[str, str], float]:
    """One `codi2-agent serve` (one Ray instance) with an application per served mode (`MODES`:
    unbatched, batched, on two replicas by two routers, on one replica with two threads), so the modes
    are measured side by side, under the same load. `batching`: the batched modes' ``user_config``
    (unbatched: size 1). Returns (process, urls, seconds to ready)."""
    import socket

    import yaml

    from codi2_agent.serving.launch import (
        ServeStartError,
        default_config,
        model_urls,
        wait_ready,
        with_overrides,
    )

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = with_overrides(
        default_config(model, port=port), threads=threads, num_inference_steps=steps, dtype=dtype
    )
    data = config.model_dump(mode="json", exclude_unset=True)
    (template,) = data["applications"]
    data["applications"] = []
    for mode in MODES.values():
        app = json.loads(json.dumps(template))
        app.update(name=mode.app, route_prefix=f"/{mode.app}")
        app["args"]["artifacts"] = str(folder / f"{mode.app}-artifacts")  # one folder per application
        if mode.threads is not None:
            app["args"]["threads"] = mode.threads
        (deployment,) = app["deployments"]
        deployment["user_config"] = {**batching, "max_batch_size": mode.batch}
        deployment["num_replicas"] = mode.replicas
        # all replicas fit Ray's 2 CPUs; one mode runs at a time, so its replicas have the cores
        deployment["ray_actor_options"] = {"num_cpus": 0.25}
        if not mode.by_session:
            del deployment["request_router_config"]  # Ray Serve's default router
        data["applications"].append(app)
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(data))
    urls = model_urls(type(config).model_validate(data))
    log = (folder / "server.log").open("wb")
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "codi2_agent.cli", "serve", "--config", str(path), "--num-cpus", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )

    def alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {folder / 'server.log'}")

    try:
        wait_ready(
            [url + "/ready" for url in urls.values()], time.monotonic() + 300, alive=alive, interval_s=0.2
        )
    except ServeStartError:
        process.kill()
        raise
    return process, urls, time.perf_counter() - t0


def stop_server(process: Any) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def busy_seconds(url: str, replicas: int) -> float:
    return float(batch_stats(url, replicas)["busy_seconds"])


def batch_stats(url: str, replicas: int) -> dict[str, Any]:
    """/v1/stats summed over an application's replicas. Each answer is one replica's (with its id);
    without a session header a request goes to either, so ask until every replica has answered."""
    import httpx

    seen: dict[str, dict[str, Any]] = {}
    for _ in range(50 * replicas):
        stats = dict(httpx.get(url + "/v1/stats", timeout=30).json())
        seen[stats["replica"]] = stats
        if len(seen) == replicas:
            break
    else:
        raise RuntimeError(f"{url}: only {len(seen)} of {replicas} replicas answered /v1/stats")
    total: dict[str, Any] = {"batch_sizes": {}}
    for stats in seen.values():
        for key in ("batches", "requests", "busy_seconds", "gather_seconds"):
            total[key] = total.get(key, 0) + stats[key]
        for size, count in stats["batch_sizes"].items():
            total["batch_sizes"][size] = total["batch_sizes"].get(size, 0) + count
    total["batch_sizes"] = dict(sorted(total["batch_sizes"].items(), key=lambda kv: int(kv[0])))
    return total


def model_call_costs(backend: Any, steps: int | None, sizes: list[int], repeats: int = 3) -> dict[int, float]:
    """Seconds of one in-process model call answering `size` image requests at once
    (`LocalBackend.generate_batch`, output captions on; size 1 is `generate`), median of `repeats`:
    what batching can gain at most, whatever the server does."""
    from codi2_agent.backends import GenerateRequest, PromptTurn

    requests = [
        GenerateRequest(
            prompt=(PromptTurn(role="user", parts=(script(i)[0],)),),
            output="image",
            seed=i,
            num_inference_steps=steps,
            caption_outputs=True,
        )
        for i in range(max(sizes))
    ]
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(repeats):  # sizes interleaved: load drift hits all alike
        for size in sizes:
            t0 = time.perf_counter()
            if size == 1:
                backend.generate(requests[0])
            else:
                backend.generate_batch(requests[:size])
            times[size].append(time.perf_counter() - t0)
    return {size: sorted(t)[len(t) // 2] for size, t in times.items()}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(
        description="Concurrent sessions: in-process vs served vs served+batched."
    )
    parser.add_argument("--model", default="tiny", help="'tiny' (shipped) or a model folder")
    parser.add_argument("--sessions", default="1,2,4,8", help="concurrent session counts")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    # One thread: on a shared 2-core machine two OpenMP threads per process oversubscribe the cores
    # (a tiny image turn measured 2.5 s with one thread and ~50 s with two under a load of 12).
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in-process and per replica")
    parser.add_argument("--dtype", default="float32", help="precision of every model, in-process and served")
    parser.add_argument(
        "--batch-wait",
        type=float,
        default=None,
        help="batch_wait_timeout_s of the batched server (default: the shipped serve config's)",
    )
    parser.add_argument("--repeats", type=int, default=2, help="rounds over every mode and level")
    parser.add_argument("--out", type=Path, default=None, help=f"table file (default {RESULTS})")
    parser.add_argument("--note", default="", help="a line added to the table's header")
    args = parser.parse_args(argv)
    levels = [int(n) for n in args.sessions.split(",")]
    from codi2_agent.serving.service import BatchSettings

    # the batching a user ships (serve_config.yaml's user_config), unless told otherwise
    args.batching = BatchSettings().model_dump()
    if args.batch_wait is not None:
        args.batching["batch_wait_timeout_s"] = args.batch_wait
    load_start = os.getloadavg()[0]

    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent import Session, load_model
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.backends import LocalBackend

    options: dict[str, Any] = {"progress": False}
    if args.steps is not None:
        options["num_inference_steps"] = args.steps
    cold: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        # 1. cold starts: the model in this process, and the server (Ray, two replicas, two models)
        t0 = time.perf_counter()
        model = load_model(args.model, dtype=args.dtype)
        backend = LocalBackend(model, ArtifactStore(root / "local" / "artifacts"))
        bases = {"in-process": Session(backend, thread="warm-up", root=root / "local", **options)}
        bases["in-process"].say(script(0)[0])
        cold["in-process: load + first turn"] = time.perf_counter() - t0
        bases["in-process, 2 thr"] = bases["in-process"].open_thread("warm-up-2")
        process, urls, ready_s = start_server(
            root,
            args.model,
            threads=args.threads,
            steps=args.steps,
            dtype=args.dtype,
            batching=args.batching,
        )
        cold[f"server: launch to /ready (Ray + {REPLICAS} replicas)"] = ready_s
        try:
            for mode, served in MODES.items():
                t0 = time.perf_counter()
                bases[mode] = Session(
                    urls[served.app], thread="warm-up", root=root / f"client-{served.app}", **options
                )
                bases[mode].say(script(0)[0])
                cold[f"{mode}: first remote turn"] = time.perf_counter() - t0
            # 2. every mode at every level, interleaved, `repeats` times: load drift hits all alike
            pooled: dict[tuple[str, int], Run] = {}
            for repeat in range(args.repeats):
                for n in levels:
                    for mode, base in bases.items():
                        target = MODES.get(mode)
                        busy = busy_seconds(urls[target.app], target.replicas) if target else 0.0
                        torch.set_num_threads(IN_PROCESS.get(mode) or args.threads)
                        cpu = time.process_time()
                        run = run_sessions(base, mode, n, f"r{repeat}")
                        torch.set_num_threads(args.threads)
                        total = pooled.setdefault((mode, n), Run(mode, n, 0.0))
                        total.client_cpu += time.process_time() - cpu
                        if target:
                            total.server_busy += busy_seconds(urls[target.app], target.replicas) - busy
                        total.seconds += run.seconds
                        total.latencies += run.latencies
                        print(f"{mode} n={n} (round {repeat + 1}): {run.turns_per_s:.2f} turns/s", flush=True)
            stats = {mode: batch_stats(urls[served.app], served.replicas) for mode, served in MODES.items()}
        finally:
            for session in reversed(bases.values()):  # threads opened on a session before it
                session.close()
            stop_server(process)
        # 3. the model call itself, by batch size (the server stopped: this process alone)
        costs = model_call_costs(backend, args.steps, sorted({1, *levels}))
    runs = [pooled[(mode, n)] for mode in bases for n in levels]
    return report(args, runs, cold, stats, costs, load_start, model)


def report(
    args: Any,
    runs: list[Run],
    cold: dict[str, float],
    stats: dict[str, Any],
    costs: dict[int, float],
    load_start: float,
    model: Any,
) -> str:
    import torch

    from codi2_agent.model.placement import parameter_placement

    steps = args.steps or model.config.image_decoder.num_inference_steps
    # in-process runs by (torch threads, sessions): each row is compared with the same threads per model
    sequential = {(IN_PROCESS[r.mode] or args.threads, r.sessions): r for r in runs if r.mode in IN_PROCESS}

    def threads_of(mode: str) -> int:
        return (MODES[mode].threads if mode in MODES else IN_PROCESS[mode]) or args.threads

    lines = [
        f"# codi2-agent serving on Ray Serve, loopback ({time.strftime('%Y-%m-%d')})",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} torch thread(s) per model process, in-process and per replica, except the modes "
        f"named '2 thr'; "
        f"model: {args.model}, in-process parameters in "
        f"{', '.join(parameter_placement(model)['dtypes'])}, served in "
        f"{args.dtype}; {steps} image DDIM steps; output captions on (the session default)",
        "# batched server: "
        + ", ".join(f"{k} {v}" for k, v in args.batching.items())
        + (" (the shipped serve config's)" if args.batch_wait is None else ""),
        "# each session: 3 turns (draw, edit, edit) through Session; N sessions at once, one thread each",
        f"# {cpu_line()}",
        f"# load average at start: {load_start:.2f}, at end: {os.getloadavg()[0]:.2f}",
    ]
    if args.note:
        lines.append(f"# {args.note}")
    lines += [
        "",
        f"{'mode':<24} {'sessions':>8} {'turns':>6} {'turns/s':>8} {'p50 s':>7} {'p95 s':>7} "
        f"{'vs in-process':>14} {'client CPU s/turn':>18} {'model s/turn':>13} {'model busy':>11}",
    ]
    for r in runs:
        base = sequential.get((threads_of(r.mode), r.sessions))
        speedup = f"{r.turns_per_s / base.turns_per_s:.2f}x" if base else "-"
        lines.append(
            f"{r.mode:<24} {r.sessions:>8} {len(r.latencies):>6} {r.turns_per_s:>8.2f} "
            f"{r.percentile(0.5):>7.3f} {r.percentile(0.95):>7.3f} {speedup:>14} "
            f"{r.client_cpu / len(r.latencies):>18.3f} "
            f"{(f'{r.server_busy / len(r.latencies):.3f}' if r.server_busy else '-'):>13} "
            f"{(f'{r.server_busy / (r.seconds * MODES[r.mode].replicas):.0%}' if r.server_busy else '-'):>11}"
        )
    lines += ["", "cold start"]
    lines += [f"  {name:<40} {seconds:>7.2f} s" for name, seconds in cold.items()]
    lines += ["", "server batching (GET /v1/stats of every replica: model calls by batch size)"]
    lines += [
        f"  {mode:<24} {s['batches']} calls for {s['requests']} requests, sizes {s['batch_sizes']}, "
        f"model busy {s['busy_seconds']:.1f} s, idle waiting for arrivals {s['gather_seconds']:.2f} s"
        for mode, s in stats.items()
    ]
    lines += ["", "one in-process model call on N image requests (generate_batch, captions on; median of 3)"]
    lines += [
        f"  N={size:<3} {seconds:6.2f} s per call  {seconds / size:6.3f} s per turn  "
        f"{costs[1] / (seconds / size):5.2f}x a lone call's turns/s"
        for size, seconds in costs.items()
    ]
    lines += [
        "",
        "targets (throughput against each in-process mode: one torch thread, and two: all of this CPU)",
    ]
    for mode in [m for m in MODES if MODES[m].batch > 1]:
        batched = {r.sessions: r for r in runs if r.mode == mode}
        for (_, n), base in sorted(sequential.items()):
            if n == 8 and 8 in batched:
                ratio = batched[8].turns_per_s / base.turns_per_s
                lines.append(
                    f"  {mode}: throughput at 8 sessions >= 2.5x {base.mode}: {ratio:.2f}x "
                    f"({'met' if ratio >= 2.5 else 'NOT met'})"
                )
        if 4 in batched and 1 in batched:
            lone, p95 = batched[1].percentile(0.5), batched[4].percentile(0.95)
            lines.append(
                f"  {mode}: p95 at 4 sessions <= 2x a lone request (p50 at 1 session): {p95:.3f} s vs "
                f"2 x {lone:.3f} s = {p95 / lone:.2f}x ({'met' if p95 <= 2 * lone else 'NOT met'})"
            )
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text(), end="")
    return out.read_text()


if __name__ == "__main__":
    main()
