"""`generate(..., verify=n)`: n candidates from one c_MLLM, the one the model's own encoder agrees
with most is kept (codi2_agent/model/verification.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codi2_agent.media import Media
from codi2_agent.model import CoDi2Model
from codi2_agent.model.verification import agreement, candidate_seeds, choose

STEPS = 2  # diffusion steps: the check is about choosing, not about quality
PROMPTS = {"image": ["draw a large red star in the desert"], "audio": ["play a sine tone with birds"]}
# Seeds where, on the seeded random tiny model, another candidate than the first agrees best (by a
# margin well above batching's float rounding), so choosing is actually tested.
SWITCHING_SEED = {"image": 1, "audio": 0}
# How far a medium decoded in a batch may be from the same one decoded alone (float rounding): one
# pixel level (of [0, 1] values), or a few 1e-4 of a sample.
TOLERANCE = {"image": 1.5 / 255, "audio": 2e-3}


def _values(media: Media) -> np.ndarray:
    values = media.image_array() if media.modality.value == "image" else media.audio
    return np.asarray(values, dtype=np.float32)


def _alone(model: CoDi2Model, kind: str, c_mllm: torch.Tensor, seed: int) -> tuple[Media, float]:
    """One candidate decoded by itself with its seed, and its agreement, computed here from scratch."""
    with torch.no_grad():
        return _decode_and_score(model, kind, c_mllm, seed)


def _decode_and_score(model: CoDi2Model, kind: str, c_mllm: torch.Tensor, seed: int) -> tuple[Media, float]:
    decoded = model.decoder(kind).decode(
        c_mllm[None], generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS
    )[0]
    values = model.processor.media_tensor(decoded.modality, [decoded])
    feature = model.encode_media(kind, values)[0].flatten()
    return decoded, float(torch.nn.functional.cosine_similarity(feature, c_mllm.flatten(), dim=0))


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_verify_keeps_the_candidate_with_the_best_agreement(tiny_model: CoDi2Model, kind: str) -> None:
    n, seed = 4, SWITCHING_SEED[kind]
    out = tiny_model.generate(PROMPTS[kind], output=kind, seed=seed, verify=n, num_inference_steps=STEPS)
    assert out.features is not None
    # every candidate decoded alone from the same c_MLLM with its derived seed, scored here
    alone = [_alone(tiny_model, kind, out.features, s) for s in candidate_seeds(seed, n)]
    scores = [score for _, score in alone]
    np.testing.assert_allclose(out.candidate_agreements, scores, atol=2e-3)  # batched vs alone rounding
    best = int(np.argmax(scores))
    assert best != 0, "pick a seed where the check changes the answer, or the test proves little"
    assert out.agreement == max(out.candidate_agreements)
    assert out.agreement > out.candidate_agreements[0]
    kept = _values(out.media[0])
    assert np.abs(kept - _values(alone[best][0])).max() <= TOLERANCE[kind]
    assert np.abs(kept - _values(alone[0][0])).max() > TOLERANCE[kind]


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_verify_one_is_the_plain_answer_scored(tiny_model: CoDi2Model, kind: str) -> None:
    plain = tiny_model.generate(PROMPTS[kind], output=kind, seed=3, num_inference_steps=STEPS)
    checked = tiny_model.generate(PROMPTS[kind], output=kind, seed=3, verify=1, num_inference_steps=STEPS)
    assert checked.text == plain.text
    assert checked.media[0].sha256() == plain.media[0].sha256()
    assert plain.features is not None and checked.features is not None
    assert torch.equal(checked.features, plain.features)
    assert plain.agreement is None and plain.candidate_agreements == []
    _, score = _alone(tiny_model, kind, plain.features, 3)
    assert checked.candidate_agreements == [checked.agreement]
    assert checked.agreement == pytest.approx(score, abs=1e-5)


@pytest.mark.parametrize("kind", ["image", "audio"])
def test_verify_is_deterministic_under_a_seed(tiny_model: CoDi2Model, kind: str) -> None:
    runs = [
        tiny_model.generate(
            PROMPTS[kind],
            output=kind,
            seed=11,
            verify=3,
            num_inference_steps=STEPS,
            return_media_features=True,
        )
        for _ in range(2)
    ]
    assert runs[0].media[0].sha256() == runs[1].media[0].sha256()
    assert runs[0].candidate_agreements == runs[1].candidate_agreements
    other = tiny_model.generate(PROMPTS[kind], output=kind, seed=12, verify=3, num_inference_steps=STEPS)
    assert other.candidate_agreements != runs[0].candidate_agreements
    # the kept medium's C_x comes from the check itself, and is the medium's
    values = tiny_model.processor.media_tensor(runs[0].media[0].modality, runs[0].media)
    torch.testing.assert_close(runs[0].media_features[0], tiny_model.encode_media(kind, values)[0])


def test_seedless_verify_repeats_under_torch_manual_seed(tiny_model: CoDi2Model) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        out = tiny_model.generate(PROMPTS["image"], output="image", verify=2, num_inference_steps=STEPS)
        outs.append(out)
    assert outs[0].media[0].sha256() == outs[1].media[0].sha256()


def test_threshold_stops_after_a_good_enough_first_candidate(tiny_model: CoDi2Model) -> None:
    kwargs = {"output": "image", "seed": 5, "num_inference_steps": STEPS}
    plain = tiny_model.generate(PROMPTS["image"], **kwargs)
    calls = tiny_model.encoder_calls
    easy = tiny_model.generate(PROMPTS["image"], verify=4, verify_threshold=-1.0, **kwargs)
    assert tiny_model.encoder_calls - calls == 1  # one candidate decoded and encoded
    assert easy.media[0].sha256() == plain.media[0].sha256() and len(easy.candidate_agreements) == 1
    strict = tiny_model.generate(PROMPTS["image"], verify=4, verify_threshold=1.0, **kwargs)
    full = tiny_model.generate(PROMPTS["image"], verify=4, **kwargs)
    assert len(strict.candidate_agreements) == 4
    assert strict.agreement == pytest.approx(full.agreement, abs=2e-3)


def test_generate_batch_verifies_each_row_as_generate_does(tiny_model: CoDi2Model) -> None:
    prompts = [PROMPTS["image"], PROMPTS["audio"], PROMPTS["image"]]
    outs = tiny_model.generate_batch(
        prompts, ["image", "audio", "image"], seeds=[1, 5, 7], verify=[4, 3, None], num_inference_steps=STEPS
    )
    rows = zip(outs[:2], prompts, ["image", "audio"], [1, 5], [4, 3], strict=False)
    for out, prompt, kind, seed, n in rows:
        alone = tiny_model.generate(prompt, output=kind, seed=seed, verify=n, num_inference_steps=STEPS)
        np.testing.assert_allclose(out.candidate_agreements, alone.candidate_agreements, atol=2e-3)
        assert choose(out.candidate_agreements) == choose(alone.candidate_agreements)
    assert outs[2].agreement is None
    plain = tiny_model.generate(PROMPTS["image"], output="image", seed=7, num_inference_steps=STEPS)
    assert np.abs(_values(outs[2].media[0]) - _values(plain.media[0])).max() <= TOLERANCE["image"]


def test_agreement_is_the_cosine_of_flattened_features() -> None:
    c_mllm = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.stack([c_mllm, -c_mllm, torch.tensor([[1.0, 0.0], [0.0, 0.0]])])
    assert agreement(c_mllm, feats).tolist() == pytest.approx([1.0, -1.0, 2**-0.5])
    assert choose([0.2, 0.9, 0.9]) == 1 and choose([0.5, 0.9], threshold=0.5) == 0


def test_candidate_seeds_start_with_the_given_seed_and_differ() -> None:
    seeds = candidate_seeds(7, 5)
    assert seeds[0] == 7 and len(set(seeds)) == 5 and seeds == candidate_seeds(7, 5)
    assert candidate_seeds(8, 5)[1:] != seeds[1:]
    assert candidate_seeds(None, 1) == [None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"verify": 0}, "verify must be an integer from 1"),
        ({"verify": True}, "verify must be an integer from 1"),
        ({"verify": 2.0}, "verify must be an integer from 1"),
        ({"verify_threshold": 0.5}, "verify_threshold needs verify"),
        ({"verify": 2, "verify_threshold": float("nan")}, "verify_threshold must be a finite number"),
        ({"verify": 2, "verify_threshold": 1.5}, "cosine in"),
    ],
)
def test_bad_verify_arguments_are_named(tiny_model: CoDi2Model, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_model.generate(PROMPTS["image"], output="image", seed=0, **kwargs)
