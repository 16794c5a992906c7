"""The graph the LangGraph Agent Server runs: `make_graph`, named in langgraph.json.

The server owns persistence: it gives every run its checkpointer and its store, so the session graph
is compiled without either (`build_session_graph(server_persistence=True)`), and the thread log
(docs/architecture.md §10) lives in the server's store. What the server cannot provide — the model,
the artifact store and the exemplar memory — is opened once per process (`server_parts`) and shared
by every tenant's graph.

The tenant of a run is the caller's authenticated identity (``langgraph_auth_user_id``, set by the
server from the auth handler), never a value the client chose: the auth rules pin
``configurable.tenant`` to it, and a run whose ``tenant`` disagrees is refused here too.

This module imports only the standard library at import time (the server imports it at start-up,
and a slow import delays every start); torch, transformers, diffusers and chromadb load inside the
factory, in a worker thread, the first time a graph is needed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.runnables import RunnableConfig
    from langgraph.graph.state import CompiledStateGraph

    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.backends import Backend
    from codi2_agent.memory import Memory

    from .settings import ServerSettings

__all__ = ["AUTH_USER_KEY", "ServerParts", "TenantMismatchError", "make_graph", "server_parts", "tenant_of"]

logger = logging.getLogger(__name__)

AUTH_USER_KEY = "langgraph_auth_user_id"  # what the server puts in configurable for the caller
DEFAULT_TENANT = "default"  # as codi2_agent.artifacts.DEFAULT_TENANT (not imported: import time)
_MAX_CACHED_GRAPHS = 256


class TenantMismatchError(PermissionError):
    """A run asked for a tenant other than the caller's authenticated identity."""


def tenant_of(config: RunnableConfig | dict[str, Any]) -> str:
    """The tenant a run acts for: the authenticated caller (the default tenant when the server runs
    without auth).

    Raises:
        TenantMismatchError: ``configurable.tenant`` names someone else.
    """
    configurable = config.get("configurable") or {}
    tenant = str(configurable.get(AUTH_USER_KEY) or DEFAULT_TENANT)
    asked = configurable.get("tenant")
    if asked is not None and str(asked) != tenant:
        raise TenantMismatchError(
            f"this run belongs to tenant {tenant!r}; configurable.tenant may not name another tenant"
        )
    return tenant


@dataclass
class ServerParts:
    """The parts one server process shares between tenants, and each tenant's compiled graph."""

    backend: Backend
    memory: Memory | None
    artifacts: ArtifactStore
    settings: ServerSettings
    _graphs: OrderedDict[str, CompiledStateGraph[Any, Any, Any, Any]] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def cached_graph(self, tenant: str) -> CompiledStateGraph[Any, Any, Any, Any] | None:
        with self._lock:
            graph = self._graphs.get(tenant)
            if graph is not None:
                self._graphs.move_to_end(tenant)
            return graph

    def graph_for(self, tenant: str) -> CompiledStateGraph[Any, Any, Any, Any]:
        """`tenant`'s session graph (compiled once, then reused: its in-process copy of each thread's
        log stays warm between runs)."""
        graph = self.cached_graph(tenant)
        if graph is not None:
            return graph
        from codi2_agent.graphs import build_session_graph

        graph = _keeping_serde_allowlist(
            build_session_graph(
                self.backend,
                self.memory,
                server_persistence=True,
                tenant=tenant,
                num_inference_steps=self.settings.diffusion_steps,
                name="codi2",
            )
        )
        with self._lock:
            graph = self._graphs.setdefault(tenant, graph)
            while len(self._graphs) > _MAX_CACHED_GRAPHS:
                self._graphs.popitem(last=False)
        return graph

    def close(self) -> None:
        """Release the exemplar memory's Chroma client."""
        if self.memory is not None and hasattr(self.memory, "close"):
            self.memory.close()


@functools.cache
def _allowlist_keeping_class() -> type[CompiledStateGraph[Any, Any, Any, Any]]:
    from langgraph.graph.state import CompiledStateGraph

    class AllowlistKeepingGraph(CompiledStateGraph[Any, Any, Any, Any]):
        def copy(self, update: dict[str, Any] | None = None) -> Any:
            copied = super().copy(update)
            copied._serde_allowlist = self._serde_allowlist
            return copied

    return AllowlistKeepingGraph


def _keeping_serde_allowlist(
    graph: CompiledStateGraph[Any, Any, Any, Any],
) -> CompiledStateGraph[Any, Any, Any, Any]:
    """`graph`, as an instance whose ``copy()`` keeps its serializer allowlist.

    The server attaches its checkpointer with ``graph.copy(update=...)``, and LangGraph's copy drops
    the allowlist the graph compiled from its state schema (langgraph 1.2). Under
    ``LANGGRAPH_STRICT_MSGPACK=true`` (langgraph.json) the server's checkpointer would then block our
    state types and hand the next run plain dicts instead of `MediaRecord`s, `Request`s, ... (with a
    "Blocked deserialization" warning per type); tests/server checks the server's log for it.
    """
    attrs = {k: v for k, v in graph.__dict__.items() if k != "__orig_class__"}
    kept = _allowlist_keeping_class()(**attrs)
    kept._serde_allowlist = graph._serde_allowlist
    return kept


_parts: ServerParts | None = None
_parts_lock = threading.Lock()


def server_parts() -> ServerParts:
    """This process's model, artifact store and memory, opened on first use (thread-safe, blocking:
    call it from a worker thread inside the server)."""
    global _parts
    with _parts_lock:
        if _parts is None:
            _parts = _open_parts()
        return _parts


def loaded_parts() -> ServerParts | None:
    """The parts if they are open already (nothing is loaded)."""
    return _parts


def _open_parts() -> ServerParts:
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.backends import as_backend
    from codi2_agent.settings import load_settings

    from .settings import load_server_settings

    settings = load_server_settings()
    model = load_settings().model
    root = settings.root.expanduser().resolve()
    logger.info("loading model %r for the Agent Server; media and memory in %s", model, root)
    artifacts = ArtifactStore(root / "artifacts")
    backend = as_backend(model, artifacts)
    memory: Memory | None = None
    if settings.memory:
        from codi2_agent.memory import ExemplarMemory

        memory = ExemplarMemory(root / "memory", embedder=backend.embedder, artifacts=artifacts)
    return ServerParts(backend=backend, memory=memory, artifacts=artifacts, settings=settings)


async def make_graph(config: RunnableConfig) -> CompiledStateGraph[Any, Any, Any, Any]:
    """The graph factory langgraph.json names: the caller's tenant's session graph.

    The server calls it for every run and state read, with the run's config (the authenticated
    user included). Loading and compiling happen in a worker thread, never on the server's event
    loop.
    """
    tenant = tenant_of(config)
    parts = loaded_parts()
    if parts is None:
        parts = await asyncio.to_thread(server_parts)
    graph = parts.cached_graph(tenant)
    if graph is None:
        graph = await asyncio.to_thread(parts.graph_for, tenant)
    return graph
