""" "What changed?" on the held-out split: accuracy, self-contradicting answers and time per answer.

Run: `.venv/bin/python benchmarks/bench_what_changed.py [--model tiny|PATH] [--n 200] [--label TEXT]
[--out FILE]`. Appends one line to FILE (default benchmarks/results/what_changed.txt), so a run of an
older checkout (`PYTHONPATH=<checkout> python benchmarks/bench_what_changed.py --label before`) and
one of this one sit side by side.

Samples are drawn exactly as `codi2_agent.evaluation.evaluate` draws its what_changed row (same
seed, same stream), so its first 40 are the evaluation's 40, and are judged the same way (the parsed
attribute, old and new value must all match).
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parent / "results" / "what_changed.txt"
TASK = "what_changed"


def run(args: argparse.Namespace) -> str:
    import numpy as np
    import torch

    import codi2_agent
    from codi2_agent.data.phrasing import parse_change
    from codi2_agent.data.tasks import TASKS, sample_task
    from codi2_agent.model import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    rng = np.random.default_rng([args.seed, sorted(TASKS).index(TASK)])
    kinds: collections.Counter[str] = collections.Counter()
    seconds = 0.0
    for i in range(args.n):
        sample = sample_task(TASK, rng, "test")
        t0 = time.perf_counter()
        text = model.generate(sample.messages, output="text", seed=args.seed + i).text
        seconds += time.perf_counter() - t0
        got, want = parse_change(text), parse_change(sample.target_text)
        kinds["right" if got == want else "wrong"] += 1
        if got is not None and got[1] == got[2]:
            kinds["self-contradicting"] += 1
        if got is None:
            kinds["unparsed"] += 1
    code = Path(codi2_agent.__file__).resolve().parent.parent
    return (
        f"{args.label:<28} n={args.n:<4} accuracy={kinds['right'] / args.n:.3f} "
        f"self-contradicting={kinds['self-contradicting']:<3} unparsed={kinds['unparsed']:<3} "
        f"{seconds / args.n:.3f} s/answer  (model={args.model}, seed {args.seed}, code {code}, "
        f"{args.threads} thread(s), {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--label", default="this checkout")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    line = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
