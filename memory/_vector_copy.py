"""Our own copy of an embedded memory's vectors, beside Chroma's files.

Embedded Chroma keeps a collection's vectors only in its HNSW index files: the SQLite write log
that also holds them is purged once the index has them (``automatically_purge``), and
``collection.get(include=["embeddings"])`` reads them back from ``data_level0.bin``. A damaged index
therefore loses the vectors with the graph. This copy — one SQLite file, ``codi2-vectors.sqlite3``
in the memory's folder — is what a damaged index is rebuilt from (see `_index_check.py`).

It is written *before* Chroma on every add and cleaned *after* Chroma on every delete, so it always
holds at least the vectors of the items Chroma holds; extra rows (a write that failed half way) are
never read, since a rebuild takes its list of items from Chroma. The same file records, per
namespace, a fingerprint of the index files as they were when last known good.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._errors import CorruptMemoryError

__all__ = ["VECTOR_COPY_FILE", "VectorCopy"]

VECTOR_COPY_FILE = "codi2-vectors.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS verified (
    namespace TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL
);
"""
_CHUNK = 500  # ids per statement: below SQLite's default limit on bound parameters


class VectorCopy:
    """The vectors of every item of an embedded memory, by (collection, item id), as float32."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / VECTOR_COPY_FILE
        self._lock = threading.Lock()
        try:
            # check_same_thread=False: the memory is used from worker threads; `_lock` serialises.
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise CorruptMemoryError(
                folder,
                f"its vector copy {self.path.name} cannot be read ({e}); if the index itself is "
                "intact, delete that file and open the memory again to copy the vectors afresh",
            ) from e

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- vectors ---------------------------------------------------------------------------------
    def put(self, collection: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store (or replace) the vectors of `ids`, row by row."""
        rows = [
            (collection, rid, np.asarray(vec, dtype=np.float32).tobytes())
            for rid, vec in zip(ids, vectors, strict=True)
        ]
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?)", rows)

    def get(self, collection: str, ids: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        """The stored vectors of those `ids` that have one of length `dim` (others are missing)."""
        out: dict[str, np.ndarray] = {}
        with self._lock:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                query = f"SELECT id, vector FROM vectors WHERE collection = ? AND id IN ({marks})"
                for rid, blob in self._conn.execute(query, [collection, *chunk]):
                    if isinstance(blob, bytes) and len(blob) == 4 * dim:
                        out[rid] = np.frombuffer(blob, dtype=np.float32)
        return out

    def delete(self, collection: str, ids: Sequence[str]) -> None:
        with self._lock, self._conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = list(ids[start : start + _CHUNK])
                marks = ",".join("?" * len(chunk))
                self._conn.execute(
                    f"DELETE FROM vectors WHERE collection = ? AND id IN ({marks})", [collection, *chunk]
                )

    def keep_only(self, collection: str, ids: Sequence[str]) -> int:
        """Drop the rows of `collection` whose id is not in `ids` (leftovers of failed writes)."""
        wanted = set(ids)
        with self._lock:
            rows = self._conn.execute("SELECT id FROM vectors WHERE collection = ?", (collection,))
            stored = [r[0] for r in rows]
        extra = [rid for rid in stored if rid not in wanted]
        if extra:
            self.delete(collection, extra)
        return len(extra)

    def drop(self, collection: str) -> None:
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM vectors WHERE collection = ?", (collection,))

    # --- the last known-good state of the index files ---------------------------------------------
    def fingerprint(self, namespace: str) -> str | None:
        with self._lock:
            query = "SELECT fingerprint FROM verified WHERE namespace = ?"
            row = self._conn.execute(query, (namespace,)).fetchone()
        return None if row is None else str(row[0])

    def set_fingerprint(self, namespace: str, fingerprint: str | None) -> None:
        with self._lock, self._conn:
            if fingerprint is None:
                self._conn.execute("DELETE FROM verified WHERE namespace = ?", (namespace,))
            else:
                self._conn.execute("INSERT OR REPLACE INTO verified VALUES (?, ?)", (namespace, fingerprint))
