"""Print several `codi2-agent eval` results side by side, with the spread between runs of one recipe.

    python benchmarks/compare_evals.py "v6 s0=benchmarks/results/eval_tiny_v6.json" \
        "v7 s0=/tmp/a.json" "v7 s1=/tmp/b.json" --spread "v7 s0" "v7 s1" [--out FILE]

Each argument is LABEL=PATH to the JSON list `eval --out DIR` writes (one object per task with `task` and
`accuracy`). The table has one column per run, then the spread (max - min) over the `--spread` runs, the
target of issue #13 and whether every `--spread` run meets it. The last row sums the nine media-answer
tasks (the generation tasks whose answer is a picture or a sound, concept included): the figure used to
pick between runs, since it moves with the reasoning half while the other rows sit at their ceiling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# Issue #13's targets: every generation task >= 0.90, concept >= 0.8, captions >= 0.99, what_changed >= 0.95.
TARGETS = {
    "analogy_audio": 0.90,
    "analogy_image": 0.90,
    "caption_audio": 0.99,
    "caption_image": 0.99,
    "compose_image_audio": 0.90,
    "concept_image": 0.80,
    "edit_audio": 0.90,
    "edit_image": 0.90,
    "subject_image": 0.90,
    "text_to_audio": 0.90,
    "text_to_image": 0.90,
    "what_changed": 0.95,
}
MEDIA_TASKS = (
    "analogy_audio",
    "analogy_image",
    "compose_image_audio",
    "concept_image",
    "edit_audio",
    "edit_image",
    "subject_image",
    "text_to_audio",
    "text_to_image",
)


def load_run(path: Path) -> dict[str, float]:
    """task -> accuracy from one `eval` JSON file; a file without a task list is an error naming it."""
    rows = json.loads(path.read_text())
    if not isinstance(rows, list) or not all(
        isinstance(r, dict) and "task" in r and "accuracy" in r for r in rows
    ):
        raise ValueError(f"{path}: not an eval result (a list of objects with 'task' and 'accuracy')")
    return {str(r["task"]): float(r["accuracy"]) for r in rows}


def parse_run_argument(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}")
    return label, Path(path)


def compare(runs: dict[str, dict[str, float]], spread: list[str]) -> list[str]:
    """The table's lines: one row per task seen in any run (first run's order first), then the media sum."""
    unknown = [label for label in spread if label not in runs]
    if unknown:
        raise ValueError(f"--spread names runs that were not given: {unknown}")
    tasks: list[str] = []
    for results in runs.values():
        tasks += [t for t in results if t not in tasks]
    width = max(7, *(len(label) + 1 for label in runs))
    lines = [
        f"{'task':<26}"
        + "".join(f"{label:>{width}}" for label in runs)
        + (f"{'spread':>8}{'target':>8}  met: all of {', '.join(spread)}" if spread else "")
    ]
    for task in tasks:
        values = [runs[label].get(task) for label in runs]
        row = f"{task:<26}" + "".join(f"{'-' if v is None else f'{v:.3f}':>{width}}" for v in values)
        if spread:
            chosen = [runs[label][task] for label in spread if task in runs[label]]
            target = TARGETS.get(task)
            row += f"{max(chosen) - min(chosen):>8.3f}" if len(chosen) == len(spread) else f"{'-':>8}"
            row += f"{target:>8.2f}" if target is not None else f"{'-':>8}"
            if target is not None and len(chosen) == len(spread):
                row += "  " + ("yes" if min(chosen) >= target else "NO")
        lines.append(row)
    sums = []
    for label in runs:
        have = [runs[label][t] for t in MEDIA_TASKS if t in runs[label]]
        sums.append(f"{sum(have):.2f}" if len(have) == len(MEDIA_TASKS) else "-")
    lines.append(f"{'sum, nine media tasks':<26}" + "".join(f"{s:>{width}}" for s in sums))
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=parse_run_argument, help="LABEL=PATH of an eval JSON")
    parser.add_argument("--spread", nargs="*", default=[], help="labels of the runs of one recipe")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    runs = {label: load_run(path) for label, path in args.runs}
    table = "\n".join(compare(runs, args.spread))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
