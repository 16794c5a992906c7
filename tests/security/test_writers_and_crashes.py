"""One writer per thread across processes, and a crash at any instant leaves whole turns only.

Both use real subprocesses on one session folder (SQLite checkpoints; the exemplar memory is off in
the children because embedded Chroma is single-process — the memory's own multi-process story is a
Chroma server, tested in tests/memory)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from codi2_agent import Session
from codi2_agent.graphs import thread_key
from codi2_agent.locking import ThreadBusyError, thread_lock

from .conftest import STEPS

_WRITER = """
import sys, json
from codi2_agent import Session
from codi2_agent.model import CoDi2Model
model_dir, root, name, turns, durability = sys.argv[1:6]
s = Session(CoDi2Model.from_pretrained(model_dir), thread="shared", root=root, use_memory=False,
            num_inference_steps={steps}, progress=False, durability=durability, lock_timeout=120)
print("ready", flush=True)
for i in range(int(turns)):
    r = s.say(f"draw a small red star in the snow ({{name}} {{i}})", output="text", max_new_tokens=4)
    print(json.dumps({{"turn": r.turn, "request": r.request}}), flush=True)
s.close()
"""


def _spawn(script: Path, model_dir: Path, root: Path, name: str, turns: int, durability: str) -> Any:
    return subprocess.Popen(
        [sys.executable, str(script), str(model_dir), str(root), name, str(turns), durability],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_on_one_thread_take_turns(tiny_model_dir: Path, tmp_path: Path) -> None:
    import json

    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(steps=STEPS))
    root = tmp_path / "session"
    procs = {n: _spawn(script, tiny_model_dir, root, n, 5, "exit") for n in ("left", "right")}
    results: dict[str, list[dict[str, Any]]] = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-2000:]
        results[name] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    # Every say() returned its own turn, and the thread holds all ten turns, numbered once each.
    for name, got in results.items():
        assert [r["request"].split("(")[1].rstrip(")") for r in got] == [f"{name} {i}" for i in range(5)]
    turns = sorted(r["turn"] for got in results.values() for r in got)
    assert turns == list(range(1, 11))
    s = Session(str(tiny_model_dir), thread="shared", root=root, use_memory=False, progress=False)
    try:
        history = s.history()
        assert [t.turn for t in history] == list(range(1, 11))
        by_turn = {r["turn"]: r["request"] for got in results.values() for r in got}
        assert [t.request for t in history] == [by_turn[n] for n in range(1, 11)]
    finally:
        s.close()


def test_a_busy_thread_is_a_named_error(tiny_model: Any, tmp_path: Path) -> None:
    s = Session(tiny_model, thread="t", root=tmp_path, num_inference_steps=STEPS, lock_timeout=0.2)
    try:
        with thread_lock(tmp_path / "locks", thread_key("default", "t"), timeout=1):
            with pytest.raises(ThreadBusyError, match="'t' is busy"):
                s.say("draw a small red star in the snow")
            with pytest.raises(ThreadBusyError):
                s.rewind(0)
            s.open_thread("other").say("draw a small red star in the snow")  # other threads are free
        assert s.say("draw a small red star in the snow").turn == 1  # free again
    finally:
        s.close()


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
def test_a_turn_killed_at_any_instant_is_whole_or_absent(
    tiny_model_dir: Path, tmp_path: Path, durability: str
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER.format(steps=STEPS))
    root = tmp_path / "session"
    rng = random.Random(durability)
    for _ in range(3):  # bounded: three kills per mode
        proc = _spawn(script, tiny_model_dir, root, "w", 50, durability)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

        s = Session(str(tiny_model_dir), thread="shared", root=root, use_memory=False,
                    num_inference_steps=STEPS, progress=False, durability=durability)  # fmt: skip
        try:
            assert not s.pending  # a cut-short turn is not a review nobody asked for
            answer = s.say("draw a large blue circle at night", output="text", max_new_tokens=4)
            history = s.history()
            # Whole turns only: each numbered once, in order, each a request with its answer.
            assert [t.turn for t in history] == list(range(1, len(history) + 1))
            assert answer.turn == len(history) and history[-1].request == answer.request
            messages = s.state()["messages"]
            kinds = [m.type for m in messages]
            assert kinds == ["human", "ai"] * (len(kinds) // 2)
        finally:
            s.close()


@pytest.mark.parametrize("last_task", ["ingest", "respond"])
def test_a_step_whose_writes_were_saved_but_not_its_checkpoint_is_cut_short(
    tiny_model: Any, tmp_path: Path, last_task: str
) -> None:
    """The crash a random kill under ``durability="async"`` found: a task's writes reach the database,
    the checkpoint after its step does not. LangGraph then leaves that task out of ``next`` (it has
    writes), so "no next node" must not be read as "at rest"."""
    import sqlite3

    from langchain_core.messages import HumanMessage
    from langgraph.checkpoint.sqlite import SqliteSaver

    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.graphs import build_session_graph, recover_thread
    from codi2_agent.graphs._checkpoint import session_serializer

    class DiesBeforeCheckpoint(SqliteSaver):
        """Saves `last_task`'s writes, then dies writing the checkpoint of its step."""

        armed = False
        wrote = False

        def put_writes(self, config: Any, writes: Any, task_id: str, task_path: str = "") -> None:
            super().put_writes(config, writes, task_id, task_path)
            self.wrote = self.wrote or (self.armed and task_path.endswith(last_task))

        def put(self, config: Any, checkpoint: Any, metadata: Any, new_versions: Any) -> Any:
            if self.wrote:
                raise SystemExit("killed")
            return super().put(config, checkpoint, metadata, new_versions)

    conn = sqlite3.connect(tmp_path / "checkpoints.sqlite", check_same_thread=False)
    saver = DiesBeforeCheckpoint(conn, serde=session_serializer())
    store = ArtifactStore(tmp_path / "artifacts")
    graph = build_session_graph(
        tiny_model, None, store, checkpointer=saver, num_inference_steps=STEPS, caption_outputs=False
    )
    config = {"configurable": {"thread_id": "t"}}
    graph.invoke({"messages": [HumanMessage("draw a small red star in the snow")]}, config)
    saver.armed = True
    with pytest.raises(SystemExit):
        graph.invoke({"messages": [HumanMessage("make it blue")]}, config, durability="sync")
    saver.armed = saver.wrote = False

    snapshot = graph.get_state(config)
    assert snapshot.tasks and not snapshot.next  # the trap: a task is due, yet nothing is "next"
    assert recover_thread(graph, config) is True
    assert not graph.get_state(config).tasks and recover_thread(graph, config) is False
    graph.invoke({"messages": [HumanMessage("draw a large blue circle at night")]}, config)
    messages = graph.get_state(config).values["messages"]
    assert [m.type for m in messages] == ["human", "ai"] * (len(messages) // 2)
    turns = [m.response_metadata["turn"] for m in messages if m.type == "ai"]
    # The answer was logged before the crash in respond, so that turn stands; a turn cut in ingest goes.
    assert turns == ([1, 2, 3] if last_task == "respond" else [1, 2])
    conn.close()
