"""The session graph end to end: tiny model, real SQLite checkpoints, real embedded Chroma."""

from __future__ import annotations

import base64
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import AIMessage, HumanMessage
from langgraph.types import Command

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import LocalBackend, TransientBackendError
from codi2_agent.graphs import MediaRecord, TurnOptions, thread_media
from codi2_agent.media import Media, MediaRef
from codi2_agent.messages import ingest_message, message_parts


def _config(name: str = "t1") -> dict[str, Any]:
    return {"configurable": {"thread_id": name}}


def _say(
    graph: Any,
    text: str,
    *blocks: dict[str, Any],
    name: str = "t1",
    options: TurnOptions | None = None,
    **kw: Any,
) -> AIMessage:
    content = [{"type": "text", "text": text}, *blocks]
    out = graph.invoke({"messages": [HumanMessage(content=content)], "options": options}, _config(name), **kw)
    assert "__interrupt__" not in out
    return out["messages"][-1]


def _refs(message: AIMessage) -> list[MediaRef]:
    return [p for p in message_parts(message) if isinstance(p, MediaRef)]


def _db_bytes(path: Path) -> bytes:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("select checkpoint from checkpoints").fetchall()
        rows += conn.execute("select value from writes").fetchall()
    return b"".join(r[0] or b"" for r in rows)


