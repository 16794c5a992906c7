"""Consistency benchmark of the session graph: long scripted sessions, memory exemplars vs a last-k window.

Each scripted session (default 24 turns, image world) mixes:

- ``generate``  "draw a small red star in the snow" (up to three subjects, each a different shape);
- ``edit``      the current subject, in the world's own phrasing ("make it blue", "shrink the star");
- ``return``    "go back to the star from turn 3 and make it green" (a version >= 6 turns old);
- ``analogy``   "do the edit you made to the star to the circle" (an edit possibly made long ago).

Every produced image is scored with the world's attribute probes against the attributes it should
have. The same scripts run through two graphs side by side:

- (a) ``memory``: references resolved from state and memory, exemplar pairs retrieved from memory;
- (b) ``window``: the plain chat baseline, the last ``--window-k`` exchanges verbatim.

Also measured on (a): framework overhead per turn (graph + memory + checkpoints) against a bare
``model.generate`` on the same prompt and seed, and checkpoint bytes written per turn. With the
memory on a Chroma server (``--memory server``) a turn's memory write lands behind the turn; the
overhead counts the wait for it (``memory.flush()`` right after the turn), as if the next turn
followed at once, and the turn's own latency is shown beside it.

usage:
    nice -n 10 python benchmarks/bench_session.py                      # shipped tiny + probes, full size
    python benchmarks/bench_session.py --policies memory --memory server --out /tmp/session-server.txt
    python benchmarks/bench_session.py --model random --probes quick --sessions 1 --turns 8 --steps 2 \
        --out /tmp/session.txt                                         # smoke test (random weights)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "session.txt"
EDITABLE = ("colour", "size", "scene")  # shapes name the subjects ("the star"), so they stay fixed
KINDS = ("generate", "edit", "return", "analogy")


# --- scripts ---------------------------------------------------------------------------------------
@dataclass
class Step:
    text: str
    kind: str
    expect: dict[str, str]


@dataclass
class _Subject:
    shape: str
    versions: list[tuple[int, dict[str, str]]] = field(default_factory=list)  # (turn, attrs), oldest first
    last_edit: tuple[str, str] | None = None

    @property
    def attrs(self) -> dict[str, str]:
        return self.versions[-1][1]


ASKS = ("draw {}", "can you draw {}?", "show me {}", "I'd like {}")
LEADS = ("", "now ", "ok, ", "and now ")


def make_script(
    rng: np.random.Generator, n_turns: int, return_gap: int = 6, natural: bool = False
) -> list[Step]:
    """A scripted session whose every turn makes one image with known attributes.

    `natural`: phrase the turns as people do — "can you draw …?", "blue instead", "go back to the very
    first star and …", "take the star from 7 turns ago and …", "do the same to the circle" — instead of
    the templates ("draw …", "go back to the star from turn 3 and …", "do the edit you made to …").
    """
    from codi2_agent.data.phrasing import edit_instruction
    from codi2_agent.data.world import IMAGE_ATTRIBUTES, caption_image, edit, random_attrs

    shapes = [str(s) for s in rng.permutation(IMAGE_ATTRIBUTES["shape"])[:3]]
    subjects: list[_Subject] = []
    steps: list[Step] = []
    current: _Subject | None = None

    def random_edit(attrs: dict[str, str]) -> tuple[str, str]:
        attribute = str(rng.choice(EDITABLE))
        value = str(rng.choice([v for v in IMAGE_ATTRIBUTES[attribute] if v != attrs[attribute]]))
        return attribute, value

    for turn in range(1, n_turns + 1):
        old = [
            (s, t, a)
            for s in subjects
            for t, a in s.versions
            if turn - t >= return_gap and (t, a) != s.versions[-1]
        ]
        edited = [s for s in subjects if s.last_edit is not None]
        want_new = len(subjects) < len(shapes) and (not subjects or turn in (2, n_turns // 3, n_turns // 2))
        roll = rng.random()
        if want_new:
            kind = "generate"
        elif old and roll < 0.25:
            kind = "return"
        elif edited and len(subjects) > 1 and roll < 0.55:
            kind = "analogy"
        else:
            kind = "edit"
        if kind == "generate":
            attrs = random_attrs("image", rng, "all")
            attrs["shape"] = shapes[len(subjects)]
            current = _Subject(attrs["shape"])
            subjects.append(current)
            ask = str(rng.choice(ASKS)) if natural else "draw {}"
            text, expect = ask.format(caption_image(attrs)), attrs
        elif kind == "edit":
            assert current is not None
            attribute, value = random_edit(current.attrs)
            text = edit_instruction(current.attrs, attribute, value, rng)
            if natural and attribute == "colour" and rng.random() < 0.4:
                text = str(rng.choice(("{} instead", "now {}", "{} please"))).format(value)  # only the change
            elif natural:
                text = str(rng.choice(LEADS)) + text
            expect = edit(current.attrs, attribute, value)
            current.last_edit = (attribute, value)
        elif kind == "return":
            subject, t0, attrs0 = old[int(rng.integers(len(old)))]
            attribute, value = random_edit(attrs0)
            instruction = edit_instruction(attrs0, attribute, value, rng)
            text = f"go back to the {subject.shape} from turn {t0} and {instruction}"
            if natural and t0 == subject.versions[0][0]:
                text = str(rng.choice(("go back to the very first {} and {}", "take the original {} and {}")))
                text = text.format(subject.shape, instruction)
            elif natural:
                text = f"take the {subject.shape} from {turn - t0} turns ago and {instruction}"
            expect = edit(attrs0, attribute, value)
            current = subject
            current.last_edit = (attribute, value)
        else:
            source = edited[int(rng.integers(len(edited)))]
            targets = [
                s
                for s in subjects
                if s is not source and s.attrs[source.last_edit[0]] != source.last_edit[1]  # type: ignore[index]
            ]
            if not targets:  # nothing the edit would change: edit the current subject instead
                assert current is not None
                attribute, value = random_edit(current.attrs)
                steps.append(Step(edit_instruction(current.attrs, attribute, value, rng), "edit",
                                  edit(current.attrs, attribute, value)))  # fmt: skip
                current.versions.append((turn, steps[-1].expect))
                current.last_edit = (attribute, value)
                continue
            target = targets[int(rng.integers(len(targets)))]
            attribute, value = source.last_edit  # type: ignore[misc]
            text = f"do the edit you made to the {source.shape} to the {target.shape}"
            if natural and current is source and steps and steps[-1].kind != "generate":
                text = f"do the same to the {target.shape}"  # the edit just made
            elif natural:
                text = f"do to the {target.shape} what you did to the {source.shape}"
            expect = edit(target.attrs, attribute, value)
            current = target
            current.last_edit = (attribute, value)
        assert current is not None
        current.versions.append((turn, expect))
        steps.append(Step(text, kind, expect))
    return steps


# --- running -------------------------------------------------------------------------------------
def _timed_backend(model: Any, store: Any) -> Any:
    from codi2_agent.backends import LocalBackend

    class Timed(LocalBackend):
        """Records the model time of each call, and the last media request (for the bare rerun)."""

        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            self.seconds = {"media": 0.0, "other": 0.0, "caption": 0.0}
            self.last: Any = None

        def _caption(self, media: Any, **kwargs: Any) -> Any:  # output captions are read inside generate()
            t0 = time.perf_counter()
            try:
                return super()._caption(media, **kwargs)
            finally:
                self.seconds["caption"] += time.perf_counter() - t0

        def generate(self, request: Any, *, progress: Any = None) -> Any:
            result = super().generate(request, progress=progress)
            kind = "media" if request.output != "text" else "other"
            self.seconds[kind] += result.seconds
            if kind == "media":
                self.last = request
            return result

    return Timed(model, store)


def _db_bytes(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        a = conn.execute("select coalesce(sum(length(checkpoint) + length(metadata)), 0) from checkpoints")
        b = conn.execute("select coalesce(sum(length(value)), 0) from writes")
        return int(a.fetchone()[0]) + int(b.fetchone()[0])


@dataclass
class Turn:
    kind: str
    right: dict[str, bool] | None  # None: no image came back (a question, or text)
    seconds: float = 0.0
    bare_seconds: float = 0.0
    caption_seconds: float = 0.0
    behind_seconds: float = 0.0  # waiting for the memory write the turn left behind it
    checkpoint_bytes: int = 0


def run_session(model: Any, probes: Any, script: list[Step], policy: str, args: argparse.Namespace,
                measure: bool) -> list[Turn]:  # fmt: skip
    """One scripted session through a fresh graph (own store, memory and checkpoints)."""
    from langchain_core.messages import AIMessage

    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.graphs import build_session_graph
    from codi2_agent.media import MediaRef
    from codi2_agent.memory import ExemplarMemory
    from codi2_agent.messages import message_parts

    root = Path(tempfile.mkdtemp(prefix=f"bench-session-{policy}-"))
    store = ArtifactStore(root / "artifacts")
    backend = _timed_backend(model, store)
    if args.chroma is None:
        memory = ExemplarMemory(root / "memory", embedder=backend.embedder, artifacts=store)
    else:  # a namespace of its own on the benchmark's `chroma run` server
        memory = ExemplarMemory(host=args.chroma.host, port=args.chroma.port, embedder=backend.embedder,
                                artifacts=store, namespace=f"bench{root.name[-8:].lower()}")  # fmt: skip
    graph = build_session_graph(
        backend,
        memory,
        context=policy,
        window_k=args.window_k,
        max_prompt_tokens=args.max_prompt_tokens,
        num_inference_steps=args.steps,
        caption_outputs=not args.no_captions,
    )
    db = root / "checkpoints.sqlite"
    config = {"configurable": {"thread_id": "bench"}}
    turns = []
    try:
        for step in script:
            before_db, before_caption = _db_bytes(db), backend.seconds["caption"]
            backend.last = None
            t0 = time.perf_counter()
            out = graph.invoke({"messages": [("user", step.text)]}, config, durability=args.durability)
            seconds = time.perf_counter() - t0
            memory.flush()  # the write left behind the turn: counted, as a next turn would wait for it
            behind = time.perf_counter() - t0 - seconds
            answer = out["messages"][-1]
            assert isinstance(answer, AIMessage)
            refs = [p for p in message_parts(answer) if isinstance(p, MediaRef)]
            right = probes.score(store.get(refs[0]), step.expect) if refs else None
            turn = Turn(step.kind, right, seconds + behind, checkpoint_bytes=_db_bytes(db) - before_db)
            turn.behind_seconds = behind
            turn.caption_seconds = backend.seconds["caption"] - before_caption
            if measure and backend.last is not None:  # the same prompt and seed, straight to the model
                request = backend.last
                t0 = time.perf_counter()
                model.generate(backend._turns(request.prompt), output=request.output, seed=request.seed,
                               num_inference_steps=request.num_inference_steps,
                               max_new_tokens=request.max_new_tokens)  # fmt: skip
                turn.bare_seconds = time.perf_counter() - t0
            turns.append(turn)
    finally:
        memory.close()
        graph.checkpointer.conn.close()  # type: ignore[union-attr]
    return turns


# --- reporting -----------------------------------------------------------------------------------
def _accuracy(turns: list[Turn], kind: str | None = None, attribute: str | None = None) -> tuple[float, int]:
    pool = [t for t in turns if kind is None or t.kind == kind]
    if attribute is None:
        hits = [bool(t.right) and all(t.right.values()) for t in pool]
    else:
        hits = [bool(t.right) and t.right.get(attribute, False) for t in pool]
    return (float(np.mean(hits)) if hits else float("nan")), len(hits)


def report(results: dict[str, list[Turn]], args: argparse.Namespace, header: list[str]) -> str:
    lines = [*header, ""]
    policies = list(results)
    names = {"memory": "(a) memory exemplars", "window": f"(b) last-{args.window_k} window"}
    lines.append(f"{'accuracy (all attributes right)':38s}" + "".join(f"{names[p]:>24s}" for p in policies))
    for kind in (None, *KINDS):
        row = f"  {kind or 'all turns':36s}"
        for p in policies:
            acc, n = _accuracy(results[p], kind)
            row += f"{acc:>17.3f} (n={n:3d})"
        lines.append(row)
    lines.append(f"{'per attribute (all turns)':38s}")
    for attribute in ("shape", "colour", "size", "scene"):
        lines.append(
            f"  {attribute:36s}"
            + "".join(f"{_accuracy(results[p], None, attribute)[0]:>24.3f}" for p in policies)
        )
    mem = [t for t in results.get("memory", []) if t.bare_seconds > 0]
    if mem:
        turn_s = statistics.median(t.seconds for t in mem)
        bare_s = statistics.median(t.bare_seconds for t in mem)
        no_cap = statistics.median(
            (t.seconds - t.caption_seconds - t.bare_seconds) / t.bare_seconds for t in mem
        )
        overhead = statistics.median((t.seconds - t.bare_seconds) / t.bare_seconds for t in mem)
        latency = statistics.median(
            (t.seconds - t.behind_seconds - t.bare_seconds) / t.bare_seconds for t in mem
        )
        behind = statistics.median(t.behind_seconds for t in mem)
        lines += [
            "",
            "framework overhead per image turn, policy (a), with any memory write left behind it "
            "(target <= 5 %):",
            f"  median turn {turn_s * 1000:.0f} ms, bare model.generate {bare_s * 1000:.0f} ms: "
            f"overhead {overhead * 100:.1f} % ({no_cap * 100:.1f} % without captioning the output)",
            f"  the turn's own latency (the write still landing): overhead {latency * 100:.1f} %; "
            f"the write left behind it: median {behind * 1000:.1f} ms",
        ]
    for p in policies:
        per_turn = [t.checkpoint_bytes for t in results[p]]
        lines.append(
            f"checkpoint bytes per turn, policy {p} (durability={args.durability!r}, target <= 16 KB): "
            f"mean {np.mean(per_turn) / 1024:.1f} KB, max {max(per_turn) / 1024:.1f} KB, "
            f"last {per_turn[-1] / 1024:.1f} KB"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Consistency benchmark of long CoDi-2 sessions.")
    parser.add_argument(
        "--model", default="tiny", help="'tiny' (shipped), 'random' (smoke tests) or a folder"
    )
    parser.add_argument("--probes", default="shipped", choices=["shipped", "quick"])
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=24)
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    parser.add_argument("--window-k", type=int, default=2)
    parser.add_argument("--max-prompt-tokens", type=int, default=None)
    parser.add_argument("--durability", default="exit", choices=["exit", "async", "sync"])
    parser.add_argument("--no-captions", action="store_true", help="do not caption outputs with the model")
    parser.add_argument("--policies", nargs="+", default=["memory", "window"], choices=["memory", "window"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--phrasing", default="templates", choices=["templates", "natural"], help="how the turns are phrased"
    )
    parser.add_argument(
        "--memory",
        default="embedded",
        choices=["embedded", "server"],
        help="embedded Chroma (default), or a `chroma run` server this benchmark starts on loopback",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from codi2_agent.data.probes import load_probes, train_probes
    from codi2_agent.model import CoDi2Config, CoDi2Model, load_model

    # 1. Model and judges
    if args.model == "random":
        model, model_note = (
            CoDi2Model.from_config(CoDi2Config.tiny(), seed=0),
            "RANDOM weights (smoke test only)",
        )
    else:
        model, model_note = load_model(args.model), f"{args.model!r}"
    if args.probes == "shipped":
        probes, probe_note = load_probes(), "shipped"
    else:
        probes = train_probes(steps=40, n_train={"image": 300, "audio": 50}, n_test=60)
        probe_note = "QUICK (smoke test only)"
    image_acc = {k: probes.test_accuracy.get(k) for k in ("shape", "colour", "size", "scene")}

    # 2. The same scripts through each policy
    rng = np.random.default_rng(args.seed)
    scripts = [make_script(rng, args.turns, natural=args.phrasing == "natural") for _ in range(args.sessions)]
    results: dict[str, list[Turn]] = {}
    t0 = time.perf_counter()
    with contextlib.ExitStack() as services:
        args.chroma = None
        if args.memory == "server":
            from codi2_agent.local_services import start_chroma

            args.chroma = start_chroma(Path(tempfile.mkdtemp(prefix="bench-session-chroma-")), timeout=60)
            services.callback(args.chroma.stop)
        for policy in args.policies:
            results[policy] = []
            for script in scripts:
                results[policy] += run_session(
                    model, probes, script, policy, args, measure=policy == "memory"
                )
    limit = model.processor.max_length
    header = [
        f"bench_session.py — {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"python {sys.version.split()[0]}, torch threads {args.threads}",
        f"model {model_note}; probes {probe_note} (their own test accuracy: "
        + ", ".join(f"{k} {v:.3f}" for k, v in image_acc.items() if v is not None)
        + ")",
        f"{args.sessions} sessions x {args.turns} turns (seed {args.seed}); diffusion steps "
        f"{args.steps or 'model default'}; context limit {limit} tokens"
        + (f", prompts capped at {args.max_prompt_tokens}" if args.max_prompt_tokens else "")
        + f"; output captions {'off' if args.no_captions else 'on'}; memory {args.memory}"
        + f"; wall {time.perf_counter() - t0:.0f} s",
        f"phrasing: {args.phrasing}; turn kinds: "
        + ", ".join(f"{k} {sum(s.kind == k for sc in scripts for s in sc)}" for k in KINDS),
    ]
    table = report(results, args, header)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
