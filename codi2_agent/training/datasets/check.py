"""`check_dataset`: read a whole dataset folder once and say what is in it and what is wrong.

Every record is read and its media decoded exactly as training would read them, leniently, so one
report lists every problem (with its file and line) and counts the samples per format and task.
Decoding is never deferred here (`ReadOptions.defer_decoding` is ignored): finding bad media is the
point.
`codi2-agent data check DIR` prints it.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from codi2_agent.training.datasets._errors import ProblemLog
from codi2_agent.training.datasets._source import DatasetRoot, ReadOptions
from codi2_agent.training.datasets.formats import Source, find_sources

__all__ = ["CheckReport", "check_dataset"]


@dataclass
class CheckReport:
    """What `check_dataset` found: the sources, samples per (format, task), and the problems."""

    folder: Path
    sources: list[Source]
    samples: Counter[tuple[str, str]] = field(default_factory=Counter)
    problems: ProblemLog = field(default_factory=lambda: ProblemLog(log_level=logging.DEBUG))

    @property
    def ok(self) -> bool:
        return self.problems.total == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "sources": [{"format": s.format, "path": _name(self.folder, s.path)} for s in self.sources],
            "samples": [{"format": f, "task": t, "count": n} for (f, t), n in sorted(self.samples.items())],
            "problem_counts": dict(sorted(self.problems.counts.items())),
            "problems": [
                {"file": p.file, "line": p.line, "kind": p.kind, "message": p.message}
                for p in self.problems.problems
            ],
        }


def check_dataset(
    path: str | Path,
    format: str = "auto",
    *,
    options: ReadOptions | None = None,
    limit: int | None = None,
) -> CheckReport:
    """Read every sample of the dataset at `path` and report counts and problems (never raises
    for a bad record; a folder with nothing readable raises `DatasetFormatError`).

    `limit` stops each source after that many samples: a quick look at a large dataset.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    folder, sources = find_sources(path, format)
    report = CheckReport(folder.resolve(), sources)
    root = DatasetRoot(folder, replace(options or ReadOptions(), defer_decoding=False))
    for source in sources:
        for sample in itertools.islice(source.read(root, report.problems), limit):
            report.samples[(source.format, sample.task)] += 1
    return report


def _name(folder: Path, path: Path) -> str:
    path = path.resolve()
    return (
        "." if path == folder else str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)
    )
