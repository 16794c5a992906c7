"""A pool of session-graph worker processes that share Postgres checkpoints.

Each worker process opens the parts once — the model (in-process, or a served model's url), the
shared artifact folder, the ``chroma run`` memory server, and the Postgres checkpoints, thread log
and advisory locks — and then runs turns for any tenant's thread, one at a time. Calls go to
whichever worker is free, so the turns of one thread hop between processes: what keeps them in
order is the thread's Postgres advisory lock and the checkpoints being in Postgres, not the pool
(docs/deploy.md). Several pools on several hosts can serve the same threads.

Instantiate:
    .. code-block:: python

        from codi2_agent.workers import SessionWorkerPool, WorkerSpec

        spec = WorkerSpec(checkpointer="postgresql://codi2@db:5432/codi2", root="/shared/codi2",
                          memory_host="chroma.internal", memory_port=8000,
                          graph_options={"num_inference_steps": 20})
        with SessionWorkerPool(spec, workers=2) as pool:
            reply = pool.say("alice", "holiday", "draw a small red star in the snow").result(timeout=60)
            reply["turn"], reply["text"], reply["ids"]

Workers are started with the ``spawn`` method (no forked torch, Chroma or Postgres state), so a
script that makes a pool does it under ``if __name__ == "__main__":``. Every wait is bounded: the
pool's start (`start_timeout`), each call (the caller's ``Future.result(timeout=)``), and `close`
(`stop_timeout`, then the workers are killed). A worker that dies fails the call it was running
with `WorkerDiedError`; the other workers go on.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from codi2_agent.session import Session

__all__ = ["METHODS", "SessionWorkerPool", "WorkerDiedError", "WorkerError", "WorkerSpec"]

logger = logging.getLogger(__name__)

METHODS = ("say", "history", "media_log", "threads", "read_artifact", "memory_count", "artifact_ids")


class WorkerError(RuntimeError):
    """A pool could not start, or a call failed in a worker: `error_type` names the worker's
    exception (e.g. ``"ThreadBusyError"``, ``"ArtifactNotFoundError"``)."""

    def __init__(self, message: str, error_type: str = "WorkerError") -> None:
        super().__init__(message)
        self.error_type = error_type

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.error_type))


class WorkerDiedError(WorkerError):
    """The worker running the call died (killed, out of memory) before answering."""


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker opens (picklable: it is sent to each worker process).

    Args:
        checkpointer: the ``postgresql://`` URL every worker shares.
        root: the folder holding the artifact store (on a filesystem every worker host mounts).
        model: ``"tiny"`` or a model folder, loaded in each worker.
        model_url: a served model (``codi2-agent serve``, e.g. on Ray Serve) for every worker to
            call instead of loading `model`: the workers then hold no weights.
        memory_host, memory_port: the ``chroma run`` server of the exemplar memory; None runs
            without memory.
        memory_namespace: the memory's collection prefix (one per deployment).
        lock_timeout: seconds a turn waits for its thread's lock before ``ThreadBusyError``.
        torch_threads: intra-op threads per worker (one per worker keeps N workers on N cores).
        graph_options: passed to the session graph (``num_inference_steps=``, ``context=``, …).
    """

    checkpointer: str
    root: str
    model: str = "tiny"
    model_url: str | None = None
    memory_host: str | None = None
    memory_port: int = 8000
    memory_namespace: str = "codi2"
    lock_timeout: float = 30.0
    torch_threads: int = 1
    graph_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from codi2_agent.graphs._postgres import is_postgres_url

        if not is_postgres_url(self.checkpointer):
            raise ValueError(
                "a worker pool shares Postgres checkpoints: checkpointer must be a postgresql:// URL"
            )
        if self.model_url is not None and not self.model_url.startswith(("http://", "https://")):
            raise ValueError(f"model_url is a model server's http(s):// url, got {self.model_url!r}")


