"""Checkpointers for session graphs: SQLite by default, our types registered with the serializer.

`sqlite_checkpointer` opens the database in WAL mode with a busy timeout, so a notebook and a
script can read one thread's checkpoints at once and a writer waits instead of failing with
"database is locked". Any other saver (`PostgresSaver` for scale) works too: `register_types`
adds our state types to its msgpack allowlist, so ``LANGGRAPH_STRICT_MSGPACK=true`` deployments
revive them instead of refusing them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from ._state import SERDE_ALLOWLIST

__all__ = ["allowlist", "register_types", "session_serializer", "sqlite_checkpointer"]


def allowlist() -> list[tuple[str, str]]:
    """(module, name) of every custom type a session checkpoint holds."""
    return [(t.__module__, t.__qualname__) for t in SERDE_ALLOWLIST]


def session_serializer() -> JsonPlusSerializer:
    """A msgpack serializer that revives our state types and LangGraph's safe types, nothing else."""
    return JsonPlusSerializer(allowed_msgpack_modules=allowlist())


def register_types(checkpointer: BaseCheckpointSaver[Any]) -> BaseCheckpointSaver[Any]:
    """`checkpointer`, with our state types added to its serializer's allowlist (a no-op when it
    already allows everything)."""
    with_allowlist = getattr(checkpointer, "with_allowlist", None)
    return with_allowlist(allowlist()) if callable(with_allowlist) else checkpointer


def sqlite_checkpointer(path: str | Path, *, busy_timeout_s: float = 30.0) -> BaseCheckpointSaver[Any]:
    """A `SqliteSaver` on `path` (created if missing) in WAL mode with a busy timeout."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False: SqliteSaver serialises access with its own lock (async tools run the
    # graph in worker threads).
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=busy_timeout_s)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across app crashes, fast commits
    saver = SqliteSaver(conn, serde=session_serializer())
    saver.setup()
    return saver
