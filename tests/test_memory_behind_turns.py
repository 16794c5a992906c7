"""With the memory on a Chroma server, a turn does not wait for its exemplar-memory write: the write
lands behind it, every later read of the process sees it, and a process that dies before it lands
leaves a note in the thread log from which the next `Session` on the thread writes the records again.
With embedded Chroma (whose binding holds the GIL through a write) the turn writes in place."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any

from codi2_agent import Session
from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import ModelEmbedder
from codi2_agent.graphs import ThreadLog
from codi2_agent.local_services import ChromaServer
from codi2_agent.memory import ExemplarMemory
from codi2_agent.model import CoDi2Model

STEPS = 2
STAR = "draw a small red star in the snow"


def _server_memory(model: CoDi2Model, server: ChromaServer, root: Path, namespace: str) -> ExemplarMemory:
    return ExemplarMemory(
        host=server.host,
        port=server.port,
        embedder=ModelEmbedder(model),
        artifacts=ArtifactStore(root / "artifacts"),
        namespace=namespace,
    )


def _session(model: CoDi2Model, root: Path, memory: ExemplarMemory) -> Session:
    return Session(model, thread="t", root=root, num_inference_steps=STEPS, progress=False, memory=memory)


def _hold_writes(memory: Any) -> threading.Event:
    release = threading.Event()
    commit = memory._writer.commit

    def held(prepared: Any) -> Any:
        assert release.wait(60), "the test never released the write"
        return commit(prepared)

    memory._writer.commit = held
    return release


def _notes(session: Session) -> dict[str, Any]:
    return ThreadLog(session.graph.store).unremembered(session.tenant, session.key)


def _items(session: Session) -> set[tuple[str, int, str]]:
    assert session.memory is not None
    return {(i.artifact_id, i.turn, i.role) for i in session.memory.items(session.tenant, thread=session.key)}


def test_a_turn_returns_before_its_memory_write_lands(
    tiny_model: CoDi2Model, chroma_server: ChromaServer, tmp_path: Path
) -> None:
    namespace = "b" + uuid.uuid4().hex[:12]
    memory = _server_memory(tiny_model, chroma_server, tmp_path, namespace)
    assert memory.write_behind
    with _session(tiny_model, tmp_path, memory) as session:
        release = _hold_writes(memory)
        star = session.say(STAR)
        # The turn is answered and logged; its memory write is still waiting, and noted as such.
        (note,) = _notes(session).values()
        assert note.id == star.refs[0].id and note.turn == 1 and note.role == "output"

        threading.Timer(0.2, release.set).start()
        # A read of the memory waits for the write, so this process always reads its own turns.
        assert _items(session) == {(star.refs[0].id, 1, "output")}
        blue = session.say("make it blue")
        # The thread's next write drops the notes of the writes that landed: only the new one's is left.
        assert [n.id for n in _notes(session).values()] == [blue.refs[0].id]
    memory.close()

    # The next session on the thread finds that last note, and the memory already holding its record:
    # the note goes, nothing is written again.
    memory = _server_memory(tiny_model, chroma_server, tmp_path, namespace)
    with _session(tiny_model, tmp_path, memory) as again:
        writes: list[Any] = []
        memory.add_many = lambda *a, **k: writes.append(a)  # type: ignore[method-assign]
        again._reconcile_memory()
        assert writes == [] and _notes(again) == {}
        assert _items(again) == {(star.refs[0].id, 1, "output"), (blue.refs[0].id, 2, "output")}
    memory.close()


def test_an_embedded_memory_is_written_in_the_turn(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    with Session(tiny_model, thread="t", root=tmp_path, num_inference_steps=STEPS, progress=False) as session:
        assert isinstance(session.memory, ExemplarMemory) and not session.memory.write_behind
        release = _hold_writes(session.memory)
        threading.Timer(0.3, release.set).start()
        star = session.say(STAR)  # returns only once the held write went through
        assert release.is_set() and _notes(session) == {}
        assert _items(session) == {(star.refs[0].id, 1, "output")}


_CRASHING_WRITER = textwrap.dedent(
    """
    import os, sys, threading
    from codi2_agent import Session
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.memory import ExemplarMemory
    from codi2_agent.backends import ModelEmbedder
    from codi2_agent.model import CoDi2Model

    model_dir, root, host, port, namespace, text = sys.argv[1:]
    model = CoDi2Model.from_pretrained(model_dir)
    memory = ExemplarMemory(host=host, port=int(port), embedder=ModelEmbedder(model),
                            artifacts=ArtifactStore(root + "/artifacts"), namespace=namespace)
    session = Session(model, thread="t", root=root, num_inference_steps=2, progress=False, memory=memory)
    never = threading.Event()
    commit = memory._writer.commit
    memory._writer.commit = lambda prepared: never.wait() and commit(prepared)
    result = session.say(text)
    print(result.refs[0].id, flush=True)
    os._exit(0)  # dies with the memory write still in flight
    """
)


def test_a_write_a_crash_kept_from_the_memory_is_made_by_the_next_session(
    tiny_model_dir: Path, tiny_model: CoDi2Model, chroma_server: ChromaServer, tmp_path: Path
) -> None:
    namespace = "c" + uuid.uuid4().hex[:12]
    args = [str(tiny_model_dir), str(tmp_path), chroma_server.host, str(chroma_server.port), namespace, STAR]
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_WRITER, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    star_id = done.stdout.split()[-1]

    memory = _server_memory(tiny_model, chroma_server, tmp_path, namespace)
    with _session(tiny_model, tmp_path, memory) as session:
        assert session.turn == 1 and [r.id for r in session.media_log()] == [star_id]
        assert _items(session) == set()  # the dead process's write never landed ...
        assert [n.id for n in _notes(session).values()] == [star_id]  # ... and its note says so

        blue = session.say("make it blue")  # the first write of this session repairs the memory
        memory.flush()
        assert _items(session) == {(star_id, 1, "output"), (blue.refs[0].id, 2, "output")}
        assert [n.id for n in _notes(session).values()] == [blue.refs[0].id]  # the dead one's note is gone
    memory.close()
