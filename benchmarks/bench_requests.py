"""Paraphrase benchmark of the request resolver: does what people type resolve to the right media,
task and intent?

Runs `codi2_agent.graphs.resolve` (pure: no model, no memory) over hand-written requests, each with a
small scripted media log (benchmarks/requests/*.yaml, format described in heldback.yaml):

- ``tuned.yaml``     the set the resolver was developed against;
- ``heldback.yaml``  written before any tuning and never tuned on;
- ``fresh.yaml``     written after tuning and committed before its first run, as a check on the
                     held-back figure (its first-run score is in its note; it was fixed after);
- ``ambiguous.yaml`` requests whose right answer is a question back naming the candidates.

Prints, per category, the share resolved right (sources, task or intent, and the example pair where
one is given) for the tuned, held-back and fresh sets side by side; the share of ambiguous requests asked
back (and with the right candidates named); clarification precision (of all questions asked, the
share that should have been asked); exceptions (must be 0); chit-chat and out-of-vocabulary
requests that would produce media (must be 0); and the resolver's cost on a 2,000-record log.

With ``--planner`` the same requests go through the optional planner first (`graphs.Planner`, the
session graph's ``planner=``) as the graph does it — a plan checked against the log, the rules when it
fails — with a scripted structured-output chat model, since no LLM runs here:

- ``oracle``      answers each request with its intended plan: what the planner path (structured
                  output, id checks, conversion to a request) keeps of a perfect plan;
- ``unreliable``  the same plans, but every third names an id the thread does not have and every fifth
                  request fails outright: what the fallback to the rules keeps.

usage:
    python benchmarks/bench_requests.py                  # table -> benchmarks/results/requests.txt
    python benchmarks/bench_requests.py --failures       # also list every wrong answer
    python benchmarks/bench_requests.py --out /tmp/r.txt
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from codi2_agent.graphs import MediaRecord, Planner, resolve
from codi2_agent.media import MediaRef, Modality
from codi2_agent.model.vocabulary import Vocabulary

HERE = Path(__file__).resolve().parent
SETS = HERE / "requests"
RESULTS = HERE / "results" / "requests.txt"
TINY_CONFIG = HERE.parent / "codi2_agent" / "weights" / "tiny" / "config.json"
INTENTS = ("chat", "out_of_vocabulary")
NOTES: dict[str, str] = {}  # a set's own note on its history (YAML "note"), printed with the table
MEDIA_CATEGORIES = ("chat", "oov")  # must never produce media


def tiny_vocabulary() -> Vocabulary:
    """The shipped tiny model's own vocabulary, as the session graph reads it from the model."""
    return Vocabulary.from_dict(json.loads(TINY_CONFIG.read_text())["vocabulary"])


# --- the scripted logs ----------------------------------------------------------------------------
def _artifact_id(*key: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, key)).encode()).hexdigest()


def build_log(name: str, media: list[dict[str, Any]]) -> list[MediaRecord]:
    """MediaRecords for a YAML log: ids from (log, index), subjects along the parents."""
    records: list[MediaRecord] = []
    for i, m in enumerate(media):
        unknown = set(m) - {
            "turn",
            "role",
            "modality",
            "caption",
            "parents",
            "instruction",
            "task",
            "same_as",
        }
        if unknown:
            raise ValueError(f"log {name!r} medium {i}: unknown fields {sorted(unknown)}")
        modality = Modality(m.get("modality", "image"))
        same = m.get("same_as")
        artifact = records[same].id if same is not None else _artifact_id(name, i)
        mime = "image/png" if modality is Modality.IMAGE else "audio/wav"
        ref = MediaRef(
            id=artifact, uri="artifact://" + artifact, modality=modality, mime=mime,
            caption=m.get("caption") if same is None else records[same].caption, turn=int(m["turn"]),
        )  # fmt: skip
        parents = tuple(records[p].id for p in m.get("parents", ()))
        if same is not None:
            subject = records[same].subject
        elif m.get("parents"):
            subject = records[m["parents"][0]].subject
        else:
            subject = ref.short_id
        records.append(
            MediaRecord(
                ref=ref, role=m.get("role", "output"), turn=int(m["turn"]), parents=parents,
                instruction=m.get("instruction"), task=m.get("task"), subject=subject,
            )
        )  # fmt: skip
    return records


@dataclass
class Case:
    file: str
    cat: str
    text: str
    log: list[MediaRecord]
    vocabulary: Vocabulary | None
    task: str | None = None
    sources: list[int] | None = None
    example: list[int] | None = None
    ask: bool = False
    candidates: list[int] = field(default_factory=list)


