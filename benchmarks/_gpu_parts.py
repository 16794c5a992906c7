"""The part runner the GPU benchmarks share (bench_gpu.py, bench_train_gpu.py).

A benchmark is a few named parts. The parent runs each part as a child process of the same script
(``--part NAME --rows FILE``) under its own time limit and a budget for the whole run; the child
appends one JSON line per measurement to FILE as it goes, so a part killed at its limit still
reports what it measured. A measurement that raises, a part that exits non-zero and a part over its
limit each become an ERROR row; the other parts still run. The parent prints the rows, writes the
table and exits 1 if anything failed.

The script using it supplies what is its own: the parts, the arguments it forwards to its children,
the table's header. Imports: the standard library only (torch lazily, on the child side).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

# Imported before codi2_agent (and so before huggingface_hub reads it): never a download, GPU hosts
# have no network anyway.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
PART_WIDTH = 8  # the table's part column, at least


@dataclass
class Row:
    part: str
    name: str
    value: str
    note: str = ""


def _error_note(error: BaseException) -> str:
    first_line = str(error).splitlines()[0][:160] if str(error) else ""
    return f"{type(error).__name__}: {first_line}"


# --- child side: one part, rows appended to a JSON-lines file as they are measured ----------------------
class Recorder:
    def __init__(self, part: str, path: Path) -> None:
        self.part, self.path = part, path

    def row(self, name: str, value: str, note: str = "") -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"part": self.part, "name": name, "value": value, "note": note}) + "\n")

    def error(self, name: str, error: BaseException) -> None:
        self.row(name, "ERROR", _error_note(error))

    def measure(self, name: str, fn: Callable[[], tuple[str, str]]) -> None:
        """Run one measurement, `fn() -> (value, note)`; an exception becomes an error row and the
        part goes on to its next measurement."""
        try:
            value, note = fn()
        except Exception as e:  # a benchmark reports every failure as a row
            self.error(name, e)
            return
        self.row(name, value, note)


def run_child(args: argparse.Namespace, run: Callable[[Recorder, argparse.Namespace], None]) -> None:
    """Run part `args.part` (`run(recorder, args)`), seeded, with TF32 matmuls on CUDA; an exception
    that escapes the part is recorded as a row, then re-raised so the child exits non-zero."""
    import torch

    rec = Recorder(args.part, Path(args.rows))
    torch.manual_seed(0)
    if args.device.startswith("cuda") and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    try:
        run(rec, args)
    except Exception as e:
        rec.error("part", e)
        raise


def sync(device: Any) -> None:
    """Wait for the device's queued work, so a wall-clock reading covers it."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: Any, fn: Callable[[], Any]) -> tuple[float, Any]:
    """`fn()`'s seconds on `device` (its queued work included) and its result."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def reset_peak(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory(device: Any, *, peak: bool = True) -> str:
    """GPU memory allocated since `reset_peak` (peak) or now; on a CPU, the process's peak RSS
    (the only reading there, so a current value asked for says it is the peak)."""
    import torch

    if device.type == "cuda":
        if peak:
            gib = torch.cuda.max_memory_allocated(device) / 2**30
            reserved = torch.cuda.max_memory_reserved(device) / 2**30
            return f"{gib:.2f} GiB (reserved {reserved:.2f})"
        return f"{torch.cuda.memory_allocated(device) / 2**30:.2f} GiB"
    rss = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"
    return rss if peak else f"{rss} (process peak)"


# --- parent side: run the parts, bound them in time, print and write the table -------------------------
def add_arguments(p: argparse.ArgumentParser, parts: Sequence[str], results: Path, budget_s: float) -> None:
    """The arguments every GPU benchmark takes: where it runs, which parts, the table, the budget,
    and the hidden pair that makes the script a child running one part."""
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=None, help=f"table file (default {results})")
    p.add_argument("--parts", default=",".join(parts), help=f"comma-separated, of {', '.join(parts)}")
    p.add_argument("--budget-s", type=float, default=budget_s, help="whole-run limit (parts share it)")
    p.add_argument("--part", choices=parts, help=argparse.SUPPRESS)  # child mode
    p.add_argument("--rows", help=argparse.SUPPRESS)


def chosen_parts(p: argparse.ArgumentParser, value: str, parts: Sequence[str]) -> list[str]:
    """The parts named in `--parts`, in order; an unknown or empty choice is a usage error."""
    chosen = [s.strip() for s in value.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in parts]
    if unknown or not chosen:
        p.error(f"unknown part(s) {unknown}; choose from {', '.join(parts)}")
    return chosen


def dry_run_out(out: Path | None, prefix: str, name: str) -> Path:
    """A dry run's table goes to a fresh temporary folder unless `--out` names a file."""
    return out if out is not None else Path(tempfile.mkdtemp(prefix=prefix)) / name


