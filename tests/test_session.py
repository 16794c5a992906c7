"""`Session`: turns, inline display, saving, history, undo, fork, review, and a restart."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from codi2_agent import Media, Session
from codi2_agent.model import CoDi2Config, CoDi2Model
from codi2_agent.session import ReviewPendingError, TurnResult

STEPS = 2


@pytest.fixture(scope="module")
def model() -> CoDi2Model:
    return CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)


@pytest.fixture
def session(model: CoDi2Model, tmp_path: Path) -> Iterator[Session]:
    s = Session(model, thread="nb", root=tmp_path, num_inference_steps=STEPS, progress=False)
    yield s
    s.close()


def _square() -> Media:
    arr = np.full((32, 32, 3), 50, np.uint8)
    arr[8:24, 8:24] = (240, 200, 30)
    return Media.from_image(arr, caption="a large yellow square in the desert")


def test_say_returns_media_that_display_and_save(session: Session, tmp_path: Path) -> None:
    star = session.say("draw a small red star in the snow")
    assert isinstance(star, TurnResult) and star.turn == 1 and star.task == "generate"
    assert star.image is not None and star.image.image.size == (32, 32)
    assert star._repr_png_().startswith(b"\x89PNG")
    assert '<img src="data:image/png;base64,' in star._repr_html_()
    assert star.ids == [f"@m:{star.refs[0].short_id}"]
    tone = session.say("play a high sine tone with wind")
    assert tone.audio is not None and "<audio controls" in tone._repr_html_() and tone._repr_png_() is None
    paths = tone.save(tmp_path / "out")
    assert [p.suffix for p in paths] == [".wav", ".txt"] and Media.open(paths[0]).modality.value == "audio"


def test_media_arguments_and_per_turn_options(session: Session, tmp_path: Path) -> None:
    path = _square().save(tmp_path / "square.png")
    first = session.say("make it blue", path)
    session.say("make it blue", _square())  # the same pixels as a Media: the same artifact
    session.say("make it blue", first.refs[0])  # a stored MediaRef (here: the first answer)
    inputs = [r for r in session.media_log() if r.role == "input"]
    assert [r.turn for r in inputs] == [1, 2, 3]
    assert inputs[0].id == inputs[1].id and inputs[2].id == first.refs[0].id
    seeded = [session.say("draw a small red star in the snow", seed=5).refs[0].id for _ in range(2)]
    assert seeded[0] == seeded[1]
    with pytest.raises(ValueError):
        session.say()


def test_history_undo_and_fork(session: Session) -> None:
    star = session.say("draw a small red star in the snow")
    blue = session.say("make it blue")
    green = session.say("make it green")
    assert [t.turn for t in session.history()] == [1, 2, 3]
    back = session.undo()
    assert back is not None and back.refs == blue.refs and session.turn == 2
    # "it" now means the blue star again; the undone green one is gone from the thread.
    bigger = session.say("make it bigger")
    media = {r.id: r for r in session.media_log()}
    assert media[bigger.refs[0].id].parents == (blue.refs[0].id,) and green.refs[0].id not in media

    child = session.fork("what-if")
    assert [t.refs for t in child.history()] == [t.refs for t in session.history()]
    child.say("make it purple")
    assert child.turn == 4 and session.turn == 3  # threads are independent after the fork
    with pytest.raises(ValueError):
        session.fork("nb")

    assert session.undo() is not None and session.undo() is not None
    assert session.undo() is None and session.turn == 0 and session.history() == []
    with pytest.raises(ValueError):
        session.undo()
    assert session.say("draw a large green circle on a sunny day").turn == 1
    assert star.refs  # results stay usable after undo


def test_unresolvable_reference_is_a_question(session: Session) -> None:
    answer = session.say("make the dragon blue")
    assert answer.clarification and not answer.refs and "dragon" in answer.text


def test_review_accept_reject(model: CoDi2Model, tmp_path: Path) -> None:
    with Session(
        model, thread="r", root=tmp_path, review=True, num_inference_steps=STEPS, progress=False
    ) as s:
        pending = s.say("draw a small red star in the snow")
        assert pending.pending_review and pending.refs and s.pending
        with pytest.raises(ReviewPendingError):
            s.say("make it blue")
        kept = s.accept()
        assert not kept.pending_review and kept.refs == pending.refs
        s.say("make it blue")
        dropped = s.reject()
        assert "Discarded" in dropped.text and not dropped.refs
        assert s.memory.count("default") == 1  # only the accepted star is an exemplar
        with pytest.raises(ValueError):
            s.accept()


def test_a_restarted_session_continues_the_thread(model: CoDi2Model, tmp_path: Path) -> None:
    first = Session(model, thread="nb", root=tmp_path, num_inference_steps=STEPS, progress=True)
    star = first.say("draw a small red star in the snow")
    first.close()  # as a notebook kernel restart would
    second = Session(model, thread="nb", root=tmp_path, num_inference_steps=STEPS, progress=False)
    try:
        assert [t.refs for t in second.history()] == [star.refs]
        blue = second.say("make it blue")
        assert second.media_log()[-1].parents == (star.refs[0].id,) and blue.turn == 2
    finally:
        second.close()
