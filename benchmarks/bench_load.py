"""Load benchmark: many users' sessions through a pool of graph workers on loopback.

``--sessions`` concurrent sessions (default 16) of ``--turns`` turns each (default 10), spread over
``--tenants`` tenants (default 2), are driven through a `SessionWorkerPool` of 1, then 2 worker
processes (``--workers``). The workers share Postgres checkpoints, thread log and advisory locks,
a ``chroma run`` server for the exemplar memory and one artifact folder; each runs the model
in-process (``--model``; ``--model-url`` points them at a served model instead). Each session sends
its next turn when the last one is answered, and any free worker takes it, so a thread's turns hop
between processes. Postgres (unless ``--postgres`` names one) and Chroma are started here, on free
loopback ports, and stopped at the end; every wait is bounded (``--deadline`` per run).

Reported per worker count: turns/s, p50/p95 turn latency as a user sees it (queueing included), and
the checks, which must hold:
- lost turns 0 (and duplicated 0): each thread's history, read back from Postgres afterwards, is
  exactly the turns sent, in order, numbered 1..n;
- memory items and artifacts match the turns: each tenant's Chroma collection holds one item per
  medium its turns produced, and its view of the artifact store holds exactly those media;
- cross-tenant reads 0: each tenant then asks for every other tenant's artifact ids (handed to a
  turn, as ``artifact://`` and ``file_id`` blocks, as ``@m:`` words, read from the store) and thread
  names (their history, the thread list); a refusal is counted, a read is a leak.

usage:
    nice -n 10 python benchmarks/bench_load.py                 # 16 x 10 over 2 tenants, 1 and 2 workers
    python benchmarks/bench_load.py --sessions 4 --turns 3 --workers 1,2 --out /tmp/load.txt   # smoke
    python benchmarks/bench_load.py --postgres postgresql://... --model-url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

RESULTS = Path(__file__).resolve().parent / "results" / "load.txt"
SHAPES = ("star", "square", "circle", "triangle")
COLOURS = ("red", "green", "yellow", "purple")
SCENES = ("snow", "desert", "forest", "rain")
FOLLOW_UPS = (
    "make it blue",
    "describe it",
    "make it large",
    "now put it in the snow",
    "make it green",
    "describe it",
    "make it small",
    "now put it in the desert",
    "make it red",
)


def script(index: int, turns: int) -> list[str]:
    """Session `index`'s requests: a picture, then edits and questions about it."""
    first = f"draw a small {COLOURS[index % 4]} {SHAPES[(index // 4) % 4]} in the {SCENES[(index // 16) % 4]}"
    return [first, *(FOLLOW_UPS[i % len(FOLLOW_UPS)] for i in range(turns - 1))]


@dataclass
class SessionRun:
    tenant: str
    thread: str
    requests: list[str]
    replies: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return len(self.replies) + len(self.errors) >= len(self.requests) or bool(self.errors)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def drive(pool: Any, sessions: list[SessionRun], deadline: float) -> float:
    """Run every session to its end, each sending its next turn once the last is answered.
    Returns the wall time; a turn not answered by `deadline` is recorded as an error (lost)."""
    started = time.perf_counter()
    in_flight: dict[Future[Any], tuple[SessionRun, float]] = {}

    def send(run: SessionRun) -> None:
        text = run.requests[len(run.replies)]
        in_flight[pool.say(run.tenant, run.thread, text)] = (run, time.perf_counter())

    for run in sessions:
        send(run)
    while in_flight:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for run, _ in in_flight.values():
                run.errors.append("not answered before the deadline")
            break
        finished, _ = wait(list(in_flight), timeout=min(remaining, 5.0), return_when=FIRST_COMPLETED)
        for future in finished:
            run, sent = in_flight.pop(future)
            try:
                run.replies.append(future.result())
                run.latencies.append(time.perf_counter() - sent)
            except Exception as exc:  # a failed turn is a lost turn: counted, never retried
                run.errors.append(f"{type(exc).__name__}: {exc}")
            if not run.done:
                send(run)
    return time.perf_counter() - started


def _result(future: Future[Any], timeout: float) -> tuple[bool, Any]:
    try:
        return True, future.result(timeout=timeout)
    except Exception as exc:
        return False, exc