def environment(device: str, packages: Sequence[str]) -> str:
    """The GPU (from nvidia-smi, on a CUDA run) and the versions of `packages`, for the header."""
    versions = []
    for name in packages:
        try:
            versions.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{name} absent")
    gpu = "no GPU query"
    if device.startswith("cuda"):
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]
            gpu = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or "none"
        except (OSError, subprocess.TimeoutExpired):
            gpu = "nvidia-smi unavailable"
    return f"GPU: {gpu}; {', '.join(versions)}"


def run_part_in_subprocess(
    script: Path, part: str, forwarded: list[str], limit: float, wall_note: str
) -> tuple[list[Row], bool]:
    """Run one part in a subprocess for at most `limit` seconds; its rows, and whether it completed."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.jsonl"
        rows_file.touch()
        argv = [sys.executable, str(script.resolve()), "--part", part, "--rows", str(rows_file), *forwarded]
        started = time.perf_counter()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        try:
            output, _ = proc.communicate(timeout=limit)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole part: its threads and any workers
            output, _ = proc.communicate()
            timed_out = True
        elapsed = time.perf_counter() - started
        rows = [Row(**json.loads(line)) for line in rows_file.read_text().splitlines() if line.strip()]
    ok = not timed_out and proc.returncode == 0 and all(r.value != "ERROR" for r in rows)
    if timed_out:
        rows.append(
            Row(part, "time limit", "ERROR", f"stopped after {limit:.0f} s; rows above were measured")
        )
    elif proc.returncode != 0:
        tail = [line for line in output.strip().splitlines() if line.strip()][-1:] or ["no output"]
        rows.append(Row(part, "part failed", "ERROR", f"exit {proc.returncode}: {tail[0][:200]}"))
    rows.append(Row(part, "part wall time", f"{elapsed:.1f} s", wall_note))
    return rows, ok


def run_parts(
    script: Path,
    parts: Sequence[str],
    forwarded: list[str],
    limits: Mapping[str, float],
    budget_s: float,
    wall_note: str,
) -> tuple[list[Row], bool]:
    """Run `parts` one after another, each within its limit and what is left of `budget_s`, printing
    each part's rows as it ends; all the rows, and whether every part measured without an error."""
    deadline = time.perf_counter() + budget_s
    width = max(PART_WIDTH, *(len(part) for part in parts))
    rows: list[Row] = []
    all_ok = True
    for part in parts:
        remaining = deadline - time.perf_counter()
        if remaining < 5:
            rows.append(Row(part, "skipped", "ERROR", f"the {budget_s:.0f} s budget was spent"))
            all_ok = False
            continue
        limit = min(limits[part], remaining)
        part_rows, ok = run_part_in_subprocess(script, part, forwarded, limit, wall_note)
        rows += part_rows
        all_ok &= ok
        print("\n".join(f"{r.part:<{width}} {r.name}: {r.value} {r.note}" for r in part_rows), flush=True)
    return rows, all_ok


def table(rows: list[Row], header: list[str]) -> str:
    """`header`, a blank line, then the rows in aligned columns under their titles."""
    titles = Row("part", "measurement", "value", "notes")
    width_part = max(PART_WIDTH, *(len(r.part) for r in rows))
    width_name = max(len(r.name) for r in rows) + 2
    width_value = max(len(r.value) for r in rows) + 2
    lines = [
        f"{r.part:<{width_part}} {r.name:<{width_name}} {r.value:<{width_value}} {r.note}".rstrip()
        for r in (titles, *rows)
    ]
    return "\n".join([*header, "", *lines]) + "\n"


def write_table(rows: list[Row], header: list[str], out: Path, all_ok: bool) -> int:
    """Print the table and write it to `out`; the benchmark's exit status (0: every part measured)."""
    text = table(rows, header)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"table written to {out}")
    return 0 if all_ok else 1
