"""Thread keys and thread surgery on a compiled session graph: rewind a thread, copy one, list them.

A thread's checkpoint key includes its tenant (`thread_key`), so two tenants' threads of the same
name are two threads, by construction: no lookup can reach the other tenant's checkpoints. (Asking
for a name another tenant uses simply opens your own thread of that name: an error would tell you
that the other tenant has it.)

These are the only places that write checkpoints outside a turn. Each writes one new checkpoint
"as respond" (a turn at rest), so the graph's own history stays intact: a rewound turn is still
in `get_state_history`, and a copy records where it came from in ``ancestors`` (its media up to the
copy are in its log, so "the star" and "turn 2" keep meaning what they meant).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from langgraph.types import Overwrite

from codi2_agent.artifacts import DEFAULT_TENANT, check_name
from codi2_agent.locking import ThreadBusyError, thread_lock

__all__ = [
    "ThreadBusyError",
    "checkpoint_summary",
    "copy_thread",
    "recover_thread",
    "rewind_thread",
    "split_thread_key",
    "state_after",
    "thread_ids",
    "thread_key",
    "thread_lock",
]

_SEP = "\x1f"  # a control character: refused in tenant and thread names, so keys never collide


def thread_key(tenant: str, thread: str) -> str:
    """The checkpoint key of `tenant`'s thread `thread` (the default tenant's keys are the bare names,
    as they were before tenancy)."""
    check_name(tenant, "tenant")
    check_name(thread, "thread")
    return thread if tenant == DEFAULT_TENANT else f"{tenant}{_SEP}{thread}"


def split_thread_key(key: str) -> tuple[str, str]:
    """(tenant, thread) of a checkpoint key."""
    tenant, sep, thread = key.partition(_SEP)
    return (tenant, thread) if sep else (DEFAULT_TENANT, key)


def state_after(graph: Any, config: dict[str, Any], turn: int) -> dict[str, Any]:
    """The thread's values when it was at rest after `turn` turns (0: the empty thread).

    Raises:
        LookupError: the thread never rested after that turn (or has moved on from a rewound one).
    """
    snapshot = graph.get_state(config)
    current = int(snapshot.values.get("turn") or 0)
    if turn == current and not snapshot.next:
        return dict(snapshot.values)
    if turn == 0:
        return {"messages": [], "media": [], "turn": 0, "ancestors": []}
    for past in graph.get_state_history(config):
        if not past.next and int(past.values.get("turn") or 0) == turn:
            return dict(past.values)
    raise LookupError(f"thread {config['configurable']['thread_id']!r} has no checkpoint after turn {turn}")


def rewind_thread(graph: Any, config: dict[str, Any], turn: int) -> None:
    """Make the thread end after `turn` turns; later turns stop counting (not deleted)."""
    current = int(graph.get_state(config).values.get("turn") or 0)
    if not 0 <= turn <= current:
        raise ValueError(f"can only rewind to a turn between 0 and {current}, not {turn}")
    values = state_after(graph, config, turn)
    _write(graph, config, values)


def copy_thread(
    graph: Any,
    source: dict[str, Any],
    dest: dict[str, Any],
    *,
    at_turn: int | None = None,
) -> None:
    """Make `dest` a copy of `source` as it was after `at_turn` turns (default: now).

    `dest` is overwritten: its own earlier turns stop counting.
    """
    values = dict(graph.get_state(source).values) if at_turn is None else state_after(graph, source, at_turn)
    values["ancestors"] = [*values.get("ancestors", []), source["configurable"]["thread_id"]]
    _write(graph, dest, values)


def _write(graph: Any, config: dict[str, Any], values: dict[str, Any]) -> None:
    update = {
        "messages": Overwrite(list(values.get("messages", []))),
        "media": Overwrite(list(values.get("media", []))),
        "turn": int(values.get("turn") or 0),
        "ancestors": list(values.get("ancestors", [])),
        "request": None,
        "result": None,
        "options": None,
        "clarification": None,
    }
    graph.update_state(config, update, as_node="respond")


def checkpoint_summary(path: str | Path) -> dict[str, int]:
    """Threads and checkpoints in a SQLite checkpoint file, opened read-only (nothing is created).

    Raises:
        sqlite3.Error: not a readable checkpoint database.
    """
    from langgraph.checkpoint.sqlite import SqliteSaver

    from ._checkpoint import session_serializer

    conn = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False)
    try:
        saver = SqliteSaver(conn, serde=session_serializer())
        saver.is_setup = True  # read-only: never create tables in someone's file
        threads: set[str] = set()
        count = 0
        for item in saver.list(None):
            threads.add(str(item.config["configurable"]["thread_id"]))
            count += 1
    finally:
        conn.close()
    return {"threads": len(threads), "checkpoints": count}


def thread_ids(checkpointer: Any, tenant: str | None = None) -> list[str]:
    """The threads the checkpointer holds, sorted: `tenant`'s thread names, or every key."""
    seen: set[str] = set()
    for item in checkpointer.list(None):
        key = item.config.get("configurable", {}).get("thread_id")
        if key is None:
            continue
        owner, name = split_thread_key(str(key))
        if tenant is None:
            seen.add(str(key))
        elif owner == tenant:
            seen.add(name)
    return sorted(seen)


def recover_thread(graph: Any, config: dict[str, Any]) -> bool:
    """Put a thread whose last turn was cut short (a crash between steps) back to its last complete
    turn. A turn waiting for a review is not cut short and is left alone. Returns True when a turn
    was dropped."""
    snapshot = graph.get_state(config)
    if not snapshot.next or any(task.interrupts for task in snapshot.tasks):
        return False
    for past in graph.get_state_history(config):
        if not past.next:
            _write(graph, config, dict(past.values))
            return True
    _write(graph, config, {"messages": [], "media": [], "turn": 0, "ancestors": []})
    return True
