"""Opening everything a session needs from one folder: model, artifacts, memory, checkpoints.

``root/artifacts`` (media), ``root/memory`` (embedded Chroma), ``root/checkpoints.sqlite``. Used by
`codi2_agent.Session` and `codi2_agent.tools.CoDi2Toolkit`, so a notebook and an agent pointed at
the same folder share one history (one process at a time: embedded Chroma is single-process).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import Backend, as_backend
from codi2_agent.locking import LOCKS_FOLDER, FileThreadLocks, ThreadLocks

from ._builder import CHECKPOINT_FILE, build_session_graph
from ._postgres import PostgresParts, is_postgres_url, open_postgres

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from codi2_agent.memory import Memory
    from codi2_agent.model import CoDi2Model

__all__ = ["SessionParts", "as_backend", "open_session_graph"]  # as_backend: kept importable here


@dataclass
class SessionParts:
    """A compiled session graph and the parts it runs on."""

    graph: CompiledStateGraph[Any, Any, Any, Any]
    backend: Backend
    memory: Memory | None
    artifacts: ArtifactStore
    root: Path
    locks: ThreadLocks | None = None  # the one-writer locks; None: file locks under root/locks
    postgres: PostgresParts | None = None  # opened from a postgresql:// checkpointer URL

    def __post_init__(self) -> None:
        if self.locks is None:
            self.locks = FileThreadLocks(self.root / LOCKS_FOLDER)

    def close(self) -> None:
        """Release the memory's Chroma client and the checkpoint database."""
        if self.memory is not None and hasattr(self.memory, "close"):
            self.memory.close()
        if self.postgres is not None:
            self.postgres.close()
            return
        conn = getattr(self.graph.checkpointer, "conn", None)
        if conn is not None:
            conn.close()


def open_session_graph(
    model: str | Path | CoDi2Model | Backend,
    root: str | Path,
    *,
    memory: Memory | None = None,
    use_memory: bool = True,
    **graph_options: Any,
) -> SessionParts:
    """Build a session graph whose artifacts, memory and checkpoints live under `root`.

    Args:
        model: ``"tiny"``, a model folder, a `CoDi2Model`, or a `Backend` (whose store is then used).
        root: the session folder (created if missing).
        memory: an `ExemplarMemory` to use instead of ``root/memory``.
        use_memory: False runs without exemplar memory.
        graph_options: passed to `build_session_graph` (``review=``, ``context=``, ``tenant=``, …).
            ``checkpointer="postgresql://…"`` keeps checkpoints and the thread log in Postgres and
            makes the one-writer locks Postgres advisory locks, so workers on several hosts can
            share threads (with a ``chroma run`` server as `memory` and a shared artifact folder).
    """
    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    artifacts = model.artifacts if isinstance(model, Backend) else ArtifactStore(root / "artifacts")
    backend = as_backend(model, artifacts)
    if memory is None and use_memory:
        from codi2_agent.memory import ExemplarMemory

        memory = ExemplarMemory(root / "memory", embedder=backend.embedder, artifacts=artifacts)
    graph_options.setdefault("checkpointer", root / CHECKPOINT_FILE)
    postgres = None
    if is_postgres_url(graph_options["checkpointer"]):  # checkpoints, thread log and locks in Postgres
        postgres = open_postgres(graph_options["checkpointer"])
        graph_options["checkpointer"] = postgres.saver
        graph_options.setdefault("store", postgres.store)
    try:
        graph = build_session_graph(backend, memory, **graph_options)
    except BaseException:
        if postgres is not None:
            postgres.close()
        raise
    return SessionParts(graph=graph, backend=backend, memory=memory, artifacts=artifacts, root=root,
                        locks=postgres.locks if postgres else None, postgres=postgres)  # fmt: skip
