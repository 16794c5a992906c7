"""`build_session_graph`: the explicit `StateGraph` of one conversation turn (docs/architecture.md §5)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore
from langgraph.types import RetryPolicy

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import Backend, LocalBackend, TransientBackendError

from ._checkpoint import register_types, sqlite_checkpointer, sqlite_store
from ._nodes import NodeSettings, SessionNodes
from ._planner import Planner
from ._postgres import is_postgres_saver, is_postgres_url, open_postgres, postgres_store_for
from ._prompt import ContextPolicy
from ._state import SessionInput, SessionState

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from codi2_agent.memory import Memory
    from codi2_agent.model import CoDi2Model

__all__ = ["CHECKPOINT_FILE", "DEFAULT_RETRY", "build_session_graph", "default_store", "is_transient"]

CHECKPOINT_FILE = "checkpoints.sqlite"


def is_transient(exc: BaseException) -> bool:
    """Errors a retry can fix (a backend hiccup), as opposed to bad input (which would fail again)."""
    return isinstance(exc, (TransientBackendError, ConnectionError, TimeoutError, MemoryError))


DEFAULT_RETRY = RetryPolicy(max_attempts=3, initial_interval=0.2, backoff_factor=2.0, retry_on=is_transient)


def build_session_graph(
    model: CoDi2Model | Backend,
    memory: Memory | None,
    artifacts: ArtifactStore | str | Path | None = None,
    *,
    checkpointer: BaseCheckpointSaver[Any] | str | Path | None = None,
    store: BaseStore | None = None,
    server_persistence: bool = False,
    review: bool = False,
    tenant: str = "default",
    context: ContextPolicy = "memory",
    window_k: int = 3,
    shots: int = 0,
    analogy_shots: int = 1,
    max_prompt_tokens: int | None = None,
    caption_outputs: bool = True,
    seed: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    max_new_tokens: int = 64,
    verify: int | None = None,
    verify_threshold: float | None = None,
    retry_policy: RetryPolicy | None = None,
    planner: Any = None,
    name: str = "codi2_session",
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Build the CoDi-2 session graph: ingest → resolve → retrieve → compose → generate → persist → respond.

    Each ``invoke`` is one turn of a thread (``config={"configurable": {"thread_id": ...}}``). State
    holds `MediaRef`s only; media live in `artifacts`, their embeddings in `memory`.

    Setup:
        Part of codi2-agent. PostgreSQL checkpoints need the ``serve`` extra
        (``pip install "codi2-agent[serve]"``).

    Instantiate:
        .. code-block:: python

            from codi2_agent import ArtifactStore, load_model
            from codi2_agent.backends import ModelEmbedder
            from codi2_agent.graphs import build_session_graph
            from codi2_agent.memory import ExemplarMemory

            model = load_model("tiny")
            store = ArtifactStore("./session/artifacts")
            memory = ExemplarMemory("./session/memory", embedder=ModelEmbedder(model), artifacts=store)
            graph = build_session_graph(model, memory, store)   # SQLite at ./session/checkpoints.sqlite

            from langgraph.checkpoint.postgres import PostgresSaver   # at scale (the serve extra)
            from langgraph.store.postgres import PostgresStore
            with PostgresSaver.from_conn_string(url) as saver, PostgresStore.from_conn_string(url) as log:
                saver.setup(), log.setup()
                graph = build_session_graph(model, memory, store, checkpointer=saver, store=log)

    Invoke:
        .. code-block:: python

            config = {"configurable": {"thread_id": "demo"}}
            out = graph.invoke({"messages": [("user", "draw a small red star in the snow")]}, config)
            out["messages"][-1].content_blocks
            # [{'type': 'text', 'text': 'Here it is.'},
            #  {'type': 'image', 'url': 'artifact://3f2a…', 'mime_type': 'image/png', 'extras': {...}}]
            graph.invoke({"messages": [("user", "make it blue")]}, config)      # edits the star
            for mode, chunk in graph.stream({"messages": [("user", "now the first picture, bigger")]},
                                            config, stream_mode=["custom", "values"]):
                ...   # ("custom", {"event": "progress", "step": 3, "total": 20, ...})

        Media: send them as ``artifact://`` references (`ingest_message` stores inline ones first).
        Inline base64 blocks work too — ingest stores them and the state keeps only references — but
        LangGraph also keeps each run's raw input in the checkpoint's write log.

        Long sessions: pass ``durability="exit"`` to ``invoke`` to write one checkpoint per turn
        (a few KB) instead of one per step; a turn cut short then re-runs from its start, which is
        safe because every write is idempotent.

    Args:
        model: a `CoDi2Model` (run in-process) or any `Backend` (e.g. a remote one).
        memory: an `ExemplarMemory` (its embedder should be the model's `ModelEmbedder`), or None to
            run without one (references resolve within the thread only; no exemplars).
        artifacts: the `ArtifactStore` (or its root); defaults to the backend's store.
        checkpointer: a LangGraph saver, a path for a SQLite one, or a ``postgresql://`` URL (a
            `PostgresSaver`, and a `PostgresStore` for the thread log, tables set up); None puts SQLite
            (WAL, busy timeout) beside the artifact store. Our state types are added to its
            serializer allowlist.
        store: the LangGraph `BaseStore` holding the thread log (each thread's media log and
            transcript: what grows with a thread stays out of its checkpoints). None picks one that
            lives where the checkpoints do: SQLite in the same database file, in memory with an
            in-memory saver; other savers (Postgres) need it given (``PostgresStore``).
        server_persistence: compile without a checkpointer or store of its own: the LangGraph Agent
            Server (``langgraph dev`` / ``langgraph up``) gives every run its checkpointer and its
            store, and the thread log then lives in the server's store. Excludes `checkpointer` and
            `store`.
        review: pause after each generated medium with ``interrupt()`` until a person resumes with
            ``Command(resume="accept" | "reject")``; rejected media never become exemplars.
        tenant: whose memory turns read and write; ``config["configurable"]["tenant"]`` overrides it.
        context: ``"memory"`` (resolved media + exemplars from memory) or ``"window"`` (the last
            `window_k` exchanges verbatim: the plain chat baseline).
        window_k: exchanges shown in ``"window"`` mode.
        shots: solved examples retrieved from memory for edits and generations (0: none; the tiny
            model was trained without them).
        analogy_shots: edit pairs shown for "do the same" requests (1 = the referenced edit only).
        max_prompt_tokens: cap the prompt below the model's own context limit.
        caption_outputs: caption each produced medium with the model (for references and search).
        seed: base seed; by default each (tenant, thread, turn) has its own fixed seed.
        num_inference_steps, guidance_scale, max_new_tokens: generation defaults (per turn, the
            ``options`` input or ``config["configurable"]["num_inference_steps"]`` override them).
        verify, verify_threshold: the model's self-check (`CoDi2Model.generate`): decode up to
            `verify` candidates per medium and keep the one whose re-encoding agrees best with the
            predicted feature (candidate 0 when it reaches `verify_threshold`); the score is the
            answer's ``response_metadata["agreement"]``. ``config["configurable"]["verify"]``
            overrides it per turn.
        retry_policy: retries of the generate node (default: 3 attempts on transient errors).
        planner: a LangChain chat model with ``with_structured_output`` (or a `Planner`) that reads
            each message and the thread's media before the rules do; its plan is checked (ids must
            be this thread's media) and the rules decide whenever it fails. Tool calls with explicit
            options skip it.
        name: the compiled graph's name.
    """
    # 1. Check arguments and wire the parts
    if context not in ("memory", "window"):
        raise ValueError(f"context must be 'memory' or 'window', got {context!r}")
    if window_k < 0 or shots < 0 or analogy_shots < 1:
        raise ValueError("window_k and shots must be >= 0 and analogy_shots >= 1")
    from codi2_agent.model.verification import check_verify_arguments

    check_verify_arguments(verify, verify_threshold)  # at build time, not at the first turn
    if isinstance(artifacts, (str, Path)):
        artifacts = ArtifactStore(artifacts)
    if isinstance(model, Backend):
        backend = model
        if artifacts is not None and Path(artifacts.root) != Path(backend.artifacts.root):
            raise ValueError("the backend and the graph must share one artifact store")
        artifacts = backend.artifacts
    else:
        if artifacts is None:
            raise ValueError(
                "build_session_graph(model, ...) needs artifacts= (an ArtifactStore or its root)"
            )
        backend = LocalBackend(model, artifacts)
    assert artifacts is not None
    settings = NodeSettings(
        tenant=tenant,
        context=context,
        window_k=window_k,
        shots=shots,
        analogy_shots=analogy_shots,
        max_prompt_tokens=max_prompt_tokens,
        caption_outputs=caption_outputs,
        seed=seed,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        max_new_tokens=max_new_tokens,
        verify=verify,
        verify_threshold=verify_threshold,
        review=review,
        planner=planner if planner is None or isinstance(planner, Planner) else Planner(planner),
    )
    nodes = SessionNodes(backend, memory, artifacts, settings)

    # 2. The graph: one node per step, named routers with explicit path maps
    builder = StateGraph(SessionState, input_schema=SessionInput)
    builder.add_node("ingest", nodes.ingest)
    builder.add_node("resolve", nodes.resolve)
    builder.add_node("retrieve", nodes.retrieve)
    builder.add_node("compose", nodes.compose)
    builder.add_node("generate", nodes.generate, retry_policy=retry_policy or DEFAULT_RETRY)
    builder.add_node(
        "persist", nodes.persist, retry_policy=RetryPolicy(max_attempts=2, retry_on=is_transient)
    )
    builder.add_node("respond", nodes.respond)
    builder.add_edge(START, "ingest")
    builder.add_conditional_edges(
        "ingest", nodes.route_after_ingest, path_map={"resolve": "resolve", "respond": "respond"}
    )
    builder.add_conditional_edges(
        "resolve", nodes.route_after_resolve, path_map={"retrieve": "retrieve", "respond": "respond"}
    )
    builder.add_conditional_edges(
        "retrieve", nodes.route_after_retrieve, path_map={"compose": "compose", "respond": "respond"}
    )
    builder.add_conditional_edges(
        "compose", nodes.route_after_compose, path_map={"generate": "generate", "respond": "respond"}
    )
    if review:
        builder.add_node("review", nodes.review)
        builder.add_node("discard", nodes.discard)
        builder.add_conditional_edges(
            "generate", nodes.route_after_generate, path_map={"review": "review", "persist": "persist"}
        )
        builder.add_conditional_edges(
            "review", nodes.route_after_review, path_map={"persist": "persist", "discard": "discard"}
        )
        builder.add_edge("discard", "respond")
    else:
        builder.add_edge("generate", "persist")
    builder.add_edge("persist", "respond")
    builder.add_edge("respond", END)

    # 3. Compile with a checkpointer that knows our types
    if server_persistence:
        if checkpointer is not None or store is not None:
            raise ValueError("server_persistence=True: the server provides the checkpointer and the store")
        return builder.compile(name=name)
    if checkpointer is None:
        checkpointer = sqlite_checkpointer(Path(artifacts.root).parent / CHECKPOINT_FILE)
    elif is_postgres_url(checkpointer):
        postgres = open_postgres(str(checkpointer))
        checkpointer, store = postgres.saver, store or postgres.store
    elif isinstance(checkpointer, (str, Path)):
        checkpointer = sqlite_checkpointer(checkpointer)
    if store is None:
        store = default_store(checkpointer)
    return builder.compile(checkpointer=register_types(checkpointer), store=store, name=name)


def default_store(checkpointer: BaseCheckpointSaver[Any]) -> BaseStore:
    """A thread-log store that lives where `checkpointer` keeps its checkpoints."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.checkpoint.sqlite import SqliteSaver
    from langgraph.store.memory import InMemoryStore

    if isinstance(checkpointer, SqliteSaver):
        row = checkpointer.conn.execute("PRAGMA database_list").fetchone()
        path = row[2] if row else ""
        return sqlite_store(path) if path else InMemoryStore()
    if isinstance(checkpointer, InMemorySaver):
        return InMemoryStore()
    if is_postgres_saver(checkpointer):
        return postgres_store_for(checkpointer)
    raise ValueError(
        f"pass store= for a {type(checkpointer).__name__}: the session graph keeps each thread's media "
        "log and transcript in a LangGraph store beside the checkpoints (e.g. PostgresStore)"
    )
