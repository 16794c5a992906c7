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

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.types import Overwrite

from codi2_agent.artifacts import DEFAULT_TENANT, check_name
from codi2_agent.locking import ThreadBusyError, thread_lock

from ._log import ThreadLog, TurnEntry
from ._state import MediaRecord

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
    "thread_media",
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


def _log(graph: Any, config: dict[str, Any]) -> tuple[ThreadLog, str, str]:
    if graph.store is None:
        raise ValueError("this graph has no store: its thread log lives in the LangGraph store")
    configurable = config["configurable"]
    return (
        ThreadLog(graph.store),
        str(configurable.get("tenant", DEFAULT_TENANT)),
        str(configurable["thread_id"]),
    )


def _window(entries: list[TurnEntry], keep: int = 16) -> list[BaseMessage]:
    """The last turns of a transcript as the messages a checkpoint keeps."""
    messages: list[BaseMessage] = []
    for e in entries[-(keep // 2) :]:
        messages.append(HumanMessage(content=e.request))
        messages.append(AIMessage(content=e.content, response_metadata=e.metadata))
    return messages


def thread_media(graph: Any, config: dict[str, Any]) -> list[MediaRecord]:
    """A thread's media log (inputs and outputs with their turns and parents), up to its current turn."""
    log, tenant, key = _log(graph, config)
    values = dict(graph.get_state(config).values)
    log.adopt(tenant, key, values)
    return log.media(tenant, key, int(values.get("turn") or 0))


def state_after(graph: Any, config: dict[str, Any], turn: int) -> dict[str, Any]:
    """The thread's values as they are after `turn` turns: its recent messages, read from the log."""
    log, tenant, key = _log(graph, config)
    values = dict(graph.get_state(config).values)
    log.adopt(tenant, key, values)
    return {
        "messages": _window(log.turns(tenant, key, turn)),
        "turn": turn,
        "ancestors": list(values.get("ancestors", [])),
    }


def rewind_thread(graph: Any, config: dict[str, Any], turn: int) -> None:
    """Make the thread end after `turn` turns; later turns stop counting (not deleted: their log rows
    are replaced when those turn numbers are used again, and the checkpoints stay in the history)."""
    current = int(graph.get_state(config).values.get("turn") or 0)
    if not 0 <= turn <= current:
        raise ValueError(f"can only rewind to a turn between 0 and {current}, not {turn}")
    _write(graph, config, state_after(graph, config, turn))


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
    log, tenant, key = _log(graph, source)
    if at_turn is None:
        at_turn = int(graph.get_state(source).values.get("turn") or 0)
    values = state_after(graph, source, at_turn)
    log.copy(tenant, key, str(dest["configurable"]["thread_id"]), at_turn)
    values["ancestors"] = [*values["ancestors"], key]
    _write(graph, dest, values)


def _write(graph: Any, config: dict[str, Any], values: dict[str, Any]) -> None:
    update = {
        "messages": Overwrite(list(values.get("messages", []))),
        "turn_media": [],
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


def recover_thread(graph: Any, config: dict[str, Any], snapshot: Any = None) -> bool:
    """Put a thread whose last turn was cut short by a crash back to its last answered turn.

    Cut short means: a task is still due (the checkpoint stopped between steps — including a step
    whose writes were saved but whose checkpoint was not, a task LangGraph then leaves out of
    ``next``), or it is at rest but the thread log has no answer for its turn (the process died
    between the log and the checkpoint writes). A turn waiting for a review is not cut short and is
    left alone. Returns True when the thread was changed.
    `snapshot`: the thread's current state, when the caller has just read it.
    """
    snapshot = snapshot if snapshot is not None else graph.get_state(config)
    if any(task.interrupts for task in snapshot.tasks):
        return False
    log, tenant, key = _log(graph, config)
    log.adopt(tenant, key, dict(snapshot.values))
    turn = int(snapshot.values.get("turn") or 0)
    answered = log.last_answered(tenant, key, turn)
    if not snapshot.tasks and answered == turn:
        return False
    _write(graph, config, state_after(graph, config, answered))
    return True
