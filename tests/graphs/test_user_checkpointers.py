"""Checkpointers users construct themselves load our state without LangGraph's serde warnings.

LangGraph's default serializer revives any type but logs "Deserializing unregistered type" for
each one not on a list; a strict one (``LANGGRAPH_STRICT_MSGPACK=true`` or an explicit list)
blocks them. The session graph registers its types with whatever saver it is given, so neither
happens. Every serde event is captured through LangGraph's own listener hook (its log line is
emitted once per process and type, which a listener is not).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.encrypted import EncryptedSerializer
from langgraph.checkpoint.serde.event_hooks import register_serde_event_listener
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver

from codi2_agent.graphs import MediaRecord, register_types
from codi2_agent.model import CoDi2Model
from codi2_agent.session import Session

STEPS = 2
Events = Callable[[], list[Any]]


@pytest.fixture
def serde_events(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[Events]:
    """`events()`: every serde allowlist event so far (LangGraph's listener hook) and LangGraph's
    warning lines (its once-per-type log reset, so earlier tests in this process cannot have used
    it up)."""
    monkeypatch.setattr(jsonplus, "_warned_unregistered_types", set())
    monkeypatch.setattr(jsonplus, "_warned_blocked_types", set())
    seen: list[Any] = []
    unregister = register_serde_event_listener(seen.append)
    caplog.set_level(logging.WARNING, logger="langgraph")

    def events() -> list[Any]:
        return seen + [r.getMessage() for r in caplog.records if r.name.startswith("langgraph")]

    yield events
    unregister()


class XorCipher:
    """A toy `CipherProtocol`: enough to check that an encrypted serializer's inner one is registered."""

    def encrypt(self, plaintext: bytes) -> tuple[str, bytes]:
        return "xor", bytes(b ^ 0x5A for b in plaintext)

    def decrypt(self, ciphername: str, ciphertext: bytes) -> bytes:
        assert ciphername == "xor"
        return bytes(b ^ 0x5A for b in ciphertext)


def _two_turns(saver: Any, model: CoDi2Model, root: Path) -> None:
    """Two turns (the second loads the first's checkpoint), then the state read back fresh."""
    with Session(model, root=root, checkpointer=saver, num_inference_steps=STEPS, progress=False) as s:
        s.say("draw a large red star in the desert")
        s.say("make it blue")
    with Session(model, root=root, checkpointer=saver, num_inference_steps=STEPS, progress=False) as again:
        state = again.graph.get_state(again.config).values
        assert state["turn"] == 2
        records = state["turn_media"]
        assert records and all(isinstance(r, MediaRecord) for r in records)  # revived, not dicts
        assert len(again.history()) == 2


@pytest.mark.parametrize(
    "serde",
    [None, JsonPlusSerializer(allowed_msgpack_modules=None), EncryptedSerializer(XorCipher())],
    ids=["langgraph-default", "strict", "encrypted"],
)
def test_in_memory_saver(serde: Any, tiny_model: CoDi2Model, tmp_path: Path, serde_events: Events) -> None:
    saver = InMemorySaver(serde=serde) if serde is not None else InMemorySaver()
    _two_turns(saver, tiny_model, tmp_path / "session")
    assert serde_events() == []


def test_sqlite_saver_reopened_from_its_file(
    tiny_model: CoDi2Model, tmp_path: Path, serde_events: Events
) -> None:
    path = tmp_path / "user-checkpoints.sqlite"
    first = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    with Session(tiny_model, root=tmp_path / "s", checkpointer=first, num_inference_steps=STEPS,
                 progress=False) as s:  # fmt: skip
        s.say("draw a large red star in the desert")
        s.say("make it blue")
    first.conn.close()
    # A later process: the user's own saver on the same file, our state read back from disk.
    resumed = SqliteSaver(sqlite3.connect(path, check_same_thread=False))
    try:
        with Session(tiny_model, root=tmp_path / "s", checkpointer=resumed,
                     num_inference_steps=STEPS, progress=False) as again:  # fmt: skip
            state = again.graph.get_state(again.config).values
            assert state["turn"] == 2 and all(isinstance(r, MediaRecord) for r in state["turn_media"])
            assert again.say("now put it in the snow").turn == 3
    finally:
        resumed.conn.close()
    assert serde_events() == []


def test_without_registration_the_default_serializer_warns(
    tiny_model: CoDi2Model, tmp_path: Path, serde_events: Events
) -> None:
    """The control: the same state through the user's saver as given, not through our clone."""
    saver = InMemorySaver()
    with Session(tiny_model, root=tmp_path / "s", checkpointer=saver, num_inference_steps=STEPS,
                 progress=False) as s:  # fmt: skip
        s.say("draw a large red star in the desert")
        assert s.graph.checkpointer is not saver  # the session uses a registered clone
        (stored,) = list(
            saver.list(RunnableConfig(configurable=s.config["configurable"]), limit=1)
        )  # the user's saver, unregistered, reads it
        assert isinstance(stored.checkpoint["channel_values"]["turn_media"][0], MediaRecord)
    events = serde_events()
    assert {e["kind"] for e in events if isinstance(e, dict)} == {"msgpack_unregistered_allowed"}
    assert any("Deserializing unregistered type codi2_agent" in e for e in events if isinstance(e, str))


def test_registration_keeps_the_savers_storage_and_an_explicit_list() -> None:
    saver = InMemorySaver()
    registered = register_types(saver)
    assert registered is not saver and registered.storage is saver.storage  # a clone over the same data
    assert register_types(registered) is registered  # already registered: nothing to do
    strict = InMemorySaver(serde=JsonPlusSerializer(allowed_msgpack_modules=[("uuid", "UUID")]))
    kept = register_types(strict).serde._allowed_msgpack_modules
    assert ("uuid", "UUID") in kept and ("codi2_agent.graphs._state", "MediaRecord") in kept