def verify(pool: Any, sessions: list[SessionRun], timeout: float) -> dict[str, int]:
    """Lost / duplicated turns (from each thread's history), memory items and artifacts vs turns."""
    counts = {"lost": 0, "duplicated": 0, "memory_items": 0, "memory_expected": 0}
    counts |= {"artifacts": 0, "artifacts_expected": 0, "log_mismatches": 0}
    for run in sessions:
        ok, history = _result(pool.call("history", run.tenant, run.thread), timeout)
        history = history if ok else []
        got = [h["request"] for h in history]
        numbers = [h["turn"] for h in history]
        counts["duplicated"] += len(numbers) - len(set(numbers))
        in_order = got == run.requests and numbers == list(range(1, len(run.requests) + 1))
        counts["lost"] += (
            0
            if in_order
            else len(run.requests) - sum(a == b for a, b in zip(got, run.requests, strict=False))
        )
        # The thread's media log holds exactly the media its answers named, turn by turn.
        ok, log = _result(pool.call("media_log", run.tenant, run.thread), timeout)
        expected = sorted((r["turn"], i) for r in run.replies for i in r["ids"])
        counts["log_mismatches"] += int(not ok or sorted((m["turn"], m["id"]) for m in log) != expected)
    for tenant in sorted({r.tenant for r in sessions}):
        mine = [r for r in sessions if r.tenant == tenant]
        produced = [i for run in mine for reply in run.replies for i in reply["ids"]]
        _, items = _result(pool.call("memory_count", tenant, mine[0].thread), timeout)
        _, stored = _result(pool.call("artifact_ids", tenant, mine[0].thread), timeout)
        counts["memory_items"] += items if isinstance(items, int) else -1
        counts["memory_expected"] += len(produced)
        held = set(stored) if isinstance(stored, list) else set()
        counts["artifacts"] += len(held)
        counts["artifacts_expected"] += len(set(produced))
        counts["log_mismatches"] += int(held != set(produced))
    return counts


def attack(pool: Any, sessions: list[SessionRun], timeout: float, per_tenant: int = 3) -> dict[str, int]:
    """Every tenant asks for the other tenants' artifacts and threads; each read that works is a leak."""
    counts = {"attempts": 0, "refused": 0, "leaks": 0}
    tenants = sorted({r.tenant for r in sessions})
    for tenant in tenants:
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        others = [r for r in sessions if r.tenant != tenant]
        foreign_ids = [i for run in others for reply in run.replies for i in reply["ids"]][:per_tenant]
        foreign_threads = [run.thread for run in others]
        foreign_requests = {q for run in others for q in run.requests}
        for artifact_id in foreign_ids:
            attempts = [
                ("read", pool.call("read_artifact", tenant, probe, id=artifact_id)),
                ("say", pool.say(tenant, probe, "describe this", media_ids=[artifact_id])),
                ("block", pool.say(tenant, probe, "describe this", blocks=[
                    {"type": "image", "url": f"artifact://{artifact_id}"}])),
                ("block", pool.say(tenant, probe, "describe this", blocks=[
                    {"type": "image", "file_id": artifact_id}])),
                ("words", pool.say(tenant, probe, f"describe @m:{artifact_id[:12]}")),
            ]  # fmt: skip
            for kind, future in attempts:
                counts["attempts"] += 1
                ok, value = _result(future, timeout)
                leaked = ok and (kind == "read" or artifact_id in value["ids"] or not value["clarification"])
                counts["leaks" if leaked else "refused"] += 1
        _, log = _result(pool.call("media_log", tenant, probe), timeout)
        if isinstance(log, list) and any(m["id"] in foreign_ids for m in log):
            counts["leaks"] += 1  # a foreign medium entered the probe thread's log
        for thread in foreign_threads:
            counts["attempts"] += 1
            ok, history = _result(pool.call("history", tenant, thread), timeout)
            leaked = not ok or any(h["request"] in foreign_requests for h in history)
            counts["leaks" if leaked else "refused"] += 1
        counts["attempts"] += 1
        ok, listed = _result(pool.call("threads", tenant, probe), timeout)
        counts["leaks" if not ok or set(listed) & set(foreign_threads) else "refused"] += 1
    return counts


def run_load(
    args: argparse.Namespace, workers: int, postgres: str, chroma: Any, scratch: Path
) -> dict[str, Any]:
    from codi2_agent.workers import SessionWorkerPool, WorkerSpec

    run_id = f"w{workers}-{uuid.uuid4().hex[:6]}"
    spec = WorkerSpec(
        checkpointer=postgres,
        root=str(scratch / run_id),
        model=args.model,
        model_url=args.model_url,
        memory_host=chroma.host,
        memory_port=chroma.port,
        memory_namespace=f"load{run_id.replace('-', '')}",
        lock_timeout=args.deadline,
        graph_options={"num_inference_steps": args.steps},
    )
    sessions = [
        SessionRun(f"tenant{i % args.tenants}", f"s{i:02d}-{run_id}", script(i, args.turns))
        for i in range(args.sessions)
    ]
    call_timeout = max(30.0, args.deadline / 4)
    with SessionWorkerPool(spec, workers=workers, start_timeout=args.deadline) as pool:
        warm = [pool.say("warmup", f"warm{i}", "draw a small red star in the snow") for i in range(workers)]
        for future in warm:  # the first turn in a process pays for lazy imports
            future.result(timeout=call_timeout)
        wall = drive(pool, sessions, time.monotonic() + args.deadline)
        checks = verify(pool, sessions, call_timeout)
        attacks = attack(pool, sessions, call_timeout)
    latencies = [t for run in sessions for t in run.latencies]
    answered = sum(len(run.replies) for run in sessions)
    return {
        "workers": workers,
        "sessions": args.sessions,
        "tenants": args.tenants,
        "turns_expected": args.sessions * args.turns,
        "turns_answered": answered,
        "errors": [e for run in sessions for e in run.errors][:5],
        "wall_s": wall,
        "turns_per_s": answered / wall if wall else 0.0,
        "p50_s": _percentile(latencies, 0.50),
        "p95_s": _percentile(latencies, 0.95),
        "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
        **checks,
        "cross_tenant_attempts": attacks["attempts"],
        "cross_tenant_refused": attacks["refused"],
        "cross_tenant_leaks": attacks["leaks"],
    }