# --- the worker process -------------------------------------------------------------------------
class _Worker:
    """One worker's open parts and its sessions (one per tenant and thread, opened on first use)."""

    def __init__(self, spec: WorkerSpec) -> None:
        from codi2_agent import Session
        from codi2_agent.artifacts import ArtifactStore
        from codi2_agent.backends import as_backend

        artifacts = ArtifactStore(Path(spec.root) / "artifacts")
        self.backend = as_backend(spec.model_url or spec.model, artifacts)
        memory = None
        if spec.memory_host is not None:
            from codi2_agent.memory import ExemplarMemory

            memory = ExemplarMemory(
                host=spec.memory_host,
                port=spec.memory_port,
                embedder=self.backend.embedder,
                artifacts=artifacts,
                namespace=spec.memory_namespace,
            )
        self.base = Session(
            self.backend,
            root=spec.root,
            checkpointer=spec.checkpointer,
            memory=memory,
            use_memory=memory is not None,
            lock_timeout=spec.lock_timeout,
            progress=False,
            **dict(spec.graph_options),
        )
        self.sessions: dict[tuple[str, str], Session] = {}

    def session(self, tenant: str, thread: str) -> Session:
        key = (tenant, thread)
        if key not in self.sessions:
            self.sessions[key] = self.base.open_thread(thread, tenant=tenant)
        return self.sessions[key]

    def call(self, method: str, tenant: str, thread: str, args: dict[str, Any]) -> Any:
        s = self.session(tenant, thread)
        if method == "say":
            text, blocks = args.pop("text", ""), args.pop("blocks", None)
            if blocks:  # content blocks as an agent sends them (artifact:// urls, file ids, base64)
                from langchain_core.messages import HumanMessage

                return _turn_json(s.run(HumanMessage(content=[{"type": "text", "text": text}, *blocks])))
            media = [s.artifacts.ref(i) for i in args.pop("media_ids", [])]
            return _turn_json(s.say(text, *media, **args))
        if method == "history":
            return [_turn_json(r) for r in s.history()]
        if method == "media_log":
            return [{"id": r.id, "turn": r.turn, "role": r.role} for r in s.media_log()]
        if method == "threads":
            return s.threads()
        if method == "read_artifact":  # the tenant's view of the store decides
            return s.artifacts.ref(str(args["id"])).id
        if method == "artifact_ids":
            return sorted(s.artifacts.ids())
        if method == "memory_count":
            return 0 if s.memory is None else s.memory.count(tenant)
        raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")

    def close(self) -> None:
        self.base.close()


def _turn_json(r: Any) -> dict[str, Any]:
    return {
        "turn": r.turn,
        "text": r.text,
        "request": r.request,
        "ids": [ref.id for ref in r.refs],
        "task": r.task,
        "clarification": r.clarification,
    }


def _serve(spec: WorkerSpec, index: int, calls: Any, replies: Any) -> None:
    """A worker process: open the parts, say ready, then answer calls until the stop sentinel."""
    import torch

    torch.set_num_threads(spec.torch_threads)
    try:
        worker = _Worker(spec)
    except BaseException as exc:
        replies.put(("failed", index, f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-3000:]}"))
        return
    replies.put(("ready", index, os.getpid()))
    try:
        while True:
            item = calls.get()
            if item is None:
                break
            call_id, method, tenant, thread, args = item
            replies.put(("took", index, call_id))
            t0 = time.perf_counter()
            try:
                value = worker.call(method, tenant, thread, dict(args))
                replies.put(("done", index, (call_id, True, value, None, time.perf_counter() - t0)))
            except Exception as exc:  # answered to the caller, named; the worker goes on
                error = (type(exc).__name__, str(exc))
                replies.put(("done", index, (call_id, False, None, error, time.perf_counter() - t0)))
    finally:
        worker.close()
    # Leave without the interpreter's teardown of torch, transformers and Chroma: seconds per
    # process, tens of seconds on a busy machine, and nothing in it matters once the parts are
    # closed. The replies already put are flushed to the pool first.
    replies.close()
    replies.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# --- the pool ---------------------------------------------------------------------------------------
