"""A turn cut short in another process leaves no exemplar behind once its turn number is used again.

A writer that dies between its memory write and its checkpoint leaves log rows and exemplars of a
turn the thread never had. A long-lived writer on the same thread (a worker of a pool) must not keep
serving those exemplars to other threads: when it starts that turn number it drops them.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.graphs import ThreadLog, thread_media
from codi2_agent.memory import NewItem

CONFIG = {"configurable": {"thread_id": "t"}}


def _thread_items(memory: Any) -> set[tuple[str, int]]:
    return {(i.artifact_id, i.turn) for i in memory.items("default", thread="t")}


def test_exemplars_of_a_turn_that_died_before_its_checkpoint_are_dropped(
    make_graph: Any, memory: Any, store: ArtifactStore
) -> None:
    graph = make_graph(caption_outputs=False)
    graph.invoke({"messages": [HumanMessage("draw a small red star in the snow")]}, CONFIG)
    graph.invoke({"messages": [HumanMessage("make it blue")]}, CONFIG)
    logged = {(r.id, r.turn) for r in thread_media(graph, CONFIG)}
    assert _thread_items(memory) == logged and len(logged) == 2

    # Another process's turn 3: its media log rows and its exemplar were written, then it died.
    star = thread_media(graph, CONFIG)[0]
    dead = star.model_copy(update={"turn": 3, "role": "input"})
    ThreadLog(graph.store).add_media("default", "t", [dead])
    memory.add_many("default", [NewItem("t", dead.ref, turn=3, role="input")], media=[store.get(dead.ref)])
    assert (dead.id, 3) in _thread_items(memory)

    # This writer's turn 3 (the checkpoint still says two turns) starts clean, exemplars included.
    graph.invoke({"messages": [HumanMessage("make it green")]}, CONFIG)
    media = thread_media(graph, CONFIG)
    assert [r.turn for r in media] == [1, 2, 3] and media[-1].role == "output"
    assert _thread_items(memory) == {(r.id, r.turn) for r in media}


def test_an_ordinary_turn_does_not_touch_the_memory_of_earlier_turns(make_graph: Any, memory: Any) -> None:
    graph = make_graph(caption_outputs=False)
    for text in ("draw a small red star in the snow", "make it blue", "make it bigger"):
        graph.invoke({"messages": [HumanMessage(text)]}, CONFIG)
    assert _thread_items(memory) == {(r.id, r.turn) for r in thread_media(graph, CONFIG)}
    assert len(_thread_items(memory)) == 3