def _fill_ids(text: str, log: list[MediaRecord]) -> str:
    for i, r in enumerate(log):
        text = text.replace(f"{{m{i}}}", "@m:" + r.ref.short_id).replace(f"{{a{i}}}", r.ref.uri)
    return text


def load_set(path: Path, tiny: Vocabulary) -> list[Case]:
    data = yaml.safe_load(path.read_text())
    NOTES[path.stem] = data.get("note", "")
    vocabularies = {"tiny": tiny, "open": None}
    default = data.get("vocabulary", "tiny")
    logs: dict[str, tuple[list[MediaRecord], str | None]] = {"empty": ([], None)}
    for name, spec in (data.get("logs") or {}).items():
        logs[name] = (build_log(f"{path.stem}/{name}", spec["media"]), spec.get("vocabulary"))
    cases = []
    for raw in data["cases"]:
        log, log_vocab = logs[raw.get("log", "empty")]
        vocab = vocabularies[raw.get("vocabulary", log_vocab or default)]
        if not raw.get("ask") and raw.get("task") is None:
            raise ValueError(f"{path.name}: {raw['text']!r} has neither a task nor ask: true")
        cases.append(
            Case(
                file=path.stem, cat=raw["cat"], text=_fill_ids(raw["text"], log), log=log, vocabulary=vocab,
                task=raw.get("task"), sources=raw.get("sources"), example=raw.get("example"),
                ask=bool(raw.get("ask")), candidates=list(raw.get("candidates", ())),
            )
        )  # fmt: skip
    return cases


# --- judging ----------------------------------------------------------------------------------------
@dataclass
class Outcome:
    case: Case
    right: bool
    asked: bool
    media: bool  # the turn would go on to generate media
    error: str | None = None
    got: str = ""


def _indices(log: list[MediaRecord], records: Any) -> list[int]:
    # The first record of an artifact in the log: a medium shown again is the same medium.
    where: dict[str, int] = {}
    for i, r in enumerate(log):
        where.setdefault(r.id, i)
    return [where.get(r.id, -1) for r in records]


class _Scripted(BaseChatModel):
    """A structured-output chat model that answers with the plan `script(prompt)` returns."""

    script: Any

    @property
    def _llm_type(self) -> str:
        return "scripted-planner"

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self

    def _generate(
        self, messages: Any, stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        call = {
            "name": "Plan",
            "args": self.script(str(messages[-1].content)),
            "id": "p",
            "type": "tool_call",
        }
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))])


def intended_plan(case: Case) -> dict[str, Any]:
    """The plan a perfect planner would return for `case` (ids as the planner is shown them)."""
    ids = ["@m:" + r.ref.short_id for r in case.log]
    if case.ask:
        return {"action": "ask", "sources": [ids[i] for i in case.candidates], "reply": "Which one?"}
    if case.task in INTENTS:
        return {"action": "answer", "reply": "I can only make what I know."}
    return {
        "action": "make", "task": case.task, "sources": [ids[i] for i in case.sources or []],
        "example": [ids[i] for i in case.example or []], "instruction": case.text,
    }  # fmt: skip


def scripted_planner(mode: str, case: Case, index: int) -> Planner:
    plan = intended_plan(case)

    def script(prompt: str) -> dict[str, Any]:
        if mode == "unreliable" and index % 5 == 4:
            raise ConnectionError("the planner's server did not answer")
        if mode == "unreliable" and index % 3 == 2:
            return {**plan, "action": "make", "task": "edit", "sources": ["@m:0123456789ab"]}
        return plan

    return Planner(_Scripted(script=script))


def _resolved(case: Case, planner: Planner | None) -> Any:
    """What the session graph's resolve step decides: the planner's checked plan, else the rules."""
    if planner is not None:
        outcome = planner.plan(case.text, case.log)
        if outcome is not None:
            request, question = outcome.request, outcome.clarification
            return SimpleNamespace(
                clarification=question,
                intent="media" if request is not None else "chat",
                task=request.task if request is not None else None,
                sources=request.sources if request is not None else (),
                example=request.example if request is not None else (),
                planned=True,
            )
    return resolve(case.text, attached=[], log=case.log, vocabulary=case.vocabulary)


