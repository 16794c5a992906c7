"""Benchmark of the exemplar memory: add throughput and query latency as a tenant's memory grows.

One tenant's collection grows 0 → 1k → 10k → 100k items (docs/architecture.md §12: query p50 ≤ 10 ms at
100k). At each size it times, through the public `ExemplarMemory` API:

- ``add/s``      items per second written by `add_many` (precomputed vectors, batches of --batch);
- ``vector``     `search` by a vector, k=4, no filter — the similarity search exemplars come from;
- ``text``       `search` by free text (our registered Chroma embedding function + the query);
- ``thread``     `search` limited to one thread (over-fetch, then Chroma's `where` only if sparse);
- ``edits``      `analogous_edits`, k=2 (edit filter + lookup of each pair's source);
- ``ref``        `reference` by a 12-digit ``@m:`` prefix, any thread (an indexed metadata `get`);
- ``where``      for comparison: a raw Chroma query with a `where` thread filter, no over-fetch.

Vectors are clustered (200 centres + noise) rather than uniform, like encoder features. Every other
item is an edit output whose parent is the previous item of its thread (100 threads).

usage:
    nice -n 10 python benchmarks/bench_memory.py                     # 64-d and 256-d, up to 100k
    python benchmarks/bench_memory.py --dims 64 --sizes 1000 10000   # quick
    python benchmarks/bench_memory.py --mode server                  # through `chroma run` on loopback
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

import numpy as np

from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import ExemplarMemory, HashingEmbedder, NewItem

TENANT = "bench"
N_THREADS = 100
WORDS = [
    "red",
    "blue",
    "green",
    "yellow",
    "star",
    "circle",
    "square",
    "triangle",
    "night",
    "snow",
    "rain",
    "desert",
]


def _vectors(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), n)]
    vecs = picks + 0.35 * rng.standard_normal(picks.shape).astype(np.float32) / np.sqrt(centres.shape[1])
    return (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)


def _aid(i: int) -> str:
    """A fake, well-formed artifact id for item i (this measures the memory, not the store); hashed so
    that 12-digit prefixes are unique, as real content ids are."""
    return hashlib.sha256(str(i).encode()).hexdigest()


def _entries(start: int, stop: int) -> list[NewItem]:
    out = []
    for i in range(start, stop):
        thread, turn = f"thread-{i % N_THREADS}", i // N_THREADS
        aid = _aid(i)
        ref = MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png", turn=turn)
        caption = " ".join(WORDS[(i * k) % len(WORDS)] for k in (1, 3, 7))
        is_edit = turn > 0 and i % 2 == 1
        # The parent is the thread's previous item, named by its MediaRef (with its turn), as the graph does.
        parent = None
        if is_edit:
            pid = _aid(i - N_THREADS)
            parent = MediaRef(
                id=pid, uri="artifact://" + pid, modality=Modality.IMAGE, mime="image/png", turn=turn - 1
            )
        out.append(
            NewItem(
                thread,
                ref,
                role="output" if is_edit else "input",
                parents=[parent] if parent else [],
                caption=caption,
                instruction="make it " + WORDS[i % 4] if is_edit else None,
                task="edit" if is_edit else None,
            )
        )
    return out


def _time(fn: Callable[[int], object], n: int, warmup: int = 5) -> tuple[float, float, float]:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1000.0)
    arr = np.array(times)
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 95)), float(arr.mean())


def _measure(memory: ExemplarMemory, probes: np.ndarray, texts: list[str], queries: int) -> dict:
    col = memory._collections.open(TENANT)  # raw Chroma, for the `where` comparison
    assert col is not None
    size = memory.count(TENANT)

    def thread(i: int) -> str:
        return f"thread-{i % N_THREADS}"

    def mention(i: int) -> str:  # an "@m:" reference to an item spread over the whole tenant
        return "@m:" + _aid((i * 7919) % size)[:12]

    return {
        "vector": _time(lambda i: memory.search(TENANT, probes[i], k=4), queries),
        "text": _time(lambda i: memory.search(TENANT, texts[i], k=4), queries),
        "thread": _time(lambda i: memory.search(TENANT, probes[i], k=4, thread=thread(i)), queries),
        "edits": _time(lambda i: memory.analogous_edits(TENANT, probes[i], k=2), queries),
        "ref": _time(lambda i: memory.reference(TENANT, mention(i)), max(queries // 4, 10)),
        "where": _time(
            lambda i: col.query(query_embeddings=[probes[i]], n_results=4, where={"thread": thread(i)}),
            queries,
        ),
    }


def _start_server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    exe = str(Path(sys.executable).parent / "chroma")
    proc = subprocess.Popen(
        [exe, "run", "--path", str(root / "server-db"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("chroma server did not start")


def run_dim(dim: int, sizes: list[int], queries: int, batch: int, mode: str, root: Path) -> list[dict]:
    rng = np.random.default_rng(dim)
    embedder = HashingEmbedder(dim=dim)
    centres = rng.standard_normal((200, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    server = None
    if mode == "server":
        server, port = _start_server(root / f"d{dim}")
        memory = ExemplarMemory(host="127.0.0.1", port=port, embedder=embedder, namespace=f"bench{dim}")
    else:
        memory = ExemplarMemory(root / f"d{dim}", embedder=embedder)
    rows = []
    try:
        have = 0
        for size in sizes:
            # 1. Grow the tenant to `size` items, timing only the writes.
            add_s = 0.0
            for start in range(have, size, batch):
                stop = min(size, start + batch)
                entries, vecs = _entries(start, stop), _vectors(rng, centres, stop - start)
                t0 = time.perf_counter()
                memory.add_many(TENANT, entries, vectors=vecs)
                add_s += time.perf_counter() - t0
            added, have = size - have, size
            assert memory.count(TENANT) == size

            # 2. Queries (fresh random probes from the same distribution; thread picked per query).
            probes = _vectors(rng, centres, queries + 10)
            texts = [" ".join(rng.choice(WORDS, 3)) for _ in range(queries + 10)]
            row = {
                "dim": dim,
                "items": size,
                "add_per_s": added / add_s,
                **_measure(memory, probes, texts, queries),
            }
            rows.append(row)
            print(_format_row(row), flush=True)
    finally:
        memory.close()
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
    return rows


COLUMNS = ["vector", "text", "thread", "edits", "ref", "where"]


def _header() -> str:
    cols = "".join(f" {c + ' p50/p95':>17}" for c in COLUMNS)
    return f"{'dim':>4} {'items':>7} {'add/s':>7}{cols}"


def _format_row(row: dict) -> str:
    cols = "".join(f" {row[c][0]:>8.1f}/{row[c][1]:<8.1f}" for c in COLUMNS)
    return f"{row['dim']:>4} {row['items']:>7} {row['add_per_s']:>7.0f}{cols}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dims", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--mode", choices=["embedded", "server"], default="embedded")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "memory.txt")
    ap.add_argument("--keep", action="store_true", help="keep the Chroma folders (printed) for inspection")
    args = ap.parse_args()

    import chromadb

    root = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    lines = [
        f"# ExemplarMemory benchmark: {args.mode} Chroma {chromadb.__version__}, "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs "
        f"({platform.machine()}), "
        f"{time.strftime('%Y-%m-%d')}",
        f"# one tenant, {N_THREADS} threads, half the items are edit outputs; add batches of {args.batch}; "
        f"{args.queries} queries per cell (ref: {max(args.queries // 4, 10)}) after 5 warm-up queries",
        "# latencies in ms (p50/p95); add/s = items per second written while growing to `items`",
        "# vector: search by vector, k=4 | text: search by free text | thread: search within one thread |",
        "# edits: analogous_edits k=2 | ref: reference by an @m: prefix (12 digits) |",
        "# where: raw chroma query with where=thread (no over-fetch), for comparison",
        _header(),
    ]
    print("\n".join(lines), flush=True)
    started = time.perf_counter()
    try:
        for dim in args.dims:
            for row in run_dim(dim, sorted(args.sizes), args.queries, args.batch, args.mode, root):
                lines.append(_format_row(row))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    lines.append(f"# total wall time {time.perf_counter() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[-1])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