class SessionWorkerPool:
    """`workers` processes serving session turns for any tenant and thread (see the module doc).

    Args:
        spec: what each worker opens.
        workers: how many worker processes.
        start_timeout: seconds for every worker to open its parts (`WorkerError` after that).
        stop_timeout: seconds `close` waits for the workers before killing them.
    """

    def __init__(
        self, spec: WorkerSpec, workers: int = 2, *, start_timeout: float = 180.0, stop_timeout: float = 30.0
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec = spec
        self.stop_timeout = stop_timeout
        context = multiprocessing.get_context("spawn")  # no forked torch / Chroma / Postgres state
        self._calls = context.Queue()
        self._replies = context.Queue()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._running: dict[int, int] = {}  # worker index -> call id it took
        self._guard = threading.Lock()
        self._closing = threading.Event()
        self.service_seconds: dict[int, float] = {}  # call id -> seconds inside the worker
        self._processes: list[BaseProcess] = [
            context.Process(
                target=_serve,
                args=(spec, i, self._calls, self._replies),
                daemon=True,
                name=f"codi2-worker-{i}",
            )
            for i in range(workers)
        ]
        for p in self._processes:
            p.start()
        try:
            self.pids = self._await_ready(start_timeout)
        except BaseException:
            self._stop()
            raise
        self._reader = threading.Thread(target=self._read, name="codi2-pool-replies", daemon=True)
        self._reader.start()

    @property
    def workers(self) -> int:
        return len(self._processes)

    def _await_ready(self, timeout: float) -> list[int]:
        pids: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while len(pids) < len(self._processes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(
                    f"{len(self._processes) - len(pids)} worker(s) not ready within {timeout:g} s"
                )
            try:
                kind, index, value = self._replies.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [p.name for p in self._processes if p.exitcode is not None]
                if dead:
                    raise WorkerError(f"worker(s) {', '.join(dead)} exited while starting") from None
                continue
            if kind == "failed":
                raise WorkerError(f"worker {index} could not open its parts: {value}")
            pids[index] = value
        return [pids[i] for i in range(len(self._processes))]

    def _read(self) -> None:
        """Resolve futures from the workers' replies; fail the call of a worker that died."""
        while not self._closing.is_set():
            try:
                kind, index, value = self._replies.get(timeout=0.5)
            except queue.Empty:
                self._check_workers()
                continue
            except (EOFError, OSError):
                return
            if kind == "took":
                with self._guard:
                    self._running[index] = value
            elif kind == "done":
                call_id, ok, result, error, seconds = value
                with self._guard:
                    self._running.pop(index, None)
                    future = self._pending.pop(call_id, None)
                self.service_seconds[call_id] = seconds
                if future is None:
                    continue
                if ok:
                    future.set_result(result)
                else:
                    future.set_exception(WorkerError(f"{error[0]}: {error[1]}", error[0]))

    def _check_workers(self) -> None:
        for index, p in enumerate(self._processes):
            if p.exitcode is None:
                continue
            with self._guard:
                call_id = self._running.pop(index, None)
                future = self._pending.pop(call_id, None) if call_id is not None else None
            if future is not None:
                future.set_exception(
                    WorkerDiedError(f"worker {index} died (exit code {p.exitcode}) during the call")
                )

    def call(self, method: str, tenant: str, thread: str, **args: Any) -> Future[Any]:
        """Run `method` (one of `METHODS`) on `tenant`'s thread in a free worker."""
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; one of {', '.join(METHODS)}")
        if self._closing.is_set():
            raise WorkerError("the pool is closed")
        if not any(p.exitcode is None for p in self._processes):
            raise WorkerDiedError("every worker of the pool has died")
        call_id = next(self._ids)
        future: Future[Any] = Future()
        with self._guard:
            self._pending[call_id] = future
        self._calls.put((call_id, method, tenant, thread, args))
        return future

    def say(self, tenant: str, thread: str, text: str, **generation: Any) -> Future[dict[str, Any]]:
        """One turn; the future's result: ``{"turn", "text", "request", "ids", "task", "clarification"}``.

        `generation` takes `Session.say`'s keywords, plus ``media_ids=`` (stored artifacts the
        tenant holds) or ``blocks=`` (LangChain content blocks sent with the text).
        """
        return self.call("say", tenant, thread, text=text, **generation)

    def running(self) -> dict[int, int]:
        """Which call each busy worker is running: ``{worker index: call id}``."""
        with self._guard:
            return dict(self._running)

    def kill(self, index: int) -> None:
        """SIGKILL worker `index` (for crash tests): its running call fails with `WorkerDiedError`."""
        p = self._processes[index]
        if p.pid is not None:
            os.kill(p.pid, signal.SIGKILL)
        p.join(timeout=self.stop_timeout)

    def close(self) -> None:
        """Stop the workers (each finishes its current call), killing those that outlast `stop_timeout`."""
        if self._closing.is_set():
            return
        self._stop()
        self._reader.join(timeout=5)
        with self._guard:
            pending, self._pending = list(self._pending.values()), {}
        for future in pending:
            future.set_exception(WorkerError("the pool was closed before the call ran"))

    def _stop(self) -> None:
        self._closing.set()
        for _ in self._processes:
            self._calls.put(None)
        deadline = time.monotonic() + self.stop_timeout
        for p in self._processes:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.exitcode is None:
                logger.warning("worker %s did not stop within %g s; killing it", p.name, self.stop_timeout)
                p.kill()
                p.join(timeout=5)
        self._calls.close()
        self._replies.close()

    def __enter__(self) -> SessionWorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
