"""What a pipeline run did: a `TurnRecord` per planned turn, gathered in a `PipelineReport`.

The report is written after every turn as ``report.json`` (what resuming reads back) and
``report.md`` (a table of every turn's request, inputs, outputs, answer and time), both atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["REPORT_JSON", "REPORT_MD", "MediaEntry", "PipelineReport", "TurnRecord", "atomic_write", "now"]

REPORT_JSON, REPORT_MD = "report.json", "report.md"


@dataclass
class MediaEntry:
    """An input or output medium in the report."""

    modality: str
    id: str  # "@m:<12 hex>"
    path: str | None = None  # outputs: relative to the output folder; inputs: the file read
    source: str | None = None  # inputs: as written in the pipeline ("@star", a file)
    caption: str | None = None


@dataclass
class TurnRecord:
    """What one planned turn did: in the report and `report.json`, and what resuming reads."""

    key: str
    label: str
    thread: str
    position: int
    request: str
    file: str | None = None
    loop: str | None = None
    task: str | None = None
    status: Literal["done", "failed", "pending"] = "pending"
    inputs: list[MediaEntry] = field(default_factory=list)
    example: list[MediaEntry] = field(default_factory=list)
    outputs: list[MediaEntry] = field(default_factory=list)
    text: str = ""
    seconds: float = 0.0
    finished_at: str | None = None
    error: str | None = None
    fingerprint: str = ""
    reused: bool = False  # finished by an earlier run and not generated again

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TurnRecord:
        fields: dict[str, Any] = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for k in ("inputs", "example", "outputs"):
            fields[k] = [MediaEntry(**m) for m in data.get(k, [])]
        return cls(**fields)


@dataclass
class PipelineReport:
    """The outcome of `run_pipeline`: every planned turn's record, and where everything is."""

    name: str
    source: str | None
    out: Path
    model: str
    status: Literal["complete", "incomplete", "failed", "interrupted"]
    turns: list[TurnRecord]
    settings: dict[str, Any] = field(default_factory=dict)
    bases: dict[str, str] = field(default_factory=dict)  # loop base thread -> fingerprint it was forked at
    started_at: str = ""
    finished_at: str | None = None
    seconds: float = 0.0

    @property
    def counts(self) -> dict[str, int]:
        done = [t for t in self.turns if t.status == "done"]
        return {
            "planned": len(self.turns),
            "done": len(done),
            "reused": sum(t.reused for t in done),
            "ran": sum(not t.reused for t in done),
            "failed": sum(t.status == "failed" for t in self.turns),
            "pending": sum(t.status == "pending" for t in self.turns),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "out": str(self.out),
            "model": self.model,
            "status": self.status,
            "counts": self.counts,
            "settings": self.settings,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "seconds": round(self.seconds, 3),
            "generation_seconds": round(sum(t.seconds for t in self.turns if t.status == "done"), 3),
            "bases": self.bases,
            "turns": [asdict(t) for t in self.turns],
        }

    def to_markdown(self) -> str:
        c = self.counts
        steps = self.settings.get("diffusion_steps") or "model default"
        lines = [
            f"# Pipeline `{self.name}`: {self.status}",
            "",
            f"- source: `{self.source or '(text)'}`",
            f"- model: `{self.model}`; seed {self.settings.get('seed')}; diffusion steps {steps}",
            f"- turns: {c['planned']} planned, {c['done']} done ({c['reused']} from an earlier run, "
            f"{c['ran']} this run), {c['failed']} failed, {c['pending']} not run yet",
            f"- time: {sum(t.seconds for t in self.turns if t.status == 'done'):.2f} s generating in all; "
            f"this run {self.seconds:.1f} s (started {self.started_at}, finished {self.finished_at or '-'})",
            "",
            "| # | turn | thread | request | inputs | outputs | answer | s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for i, t in enumerate(self.turns, start=1):
            inputs = [_md_link(m, self.out) for m in (*t.example, *t.inputs)]
            outputs = [_md_media(m) for m in t.outputs]
            state = {"done": "", "failed": "**failed**: ", "pending": "*not run yet*"}[t.status]
            answer = state + (t.error or t.text if t.status != "pending" else "")
            mark = " ↺" if t.reused else ""
            cells = (
                str(i),
                t.label + mark,
                t.thread,
                t.request or f"({t.task})",
                "<br>".join(inputs),
                " ".join(outputs),
                answer,
                f"{t.seconds:.2f}" if t.status == "done" else "",
            )
            lines.append("| " + " | ".join(_md_cell(x) for x in cells) + " |")
        lines += ["", "↺: finished by an earlier run (resumed, not generated again)."]
        return "\n".join(lines) + "\n"

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def write(self) -> None:
        """Write ``report.json`` and ``report.md`` into the output folder (atomically)."""
        atomic_write(self.out / REPORT_JSON, json.dumps(self.to_json(), indent=2) + "\n")
        atomic_write(self.out / REPORT_MD, self.to_markdown())


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_media(m: MediaEntry) -> str:
    if m.path is None:
        return m.id
    return f"![{m.id}]({m.path})" if m.modality == "image" else f"[{m.path}]({m.path})"


def _md_link(m: MediaEntry, out: Path) -> str:
    if m.path is None:
        return m.source or m.id
    try:
        rel = os.path.relpath(m.path, out)
    except ValueError:
        rel = m.path
    return f"[{m.source or Path(m.path).name}]({rel})"


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
