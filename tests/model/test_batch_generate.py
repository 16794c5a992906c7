"""`generate_batch`: every row equals the unbatched `generate` with its seed (texts exactly, media up
to float rounding), on the shipped tiny model and on seeded random weights.

Tolerances (the batched UNet, LM and heads sum in another order than the batch of one): pixels within
1/255 (a value may round the other way), waveform samples within 1e-4, c_MLLM and C_x within 1e-4.
Measured on this CPU: pixels equal, samples within 2e-6, features within 2e-6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from samples import image, tone

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import GenerateRequest, LocalBackend, PromptTurn
from codi2_agent.media import Media, Modality
from codi2_agent.model import CoDi2Model, GenerationOutput, Turn, load_model

STEPS = 4
PIXEL_TOLERANCE = 1  # of 255
# A batched matmul may take other CPU kernels than a lone one; the audio decoder's inversion carries that
# difference into the samples (1.3e-4 of full scale measured on an AMD EPYC, under 1e-4 elsewhere), far
# below what another seed or prompt changes (0.97 and 1.25 for the saw tone below).
SAMPLE_TOLERANCE = 1e-3
FEATURE_TOLERANCE = 1e-4
# C_x of the decoded media: classifier-free guidance (3.5 in the tiny config) extrapolates
# uncond + s * (cond - uncond), so a float difference between a batch's and a lone row's UNet call
# (oneDNN picks kernels by batch size) comes out up to 2s - 1 = 6 times larger, at every DDIM step.
MEDIA_FEATURE_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def shipped() -> CoDi2Model:
    return load_model("tiny")


def media_values(media: Media) -> np.ndarray:
    if media.modality is Modality.IMAGE:
        return np.asarray(media.image, dtype=np.int16)
    return np.asarray(media.audio)


def assert_same_answer(batched: GenerationOutput, alone: GenerationOutput) -> None:
    assert batched.text == alone.text
    assert batched.modality is alone.modality
    assert len(batched.media) == len(alone.media)
    for b, a in zip(batched.media, alone.media, strict=True):
        tolerance = PIXEL_TOLERANCE if a.modality is Modality.IMAGE else SAMPLE_TOLERANCE
        assert np.abs(media_values(b) - media_values(a)).max() <= tolerance
    if alone.features is None:
        assert batched.features is None
    else:
        assert batched.features is not None
        torch.testing.assert_close(batched.features, alone.features, atol=FEATURE_TOLERANCE, rtol=0)
    assert len(batched.media_features) == len(alone.media_features)
    for b_feat, a_feat in zip(batched.media_features, alone.media_features, strict=True):
        torch.testing.assert_close(b_feat, a_feat, atol=MEDIA_FEATURE_TOLERANCE, rtol=0)


def check_rows(model: CoDi2Model, conversations: list[Any], outputs: list[str], **per_row: list[Any]) -> list:
    batched = model.generate_batch(
        conversations, outputs, num_inference_steps=STEPS, return_media_features=True, **per_row
    )
    assert len(batched) == len(conversations)
    for i, (conversation, output, got) in enumerate(zip(conversations, outputs, batched, strict=True)):
        kwargs = {"seed": per_row["seeds"][i]} if "seeds" in per_row else {}
        if "max_new_tokens" in per_row:
            kwargs["max_new_tokens"] = per_row["max_new_tokens"][i]
        alone = model.generate(
            conversation, output, num_inference_steps=STEPS, return_media_features=True, **kwargs
        )
        assert_same_answer(got, alone)
    return batched


def test_each_row_equals_its_unbatched_answer(shipped: CoDi2Model) -> None:
    picture, sound = image(0), tone(440.0)
    conversations = [
        ["draw a small red star in the snow"],
        [picture, "describe this picture."],
        ["play a high sine tone with wind"],
        [Turn("user", ["draw a blue circle"]), Turn("assistant", [picture]), Turn("user", ["make it red"])],
        [sound, "describe this sound."],
        ["draw a blue circle"],
        ["draw a blue circle"],
        ["make a large green square in the desert at night please"],
        ["play a low saw tone with birds"],
    ]
    outputs = ["auto", "text", "audio", "image", "text", "image", "image", "auto", "audio"]
    seeds = [0, 1, 2, 3, 4, 5, 6, 0, 9]
    turns = [c if isinstance(c[0], Turn) else [Turn("user", c)] for c in conversations]
    lengths = {len(shipped.processor.encode(t).input_ids) for t in turns}
    assert len(lengths) >= 5  # left padding really differs between rows

    results = check_rows(shipped, conversations, outputs, seeds=seeds)

    kinds = [r.modality for r in results]
    assert kinds.count(Modality.TEXT) == 2 and kinds.count(Modality.AUDIO) == 2
    assert kinds[0] is Modality.IMAGE  # "auto" followed the model's <boi>
    assert len({len(r.text) for r in results}) >= 3  # answers of different lengths, decoded together
    # Same prompt, different seeds: each row drew its own noise.
    assert np.abs(media_values(results[5].media[0]) - media_values(results[6].media[0])).max() > 10


def test_rows_stop_on_their_own_budgets(tiny_model: CoDi2Model) -> None:
    """Random weights write until the budget: rows stop at 2, 5, 9 and 64 tokens, one decoding on after
    the others, forced media after their marker is fed at the end of the reply budget."""
    conversations = [["draw"], [image(1), "what is this"], ["play a tone"], ["hello there"], ["x"]]
    outputs = ["image", "text", "audio", "text", "auto"]
    budgets = [2, 5, 9, 64, 3]
    results = check_rows(tiny_model, conversations, outputs, seeds=[7, 0, 8, 0, 0], max_new_tokens=budgets)
    assert [r.modality for r in results[:4]] == [Modality.IMAGE, Modality.TEXT, Modality.AUDIO, Modality.TEXT]
    assert len(tiny_model.tokenizer(results[3].text, add_special_tokens=False).input_ids) > 9


def test_bad_arguments_are_refused(tiny_model: CoDi2Model) -> None:
    assert tiny_model.generate_batch([]) == []
    with pytest.raises(
        ValueError, match=r"seeds must be one value or one per conversation \(2\), got 1 values"
    ):
        tiny_model.generate_batch([["a"], ["b"]], seeds=[0])
    with pytest.raises(ValueError, match="output must be"):
        tiny_model.generate_batch([["a"], ["b"]], ["text", "video"])
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_model.generate_batch([["a"], ["b"]], "image", num_inference_steps=[2, 0])
    with pytest.raises(ValueError, match="at least one input"):
        tiny_model.generate_batch([["a"], []])
    decoder = tiny_model.decoder(Modality.IMAGE)
    with pytest.raises(ValueError, match="one generator and one prompt per row"):
        decoder.decode_batch(torch.zeros(2, 1, 64), generators=[None], prompts=[None, None])


def test_local_backend_batch_matches_one_by_one(shipped: CoDi2Model, tmp_path: Path) -> None:
    backend = LocalBackend(shipped, ArtifactStore(tmp_path / "artifacts"))
    requests = [
        GenerateRequest(prompt=(PromptTurn(role="user", parts=(text,)),), output=output, seed=seed,
                        num_inference_steps=STEPS)
        for text, output, seed in [("draw a small red star in the snow", "image", 0),
                                   ("describe this picture.", "text", 0),
                                   ("play a low saw tone with birds", "audio", 3)]
    ]  # fmt: skip
    batched = backend.generate_batch(requests)
    for request, got in zip(requests, batched, strict=True):
        alone = backend.generate(request)
        assert (got.text, got.modality, len(got.media)) == (alone.text, alone.modality, len(alone.media))
        for ref_b, ref_a in zip(got.media, alone.media, strict=True):
            b, a = backend.artifacts.get(ref_b), backend.artifacts.get(ref_a)
            tolerance = PIXEL_TOLERANCE if a.modality is Modality.IMAGE else SAMPLE_TOLERANCE
            assert np.abs(media_values(b) - media_values(a)).max() <= tolerance
        assert got.seconds > 0
    assert batched[0].created and batched[1].media == ()
    assert backend.generate_batch([]) == []
