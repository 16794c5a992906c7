"""The child process that opens an embedded memory's HNSW indexes, so that if Chroma's native code
crashes on damaged files (it does: SIGSEGV on a search over a flipped ``data_level0.bin``) only this
process dies. Run by `_index_check.py` as ``python -m codi2_agent.memory._index_probe`` with a JSON
job on stdin; it answers with one JSON line per event on stdout:

- ``{"event": "begin", "collection": name}`` before touching a collection (so the parent knows
  which one was being read if this process dies), ``{"event": "progress"}`` while reading a large one;
- probe: ``ok`` (with ``items`` and ``copied``: vectors newly saved to the vector copy) or ``bad``
  (with ``reason``) — the index must list every item, return each item's vector equal to the copy's,
  and find a sample of items as their own nearest neighbours;
- rebuild (the damaged index folder already moved aside by the parent): ``rebuilt`` after
  re-adding every item with its metadata and its vector from the copy, or ``unrecoverable`` when
  some item has no copied vector (nothing is written then);
- ``{"event": "fatal", "reason": ...}`` when the folder cannot be opened at all; ``done`` at the end.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._vector_copy import VectorCopy

PAGE = 2000
SAME = 1e-4  # cosine distance below which two vectors are the same vector (float noise aside)


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _pages(col: Any, include: list[str]) -> Iterator[dict[str, Any]]:
    offset = 0
    while True:
        got = col.get(include=include, limit=PAGE, offset=offset)
        yield got
        _emit("progress")
        if len(got["ids"]) < PAGE:
            return
        offset += PAGE


def _unit(vecs: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vecs, axis=-1, keepdims=True)
    return vecs / np.where(norms == 0, 1.0, norms)


def _differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise: whether a and b point in different directions (or hold non-finite values)."""
    with np.errstate(all="ignore"):
        dist = 1.0 - np.sum(_unit(a) * _unit(b), axis=-1)
    return ~(np.isfinite(dist) & (dist <= SAME))


def _dim(col: Any) -> int | None:
    dim = (col.metadata or {}).get("dim")
    return dim if isinstance(dim, int) and not isinstance(dim, bool) and dim > 0 else None


def probe(col: Any, copy: VectorCopy, probes: int) -> dict[str, Any]:
    ids = [rid for page in _pages(col, []) for rid in page["ids"]]
    count = col.count()
    if count != len(ids):
        return {"event": "bad", "reason": f"count() says {count} items but {len(ids)} are listed"}
    if not ids:
        return {"event": "ok", "items": 0, "copied": 0}
    vectors: dict[str, np.ndarray] = {}
    for start in range(0, len(ids), PAGE):
        got = col.get(ids=ids[start : start + PAGE], include=["embeddings"])
        embs = got["embeddings"] if got["embeddings"] is not None else []
        vectors.update(zip(got["ids"], np.asarray(embs, dtype=np.float32), strict=False))
        _emit("progress")
    lacking = [rid for rid in ids if rid not in vectors]
    if lacking:
        return {"event": "bad", "reason": f"the index lacks {len(lacking)} of {len(ids)} items"}
    dim = _dim(col) or len(next(iter(vectors.values())))
    copied = copy.get(col.name, ids, dim)
    if copied:
        both = list(copied)
        differ = _differ(np.stack([vectors[i] for i in both]), np.stack([copied[i] for i in both]))
        if differ.any():
            return {"event": "bad", "reason": f"{int(differ.sum())} vectors differ from the vector copy"}
    sample = [*ids[:: max(1, len(ids) // probes)][:probes], ids[-1]]
    found = col.query(query_embeddings=np.stack([vectors[i] for i in sample]), n_results=1, include=[])
    for rid, hits in zip(sample, found["ids"], strict=True):
        top = hits[0] if hits else None
        if top is None or top not in vectors or _differ(vectors[top], vectors[rid]):
            return {"event": "bad", "reason": f"the nearest neighbour of item {rid} is {top}, not itself"}
    new = [rid for rid in ids if rid not in copied]
    if new:  # a memory written before the copy existed: its vectors are readable now, keep them
        copy.put(col.name, new, np.stack([vectors[i] for i in new]))
    copy.keep_only(col.name, ids)
    return {"event": "ok", "items": len(ids), "copied": len(new)}


def rebuild(col: Any, copy: VectorCopy, batch: int) -> dict[str, Any]:
    ids: list[str] = []
    metadatas: list[Any] = []
    documents: list[Any] = []
    for page in _pages(col, ["metadatas", "documents"]):
        ids += page["ids"]
        metadatas += page["metadatas"] or [None] * len(page["ids"])
        documents += page["documents"] or [None] * len(page["ids"])
    dim = _dim(col)
    copied = copy.get(col.name, ids, dim) if dim is not None else {}
    missing = [rid for rid in ids if rid not in copied]
    if missing:
        return {
            "event": "unrecoverable",
            "reason": f"{len(missing)} of its {len(ids)} items have no copy of their vector "
            f"(e.g. item {missing[0]}), and the damaged index was their only one",
        }
    for start in range(0, len(ids), batch):
        part = slice(start, start + batch)
        docs = documents[part]
        col.upsert(
            ids=ids[part],
            embeddings=np.stack([copied[i] for i in ids[part]]),
            metadatas=metadatas[part],
            documents=docs if any(d is not None for d in docs) else None,
        )
        _emit("progress")
    return {"event": "rebuilt", "items": len(ids)}


def main() -> int:
    job = json.loads(sys.stdin.read())
    folder = Path(job["folder"])
    try:
        import chromadb
        from chromadb.config import Settings

        client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
        copy = VectorCopy(folder)
    except Exception as e:  # anything here means the folder cannot be opened
        _emit("fatal", reason=f"{type(e).__name__}: {e}")
        return 0
    for name in job["collections"]:
        _emit("begin", collection=name)
        try:
            col = client.get_collection(name)
            if job["mode"] == "probe":
                outcome = probe(col, copy, int(job.get("probes", 16)))
            else:
                outcome = rebuild(col, copy, max(1, int(client.get_max_batch_size())))
        except Exception as e:  # Chroma reports damaged files with assorted errors
            bad = "bad" if job["mode"] == "probe" else "unrecoverable"
            outcome = {"event": bad, "reason": f"{type(e).__name__}: {str(e)[:300]}"}
        _emit(outcome.pop("event"), collection=name, **outcome)
    _emit("done")
    copy.close()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    sys.exit(main())
