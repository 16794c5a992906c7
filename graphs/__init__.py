"""The LangGraph session graph: one CoDi-2 conversation turn as an explicit state machine.

``ingest → resolve → retrieve → compose → generate → persist → respond`` (docs/architecture.md §6); optional
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

from ._blocks import (
    UnsupportedSourceError,
    block_ref,
    ingest_message,
    inline_block,
    message_parts,
    message_text,
    ref_block,
)
from ._builder import CHECKPOINT_FILE, DEFAULT_RETRY, build_session_graph, is_transient
from ._checkpoint import allowlist, register_types, session_serializer, sqlite_checkpointer
from ._open import SessionParts, as_backend, open_session_graph
from ._prompt import ContextPolicy, PromptTooLongError
from ._references import Resolution, resolve
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

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_RETRY",
    "SERDE_ALLOWLIST",
    "Clarification",
    "ContextPolicy",
    "Exemplar",
    "MediaRecord",
    "PromptTooLongError",
    "Request",
    "Resolution",
    "SessionInput",
    "SessionParts",
    "SessionState",
    "Task",
    "TurnOptions",
    "UnsupportedSourceError",
    "allowlist",
    "as_backend",
    "block_ref",
    "build_session_graph",
    "ingest_message",
    "inline_block",
    "is_transient",
    "message_parts",
    "message_text",
    "open_session_graph",
    "ref_block",
    "register_types",
    "resolve",
    "session_serializer",
    "sqlite_checkpointer",
]