def _db_size(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        a = conn.execute("select coalesce(sum(length(checkpoint) + length(metadata)), 0) from checkpoints")
        b = conn.execute("select coalesce(sum(length(value)), 0) from writes")
        return int(a.fetchone()[0]) + int(b.fetchone()[0])


def _cat() -> Media:
    arr = np.full((32, 32, 3), 90, np.uint8)
    arr[8:24, 8:24] = (200, 120, 40)
    return Media.from_image(arr, caption="a ginger cat on a mat")


class CountingBackend(LocalBackend):
    """The local backend, counting calls and optionally failing the first generation mid-diffusion."""

    def __init__(self, *args: Any, fail: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.fail = fail

    def generate(self, request: Any, *, progress: Any = None) -> Any:
        self.calls.append(request.output)
        if self.fail == "mid" and request.output != "text":
            self.fail = None

            def crash(step: int, total: int) -> None:
                raise TransientBackendError("the worker went away mid-diffusion")

            return super().generate(request, progress=crash)
        result = super().generate(request, progress=progress)
        if self.fail == "after" and request.output != "text":
            self.fail = None  # the media are stored, then the call fails anyway
            raise TransientBackendError("lost the reply")
        return result


def _assert_no_orphans_or_duplicates(store: ArtifactStore, memory: Any, graph: Any) -> None:
    items = memory.items("default")
    assert len({i.id for i in items}) == len(items)
    places = [(i.thread, i.turn, i.role, i.artifact_id) for i in items]
    assert len(set(places)) == len(places)  # one memory item per medium and place
    logged = {r.id for r in thread_media(graph, _config())}
    assert set(store.ids()) == logged  # every stored file is in the thread, and only those
    assert {i.artifact_id for i in items} == logged


def test_end_to_end_with_sqlite_and_chroma(
    make_graph: Any, store: ArtifactStore, memory: Any, tmp_path: Path
) -> None:
    graph = make_graph()
    # A random model reads back no caption, so name the star explicitly: later turns refer to it.
    star = _say(graph, "draw a small red star in the snow", options=TurnOptions(caption="a small red star"))
    (star_ref,) = _refs(star)
    assert star_ref.caption == "a small red star" and star_ref in store
    blue = _say(graph, "make it blue")
    (blue_ref,) = _refs(blue)
    cat = store.for_tenant("default").put(_cat())  # the tenant stores it: its threads may use it
    green = _say(
        graph, "make the cat green", {"type": "image", "url": cat.uri, "extras": {"caption": "a ginger cat"}}
    )
    described = _say(graph, "describe the first picture")
    analogy = _say(graph, "do the edit you made to the cat to the star")

    state = graph.get_state(_config()).values
    assert state["turn"] == 5
    assert [m.response_metadata["task"] for m in state["messages"] if isinstance(m, AIMessage)] == [
        "generate", "edit", "edit", "describe", "analogy"
    ]  # fmt: skip
    assert not _refs(described) and described.text
    # Edit chains are recorded with their sources, in state and in memory.
    records = {r.id: r for r in thread_media(graph, _config())}
    assert records[blue_ref.id].parents == (star_ref.id,)
    (green_ref,) = _refs(green)
    assert records[green_ref.id].parents == (cat.id,)
    (made,) = _refs(analogy)
    assert records[made.id].parents == (blue_ref.id,)  # "the star" is the star's latest version
    chain = [r.id for r in thread_media(graph, _config()) if r.subject == records[blue_ref.id].subject]
    assert chain[:2] == [star_ref.id, blue_ref.id]  # the star's edit chain, in order
    pair = memory.analogous_edits("default", "make the cat green", k=5)
    assert (cat.id, green_ref.id) in {(p.source.artifact_id, p.target.artifact_id) for p in pair}
    # Checkpoints hold references only: no PNG or WAV bytes, no base64 of them.
    db = _db_bytes(tmp_path / "checkpoints.sqlite")
    assert b"\x89PNG" not in db and base64.b64encode(store.open(star_ref).read())[:40] not in db
    _assert_no_orphans_or_duplicates(store, memory, graph)


def test_inline_media_are_stored_and_state_keeps_refs(
    make_graph: Any, store: ArtifactStore, tmp_path: Path
) -> None:
    graph = make_graph()
    block = _cat().to_content_block()
    answer = _say(graph, "make it purple", block)
    state = graph.get_state(_config()).values
    human = state["messages"][0]
    assert all("base64" not in b for b in human.content_blocks)  # replaced by an artifact reference
    (inp,) = [r for r in thread_media(graph, _config()) if r.role == "input"]
    assert store.get(inp.ref) == _cat()
    assert isinstance(inp, MediaRecord) and _refs(answer)
    # Stored up front with ingest_message, the bytes never reach the checkpoint database at all.
    other = make_graph(checkpointer=tmp_path / "clean.sqlite")
    message = ingest_message(
        HumanMessage(content=[{"type": "text", "text": "make it green"}, block]), store.for_tenant("default")
    )
    other.invoke({"messages": [message]}, _config("t2"))
    assert block["base64"][:64].encode() not in _db_bytes(tmp_path / "clean.sqlite")


def test_progress_streams_in_custom_mode(make_graph: Any) -> None:
    graph = make_graph()
    events = list(
        graph.stream(
            {"messages": [("user", "draw a large blue circle at night")]}, _config(), stream_mode="custom"
        )
    )
    steps = [(e["step"], e["total"]) for e in events if e["event"] == "progress"]
    assert steps == [(1, 2), (2, 2)]
    assert events[0]["event"] == "start" and events[-1]["event"] == "end"


@pytest.mark.parametrize("fail", ["mid", "after"])
def test_a_turn_failing_in_generate_is_retried_without_duplicates_or_orphans(
    make_graph: Any, tiny_model: Any, store: ArtifactStore, memory: Any, fail: str
) -> None:
    backend = CountingBackend(tiny_model, store, fail=fail)
    graph = make_graph(backend, caption_outputs=False)
    _say(graph, "draw a small red star in the snow")
    assert backend.calls == ["image", "image"]  # failed once, retried once
    _say(graph, "make it blue")
    assert len([r for r in thread_media(graph, _config()) if r.role == "output"]) == 2
    _assert_no_orphans_or_duplicates(store, memory, graph)


def test_review_accept_and_reject(make_graph: Any, store: ArtifactStore, memory: Any) -> None:
    graph = make_graph(review=True, caption_outputs=False)
    out = graph.invoke({"messages": [("user", "draw a small red star in the snow")]}, _config())
    (pending,) = out["__interrupt__"]
    (shown,) = pending.value["media"]
    assert shown["id"] in store and memory.count("default") == 0  # nothing remembered before review
    out = graph.invoke(Command(resume="accept"), _config())
    assert _refs(out["messages"][-1])[0].id == shown["id"]
    assert memory.count("default") == 1

    out = graph.invoke({"messages": [("user", "make it blue")]}, _config())
    rejected = out["__interrupt__"][0].value["media"][0]["id"]
    out = graph.invoke(Command(resume={"action": "reject"}), _config())
    assert "Discarded" in out["messages"][-1].text and not _refs(out["messages"][-1])
    assert rejected not in store  # its file is gone again
    assert memory.count("default") == 1  # and it never became an exemplar
    assert [r.id for r in thread_media(graph, _config())] == [shown["id"]]
    # "it" now means the accepted star, not the rejected edit.
    graph.invoke({"messages": [("user", "make it green")]}, _config())
    out = graph.invoke(Command(resume=True), _config())
    assert thread_media(graph, _config())[-1].parents == (shown["id"],)


def test_unresolvable_references_get_a_clarifying_answer(
    make_graph: Any, tiny_model: Any, store: ArtifactStore
) -> None:
    backend = CountingBackend(tiny_model, store)
    graph = make_graph(backend)
    for text, says in [
        ("make it blue", "no image"),
        ("make @m:abcdef12 bigger", "can't find"),
    ]:
        answer = _say(graph, text)
        assert answer.response_metadata["clarification"] and says in answer.text
    _say(graph, "draw a small red star in the snow")
    answer = _say(graph, "describe the sound from turn 2")
    assert "Turn 2 has no sound" in answer.text
    assert backend.calls == ["image"]  # only the drawing ran the model (its caption came with the request)


def test_recall_and_structured_options(make_graph: Any) -> None:
    graph = make_graph()
    _say(graph, "draw a small red star in the snow")
    _say(graph, "play a high sine tone with wind")
    options = TurnOptions(task="recall", query="a high sine tone with wind", k=1, modality="audio")
    out = graph.invoke({"messages": [("user", "find the tone")], "options": options}, _config())
    (found,) = _refs(out["messages"][-1])
    assert found.modality.value == "audio"
    options = TurnOptions(task="edit", sources=("the first picture",), instruction="make it purple", seed=7)
    graph.invoke({"messages": [("user", "make it purple")], "options": options}, _config())
    media = thread_media(graph, _config())
    assert media[-1].parents == (media[0].id,)


def test_memory_reaches_across_threads(make_graph: Any) -> None:
    graph = make_graph(caption_outputs=False)
    (star,) = _refs(_say(graph, "draw a small red star in the snow", name="first"))
    (blue,) = _refs(_say(graph, "make it blue", name="first"))
    # A new thread knows no edit of its own: "do the same" finds the remembered one.
    (circle,) = _refs(_say(graph, "draw a large green circle on a sunny day", name="second"))
    made = _say(graph, "do the same to it", name="second")
    state = graph.get_state(_config("second")).values
    assert state["request"].example[1].id == blue.id
    assert thread_media(graph, _config("second"))[-1].parents == (circle.id,)
    assert made.response_metadata["task"] == "analogy"
    # An explicit id from the other thread resolves through memory.
    _say(graph, f"make @m:{star.short_id} purple", name="second")
    assert thread_media(graph, _config("second"))[-1].parents == (star.id,)


def test_window_policy_shows_only_recent_turns(
    make_graph: Any, tiny_model: Any, store: ArtifactStore
) -> None:
    prompts: list[Any] = []

    class Spy(LocalBackend):
        def generate(self, request: Any, *, progress: Any = None) -> Any:
            prompts.append(request.prompt)
            return super().generate(request, progress=progress)

    graph = make_graph(Spy(tiny_model, store), context="window", window_k=1, caption_outputs=False)
    for text in ["draw a small red star in the snow", "make it blue", "make it bigger"]:
        _say(graph, text)
    last = prompts[-1]
    assert [t.role for t in last] == ["user", "assistant", "user"]  # one earlier exchange, then the request
    assert last[-1].parts == ("make it bigger",)  # the words as sent: nothing resolved for the model


def test_each_thread_sends_its_own_opaque_session_key(
    make_graph: Any, tiny_model: Any, store: ArtifactStore
) -> None:
    keys: list[str | None] = []

    class Spy(LocalBackend):
        def generate(self, request: Any, *, progress: Any = None) -> Any:
            keys.append(request.session)
            return super().generate(request, progress=progress)

    graph = make_graph(Spy(tiny_model, store), caption_outputs=False)
    for name in ["alpha", "alpha", "beta"]:
        _say(graph, "draw a small red star in the snow", name=name)
    other_tenant = {"configurable": {"thread_id": "alpha", "tenant": "acme"}}
    graph.invoke({"messages": [HumanMessage(content="draw a blue circle")]}, other_tenant)
    alpha, again, beta, acme = keys
    assert alpha == again  # a thread's turns share a key: a served model keeps them on one replica
    assert len({alpha, beta, acme}) == 3  # another thread, or the same thread id of another tenant
    assert all(k is not None and len(k) == 32 and "alpha" not in k for k in keys)  # a hash, not the names


def test_checkpoints_grow_by_a_few_kilobytes_per_turn(make_graph: Any, tmp_path: Path) -> None:
    graph = make_graph(caption_outputs=False)
    sizes = []
    for text in [
        "draw a small red star in the snow",
        *["make it blue", "make it bigger", "make it green"] * 2,
    ]:
        _say(graph, text, durability="exit")
        sizes.append(_db_size(tmp_path / "checkpoints.sqlite"))
    growth = np.diff(sizes)
    assert growth.max() <= 16 * 1024, growth
    assert growth[-1] <= growth[1] * 1.5  # does not grow with the length of the conversation


_CHILD = textwrap.dedent(
    """
    import os, sys, torch
    torch.set_num_threads(1)
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.backends import LocalBackend, ModelEmbedder
    from codi2_agent.graphs import build_session_graph
    from codi2_agent.memory import ExemplarMemory
    from codi2_agent.model import CoDi2Model

    model_dir, root = sys.argv[1], sys.argv[2]
    model = CoDi2Model.from_pretrained(model_dir)
    store = ArtifactStore(root + "/artifacts")
    memory = ExemplarMemory(root + "/memory", embedder=ModelEmbedder(model), artifacts=store)

    class Dies(LocalBackend):
        def generate(self, request, *, progress=None):
            if request.output == "image" and "blue" in str(request.prompt):
                def die(step, total):
                    os._exit(3)  # the process is killed mid-diffusion: no cleanup, no except blocks
                return super().generate(request, progress=die)
            return super().generate(request, progress=progress)

    graph = build_session_graph(Dies(model, store), memory, num_inference_steps=2, caption_outputs=False,
                                checkpointer=root + "/checkpoints.sqlite")
    config = {"configurable": {"thread_id": "t1"}}
    graph.invoke({"messages": [("user", "draw a small red star in the snow")]}, config, durability="async")
    graph.invoke({"messages": [("user", "make it blue")]}, config, durability="async")
    """
)


def test_a_thread_resumes_after_the_process_dies(
    tiny_model_dir: Path, tiny_model: Any, tmp_path: Path
) -> None:
    from codi2_agent.backends import ModelEmbedder
    from codi2_agent.graphs import build_session_graph
    from codi2_agent.memory import ExemplarMemory

    root = tmp_path / "session"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    done = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(root)], capture_output=True, timeout=120
    )
    assert done.returncode == 3, done.stderr.decode()[-2000:]

    store = ArtifactStore(root / "artifacts")
    memory = ExemplarMemory(root / "memory", embedder=ModelEmbedder(tiny_model), artifacts=store)
    try:
        graph = build_session_graph(tiny_model, memory, store, num_inference_steps=2, caption_outputs=False,
                                    checkpointer=root / "checkpoints.sqlite")  # fmt: skip
        snapshot = graph.get_state(_config())
        assert snapshot.next == ("generate",)  # it died in generate; everything before is checkpointed
        assert isinstance(snapshot.values["request"].sources[0], MediaRecord)  # our types revive from SQLite
        out = graph.invoke(None, _config(), durability="async")  # resume the cut-off turn
        assert out["turn"] == 2 and _refs(out["messages"][-1])
        out = graph.invoke(
            {"messages": [("user", "go back to the star from turn 1 and make it green")]}, _config()
        )
        media = thread_media(graph, _config())
        assert media[-1].parents == (media[0].id,)
        _assert_no_orphans_or_duplicates(store, memory, graph)
        graph.checkpointer.conn.close()
    finally:
        memory.close()


def test_mermaid_drawing(make_graph: Any, snapshot: Any) -> None:
    assert make_graph().get_graph().draw_mermaid() == snapshot(name="session_graph")
    assert make_graph(review=True).get_graph().draw_mermaid() == snapshot(name="session_graph_review")
