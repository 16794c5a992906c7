"""A process that dies between the memory write and the checkpoint leaves exemplars for media its
thread's log never recorded; `reconcile_thread` trims the thread back to its log.

The crash is real: a child process runs a real `Session` (tiny model, embedded Chroma, SQLite
checkpoints) and exits hard the instant its graph's memory write of turn 2 has returned, before
LangGraph can checkpoint that step.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from codi2_agent import Media, Session
from codi2_agent.backends import ModelEmbedder
from codi2_agent.graphs import thread_key
from codi2_agent.memory import ExemplarMemory

from .conftest import STEPS

_CRASHING_WRITER = """
import os, sys
import numpy as np
from codi2_agent import Media, Session
from codi2_agent.model import CoDi2Model

model_dir, root = sys.argv[1:3]
def picture(value):
    arr = np.full((32, 32, 3), value, np.uint8)
    arr[4:12, 4:12] = (255 - value, 30, 200)
    return Media.from_image(arr)

s = Session(CoDi2Model.from_pretrained(model_dir), thread="t", root=root, num_inference_steps={steps},
            progress=False)
s.say("what is in this picture?", picture(40), output="text", max_new_tokens=4)
print("turn 1 done", flush=True)
write = s.memory.add_many
def write_then_die(*args, **kwargs):
    out = write(*args, **kwargs)
    os._exit(9)  # the memory holds the item; the checkpoint of this step is never written
s.memory.add_many = write_then_die
s.say("and in this one?", picture(200), output="text", max_new_tokens=4)
print("unreachable", flush=True)
"""


def _picture(value: int) -> Media:
    arr = np.full((32, 32, 3), value, np.uint8)
    arr[4:12, 4:12] = (255 - value, 30, 200)
    return Media.from_image(arr)


def _logged_media(model: Any, root: Path, thread: str) -> list[Any]:
    """The thread's media log as its checkpoints hold it (read without opening the memory)."""
    session = Session(model, thread=thread, root=root, use_memory=False)
    try:
        return session.media_log()
    finally:
        session.close()


def test_a_crash_between_memory_and_checkpoint_leaves_no_visible_orphan(
    tiny_model: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    root = tmp_path / "session"
    script = tmp_path / "writer.py"
    script.write_text(_CRASHING_WRITER.format(steps=STEPS))
    command = [sys.executable, str(script), str(tiny_model_dir), str(root)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 9, run.stderr[-3000:]
    assert "turn 1 done" in run.stdout and "unreachable" not in run.stdout

    thread = thread_key("default", "t")  # the memory's thread name: the checkpoint key
    log = _logged_media(tiny_model, root, "t")
    assert log and {r.turn for r in log} == {1}  # turn 2 never reached the checkpoint

    memory = ExemplarMemory(root / "memory", embedder=ModelEmbedder(tiny_model))
    try:
        stored = memory.items("default", thread=thread)
        orphans = [it for it in stored if (it.artifact_id, it.turn) not in {(r.id, r.turn) for r in log}]
        assert [it.turn for it in orphans] == [2]  # the attack: an item for a medium the log lacks
        # ... and recall (what another thread's retrieve step asks) returns it as an exemplar.
        recalled = memory.search("default", _picture(200), k=3)
        assert orphans[0].id in {it.id for it in recalled}

        removed = memory.reconcile_thread("default", thread, {(r.id, r.turn) for r in log})

        assert removed == 1
        assert orphans[0].id not in {it.id for it in memory.search("default", _picture(200), k=3)}
        kept = {(it.artifact_id, it.turn) for it in memory.items("default", thread=thread)}
        assert kept == {(r.id, r.turn) for r in log}  # every medium of the log is still remembered
    finally:
        memory.close()
