"""Self-check benchmark: held-out accuracy per task with `generate(..., verify=1)` vs `verify=N`, and
what it costs (seconds per turn).

Run: `.venv/bin/python benchmarks/bench_verify.py [--model tiny|PATH] [--per-task 80] [--verify 4]
[--threads 1] [--deadline HH:MM] [--tasks a,b] [--steps N] [--out FILE]`. Writes the table to FILE (default
benchmarks/results/verify.txt) after every round, so a run cut short still leaves its figures.

Samples are the held-out ("test") split drawn exactly as `codi2_agent.evaluation.evaluate` draws
them (same seed, same per-task streams), so the verify=1 column is the evaluation's figure for the
same samples. Each sample is generated twice with the same seed: verify=1 (the plain answer, scored)
and verify=N (N candidates from the one c_MLLM, the best-agreeing kept); the probes judge both, so
the columns are paired. Tasks are interleaved round-robin, so a `--deadline` stops every task at about
the same sample count. Only tasks whose answer is a medium are run (text answers do not change).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "verify.txt"


@dataclass
class TaskTally:
    """One task's paired results so far."""

    n: int = 0
    right: dict[int, int] = field(default_factory=dict)  # verify -> samples with every attribute right
    seconds: dict[int, list[float]] = field(default_factory=dict)  # verify -> per-turn wall times
    gained: int = 0  # right with verify=N only
    lost: int = 0  # right with verify=1 only
    switched: int = 0  # verify=N kept another candidate than candidate 0
    agreement_plain: list[float] = field(default_factory=list)
    agreement_kept: list[float] = field(default_factory=list)

    def add(self, verify: int, ok: bool, seconds: float) -> None:
        self.right[verify] = self.right.get(verify, 0) + ok
        self.seconds.setdefault(verify, []).append(seconds)


def media_tasks() -> list[str]:
    from codi2_agent.data.tasks import TASKS

    return [name for name in sorted(TASKS) if not name.startswith(("caption", "what_changed"))]


def run(args: argparse.Namespace) -> dict[str, TaskTally]:
    import numpy as np
    import torch

    from codi2_agent.data.probes import load_probes
    from codi2_agent.data.tasks import TASKS, sample_task
    from codi2_agent.model import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    probes = load_probes()
    names = media_tasks()
    if args.tasks:
        chosen = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = sorted(set(chosen) - set(names))
        if unknown:
            raise SystemExit(f"unknown or text-only task(s) {unknown}; choose from {', '.join(names)}")
        names = chosen
    every = sorted(TASKS)  # evaluation.evaluate seeds each task's stream by its index in this list
    rngs = {name: np.random.default_rng([args.seed, every.index(name)]) for name in names}
    tallies = {name: TaskTally() for name in names}
    deadline = _deadline(args.deadline)
    started = time.time()
    for i in range(args.per_task):
        if deadline is not None and time.time() > deadline:
            break
        for name in names:
            sample = sample_task(name, rngs[name], "test")
            target, expected = sample.target, sample.target_attrs
            if target is None or expected is None:
                raise ValueError(f"{name} has no media answer to score")
            outs: dict[int, tuple[Any, bool]] = {}
            for verify in (1, args.verify):
                t0 = time.perf_counter()
                out = model.generate(
                    sample.messages,
                    output=target.modality,
                    seed=args.seed + i,
                    verify=verify,
                    num_inference_steps=args.steps,
                )
                seconds = time.perf_counter() - t0
                ok = all(probes.score(out.media[0], expected).values())
                tallies[name].add(verify, ok, seconds)
                outs[verify] = (out, ok)
            tally = tallies[name]
            tally.n += 1
            (plain, plain_ok), (checked, checked_ok) = outs[1], outs[args.verify]
            tally.gained += checked_ok and not plain_ok
            tally.lost += plain_ok and not checked_ok
            tally.switched += checked.candidate_agreements.index(checked.agreement) != 0
            tally.agreement_plain.append(float(plain.agreement))
            tally.agreement_kept.append(float(checked.agreement))
        write(args, tallies, time.time() - started)
    return tallies


def _deadline(text: str | None) -> float | None:
    """`HH:MM` UTC today (or tomorrow, if already past) as a timestamp."""
    if not text:
        return None
    now = dt.datetime.now(dt.UTC)
    hour, minute = (int(x) for x in text.split(":"))
    at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if at < now:
        at += dt.timedelta(days=1)
    return at.timestamp()


def table(args: argparse.Namespace, tallies: dict[str, TaskTally], wall: float) -> str:
    n_v = args.verify
    lines = [
        f"# bench_verify: model={args.model}, held-out split, seed {args.seed}, verify=1 vs verify={n_v}, "
        f"{args.threads} torch thread(s), {platform.machine()}, {wall:.0f} s wall "
        f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        f"{'task':<22} {'n':>4} {'acc v=1':>8} {f'acc v={n_v}':>8} {'delta':>7} {'+/-':>7} "
        f"{'s/turn v=1':>10} {f's/turn v={n_v}':>10} {'cost':>6} {'switched':>8} "
        f"{'agr v=1':>8} {f'agr v={n_v}':>8}",
    ]
    totals = TaskTally()
    for name, t in tallies.items():
        if not t.n:
            continue
        lines.append(_row(name, t, n_v))
        totals.n += t.n
        totals.gained += t.gained
        totals.lost += t.lost
        totals.switched += t.switched
        totals.agreement_plain += t.agreement_plain
        totals.agreement_kept += t.agreement_kept
        for v in (1, n_v):
            totals.right[v] = totals.right.get(v, 0) + t.right.get(v, 0)
            totals.seconds.setdefault(v, []).extend(t.seconds.get(v, []))
    if totals.n:
        lines.append(_row("all media tasks", totals, n_v))
    return "\n".join(lines) + "\n"


def _row(name: str, t: TaskTally, n_v: int) -> str:
    a1, an = t.right.get(1, 0) / t.n, t.right.get(n_v, 0) / t.n
    s1, sn = statistics.mean(t.seconds[1]), statistics.mean(t.seconds[n_v])
    return (
        f"{name:<22} {t.n:>4} {a1:>8.3f} {an:>8.3f} {an - a1:>+7.3f} {f'+{t.gained}/-{t.lost}':>7} "
        f"{s1:>10.2f} {sn:>10.2f} {sn / s1:>5.2f}x {t.switched / t.n:>8.2f} "
        f"{statistics.mean(t.agreement_plain):>8.3f} {statistics.mean(t.agreement_kept):>8.3f}"
    )


def write(args: argparse.Namespace, tallies: dict[str, TaskTally], wall: float) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table(args, tallies, wall))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--per-task", type=int, default=80)
    parser.add_argument("--verify", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--deadline", default=None, help="HH:MM UTC: start no new round after it")
    parser.add_argument("--tasks", default=None, help="comma-separated media tasks (default: all)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    tallies: Any = run(args)
    print(Path(args.out).read_text() if any(t.n for t in tallies.values()) else "no samples run")


if __name__ == "__main__":
    main()
