"""Writes behind the caller (`submit_many`): checked at once, written later in order, read back by
every later call of this process, failures reported once; embedded and on a `chroma run` server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from codi2_agent.artifacts import ArtifactNotFoundError, ArtifactStore
from codi2_agent.memory import EmbeddingDimensionError, ExemplarMemory, ExemplarMemoryError, NewItem

from .conftest import DIM, _shape_image


def _stored(store: ArtifactStore, colour: str, turn: int) -> Any:
    return store.put(_shape_image(colour), turn=turn)


def _hold_writes(memory: ExemplarMemory) -> threading.Event:
    """Make the memory's writer thread wait for the returned event before each write."""
    release = threading.Event()
    commit: Callable[..., Any] = memory._writer.commit

    def held(prepared: Any) -> Any:
        assert release.wait(30), "the test never released the write"
        return commit(prepared)

    memory._writer.commit = held  # type: ignore[method-assign]
    return release


def test_submit_returns_before_the_write_and_reads_wait_for_it(
    memory: ExemplarMemory, store: ArtifactStore
) -> None:
    red, blue = _stored(store, "red", 1), _stored(store, "blue", 2)
    release = _hold_writes(memory)
    future = memory.submit_many(
        "alice", [NewItem("t1", red, turn=1), NewItem("t1", blue, turn=2, role="output", parents=(red,))]
    )
    assert not future.done()  # the caller goes on while the write waits

    counted: list[int] = []
    reader = threading.Thread(target=lambda: counted.append(memory.count("alice")))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive() and counted == []  # a read waits for the write it must see

    release.set()
    reader.join(30)
    assert counted == [2]
    items = future.result(5)
    assert [it.artifact_id for it in items] == [red.id, blue.id]
    # What was written is what add_many writes: the edit links to its source's item id.
    assert memory.get("alice", items[1].id).parent_items == (items[0].id,)
    assert memory.search("alice", _shape_image("blue"), k=1)[0].artifact_id == blue.id


def test_bad_input_is_refused_at_once_and_nothing_is_queued(
    memory: ExemplarMemory, store: ArtifactStore
) -> None:
    red = _stored(store, "red", 1)
    memory.add("alice", "t1", red, turn=1)
    ghost = red.model_copy(update={"id": "f" * 64, "uri": "artifact://" + "f" * 64})
    with pytest.raises(ArtifactNotFoundError):
        memory.submit_many("alice", [NewItem("t1", ghost, turn=2)])
    with pytest.raises(EmbeddingDimensionError):
        memory.submit_many("alice", [NewItem("t1", red, turn=2)], vectors=np.ones((1, DIM + 1), np.float32))
    memory.flush()  # nothing pending, nothing failed
    assert memory.count("alice") == 1


def test_a_failed_write_is_reported_once_and_stores_nothing(
    memory: ExemplarMemory, store: ArtifactStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    red, blue = _stored(store, "red", 1), _stored(store, "blue", 2)
    memory.add("alice", "t1", red, turn=1)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError("No space left on device")

    monkeypatch.setattr(memory._collections, "upsert", disk_full)
    future = memory.submit_many("alice", [NewItem("t1", blue, turn=2, role="output")])
    assert isinstance(future.exception(10), ExemplarMemoryError)
    monkeypatch.undo()
    with pytest.raises(ExemplarMemoryError, match="nothing from this call is stored"):
        memory.count("alice")  # the next use of the memory says so ...
    assert memory.count("alice") == 1  # ... once; the earlier item is untouched
    assert [it.artifact_id for it in memory.items("alice")] == [red.id]


def test_writes_land_in_submission_order(memory: ExemplarMemory, store: ArtifactStore) -> None:
    red = _stored(store, "red", 1)
    release = _hold_writes(memory)
    first = memory.submit_many("alice", [NewItem("t1", red, turn=1, caption="first")])
    second = memory.submit_many("alice", [NewItem("t1", red, turn=1, caption="second")])
    release.set()
    memory.flush()
    assert first.done() and second.done()
    (item,) = memory.items("alice")
    # The same place written twice: the later write wins, and keeps the first one's created_at.
    assert item.caption == "second" and item.created_at == first.result().pop().created_at


def test_close_waits_for_pending_writes(tmp_path: Path, embedder: Any, store: ArtifactStore) -> None:
    red = _stored(store, "red", 1)
    memory = ExemplarMemory(tmp_path / "db", embedder=embedder, artifacts=store)
    release = _hold_writes(memory)
    future = memory.submit_many("alice", [NewItem("t1", red, turn=1)])
    threading.Timer(0.2, release.set).start()
    t0 = time.monotonic()
    memory.close()
    assert future.done() and time.monotonic() - t0 >= 0.15
    with ExemplarMemory(tmp_path / "db", embedder=embedder, artifacts=store) as again:
        assert [it.artifact_id for it in again.items("alice")] == [red.id]


def test_the_graph_writes_behind_only_where_the_write_overlaps(memory: ExemplarMemory) -> None:
    # A server's HTTP client waits without the GIL; embedded Chroma's binding holds it through a write.
    assert memory.write_behind is (memory.mode == "server")
