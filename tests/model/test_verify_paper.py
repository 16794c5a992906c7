"""`verify=n` on the paper preset's code path (tiny random CLIP / CLAP / unCLIP / AudioLDM-2 of the
paper's own classes): the n candidates go through the diffusers pipeline in one call, and each one's
agreement is what it gets decoded and encoded alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from codi2_agent.media import Media
from codi2_agent.model import CoDi2Model
from codi2_agent.model.paper_testing import build_tiny_paper_model
from codi2_agent.model.verification import candidate_seeds

STEPS = 2


@pytest.fixture(scope="module")
def paper_model(tmp_path_factory: pytest.TempPathFactory) -> CoDi2Model:
    return CoDi2Model.from_pretrained(build_tiny_paper_model(tmp_path_factory.mktemp("paper") / "m", seed=0))


def _prompt(kind: str) -> list[Any]:
    if kind == "image":
        pixels = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        return ["draw this again", Media.from_image(pixels)]
    return ["play it with rain"]


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_paper_decoders_verify_candidates_in_one_pipeline_call(
    paper_model: CoDi2Model, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = paper_model.decoder(kind)
    decode = decoder.decode
    rows: list[int] = []

    def counted(features: torch.Tensor, **kwargs: Any) -> list[Media]:
        rows.append(features.shape[0])
        return decode(features, **kwargs)

    monkeypatch.setattr(decoder, "decode", counted)
    out = paper_model.generate(_prompt(kind), output=kind, seed=0, verify=3, num_inference_steps=STEPS)
    monkeypatch.undo()
    assert rows == [3]  # one pipeline call for the three candidates
    assert out.features is not None
    alone = []
    for seed in candidate_seeds(0, 3):
        medium = decoder.decode(
            out.features[None],
            generator=torch.Generator().manual_seed(seed),
            num_inference_steps=STEPS,
            prompt=out.text or None,
        )[0]
        values = paper_model.processor.media_tensor(medium.modality, [medium])
        feature = paper_model.encode_media(kind, values)[0]
        alone.append(
            float(torch.nn.functional.cosine_similarity(feature.flatten(), out.features.flatten(), dim=0))
        )
    np.testing.assert_allclose(out.candidate_agreements, alone, atol=1e-3)
    assert out.agreement == max(out.candidate_agreements)


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_paper_verify_one_is_the_plain_answer(paper_model: CoDi2Model, kind: str) -> None:
    plain = paper_model.generate(_prompt(kind), output=kind, seed=4, num_inference_steps=STEPS)
    checked = paper_model.generate(_prompt(kind), output=kind, seed=4, verify=1, num_inference_steps=STEPS)
    assert checked.media[0].sha256() == plain.media[0].sha256() and checked.agreement is not None
