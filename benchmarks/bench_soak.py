"""Soak benchmark: one long session, and bounded cross-tenant attacks, on the shipped tiny model.

1. A ``--turns``-turn session (default 1,000) through `Session` — generate / edit / describe turns in
   rotation, ``--steps`` diffusion steps — reporting at turns 10, 100 and the last: checkpoint bytes
   written per turn (cumulative and over the last window), the SQLite file size, the process RSS,
   and turn latency (median of the window before the mark).
2. Cross-tenant attempts (``--attacks``): another tenant's thread names, artifact ids (as media, as
   ``artifact://`` / ``file_id`` blocks, as ``@m:`` words), store reads; reports attempts, refusals
   and leaks (an answer that used the other tenant's medium, or a read that returned it). Leaks must
   be 0.

usage:
    nice -n 10 python benchmarks/bench_soak.py                       # full size (~5 min on 2 cores)
    python benchmarks/bench_soak.py --turns 60 --attacks 20 --out /tmp/soak.txt    # smoke test
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from bench_session import _db_bytes  # checkpoint + write-log bytes, measured the same way

RESULTS = Path(__file__).resolve().parent / "results" / "soak.txt"
SCRIPT = (
    "draw a small red star in the snow",
    "make it blue",
    "describe it",
    "make it large",
    "make it green",
)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def soak(model: Any, args: argparse.Namespace, root: Path) -> list[str]:
    from codi2_agent import Session

    marks = sorted({m for m in (10, 100, args.turns) if m <= args.turns})
    s = Session(model, thread="soak", root=root, num_inference_steps=args.steps, progress=False, seed=0)
    db = root / "checkpoints.sqlite"
    lines = [
        f"{'turn':>6} {'bytes/turn (all)':>17} {'bytes/turn (window)':>20} {'db file':>10} "
        f"{'RSS':>9} {'turn p50':>10} {'turn p95':>10}"
    ]
    seconds: list[float] = []
    last_mark, last_bytes = 0, 0
    try:
        for n in range(1, args.turns + 1):
            t0 = time.perf_counter()
            s.say(SCRIPT[(n - 1) % len(SCRIPT)])
            seconds.append(time.perf_counter() - t0)
            if n in marks:
                written = _db_bytes(db)
                window = seconds[last_mark:]
                p95 = sorted(window)[max(0, int(0.95 * len(window)) - 1)]
                size = db.stat().st_size + sum(
                    p.stat().st_size for p in root.glob("checkpoints.sqlite-*") if p.is_file()
                )
                per_turn = written / n / 1024
                recent = (written - last_bytes) / (n - last_mark) / 1024
                p50 = statistics.median(window)
                lines.append(
                    f"{n:>6} {per_turn:>14.1f} KB {recent:>17.1f} KB {size / 2**20:>7.1f} MB "
                    f"{_rss_mb():>6.0f} MB {p50 * 1000:>7.0f} ms {p95 * 1000:>7.0f} ms"
                )
                last_mark, last_bytes = n, written
    finally:
        s.close()
    return lines


def attacks(model: Any, args: argparse.Namespace, root: Path) -> list[str]:
    from langchain_core.messages import HumanMessage

    from codi2_agent import Session
    from codi2_agent.artifacts import ArtifactNotFoundError

    alice = Session(model, thread="private", tenant="alice", root=root, num_inference_steps=1, progress=False)
    bob = alice.open_thread("private", tenant="bob")
    counts = {"attempts": 0, "refused": 0, "leaks": 0}
    try:
        secrets = [alice.say(f"draw a small red star in the snow ({i})").refs[0] for i in range(3)]
        alice_turns = alice.turn
        for i in range(args.attacks):
            secret = secrets[i % len(secrets)]
            kind = i % 5
            counts["attempts"] += 1
            try:
                if kind == 0:  # the other tenant's media handed to say()
                    bob.say("describe this", secret)
                    counts["leaks"] += 1
                elif kind in (1, 2):  # as an artifact:// url or a file id in a content block
                    block = (
                        {"type": "image", "url": secret.uri}
                        if kind == 1
                        else {"type": "image", "file_id": secret.id}
                    )
                    answer = bob.run(HumanMessage(content=[{"type": "text", "text": "describe this"}, block]))
                    leaked = any(r.id == secret.id for r in bob.media_log())
                    counts["leaks" if leaked or not answer.clarification else "refused"] += 1
                elif kind == 3:  # as words
                    answer = bob.say(f"describe @m:{secret.short_id}")
                    counts["leaks" if not answer.clarification else "refused"] += 1
                else:  # straight at bob's view of the store
                    bob.artifacts.get(secret)
                    counts["leaks"] += 1
            except ArtifactNotFoundError:
                counts["refused"] += 1
        # bob's thread of the same name never showed alice's turns, and hers did not grow.
        if alice.turn != alice_turns or any(t.request.startswith("draw a small red") for t in bob.history()):
            counts["leaks"] += 1
    finally:
        alice.close()
    return [
        f"cross-tenant attempts {counts['attempts']}: refused {counts['refused']}, leaks {counts['leaks']} "
        "(target 0)"
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Soak benchmark of one long CoDi-2 session.")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps per medium")
    parser.add_argument("--attacks", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    from codi2_agent.model import load_model

    torch.set_num_threads(1)
    model = load_model(args.model)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        lines = soak(model, args, Path(tmp) / "soak")
        lines += ["", *attacks(model, args, Path(tmp) / "attacks")]
    header = [
        f"bench_soak.py — {time.strftime('%Y-%m-%d')}, {platform.machine()}, "
        f"python {platform.python_version()}, torch threads 1",
        f"model {args.model!r}; one session of {args.turns} turns (generate / edit / describe / edit / "
        f"edit), {args.steps} diffusion steps; durability 'exit'; wall {time.time() - started:.0f} s",
        "targets: checkpoint growth <= 16 KB per turn at 1,000 turns; latency flat; cross-tenant leaks 0",
        "",
    ]
    text = "\n".join([*header, *lines]) + "\n"
    print(text, end="")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    return text


if __name__ == "__main__":
    main()
