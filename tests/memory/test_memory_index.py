"""The embedded memory's vector copy and its index check on open (damage itself is attacked in
tests/security/test_corruption.py): the copy follows every write and delete, a clean reopen starts
no child process, a crashed one does, older memories get their copy, and every failure is named."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import CorruptMemoryError, ExemplarMemory, HashingEmbedder, NewItem

from .conftest import DIM

COPY = "codi2-vectors.sqlite3"
WRITER = Path(__file__).with_name("_memory_writer.py")


def _ref(name: str) -> MediaRef:
    aid = hashlib.sha256(name.encode()).hexdigest()
    return MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png")


def _open(path: Path, **options) -> ExemplarMemory:
    return ExemplarMemory(path, embedder=HashingEmbedder(dim=DIM), **options)


def _add(memory: ExemplarMemory, tenant: str, thread: str, n: int, seed: int = 0) -> np.ndarray:
    vecs = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    entries = [NewItem(thread, _ref(f"{tenant}{thread}{i}"), turn=i) for i in range(n)]
    memory.add_many(tenant, entries, vectors=vecs)
    return vecs


def _written(path: Path, n: int, **options) -> str:
    """Open a memory at `path`, give alice `n` items, close it; alice's collection name."""
    memory = _open(path, **options)
    _add(memory, "alice", "t", n)
    memory.close()
    return memory.collection_name("alice")


def _copied(path: Path, collection: str) -> dict[str, np.ndarray]:
    conn = sqlite3.connect(path / COPY)
    try:
        rows = conn.execute("SELECT id, vector FROM vectors WHERE collection = ?", (collection,)).fetchall()
    finally:
        conn.close()
    return {rid: np.frombuffer(blob, dtype=np.float32) for rid, blob in rows}


def _in_chroma(memory: ExemplarMemory, tenant: str) -> dict[str, np.ndarray]:
    return {it.id: vec for it, vec in memory.records(tenant)}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    """Same ids, same directions (a cosine index keeps its vectors normalised; the copy as given)."""

    def unit(v: np.ndarray) -> np.ndarray:
        return v / np.linalg.norm(v)

    return a.keys() == b.keys() and all(np.allclose(unit(a[k]), unit(b[k]), atol=1e-6) for k in a)


def test_the_copy_follows_every_write_and_delete(tmp_path: Path) -> None:
    path = tmp_path / "db"
    memory = _open(path)
    try:
        alice = memory.collection_name("alice")
        _add(memory, "alice", "t1", 30)
        _add(memory, "alice", "t2", 10, seed=1)
        _add(memory, "bob", "t1", 5, seed=2)
        assert _same(_copied(path, alice), _in_chroma(memory, "alice"))
        _add(memory, "alice", "t1", 30, seed=3)  # the same items with new vectors: replaced in both
        assert _same(_copied(path, alice), _in_chroma(memory, "alice")) and len(_copied(path, alice)) == 40

        memory.forget_items("alice", [it.id for it in memory.items("alice", thread="t1")[:5]])
        memory.forget_thread("alice", "t2")
        memory.reconcile_thread("alice", "t1", [(_ref("alicet1" + str(i)).id, i) for i in range(20)])
        assert memory.count("alice") == 15
        assert _same(_copied(path, alice), _in_chroma(memory, "alice"))

        memory.forget_tenant("alice")
        assert _copied(path, alice) == {}
        assert _same(_copied(path, memory.collection_name("bob")), _in_chroma(memory, "bob"))
    finally:
        memory.close()


def test_a_clean_reopen_starts_no_child(tmp_path: Path) -> None:
    path = tmp_path / "db"
    memory = _open(path)
    assert memory.index_report is not None and memory.index_report.skipped  # a new folder
    _add(memory, "alice", "t", 1500)  # past Chroma's flush threshold: the index files change
    memory.close()

    again = _open(path)
    try:
        assert again.index_report.skipped and again.index_report.checked == ()
        assert again.count("alice") == 1500
    finally:
        again.close()


def test_a_crashed_writer_is_probed_on_reopen(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _open(path).close()
    args = {"mode": "embedded", "path": str(path), "namespace": "codi2", "tenant": "alice", "thread": "t"}
    run = subprocess.run(
        [sys.executable, str(WRITER), json.dumps({**args, "n": 1100, "batch": 550, "crash": True})],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    written = json.loads(run.stdout.strip().splitlines()[-1])["ids"]

    memory = _open(path)
    try:
        report = memory.index_report
        assert not report.skipped and report.checked == (memory.collection_name("alice"),)
        assert report.rebuilt == () and report.problems == {}
        assert {it.id for it in memory.items("alice")} == set(written)
    finally:
        memory.close()


def test_an_older_memory_gets_its_copy_on_the_first_checked_open(tmp_path: Path) -> None:
    path = tmp_path / "db"
    name = _written(path, 50)
    (path / COPY).unlink()  # as a memory written before the copy existed

    again = _open(path)
    try:
        assert again.index_report.copied == 50 and again.index_report.rebuilt == ()
        assert _same(_copied(path, name), _in_chroma(again, "alice"))
    finally:
        again.close()


def test_unverified_opens_leave_the_next_open_to_check(tmp_path: Path) -> None:
    path = tmp_path / "db"
    memory = _open(path, verify_index=False)
    assert memory.index_report is None
    _add(memory, "alice", "t", 10)
    memory.close()
    again = _open(path)  # nothing vouched for the files the unverified memory left
    try:
        assert not again.index_report.skipped and again.index_report.problems == {}
    finally:
        again.close()


def test_a_second_memory_on_an_open_folder_does_not_probe_it(tmp_path: Path) -> None:
    path = tmp_path / "db"
    first = _open(path)
    _add(first, "alice", "t", 10)
    second = _open(path)  # same process, same Chroma: a child must not open the live files
    try:
        assert second.index_report.skipped
        assert second.count("alice") == 10
    finally:
        second.close()
        first.close()
    assert _open(path).index_report.skipped  # the last close recorded the files


def test_a_silent_child_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _written(path, 10, verify_index=False)
    with pytest.raises(CorruptMemoryError, match=r"gave no answer for 0\.01 s") as info:
        _open(path, verify_timeout_s=0.01)  # no child imports Chroma that fast
    assert info.value.folder == path
    healthy = _open(path)  # nothing was changed on the way to the error
    try:
        assert healthy.count("alice") == 10 and healthy.index_report.problems == {}
    finally:
        healthy.close()


def test_a_damaged_vector_copy_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _open(path).close()
    (path / COPY).write_bytes(b"not a database" * 100)
    with pytest.raises(CorruptMemoryError, match=COPY) as info:
        _open(path)
    assert "delete that file" in info.value.reason


def test_a_damaged_chroma_database_is_a_named_error(tmp_path: Path) -> None:
    path = tmp_path / "db"
    _written(path, 10)
    (path / "chroma.sqlite3").write_bytes(b"\x00garbage" * 5000)
    with pytest.raises(CorruptMemoryError, match=r"chroma\.sqlite3"):
        _open(path)


def test_server_memories_have_no_copy(chroma_server, tmp_path: Path) -> None:
    server = {"host": chroma_server.host, "port": chroma_server.port}
    memory = ExemplarMemory(**server, embedder=HashingEmbedder(dim=DIM), namespace="nocopy")
    try:
        _add(memory, "alice", "t", 3)
        assert memory.index_report is None  # the server owns its files; this process cannot crash on them
    finally:
        memory.forget_tenant("alice")
        memory.close()
