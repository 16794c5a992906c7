"""Token streaming: `CoDi2Model.generate_stream`, `TextPieceDecoder` and `LocalBackend.stream`.

The pieces join to the answer's text, come one or a few tokens at a time, all before the diffusion
decoder runs, and the final output is `generate`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from samples import image

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import GenerateRequest, GenerateResult, LocalBackend, PromptTurn
from codi2_agent.media import Modality
from codi2_agent.model import CoDi2Model, GenerationOutput
from codi2_agent.model.streaming import INCOMPLETE_CHARACTER, TextPieceDecoder

STEPS = 2


@contextmanager
def unet_calls(model: CoDi2Model, modality: Modality) -> Iterator[list[int]]:
    """Counts the diffusion decoder's UNet forward passes (a forward hook on the real module)."""
    calls: list[int] = []
    handle = model.decoder(modality).unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def test_pieces_join_to_the_text_and_come_before_the_medium(tiny_model: CoDi2Model) -> None:
    # Random weights ban </s> for a forced image and write its whole reply budget: many tokens.
    alone = tiny_model.generate(["draw a red star"], output="image", seed=3, num_inference_steps=STEPS)
    with unet_calls(tiny_model, Modality.IMAGE) as calls:
        stream = tiny_model.generate_stream(
            ["draw a red star"], output="image", seed=3, num_inference_steps=STEPS
        )
        pieces, unet_calls_at_piece = [], []
        for item in stream:
            if isinstance(item, GenerationOutput):
                final = item
                break
            pieces.append(item)
            unet_calls_at_piece.append(len(calls))
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)
    assert unet_calls_at_piece == [0] * len(pieces)  # every piece before the decoder's first step
    assert len(calls) == STEPS
    assert "".join(pieces) == final.text == alone.text
    assert np.array_equal(np.asarray(final.image.image), np.asarray(alone.image.image))


@pytest.mark.parametrize("output", ["text", "auto", "audio"])
def test_stream_ends_in_generates_output(tiny_model: CoDi2Model, output: str) -> None:
    prompt = [image(2), "describe this picture."]
    *pieces, final = tiny_model.generate_stream(
        prompt, output, seed=1, num_inference_steps=STEPS, max_new_tokens=12
    )
    alone = tiny_model.generate(prompt, output, seed=1, num_inference_steps=STEPS, max_new_tokens=12)
    assert isinstance(final, GenerationOutput) and "".join(pieces) == final.text == alone.text
    assert final.modality is alone.modality and len(final.media) == len(alone.media)


def test_arguments_are_checked_when_called(tiny_model: CoDi2Model) -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        tiny_model.generate_stream(["draw"], "image", num_inference_steps=0)
    with pytest.raises(ValueError, match="output must be"):
        tiny_model.generate_stream(["draw"], "video")


def test_text_piece_decoder_holds_back_half_characters(tiny_model: CoDi2Model) -> None:
    """Byte-level BPE splits characters outside its corpus into bytes: no piece may show half of one."""
    decode = tiny_model.processor.decode
    ids = tiny_model.tokenizer("  été 10€ — ok  ", add_special_tokens=False).input_ids
    assert any(decode(ids[:n]).endswith(INCOMPLETE_CHARACTER) for n in range(len(ids)))  # the case occurs
    pieces = TextPieceDecoder(decode)
    streamed = [pieces.push(i) for i in ids] + [pieces.finish()]
    assert not any(INCOMPLETE_CHARACTER in p for p in streamed)
    assert "".join(streamed) == decode(ids) == "été 10€ — ok"
    assert sum(1 for p in streamed if p) >= 4


def test_local_backend_stream(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    backend = LocalBackend(tiny_model, ArtifactStore(tmp_path / "artifacts"))
    request = GenerateRequest(
        prompt=(PromptTurn(role="user", parts=("draw a blue circle",)),), output="image", seed=0,
        num_inference_steps=STEPS,
    )  # fmt: skip
    *pieces, result = backend.stream(request)
    assert isinstance(result, GenerateResult) and len(pieces) >= 2
    assert "".join(pieces) == result.text
    assert result == backend.generate(request).model_copy(
        update={"seconds": result.seconds, "created": result.created}
    )
    assert backend.artifacts.get(result.media[0]).modality is Modality.IMAGE

    # Leaving a stream early hands the model back: another thread's request then runs.
    stream = backend.stream(request)
    next(stream)
    stream.close()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (backend.generate(request), done.set()), daemon=True)
    worker.start()
    assert done.wait(timeout=60)
