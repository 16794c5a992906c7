"""Damaged files on disk are named errors or repaired, never a crash and never a silent empty answer.

- Checkpoint databases: a truncated, overwritten or garbage SQLite file — or a 0-byte one whose
  write-ahead log still holds the data — is a `CorruptCheckpointError` naming the file, instead of
  a thread that silently starts again from nothing.
- Chroma's HNSW index files (see the second half of this file).
"""

from __future__ import annotations

import operator
import os
import sqlite3
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph

from codi2_agent.graphs import CorruptCheckpointError, sqlite_checkpointer

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
