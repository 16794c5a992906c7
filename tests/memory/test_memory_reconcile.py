"""Deleting single items (`forget_items`) and trimming a thread to its media log (`reconcile_thread`),
in both modes, with a property test over random item sets."""

from __future__ import annotations

import hashlib
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import ExemplarMemory, HashingEmbedder, MemoryItem, NewItem, item_id

from .conftest import DIM


def _ref(name: str) -> MediaRef:
    # Well-formed artifact ids without an artifact store: these tests are about the memory's records.
    aid = hashlib.sha256(name.encode()).hexdigest()
    return MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png")


def _write(memory: ExemplarMemory, tenant: str, places: list[tuple[str, str, int, str]]) -> list[MemoryItem]:
    """Items at (thread, artifact name, turn, role), with random vectors."""
    entries = [NewItem(thread, _ref(name), turn=turn, role=role) for thread, name, turn, role in places]  # type: ignore[arg-type]
    vecs = np.random.default_rng(len(places)).standard_normal((len(entries), DIM)).astype(np.float32)
    return memory.add_many(tenant, entries, vectors=vecs)


@pytest.fixture
def mem(tmp_path: Path) -> Iterator[ExemplarMemory]:
    # Writes use vectors=, so no artifact store: the memory checks nothing against files here.
    memory = ExemplarMemory(tmp_path / "db", embedder=HashingEmbedder(dim=DIM))
    yield memory
    memory.close()


@pytest.fixture(params=["embedded", "server"])
def memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExemplarMemory]:
    """Embedded, and on the session's `chroma run` server in a namespace of its own (no artifact store)."""
    if request.param == "embedded":
        mem = ExemplarMemory(tmp_path / "db", embedder=HashingEmbedder(dim=DIM))
    else:
        server = request.getfixturevalue("chroma_server")
        mem = ExemplarMemory(
            host=server.host,
            port=server.port,
            embedder=HashingEmbedder(dim=DIM),
            namespace="r" + uuid.uuid4().hex[:12],
        )
    yield mem
    mem.close()


def _ids(memory: ExemplarMemory, tenant: str, thread: str | None = None) -> set[str]:
    return {it.id for it in memory.items(tenant, thread=thread)}


# --- forget_items --------------------------------------------------------------------------------
def test_forget_items_deletes_exactly_those_items(memory: ExemplarMemory) -> None:
    items = _write(
        memory, "alice", [("t1", "a", 1, "input"), ("t1", "b", 1, "output"), ("t2", "c", 1, "input")]
    )
    bob = _write(memory, "bob", [("t1", "a", 1, "input")])
    assert bob[0].id != items[0].id  # ids hash the tenant

    assert memory.forget_items("alice", [items[1].id]) == 1
    assert _ids(memory, "alice") == {items[0].id, items[2].id}
    # Another tenant's id is not reachable through alice's memory, and bob's item stays.
    assert memory.forget_items("alice", [bob[0].id]) == 0
    assert _ids(memory, "bob") == {bob[0].id}


def test_forget_items_is_idempotent(memory: ExemplarMemory) -> None:
    items = _write(memory, "alice", [("t", str(i), i, "input") for i in range(5)])
    doomed = [items[0].id, items[3].id, items[0].id]  # a repeated id counts once
    assert memory.forget_items("alice", doomed) == 2
    assert memory.forget_items("alice", doomed) == 0
    assert memory.forget_items("alice", []) == 0
    assert memory.forget_items("nobody", doomed) == 0  # a tenant without a memory
    assert _ids(memory, "alice") == {items[i].id for i in (1, 2, 4)}


def test_forget_items_refuses_what_is_not_a_list_of_ids(mem: ExemplarMemory) -> None:
    items = _write(mem, "alice", [("t", "a", 1, "input")])
    with pytest.raises(TypeError, match="list"):
        mem.forget_items("alice", items[0].id)  # type: ignore[arg-type]  # one id, not a list of them
    with pytest.raises(ValueError, match="item id"):
        mem.forget_items("alice", ["not-an-id"])
    with pytest.raises(ValueError, match="tenant"):
        mem.forget_items("", [items[0].id])
    assert _ids(mem, "alice") == {items[0].id}


def test_forget_items_pages_through_large_deletes(mem: ExemplarMemory) -> None:
    items = _write(mem, "alice", [("t", str(i), i, "input") for i in range(300)])
    mem._collections.batch = 64  # Chroma's batch limit is large; a small one exercises the paging
    assert mem.forget_items("alice", [it.id for it in items[:250]]) == 250
    assert _ids(mem, "alice") == {it.id for it in items[250:]}