def judge(case: Case, planner: Planner | None = None) -> Outcome:
    try:
        res = _resolved(case, planner)
    except Exception as e:
        return Outcome(case, right=False, asked=False, media=False, error=f"{type(e).__name__}: {e}")
    asked = res.clarification is not None
    media = not asked and res.intent == "media"
    got_sources = _indices(case.log, res.sources)
    got_example = _indices(case.log, res.example)
    if asked:
        assert res.clarification is not None
        named = {i for i, r in enumerate(case.log) if r.ref in res.clarification.candidates}
        got = f"asked: {res.clarification.question}"
    else:
        got = f"{res.intent}/{res.task} sources={got_sources} example={got_example}"
    if case.ask:
        right = asked and set(case.candidates) <= named
    elif asked:
        right = False
    elif case.task in INTENTS:  # a planner's answer in words stands for both intents
        right = res.intent == case.task or (getattr(res, "planned", False) and res.intent == "chat")
    else:
        want = case.sources or []
        same_sources = sorted(got_sources) == sorted(want) if case.task == "compose" else got_sources == want
        same_example = case.example is None or got_example == case.example
        right = res.intent == "media" and res.task == case.task and same_sources and same_example
    return Outcome(case, right=right, asked=asked, media=media, got=got)


# --- cost on a long log -----------------------------------------------------------------------------
def long_log(n: int) -> list[MediaRecord]:
    """n records: chains of five edits, pictures and sounds alternating, captions on every medium."""
    shapes = ("circle", "square", "triangle", "star", "cross")
    colours = ("red", "green", "blue", "yellow", "purple", "orange")
    scenes = ("in the snow", "at night", "in the desert", "in the forest", "on a sunny day", "in the rain")
    media: list[dict[str, Any]] = []
    for i in range(n):
        turn = i + 1
        audio = (i // 5) % 3 == 2
        caption = (
            f"a high sine tone with {('wind', 'rain', 'crickets')[i % 3]}"
            if audio
            else f"a small {colours[i % 6]} {shapes[(i // 5) % 5]} {scenes[(i // 7) % 6]}"
        )
        medium: dict[str, Any] = {"turn": turn, "caption": caption, "modality": "audio" if audio else "image"}
        if i % 5:
            medium.update(parents=[i - 1], task="edit", instruction="make it " + colours[i % 6])
        media.append(medium)
    return build_log("long", media)


LONG_REQUESTS = (
    "make it blue",
    "go back to the very first picture and make it green",
    "make the blue star bigger",
    "the one before that, in the snow",
    "do what you did to the circle to the star",
    "combine the first picture with the last sound",
    "blue instead",
    "draw a dog",
)


def time_long_log(n: int, vocabulary: Vocabulary, repeats: int) -> dict[str, float]:
    log = long_log(n)
    out = {}
    for text in LONG_REQUESTS:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            resolve(text, attached=[], log=log, vocabulary=vocabulary)
            times.append((time.perf_counter() - t0) * 1000.0)
        out[text] = statistics.median(times)
    return out


# --- report -----------------------------------------------------------------------------------------
def _share(outcomes: list[Outcome]) -> str:
    if not outcomes:
        return "      -     "
    right = sum(o.right for o in outcomes)
    return f"{right / len(outcomes):5.3f} {right:3d}/{len(outcomes):<3d}"


def report(sets: dict[str, list[Outcome]], timing: dict[str, float], n_long: int) -> list[str]:
    tuned, held, fresh, ambiguous = sets["tuned"], sets["heldback"], sets["fresh"], sets["ambiguous"]
    everything = tuned + held + fresh + ambiguous
    lines = [
        f"# Request resolver paraphrase benchmark: graphs.resolve, CPython {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}",
        "# requests written by hand (benchmarks/requests/*.yaml), each with its own scripted media log;",
        "# heldback was written before any tuning and never tuned on; fresh was written after tuning and",
        "# committed before its first run. right = sources (in order; compose as a set), task or intent",
        "# (chat / out_of_vocabulary), and the example pair where given.",
        "# vocabulary: the shipped tiny model's (codi2_agent/weights/tiny/config.json), or open where a",
        "# log says so",
        *(f"# {line}" for note in filter(None, NOTES.values()) for line in textwrap.wrap(note, 98)),
        "",
        f"{'category':<14}{'tuned':>16}{'heldback':>16}{'fresh':>16}",
    ]
    for cat in sorted({o.case.cat for o in tuned + held + fresh}):
        row = [_share([o for o in group if o.case.cat == cat]) for group in (tuned, held, fresh)]
        lines.append(f"{cat:<14}" + "".join(f"{cell:>16}" for cell in row))
    lines.append(f"{'all':<14}{_share(tuned):>16}{_share(held):>16}{_share(fresh):>16}")
    lines.append("")
    asked = [o for o in ambiguous if o.asked]
    lines.append(
        f"ambiguous set: asked back {len(asked)}/{len(ambiguous)} = "
        f"{len(asked) / max(1, len(ambiguous)):.3f}; "
        f"with the right candidates named {sum(o.right for o in ambiguous)}/{len(ambiguous)}"
    )
    for cat in sorted({o.case.cat for o in ambiguous}):
        group = [o for o in ambiguous if o.case.cat == cat]
        lines.append(f"  {cat:<12} asked {sum(o.asked for o in group)}/{len(group)}")
    questions = [o for o in everything if o.asked]
    should = [o for o in questions if o.case.ask]
    lines.append(
        f"clarification precision (questions that should have been asked / all questions asked): "
        f"{len(should)}/{len(questions)} = {len(should) / max(1, len(questions)):.3f}"
    )
    errors = [o for o in everything if o.error]
    lines.append(f"exceptions: {len(errors)}")
    chatty = [o for o in everything if o.case.cat in MEDIA_CATEGORIES and o.media]
    lines.append(f"chit-chat / out-of-vocabulary requests that would produce media: {len(chatty)}")
    lines.append(
        f"requests: tuned {len(tuned)}, heldback {len(held)}, fresh {len(fresh)}, ambiguous {len(ambiguous)}"
    )
    lines.append("")
    lines.append(f"resolve() on a {n_long:,}-record log (median ms of repeated calls):")
    for text, ms in timing.items():
        lines.append(f"  {ms:7.2f} ms  {text!r}")
    return lines


PLANNER_MODES = ("oracle", "unreliable")


def planner_report(off: dict[str, list[Outcome]], planned: dict[str, dict[str, list[Outcome]]]) -> list[str]:
    """Per category, rules only vs through a scripted planner (see the module docstring)."""
    modes = {"rules only": off, **{f"planner: {m}": planned[m] for m in PLANNER_MODES}}
    lines = [
        "",
        "with the optional planner (a scripted structured-output model; tuned + heldback + fresh):",
        f"{'category':<14}" + "".join(f"{name:>20}" for name in modes),
    ]

    def plain(sets: dict[str, list[Outcome]]) -> list[Outcome]:
        return sets["tuned"] + sets["heldback"] + sets["fresh"]

    for cat in sorted({o.case.cat for o in plain(off)}):
        cells = [_share([o for o in plain(sets) if o.case.cat == cat]) for sets in modes.values()]
        lines.append(f"{cat:<14}" + "".join(f"{cell:>20}" for cell in cells))
    lines.append(f"{'all':<14}" + "".join(f"{_share(plain(sets)):>20}" for sets in modes.values()))
    lines.append(f"{'heldback':<14}" + "".join(f"{_share(sets['heldback']):>20}" for sets in modes.values()))
    lines.append(
        f"{'ambiguous':<14}" + "".join(f"{_share(sets['ambiguous']):>20}" for sets in modes.values())
    )
    errors = sum(bool(o.error) for sets in planned.values() for group in sets.values() for o in group)
    chatty = sum(
        o.case.cat in MEDIA_CATEGORIES and o.media
        for sets in planned.values()
        for g in sets.values()
        for o in g
    )
    lines.append(
        f"planner runs: exceptions {errors}; chit-chat / out-of-vocabulary that would produce media {chatty}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the table goes")
    parser.add_argument("--failures", action="store_true", help="list every wrong answer")
    parser.add_argument("--long-log", type=int, default=2000, help="records in the timing log")
    parser.add_argument("--repeats", type=int, default=20, help="calls per timed request")
    args = parser.parse_args(argv)

    tiny = tiny_vocabulary()
    sets: dict[str, list[Outcome]] = defaultdict(list)
    for name in ("tuned", "heldback", "fresh", "ambiguous"):
        for case in load_set(SETS / f"{name}.yaml", tiny):
            sets[name].append(judge(case))
    planned: dict[str, dict[str, list[Outcome]]] = {}
    for mode in PLANNER_MODES:
        planned[mode] = {
            name: [judge(o.case, scripted_planner(mode, o.case, i)) for i, o in enumerate(outcomes)]
            for name, outcomes in sets.items()
        }
    timing = time_long_log(args.long_log, tiny, args.repeats)
    lines = report(sets, timing, args.long_log) + planner_report(sets, planned)
    table = "\n".join(lines) + "\n"
    sys.stdout.write(table)
    if args.failures:
        for name, outcomes in sets.items():
            for o in outcomes:
                if not o.right:
                    want = "ask" if o.case.ask else f"{o.case.task} {o.case.sources} {o.case.example or ''}"
                    print(f"FAIL {name}/{o.case.cat}: {o.case.text!r}: want {want}; {o.error or o.got}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
