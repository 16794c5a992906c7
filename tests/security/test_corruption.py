"""Damaged files on disk are named errors or repaired, never a crash and never a silent empty answer.

- Checkpoint databases: a truncated, overwritten or garbage SQLite file — or a 0-byte one whose
  write-ahead log still holds the data — is a `CorruptCheckpointError` naming the file, instead of
  a thread that silently starts again from nothing.
- Chroma's HNSW index files: flipped, truncated or deleted, or the whole segment folder gone, they
  are found on open and the index is rebuilt from the memory's copy of its vectors (or a
  `CorruptMemoryError` names what cannot be recovered); Chroma runs on them only in a child process,
  so its segfaults never reach the process that opened the memory.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, TypedDict

import numpy as np
import pytest
from langgraph.graph import END, START, StateGraph

from codi2_agent.graphs import CorruptCheckpointError, sqlite_checkpointer
from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import (
    CorruptMemoryError,
    ExemplarMemory,
    ExemplarMemoryError,
    HashingEmbedder,
    NewItem,
)

# --- checkpoint databases ------------------------------------------------------------------------


class _Notes(TypedDict):
    notes: Annotated[list[str], operator.add]


def _graph(path: Path) -> Any:
    """A real LangGraph graph on `sqlite_checkpointer(path)` that appends one note per call."""
    graph = StateGraph(_Notes)
    graph.add_node("note", lambda state: {"notes": [f"note {len(state['notes'])} " + "x" * 600]})
    graph.add_edge(START, "note")
    graph.add_edge("note", END)
    return graph.compile(checkpointer=sqlite_checkpointer(path))


THREAD = {"configurable": {"thread_id": "t"}}


def _close(app: Any) -> None:
    app.checkpointer.conn.close()  # the last close folds the write-ahead log into the main file


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    """A checkpoint database holding 40 turns of one thread, closed (everything in the main file)."""
    path = tmp_path / "checkpoints.sqlite"
    app = _graph(path)
    for _ in range(40):
        app.invoke({"notes": []}, THREAD)
    assert len(app.get_state(THREAD).values["notes"]) == 40
    _close(app)
    assert not Path(f"{path}-wal").exists() and path.stat().st_size > 16 * 4096
    return path


def _refused(path: Path, *words: str) -> CorruptCheckpointError:
    with pytest.raises(CorruptCheckpointError) as info:
        sqlite_checkpointer(path)
    err = info.value
    assert err.path == path and str(path) in str(err)
    for word in words:
        assert word in err.reason, err.reason
    return err


def test_an_intact_database_reopens_with_its_history(checkpoints: Path) -> None:
    app = _graph(checkpoints)
    assert len(app.get_state(THREAD).values["notes"]) == 40
    _close(app)


@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_a_truncated_database_is_a_named_error(checkpoints: Path, keep: float) -> None:
    size = checkpoints.stat().st_size
    os.truncate(checkpoints, int(size * keep) // 4096 * 4096)  # whole pages: only the header can tell
    _refused(checkpoints, "truncated")


def test_a_database_cut_mid_page_is_a_named_error(checkpoints: Path) -> None:
    os.truncate(checkpoints, checkpoints.stat().st_size - 1000)
    _refused(checkpoints, "truncated")


@pytest.mark.parametrize(
    ("offset", "what"),
    [(0, "not a SQLite database"), (6, "not a SQLite database"), (16, "page size")],
)
def test_a_flipped_header_is_a_named_error(checkpoints: Path, offset: int, what: str) -> None:
    with checkpoints.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x5A]))
    _refused(checkpoints, what)


def test_a_damaged_schema_page_is_a_named_error(checkpoints: Path) -> None:
    with checkpoints.open("r+b") as f:  # page 1 after the 100-byte header: sqlite_master's b-tree
        f.seek(100)
        f.write(b"\xff" * 12)
    _refused(checkpoints)


def test_damaged_pages_are_found_by_the_quick_check(checkpoints: Path) -> None:
    pages = checkpoints.stat().st_size // 4096
    with checkpoints.open("r+b") as f:  # wreck the b-tree headers of the later pages
        for page in range(pages // 2, pages):
            f.seek(page * 4096)
            f.write(b"\x0d\xff\xff\xff\xff\xff\xff\xff")
    _refused(checkpoints, "quick_check")
    # Skipping the check opens the file, and then reading it fails inside SQLite instead.
    saver = sqlite_checkpointer(checkpoints, quick_check=False)
    saver.conn.close()


@pytest.mark.parametrize(
    "content", [b"hello, I am not a database\n", os.urandom(10_000), b"\x89PNG\r\n\x1a\n" * 50]
)
def test_a_garbage_file_is_a_named_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "checkpoints.sqlite"
    path.write_bytes(content)
    _refused(path, "not a SQLite database")
    assert path.read_bytes() == content  # nothing was written over it


def test_someone_elses_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    _refused(path, "checkpoints")
    assert sqlite3.connect(path).execute("SELECT total FROM invoices").fetchall() == [(9.5,)]


def test_an_empty_sqlite_database_is_a_new_one(tmp_path: Path) -> None:
    """A file with a SQLite header and no tables (a crash right after it was created) starts afresh."""
    path = tmp_path / "checkpoints.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")  # writes the header page, nothing else
    conn.close()
    assert path.stat().st_size > 0
    app = _graph(path)
    app.invoke({"notes": []}, THREAD)
    assert len(app.get_state(THREAD).values["notes"]) == 1
    _close(app)


def test_a_zero_byte_file_without_a_log_is_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    path.touch()
    app = _graph(path)
    assert app.get_state(THREAD).values == {}
    app.invoke({"notes": []}, THREAD)
    _close(app)
    app = _graph(path)
    assert len(app.get_state(THREAD).values["notes"]) == 1
    _close(app)


def _live_copy_with_log(tmp_path: Path) -> tuple[Path, Path]:
    """A database whose recent turns are only in its write-ahead log (copied while it was open)."""
    src = tmp_path / "live.sqlite"
    app = _graph(src)
    for _ in range(5):
        app.invoke({"notes": []}, THREAD)
    wal = Path(f"{src}-wal")
    assert wal.stat().st_size > 0
    path = tmp_path / "checkpoints.sqlite"
    path.write_bytes(src.read_bytes())
    Path(f"{path}-wal").write_bytes(wal.read_bytes())
    _close(app)
    return path, Path(f"{path}-wal")


def test_a_copy_with_its_log_keeps_its_history(tmp_path: Path) -> None:
    path, _ = _live_copy_with_log(tmp_path)
    app = _graph(path)
    assert len(app.get_state(THREAD).values["notes"]) == 5
    _close(app)


def test_a_zero_byte_file_with_a_log_is_a_truncated_database(tmp_path: Path) -> None:
    """SQLite itself would open this as an empty database and discard the log: the history would be
    gone without a word."""
    path, wal = _live_copy_with_log(tmp_path)
    log = wal.read_bytes()
    os.truncate(path, 0)
    _refused(path, "0 bytes", "write-ahead log")
    assert wal.read_bytes() == log  # the evidence is left as it was


def test_a_missing_file_with_a_log_is_refused(tmp_path: Path) -> None:
    path, wal = _live_copy_with_log(tmp_path)
    path.unlink()
    _refused(path, "missing", "write-ahead log")
    assert not path.exists() and wal.stat().st_size > 0


def test_the_error_is_a_sqlite_database_error_with_path_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "checkpoints.sqlite"
    path.write_bytes(b"garbage" * 100)
    err = _refused(path)
    assert isinstance(err, sqlite3.DatabaseError)
    assert err.reason in str(err)


# --- Chroma's HNSW index files ---------------------------------------------------------------------
#
# Embedded Chroma keeps each collection's vectors only in its HNSW files (data_level0.bin holds
# them; header.bin, link_lists.bin, length.bin and index_metadata.pickle the graph); its SQLite
# log is purged once they are written. Damaged files crash Chroma's native code (SIGSEGV) on the
# first search, or make it return wrong neighbours. ExemplarMemory checks the files in a child
# process on open and rebuilds a damaged index from its own copy of the vectors.

DIM = 32
N_ALICE = 1200  # past Chroma's 1,000-item sync threshold, so the index files really hold the items
N_BOB = 40
INDEX_FILES = ("data_level0.bin", "header.bin", "link_lists.bin", "length.bin", "index_metadata.pickle")


def _vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def _entries(thread_prefix: str, n: int) -> list[NewItem]:
    out = []
    for i in range(n):
        aid = hashlib.sha256(f"{thread_prefix}{i}".encode()).hexdigest()
        ref = MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png")
        out.append(NewItem(f"{thread_prefix}{i % 7}", ref, turn=i, role="input"))
    return out


def _open_memory(path: Path, **options: Any) -> ExemplarMemory:
    return ExemplarMemory(path, embedder=HashingEmbedder(dim=DIM), **options)


@pytest.fixture(scope="module")
def healthy_memory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """An embedded memory folder: alice with 1,200 items, bob with 40; closed cleanly."""
    path = tmp_path_factory.mktemp("hnsw") / "memory"
    memory = _open_memory(path)
    alice = memory.add_many("alice", _entries("a", N_ALICE), vectors=_vectors(N_ALICE, 1))
    bob = memory.add_many("bob", _entries("b", N_BOB), vectors=_vectors(N_BOB, 2))
    memory.close()
    return path, [it.id for it in alice], [it.id for it in bob]


def _vector_segment(path: Path, tenant: str) -> Path:
    """The folder of `tenant`'s HNSW index inside the embedded Chroma folder."""
    memory = _open_memory(path, verify_index=False)
    name = memory.collection_name(tenant)
    memory.close()
    conn = sqlite3.connect(f"file:{path / 'chroma.sqlite3'}?mode=ro", uri=True)
    try:
        (segment,) = conn.execute(
            "SELECT s.id FROM segments s JOIN collections c ON s.collection = c.id "
            "WHERE c.name = ? AND s.scope = 'VECTOR'",
            (name,),
        ).fetchone()
    finally:
        conn.close()
    return path / segment