def passed(row: dict[str, Any]) -> bool:
    return (
        row["turns_answered"] == row["turns_expected"]
        and row["lost"] == 0
        and row["duplicated"] == 0
        and row["memory_items"] == row["memory_expected"]
        and row["artifacts"] == row["artifacts_expected"]
        and row["log_mismatches"] == 0
        and row["cross_tenant_leaks"] == 0
        and row["cross_tenant_attempts"] > 0
    )


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    lines = [
        f"{'workers':>7} {'turns':>9} {'wall s':>7} {'turns/s':>8} {'p50 s':>6} {'p95 s':>6} {'lost':>5} "
        f"{'dup':>4} {'memory items':>13} {'artifacts':>10} {'x-tenant':>13} {'checks':>7}"
    ]
    for r in rows:
        turns = f"{r['turns_answered']}/{r['turns_expected']}"
        memory = f"{r['memory_items']}/{r['memory_expected']}"
        artifacts = f"{r['artifacts']}/{r['artifacts_expected']}"
        leaks = f"{r['cross_tenant_leaks']} of {r['cross_tenant_attempts']}"
        lines.append(
            f"{r['workers']:>7} {turns:>9} {r['wall_s']:>7.1f} {r['turns_per_s']:>8.2f} "
            f"{r['p50_s']:>6.2f} {r['p95_s']:>6.2f} {r['lost']:>5} {r['duplicated']:>4} {memory:>13} "
            f"{artifacts:>10} {leaks:>13} {'ok' if passed(r) else 'FAILED':>7}"
        )
    if len(rows) >= 2 and rows[0]["turns_per_s"]:
        lines.append(
            f"speed-up {rows[-1]['workers']} vs {rows[0]['workers']} worker(s): "
            f"{rows[-1]['turns_per_s'] / rows[0]['turns_per_s']:.2f}x"
        )
    for r in rows:
        for error in r["errors"]:
            lines.append(f"error ({r['workers']} workers): {error}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--tenants", type=int, default=2)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, e.g. 1,2")
    parser.add_argument("--steps", type=int, default=2, help="diffusion steps per generated medium")
    parser.add_argument("--model", default="tiny", help="model name or folder, loaded in each worker")
    parser.add_argument(
        "--model-url", default=None, help="a served model (codi2-agent serve) for the workers"
    )
    parser.add_argument("--postgres", default=None, help="a postgresql:// URL (default: a throwaway cluster)")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds allowed per run")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.sessions < 1 or args.turns < 1 or not 1 <= args.tenants <= args.sessions:
        parser.error("need sessions >= 1, turns >= 1 and 1 <= tenants <= sessions")
    counts = [int(n) for n in args.workers.split(",")]

    from codi2_agent.local_services import start_chroma, start_postgres

    rows: list[dict[str, Any]] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="codi2-load-") as tmp:
        scratch = Path(tmp)
        cluster = None if args.postgres else start_postgres(timeout=60)
        chroma = start_chroma(scratch / "chroma", timeout=60)
        try:
            postgres = args.postgres or cluster.create_database("load")  # type: ignore[union-attr]
            for n in counts:
                rows.append(run_load(args, n, postgres, chroma, scratch))
                print(table(rows[-1:], args)[1], flush=True)
        finally:
            chroma.stop()
            if cluster is not None:
                cluster.stop()

    header = [
        f"bench_load: {args.sessions} sessions x {args.turns} turns over {args.tenants} tenants, "
        f"{args.steps} diffusion steps, model {args.model_url or args.model}",
        f"machine: {platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, load average "
        f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after (other work shares the CPUs); "
        f"Python {platform.python_version()}",
        "Postgres checkpoints + chroma run memory on loopback, 1 torch thread per worker; latency = "
        "send to answer, queueing included",
        "",
    ]
    footer = [
        "",
        "checks: lost and duplicated turns 0 (history read back from Postgres), memory items and "
        "artifacts = media the turns produced, cross-tenant leaks 0 of the attempts made",
    ]
    text = "\n".join([*header, *table(rows, args), *footer]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    print(text)
    return 0 if all(passed(r) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
