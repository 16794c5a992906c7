"""Benchmark of the integrity checks on open: the embedded memory's index check and the checkpoint
database's checks (docs/architecture.md §11).

Memory (one tenant of N items, precomputed vectors), each open timed through `ExemplarMemory`:

- ``unchecked``  ``verify_index=False``: what opening cost before the check existed;
- ``clean``      reopen after a clean close: the index files hash to what the last close recorded,
                 so no child process runs (the common case);
- ``probe``      reopen with the files unvouched for (as after a crash): a child process opens Chroma
                 and probes every collection (reads every vector back, compares it with the copy,
                 queries a sample);
- ``rebuild``    reopen after flipping bytes in ``data_level0.bin``: probe, then a second child
                 rebuilds the index from the vector copy;
- ``copy/1k``    ms to write 1,000 vectors to the vector copy (what each ``add_many`` pays extra).

Checkpoints: `sqlite_checkpointer` on a database of 1,000 checkpoints (about 28 MB, like a
1,000-turn session), with and without ``PRAGMA quick_check``, warm page cache.

usage:
    python benchmarks/bench_integrity.py                      # 1k and 10k items, 32-d and 512-d
    python benchmarks/bench_integrity.py --sizes 1000 --dims 32 --out -
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np

from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import ExemplarMemory, HashingEmbedder, NewItem
from codi2_agent.memory._index_check import vector_segments
from codi2_agent.memory._vector_copy import VectorCopy

TENANT = "bench"


def _entries(n: int) -> list[NewItem]:
    out = []
    for i in range(n):
        aid = hashlib.sha256(f"bench{i}".encode()).hexdigest()
        ref = MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png")
        out.append(NewItem(f"t{i % 50}", ref, turn=i))
    return out


def _build(path: Path, n: int, dim: int) -> None:
    vecs = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    memory = ExemplarMemory(path, embedder=HashingEmbedder(dim=dim))
    entries = _entries(n)
    for start in range(0, n, 1000):
        memory.add_many(TENANT, entries[start : start + 1000], vectors=vecs[start : start + 1000])
    memory.close()


def _timed_open(path: Path, dim: int, **options: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    memory = ExemplarMemory(path, embedder=HashingEmbedder(dim=dim), **options)
    seconds = time.perf_counter() - start
    report = memory.index_report
    memory.close()
    return seconds, report


def _forget_fingerprint(path: Path) -> None:
    copy = VectorCopy(path)
    copy.set_fingerprint("codi2", None)
    copy.close()


def _flip_index(path: Path) -> None:
    ((segment, _),) = vector_segments(path, "codi2").values()
    file = path / segment / "data_level0.bin"
    data = bytearray(file.read_bytes())
    rng = random.Random(1)
    for _ in range(len(data) // 50):
        data[rng.randrange(len(data))] ^= 0xFF
    file.write_bytes(bytes(data))


def memory_rows(sizes: list[int], dims: list[int], repeats: int) -> list[str]:
    rows = [
        f"{'dim':>4} {'items':>6} {'unchecked':>10} {'clean':>8} {'probe':>8} {'rebuild':>8} {'copy/1k':>8}"
        "   (ms, median)"
    ]
    for dim in dims:
        for n in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "memory"
                _build(path, n, dim)
                _timed_open(path, dim)  # warm the page cache; records the fingerprint
                unchecked = [_timed_open(path, dim, verify_index=False)[0] for _ in range(repeats)]
                _timed_open(path, dim)  # the unchecked opens left nothing vouched for: re-vouch
                clean = []
                for _ in range(repeats):
                    seconds, report = _timed_open(path, dim)
                    assert report.skipped, report
                    clean.append(seconds)
                probe = []
                for _ in range(repeats):
                    _forget_fingerprint(path)
                    seconds, report = _timed_open(path, dim)
                    assert not report.skipped and not report.rebuilt, report
                    probe.append(seconds)
                _flip_index(path)
                rebuild, report = _timed_open(path, dim)
                assert report.rebuilt, report
                copy = VectorCopy(Path(tmp) / "memory")
                vecs = np.random.default_rng(1).standard_normal((1000, dim)).astype(np.float32)
                start = time.perf_counter()
                copy.put("bench-copy", [f"{i:032x}" for i in range(1000)], vecs)
                copy_ms = 1000 * (time.perf_counter() - start)
                copy.close()
            ms = [1000 * statistics.median(x) for x in (unchecked, clean, probe)]
            cells = f"{ms[0]:>10.1f} {ms[1]:>8.1f} {ms[2]:>8.0f} {1000 * rebuild:>8.0f} {copy_ms:>8.1f}"
            rows.append(f"{dim:>4} {n:>6} {cells}")
            print(rows[-1], flush=True)
    return rows


class _State(TypedDict):
    last: str
    turn: int


def checkpoint_rows(checkpoints: int, repeats: int) -> list[str]:
    from langgraph.graph import END, START, StateGraph

    from codi2_agent.graphs import sqlite_checkpointer

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoints.sqlite"
        saver = sqlite_checkpointer(path)
        graph = StateGraph(_State)
        graph.add_node("step", lambda s: {"last": os.urandom(13_000).hex(), "turn": s.get("turn", 0) + 1})
        graph.add_edge(START, "step")
        graph.add_edge("step", END)
        app = graph.compile(checkpointer=saver)
        config = {"configurable": {"thread_id": "t"}}
        while saver.conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0] < checkpoints:
            app.invoke({"last": ""}, config)
        count = saver.conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        saver.conn.close()
        mb = path.stat().st_size / 1e6

        def open_ms(quick_check: bool) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                sqlite_checkpointer(path, quick_check=quick_check).conn.close()
                times.append(time.perf_counter() - start)
            return 1000 * statistics.median(times)

        def pragma_ms() -> float:
            times = []
            for _ in range(repeats):
                conn = sqlite3.connect(path)
                start = time.perf_counter()
                conn.execute("PRAGMA quick_check").fetchall()
                times.append(time.perf_counter() - start)
                conn.close()
            return 1000 * statistics.median(times)

        with_check, without, pragma = open_ms(True), open_ms(False), pragma_ms()
    return [
        f"{'checkpoints':>11} {'MB':>6} {'open':>8} {'open, no check':>15} {'quick_check':>12}"
        "   (ms, median)",
        f"{count:>11} {mb:>6.1f} {with_check:>8.1f} {without:>15.1f} {pragma:>12.1f}",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[32, 512])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--checkpoints", type=int, default=1000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "integrity.txt"))
    args = ap.parse_args()

    import chromadb

    started = time.perf_counter()
    lines = [
        f"# integrity checks on open: embedded Chroma {chromadb.__version__}, "
        f"CPython {platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}",
        "# memory: one tenant; unchecked = verify_index=False; clean = reopen after a clean close",
        "# (no child); probe = files unvouched for, as after a crash (child process); rebuild = flipped",
        "# data_level0.bin (probe + rebuild child); copy/1k = writing 1,000 vectors to the vector copy",
    ]
    lines += memory_rows(args.sizes, args.dims, args.repeats)
    lines += [
        "# checkpoints: sqlite_checkpointer open with / without PRAGMA quick_check, and the pragma alone"
    ]
    lines += checkpoint_rows(args.checkpoints, args.repeats)
    lines.append(f"# total wall time {time.perf_counter() - started:.0f} s")
    text = "\n".join(lines) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(text)


if __name__ == "__main__":
    main()
