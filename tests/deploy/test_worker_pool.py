"""The worker pool: turns of one thread hop between worker processes that share Postgres and a
Chroma server; a worker killed mid-turn fails that call with `WorkerDiedError`, and the thread goes
on in the other worker with whole turns only; bad specs and methods are named errors."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from codi2_agent.local_services import ChromaServer
from codi2_agent.workers import SessionWorkerPool, WorkerDiedError, WorkerError, WorkerSpec

from .conftest import STEPS


def test_a_killed_worker_fails_its_call_and_the_thread_goes_on(
    model_arg: str, shared_root: Path, postgres_url: str, chroma_server: ChromaServer
) -> None:
    spec = WorkerSpec(
        checkpointer=postgres_url,
        root=str(shared_root),
        model=model_arg,
        memory_host=chroma_server.host,
        memory_port=chroma_server.port,
        memory_namespace="pooltest",
        graph_options={"num_inference_steps": STEPS},
    )
    with SessionWorkerPool(spec, workers=2, start_timeout=300) as pool:
        assert len(set(pool.pids)) == 2
        first = pool.say("alice", "t", "draw a small red star in the snow").result(timeout=120)
        assert first["turn"] == 1 and len(first["ids"]) == 1
        # A slow turn (many diffusion steps): kill whichever worker took it while it generates.
        slow = pool.say("alice", "t", "make it blue", num_inference_steps=1000)  # the scheduler's maximum
        deadline = time.monotonic() + 60
        while not pool.running() and time.monotonic() < deadline:
            time.sleep(0.02)
        (victim,) = pool.running()
        time.sleep(0.2)  # into the turn; any instant before persist leaves nothing of it
        pool.kill(victim)
        with pytest.raises(WorkerDiedError):
            slow.result(timeout=60)

        # The surviving worker continues the thread: the killed turn is gone, nothing of it is left.
        after = pool.say("alice", "t", "make it green").result(timeout=120)
        assert after["turn"] == 2
        history = pool.call("history", "alice", "t").result(timeout=60)
        assert [(h["turn"], h["request"]) for h in history] == [
            (1, "draw a small red star in the snow"),
            (2, "make it green"),
        ]
        log = pool.call("media_log", "alice", "t").result(timeout=60)
        assert [(m["turn"], m["id"]) for m in log] == [(1, first["ids"][0]), (2, after["ids"][0])]
        assert pool.call("memory_count", "alice", "t").result(timeout=60) == 2
        # Another tenant's artifact is refused by name, through the pool as anywhere else.
        with pytest.raises(WorkerError) as refused:
            pool.call("read_artifact", "bob", "t", id=first["ids"][0]).result(timeout=60)
        assert refused.value.error_type == "ArtifactNotFoundError"
        with pytest.raises(ValueError, match="unknown method"):
            pool.call("drop_tables", "alice", "t")


def test_a_pool_needs_postgres_and_a_model_server_url(shared_root: Path) -> None:
    with pytest.raises(ValueError, match="postgresql:// URL"):
        WorkerSpec(checkpointer=str(shared_root / "checkpoints.sqlite"), root=str(shared_root))
    with pytest.raises(ValueError, match="model server"):
        WorkerSpec(checkpointer="postgresql://x@127.0.0.1/db", root=str(shared_root), model_url="tiny")