def _flip(file: Path) -> None:
    data = bytearray(file.read_bytes())
    rng = random.Random(1)
    for _ in range(max(1, len(data) // 50)):
        data[rng.randrange(len(data))] ^= 0xFF
    file.write_bytes(bytes(data))


def _damage(segment: Path, how: str, name: str) -> None:
    if name == "segment folder":
        shutil.rmtree(segment)
        return
    file = segment / name
    assert file.is_file() and file.stat().st_size > 0, f"{file} should exist and hold data"
    if how == "flip":
        _flip(file)
    elif how == "truncate":
        os.truncate(file, file.stat().st_size // 2)
    else:
        file.unlink()


@pytest.fixture
def damaged_copy(healthy_memory: tuple[Path, list[str], list[str]], tmp_path: Path) -> Path:
    path = tmp_path / "memory"
    shutil.copytree(healthy_memory[0], path)
    return path


def _search_is_right(
    memory: ExemplarMemory, tenant: str, ids: list[str], vectors: np.ndarray, sample: range
) -> None:
    for i in sample:
        hit = memory.search(tenant, vectors[i], k=1)
        assert [h.id for h in hit] == [ids[i]], f"item {i}: {[h.id for h in hit]}"


_CASES = [(how, name) for name in INDEX_FILES for how in ("flip", "truncate", "delete")]
_CASES.append(("delete", "segment folder"))


@pytest.mark.parametrize(("how", "name"), _CASES, ids=[f"{h}-{n}" for h, n in _CASES])
def test_a_damaged_index_is_repaired_on_open(
    healthy_memory: tuple[Path, list[str], list[str]], damaged_copy: Path, how: str, name: str
) -> None:
    _, alice, bob = healthy_memory
    _damage(_vector_segment(damaged_copy, "alice"), how, name)

    memory = _open_memory(damaged_copy)  # runs Chroma on the damaged files in a child process only
    try:
        report = memory.index_report
        assert report is not None and not report.skipped
        assert memory.count("alice") == N_ALICE and memory.count("bob") == N_BOB
        _search_is_right(memory, "alice", alice, _vectors(N_ALICE, 1), range(0, N_ALICE, 37))
        _search_is_right(memory, "bob", bob, _vectors(N_BOB, 2), range(0, N_BOB, 7))
        assert memory.collection_name("bob") not in report.rebuilt  # only a damaged index is rebuilt
    finally:
        memory.close()
    assert not list(damaged_copy.glob("*.damaged*"))  # the damaged files are gone once rebuilt


@pytest.mark.parametrize(("how", "name"), [("flip", "data_level0.bin"), ("delete", "segment folder")])
def test_damage_that_misleads_chroma_is_found_and_rebuilt(
    healthy_memory: tuple[Path, list[str], list[str]], damaged_copy: Path, how: str, name: str
) -> None:
    """Flipped vectors and a lost index are not loud failures in Chroma: the check finds them."""
    _damage(_vector_segment(damaged_copy, "alice"), how, name)
    memory = _open_memory(damaged_copy)
    try:
        assert memory.index_report.rebuilt == (memory.collection_name("alice"),)
        assert memory.collection_name("alice") in memory.index_report.problems
    finally:
        memory.close()
    # Rebuilt and closed cleanly: the next open trusts the files it recorded and starts no child.
    again = _open_memory(damaged_copy)
    try:
        assert again.index_report.skipped and again.index_report.rebuilt == ()
    finally:
        again.close()


_SEARCH_IN_A_CHILD = """
import json, sys
import numpy as np
from codi2_agent.memory import ExemplarMemory, HashingEmbedder
path, verify = sys.argv[1], sys.argv[2] == "verify"
vectors = np.random.default_rng(1).standard_normal(({n}, {dim})).astype(np.float32)
memory = ExemplarMemory(path, embedder=HashingEmbedder(dim={dim}), verify_index=verify)
hits = [memory.search("alice", vectors[i], k=1)[0].id for i in range(0, {n}, 100)]
memory.close()
print(json.dumps(hits))
"""


def test_unchecked_the_damage_kills_the_process_checked_it_does_not(
    healthy_memory: tuple[Path, list[str], list[str]], damaged_copy: Path, tmp_path: Path
) -> None:
    """The attack, end to end in fresh processes: flipped bytes in data_level0.bin crash a search
    when the index is not checked (the old behaviour), and are repaired when it is."""
    _, alice, _ = healthy_memory
    _damage(_vector_segment(damaged_copy, "alice"), "flip", "data_level0.bin")
    script = tmp_path / "search.py"
    script.write_text(_SEARCH_IN_A_CHILD.format(n=N_ALICE, dim=DIM))
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}

    def run(mode: str, folder: Path) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, str(script), str(folder), mode]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    unchecked_copy = tmp_path / "unchecked"
    shutil.copytree(damaged_copy, unchecked_copy)
    unchecked = run("unchecked", unchecked_copy)
    assert unchecked.returncode == -signal.SIGSEGV, (unchecked.returncode, unchecked.stderr[-2000:])

    checked = run("verify", damaged_copy)
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert json.loads(checked.stdout.strip().splitlines()[-1]) == alice[0:N_ALICE:100]


def test_unreadable_vectors_are_a_named_error(
    healthy_memory: tuple[Path, list[str], list[str]], damaged_copy: Path
) -> None:
    """Index damaged and no other copy of the vectors (a memory written before the copy existed, or
    with the copy deleted): a named error, the process alive, the damaged files left for inspection."""

    (damaged_copy / "codi2-vectors.sqlite3").unlink()
    segment = _vector_segment(damaged_copy, "alice")
    _damage(segment, "truncate", "data_level0.bin")
    files = {f.name: f.read_bytes() for f in segment.iterdir()}
    with pytest.raises(CorruptMemoryError) as info:
        _open_memory(damaged_copy)
    err = info.value
    assert isinstance(err, ExemplarMemoryError)
    assert err.folder == damaged_copy and str(damaged_copy) in str(err)
    assert "alice" in str(err) and "vector" in err.reason
    assert {f.name: f.read_bytes() for f in segment.iterdir()} == files


def _scramble_links(segment: Path) -> None:
    """Point every level-0 graph link in data_level0.bin far outside the index, leaving the vectors
    intact: reading items back still works, and a search walks off the end of the array."""

    header = (segment / "header.bin").read_bytes()
    (version,) = struct.unpack_from("<I", header, 0)
    assert version == 1, f"header.bin version {version}: this test knows the layout of version 1"
    _, _, count, per_element, _, data_offset = struct.unpack_from("<6Q", header, 4)
    data = bytearray((segment / "data_level0.bin").read_bytes())
    for element in range(count):
        for slot in range(element * per_element + 4, element * per_element + data_offset, 4):
            struct.pack_into("<I", data, slot, 0x7FFFFFF0)
    (segment / "data_level0.bin").write_bytes(bytes(data))


def test_a_crash_inside_chroma_kills_only_the_child(
    healthy_memory: tuple[Path, list[str], list[str]], damaged_copy: Path
) -> None:
    """Intact vectors, broken graph: Chroma's search segfaults — in the probing child, which dies by
    SIGSEGV; this process rebuilds the index and answers correctly."""
    _, alice, _ = healthy_memory
    _scramble_links(_vector_segment(damaged_copy, "alice"))
    memory = _open_memory(damaged_copy)
    try:
        name = memory.collection_name("alice")
        assert "SIGSEGV" in memory.index_report.problems[name]
        assert memory.index_report.rebuilt == (name,)
        _search_is_right(memory, "alice", alice, _vectors(N_ALICE, 1), range(0, N_ALICE, 37))
    finally:
        memory.close()
