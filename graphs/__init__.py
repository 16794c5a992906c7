"""The LangGraph session graph: one CoDi-2 conversation turn as an explicit state machine.

``ingest → resolve → retrieve → compose → generate → persist → respond``, with an optional
``interrupt()`` review after generate. State and checkpoints carry `MediaRef`s, never bytes; the
media live in an `ArtifactStore` and their embeddings in an `ExemplarMemory`, which is what keeps
long multi-round editing and analogy sessions consistent.

Setup:
    Part of codi2-agent (langgraph and langgraph-checkpoint-sqlite are core dependencies).

Instantiate:
    .. code-block:: python

        from codi2_agent.graphs import build_session_graph
        graph = build_session_graph(model, memory, store)           # SQLite checkpoints by default

Invoke:
    .. code-block:: python

        config = {"configurable": {"thread_id": "demo"}}
        graph.invoke({"messages": [("user", "draw a small red star in the snow")]}, config)
        graph.invoke({"messages": [("user", "make it blue")]}, config)
"""

from __future__ import annotations

from ._builder import CHECKPOINT_FILE, DEFAULT_RETRY, build_session_graph, default_store, is_transient
from ._checkpoint import (
    CorruptCheckpointError,
    allowlist,
    register_types,
    session_serializer,
    sqlite_checkpointer,
)
from ._log import ThreadLog, TurnEntry
from ._open import SessionParts, as_backend, open_session_graph
from ._planner import Plan, Planner
from ._postgres import PostgresParts, PostgresUnavailableError, open_postgres
from ._prompt import ContextPolicy, PromptTooLongError
from ._references import Resolution, resolve
from ._remember import restore_memory
from ._state import (
    SERDE_ALLOWLIST,
    Clarification,
    Exemplar,
    MediaRecord,
    Request,
    SessionInput,
    SessionState,
    Task,
    TurnOptions,
)
from ._threads import (
    ThreadBusyError,
    checkpoint_summary,
    copy_thread,
    recover_thread,
    rewind_thread,
    split_thread_key,
    state_after,
    thread_ids,
    thread_key,
    thread_lock,
    thread_media,
)

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_RETRY",
    "SERDE_ALLOWLIST",
    "Clarification",
    "ContextPolicy",
    "CorruptCheckpointError",
    "Exemplar",
    "MediaRecord",
    "Plan",
    "Planner",
    "PostgresParts",
    "PostgresUnavailableError",
    "PromptTooLongError",
    "Request",
    "Resolution",
    "SessionInput",
    "SessionParts",
    "SessionState",
    "Task",
    "ThreadBusyError",
    "ThreadLog",
    "TurnEntry",
    "TurnOptions",
    "allowlist",
    "as_backend",
    "build_session_graph",
    "checkpoint_summary",
    "copy_thread",
    "default_store",
    "is_transient",
    "open_postgres",
    "open_session_graph",
    "recover_thread",
    "register_types",
    "resolve",
    "restore_memory",
    "rewind_thread",
    "session_serializer",
    "split_thread_key",
    "sqlite_checkpointer",
    "state_after",
    "thread_ids",
    "thread_key",
    "thread_lock",
    "thread_media",
]
