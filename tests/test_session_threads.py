"""`Session`'s front door: one pass per turn, and the public thread operations the CLI, pipelines
and tools use (open a thread, rewind, copy, list, describe where things live)."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from codi2_agent import Media, Session
from codi2_agent.model import CoDi2Model

STEPS = 2


@pytest.fixture
def session(tiny_model: CoDi2Model, tmp_path: Path) -> Iterator[Session]:
    s = Session(tiny_model, thread="main", root=tmp_path, num_inference_steps=STEPS, progress=False)
    yield s
    s.close()


def _photo(value: int) -> Media:
    arr = np.full((32, 32, 3), value, np.uint8)
    arr[8:24, 8:24] = (240, 200, 30)
    return Media.from_image(arr)


# --- one pass per turn ---------------------------------------------------------------------------
def test_each_medium_is_read_and_encoded_once_per_turn(session: Session, tiny_model: CoDi2Model) -> None:
    store = session.artifacts
    ref = store.put(_photo(40))
    store._cache.clear()  # as if the medium had been stored by another process
    reads, calls = store.reads, tiny_model.encoder_calls

    result = session.say("make it blue", ref)

    assert len(result.refs) == 1
    # The attached file is read from disk once (ingest), then served decoded from the store's cache.
    assert store.reads - reads == 1
    # Two media in the turn — the input and the output — two encoder passes: the input's embedding,
    # prompt and memory share one, the output's caption and memory embedding share the other.
    assert tiny_model.encoder_calls - calls == 2
    # The caption came from reading the output back, and the memory holds both media.
    items = session.memory.items("default", thread="main")
    assert {i.artifact_id for i in items} == {ref.id, result.refs[0].id}


def test_a_later_turn_reuses_features_of_earlier_media(session: Session, tiny_model: CoDi2Model) -> None:
    first = session.say("draw a small red star in the snow")
    calls, reads = tiny_model.encoder_calls, session.artifacts.reads
    session.say("make it blue")
    # Only the new output is encoded; the star's features and pixels are cached from turn 1.
    assert tiny_model.encoder_calls - calls == 1
    assert session.artifacts.reads == reads
    assert first.refs[0].id in {r.id for r in session.media_log()}


def test_say_reads_its_answer_from_the_stream_not_the_history(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    session.say("draw a small red star in the snow")

    def no_history(*args: object, **kwargs: object) -> None:
        raise AssertionError("say() rebuilt the thread's history")

    monkeypatch.setattr(Session, "_results", no_history)
    result = session.say("make it blue")
    assert result.turn == 2 and result.request == "make it blue" and len(result.refs) == 1


def test_a_cached_medium_is_checked_against_its_file_when_deleted(session: Session) -> None:
    ref = session.artifacts.put(_photo(90))
    session.artifacts.delete(ref)
    result = session.say("describe @m:" + ref.short_id)
    assert result.clarification and "can't find" in result.text


def test_an_unknown_id_is_answered_with_a_question(session: Session) -> None:
    session.say("draw a small red star in the snow")
    result = session.say("make @m:abcdef123456 blue")
    assert result.clarification
    assert "can't find '@m:abcdef123456'" in result.text


# --- thread operations ---------------------------------------------------------------------------
def test_rewind_undo_and_history(session: Session) -> None:
    one = session.say("draw a small red star in the snow")
    session.say("make it blue")
    session.say("make it large")
    assert session.turn == 3

    back = session.rewind(1)
    assert back is not None and back.turn == 1 and back.refs == one.refs
    assert session.turn == 1 and [t.request for t in session.history()] == [one.request]
    # Media of rewound turns are no longer in the thread's log.
    assert [r.turn for r in session.media_log()] == [1]
    # Continuing after a rewind numbers turns from there.
    again = session.say("make it green")
    assert again.turn == 2
    assert session.undo() is not None and session.turn == 1
    assert session.rewind(0) is None and session.turn == 0 and session.history() == []
    with pytest.raises(ValueError, match="between 0 and 0"):
        session.rewind(2)
    with pytest.raises(ValueError, match="nothing to undo"):
        session.undo()


def test_copy_and_fork_share_parts_and_keep_the_source(session: Session) -> None:
    first = session.say("draw a small red star in the snow")
    session.say("make it blue")

    early = session.copy("early", at_turn=1)
    assert early.turn == 1 and early.history()[0].refs == first.refs
    assert early.artifacts is session.artifacts and early.graph is session.graph
    assert early.state()["ancestors"] == ["main"]
    assert session.turn == 2  # the source is untouched

    # A copy overwrites; a fork refuses a thread that has turns.
    again = session.copy("early")
    assert again.turn == 2
    with pytest.raises(ValueError, match="already has turns"):
        session.fork("early")
    fresh = session.fork("fresh")
    assert fresh.turn == 2 and sorted(session.threads()) == ["early", "fresh", "main"]
    with pytest.raises(ValueError, match="another thread id"):
        session.copy("main")


def test_open_thread_shares_parts_and_closing_it_leaves_them_open(session: Session) -> None:
    other = session.open_thread("side")
    assert other.thread == "side" and other.turn == 0 and other.memory is session.memory
    other.say("draw a small red star in the snow")
    other.close()  # does not own the parts
    assert session.say("draw a large blue circle at night").turn == 1
    assert sorted(session.threads()) == ["main", "side"]


def test_where_names_every_part(session: Session, tmp_path: Path) -> None:
    where = session.where()
    assert where["root"] == str(tmp_path)
    assert where["artifacts"] == str(tmp_path / "artifacts")
    assert Path(where["checkpoints"]) == (tmp_path / "checkpoints.sqlite").resolve()
    assert where["memory"].startswith("ExemplarMemory(") and where["model"] == "codi2-local:tiny"
    assert (where["thread"], where["tenant"]) == ("main", "default")


def test_progress_bars_only_on_a_terminal(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    # pytest captures stderr (not a terminal): the default shows no bar.
    s = Session(tiny_model, root=tmp_path, num_inference_steps=STEPS)
    try:
        assert s.progress is False
    finally:
        s.close()


def test_a_process_that_merely_imported_ipykernel_is_not_a_notebook() -> None:
    import ipykernel  # noqa: F401  (what nbclient-based tests or tools do in the same process)

    from codi2_agent.session import _interactive

    assert _interactive() is False


def test_a_reference_given_as_media_is_resolved_by_the_graph(session: Session) -> None:
    made = session.say("draw a small red star in the snow")
    unknown = session.say("describe this", "@m:abcdef123456")
    assert unknown.clarification and "can't find '@m:abcdef123456'" in unknown.text
    known = session.say("describe this", made.ids[0])
    assert not known.clarification and known.task == "describe"
