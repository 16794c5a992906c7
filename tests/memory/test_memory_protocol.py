"""`Memory`, the protocol the session graph relies on: what it names, and who satisfies it."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

import pytest

from codi2_agent.memory import ExemplarMemory, HashingEmbedder, Memory

# The graph's nodes call add_many, analogous_edits, reference and search; its owner calls close, and
# a thread reopened after a crash calls reconcile_thread.
METHODS = ("add_many", "analogous_edits", "close", "reconcile_thread", "reference", "search")


def _protocol_members() -> set[str]:
    return {name for name in vars(Memory) if not name.startswith("_") and callable(getattr(Memory, name))}


def test_the_protocol_names_exactly_what_the_graph_calls():
    assert _protocol_members() == set(METHODS)
    # Every module of the graph package calls its memory as self.memory.<method>(...).
    spec = importlib.util.find_spec("codi2_agent.graphs")
    assert spec is not None and spec.submodule_search_locations
    sources = [f for d in spec.submodule_search_locations for f in sorted(Path(d).glob("*.py"))]
    called = {m for f in sources for m in re.findall(r"self\.memory\.(\w+)\(", f.read_text(encoding="utf-8"))}
    assert called, "the graph package no longer calls its memory as self.memory.<method>(...)"
    assert called <= set(METHODS), f"the graph calls {sorted(called - set(METHODS))}, missing from Memory"


def test_exemplar_memory_is_a_memory(tmp_path):
    memory = ExemplarMemory(tmp_path / "db", embedder=HashingEmbedder(dim=16))
    try:
        assert isinstance(memory, Memory)
    finally:
        memory.close()


@pytest.mark.parametrize("name", METHODS)
def test_exemplar_memory_accepts_every_argument_the_protocol_names(name):
    wanted = inspect.signature(getattr(Memory, name)).parameters
    offered = inspect.signature(getattr(ExemplarMemory, name)).parameters
    for param in wanted.values():
        assert param.name in offered, f"ExemplarMemory.{name} lacks {param.name!r}"
        assert offered[param.name].kind == param.kind, f"ExemplarMemory.{name}({param.name}) is {param.kind}"
        if param.default is not inspect.Parameter.empty:
            assert offered[param.name].default == param.default
    extra = [p for p in offered.values() if p.name not in wanted]
    assert all(p.default is not inspect.Parameter.empty for p in extra), "extra arguments must be optional"


class _Complete:
    def search(self, tenant, query, *, k=4, role=None, modality=None):
        return []

    def analogous_edits(self, tenant, request=None, *, source=None, k=2):
        return []

    def reference(self, tenant, ref):
        raise KeyError(ref)

    def add_many(self, tenant, entries, *, media=None, vectors=None):
        return []

    def reconcile_thread(self, tenant, thread, keep):
        return 0

    def close(self):
        return None


def test_a_complete_stand_in_is_a_memory():
    assert isinstance(_Complete(), Memory)


@pytest.mark.parametrize("missing", METHODS)
def test_a_class_missing_a_method_is_not_a_memory(missing):
    partial = type("Partial", (), {k: v for k, v in vars(_Complete).items() if k != missing})
    assert not isinstance(partial(), Memory)
    assert not isinstance(object(), Memory)