# --- reconcile_thread ----------------------------------------------------------------------------
def test_reconcile_keeps_what_the_log_holds(memory: ExemplarMemory) -> None:
    log = [("t1", "a", 1, "input"), ("t1", "b", 1, "output"), ("t1", "b", 2, "input")]
    orphans = [("t1", "c", 2, "output"), ("t1", "a", 3, "input")]  # (a, 3): known artifact, wrong turn
    items = _write(memory, "alice", log + orphans + [("t2", "c", 2, "output")])
    bob = _write(memory, "bob", orphans)
    keep = {(_ref(name).id, turn) for _, name, turn, _ in log}

    assert memory.reconcile_thread("alice", "t1", keep) == 2
    assert _ids(memory, "alice", "t1") == {it.id for it in items[:3]}
    assert _ids(memory, "alice", "t2") == {items[5].id}  # other threads untouched
    assert _ids(memory, "bob") == {it.id for it in bob}  # other tenants untouched
    assert memory.reconcile_thread("alice", "t1", keep) == 0  # idempotent
    assert memory.reconcile_thread("alice", "t1", iter(sorted(keep))) == 0  # any iterable


def test_reconcile_with_an_empty_log_empties_the_thread(memory: ExemplarMemory) -> None:
    items = _write(memory, "alice", [("t1", "a", 1, "input"), ("t2", "b", 1, "input")])
    assert memory.reconcile_thread("alice", "t1", []) == 1
    assert _ids(memory, "alice") == {items[1].id}
    assert memory.reconcile_thread("alice", "never-written", []) == 0
    assert memory.reconcile_thread("nobody", "t1", []) == 0


def test_reconcile_refuses_a_malformed_keep(mem: ExemplarMemory) -> None:
    _write(mem, "alice", [("t1", "a", 1, "input")])
    aid = _ref("a").id
    for bad in ([aid], [(aid, "1")], [(aid, 1, "input")], [(aid, True)], [(aid[:10], 1)]):
        with pytest.raises((TypeError, ValueError), match="keep"):
            mem.reconcile_thread("alice", "t1", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="thread"):
        mem.reconcile_thread("alice", "", [])
    assert mem.count("alice") == 1  # nothing was deleted on the way to an error


def test_reconcile_accepts_numpy_turns(mem: ExemplarMemory) -> None:
    items = _write(mem, "alice", [("t1", "a", 4, "input")])
    assert mem.reconcile_thread("alice", "t1", [(_ref("a").id, np.int64(4))]) == 0
    assert _ids(mem, "alice") == {items[0].id}


_PLACE = st.tuples(
    st.sampled_from(["t1", "t2"]),
    st.sampled_from(list("abcdef")),
    st.integers(min_value=0, max_value=4),
    st.sampled_from(["input", "output"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    alice=st.lists(_PLACE, min_size=1, max_size=25),
    bob=st.lists(_PLACE, max_size=8),
    keep=st.sets(st.tuples(st.sampled_from(list("abcdefgh")), st.integers(min_value=0, max_value=5))),
)
def test_reconcile_keeps_exactly_keep(alice, bob, keep) -> None:
    """Over random item sets: the thread keeps exactly its items named by `keep`; nothing else moves."""
    with tempfile.TemporaryDirectory() as folder:
        memory = ExemplarMemory(Path(folder) / "db", embedder=HashingEmbedder(dim=DIM))
        try:
            before = {it.id: it for it in _write(memory, "alice", alice)}
            bob_ids = {it.id for it in _write(memory, "bob", bob)} if bob else set()
            wanted = {(_ref(name).id, turn) for name, turn in keep}

            removed = memory.reconcile_thread("alice", "t1", wanted)

            expected = {
                i for i, it in before.items() if it.thread != "t1" or (it.artifact_id, it.turn) in wanted
            }
            assert _ids(memory, "alice") == expected
            assert removed == len(before) - len(expected)
            assert (_ids(memory, "bob") if bob else set()) == bob_ids
            assert memory.reconcile_thread("alice", "t1", wanted) == 0
        finally:
            memory.close()


def test_item_ids_of_a_thread_follow_item_id(mem: ExemplarMemory) -> None:
    """The places `reconcile_thread` compares are the ones ids are made of (tenant, thread, turn, role,
    artifact): one (artifact, turn) in `keep` keeps the item in both roles."""
    items = _write(mem, "alice", [("t1", "a", 2, role) for role in ("input", "output")])
    assert {it.id for it in items} == {
        item_id("alice", "t1", 2, role, _ref("a").id) for role in ("input", "output")
    }
    assert mem.reconcile_thread("alice", "t1", [(_ref("a").id, 2)]) == 0
    assert mem.count("alice") == 2
