"""The self-check (`verify=`) through the layers above the model: `GenerateRequest` -> `LocalBackend`
-> the session graph's setting -> the turn's metadata (`TurnResult.agreement`)."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"

from pathlib import Path

import pytest
from pydantic import ValidationError

from codi2_agent import ArtifactStore, Session
from codi2_agent.backends import GenerateRequest, LocalBackend, PromptTurn
from codi2_agent.graphs import build_session_graph
from codi2_agent.model import CoDi2Model

STEPS = 2


def _request(**kwargs: object) -> GenerateRequest:
    prompt = (PromptTurn(role="user", parts=("draw a large red star in the desert",)),)
    return GenerateRequest(prompt=prompt, output="image", seed=1, num_inference_steps=STEPS, **kwargs)


def test_local_backend_passes_verify_and_returns_the_agreement(
    tiny_model: CoDi2Model, tmp_path: Path
) -> None:
    backend = LocalBackend(tiny_model, ArtifactStore(tmp_path / "artifacts"))
    checked = backend.generate(_request(verify=4))
    direct = tiny_model.generate(
        ["draw a large red star in the desert"], output="image", seed=1, verify=4, num_inference_steps=STEPS
    )
    assert checked.agreement == pytest.approx(direct.agreement, abs=1e-6)
    assert checked.media[0].id == direct.media[0].sha256()  # the kept candidate is what was stored
    assert backend.generate(_request()).agreement is None
    [batched] = backend.generate_batch([_request(verify=4)])
    assert batched.agreement == pytest.approx(direct.agreement, abs=2e-3)


@pytest.mark.parametrize("bad", [{"verify": 0}, {"verify": 65}, {"verify": 2, "verify_threshold": 1.5}])
def test_generate_request_refuses_bad_verify_settings(bad: dict) -> None:
    with pytest.raises(ValidationError):
        _request(**bad)


def test_session_verify_setting_puts_the_agreement_in_the_turn(
    tiny_model: CoDi2Model, tmp_path: Path
) -> None:
    with Session(
        tiny_model, thread="v", root=tmp_path, num_inference_steps=STEPS, progress=False, verify=3
    ) as s:
        turn = s.say("draw a large red star in the desert", seed=1)
        direct = tiny_model.generate(
            ["draw a large red star in the desert"],
            output="image",
            seed=1,
            verify=3,
            num_inference_steps=STEPS,
        )
        assert turn.agreement is not None and turn.image is not None
        assert turn.agreement == pytest.approx(direct.agreement, abs=1e-6)
        message = s.graph.get_state(s.config).values["messages"][-1]
        assert message.response_metadata["agreement"] == turn.agreement
        assert s.history()[-1].agreement == turn.agreement  # read back from the thread
    with Session(tiny_model, thread="plain", root=tmp_path, num_inference_steps=STEPS, progress=False) as s:
        assert s.say("draw a large red star in the desert", seed=1).agreement is None


def test_the_graph_refuses_a_bad_verify_setting_when_built(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verify must be an integer"):
        build_session_graph(tiny_model, None, tmp_path / "artifacts", verify=0)
