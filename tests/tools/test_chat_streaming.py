"""`ChatCoDi2.stream` / `astream`: real per-token chunks, text first, the media in the last chunk.

The model is the seeded random tiny model: asked for an image it writes its whole reply budget
(32 tokens, </s> banned) before the marker, so every answer here has many text tokens.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import GenerateRequest, GenerateResult, LocalBackend
from codi2_agent.media import Modality
from codi2_agent.model import CoDi2Model
from codi2_agent.tools import ChatCoDi2
from codi2_agent.tools._streaming import StopCut, cut_at_stops

STEPS = 2
PROMPT = "draw a large blue circle at night"


@pytest.fixture
def llm(tiny_model: CoDi2Model, tmp_path: Path) -> ChatCoDi2:
    return ChatCoDi2(model=tiny_model, artifacts=tmp_path / "artifacts", num_inference_steps=STEPS)


@contextmanager
def unet_calls(model: CoDi2Model) -> Iterator[list[int]]:
    """Counts the image decoder's UNet forward passes (a forward hook on the real module)."""
    calls: list[int] = []
    handle = model.decoder(Modality.IMAGE).unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def joined(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    return whole


def test_text_streams_token_by_token_before_the_image(llm: ChatCoDi2, tiny_model: CoDi2Model) -> None:
    chunks, unet_calls_at_chunk = [], []
    with unet_calls(tiny_model) as calls:
        for chunk in llm.stream(PROMPT, output="image"):
            chunks.append(chunk)
            unet_calls_at_chunk.append(len(calls))
    *text_chunks, last = chunks
    assert len(text_chunks) >= 2 and all(c.text and c.chunk_position is None for c in text_chunks)
    assert all(block["type"] == "text" for c in text_chunks for block in c.content_blocks)
    assert unet_calls_at_chunk[: len(text_chunks)] == [0] * len(text_chunks)  # text before any decoding
    assert unet_calls_at_chunk[-1] == STEPS
    assert last.chunk_position == "last" and last.text == ""
    assert [b["type"] for b in last.content_blocks] == ["image"]
    assert last.response_metadata["modality"] == "image"

    direct = llm.invoke(PROMPT, output="image")
    whole = joined(chunks)
    assert whole.text == direct.text
    assert whole.content_blocks[-1]["base64"] == direct.content_blocks[-1]["base64"]


def test_astream_gives_the_same_chunks(llm: ChatCoDi2) -> None:
    async def collect() -> list[AIMessageChunk]:
        return [c async for c in llm.astream(PROMPT, output="image")]

    async_chunks = asyncio.run(collect())
    sync_chunks = list(llm.stream(PROMPT, output="image"))
    assert [c.text for c in async_chunks] == [c.text for c in sync_chunks]
    assert len(async_chunks) >= 3 and async_chunks[-1].chunk_position == "last"
    assert async_chunks[-1].content_blocks[-1]["base64"] == sync_chunks[-1].content_blocks[-1]["base64"]


def test_callbacks_see_each_chunk_once(llm: ChatCoDi2) -> None:
    class Chunks(BaseCallbackHandler):
        def __init__(self) -> None:
            self.texts: list[str] = []

        def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
            self.texts.append(kwargs["chunk"].text)

    handler = Chunks()
    chunks = list(llm.stream(PROMPT, output="image", config={"callbacks": [handler]}))
    assert handler.texts == [c.text for c in chunks] and len(handler.texts) >= 3


def test_stop_sequences_cut_the_stream(llm: ChatCoDi2) -> None:
    full = llm.invoke(PROMPT, output="text", max_tokens=24).text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = llm.invoke(PROMPT, output="text", max_tokens=24, stop=[stop]).text
    assert expected == cut_at_stops(full, [stop]) and len(expected) < len(full)
    chunks = list(llm.stream(PROMPT, output="text", max_tokens=24, stop=[stop]))
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].chunk_position == "last"


@pytest.mark.parametrize(
    ("pieces", "stops"),
    [
        (["ab", "c", "d!", "!e", "f"], ["!!"]),
        (["x", "yz", "abc", "de"], ["bcd", "zab"]),  # a longer stop starting earlier wins
        (["no", " stop", " here"], ["?", ""]),
        (["a", "b"], []),
    ],
)
def test_stop_cut_joins_to_the_cut_text(pieces: list[str], stops: list[str]) -> None:
    cut = StopCut(stops)
    streamed = [cut.push(p) for p in pieces] + [cut.finish("".join(pieces))]
    assert "".join(streamed) == cut_at_stops("".join(pieces), stops)


def test_leaving_a_stream_early_frees_the_model(llm: ChatCoDi2) -> None:
    stream = llm.stream(PROMPT, output="image")
    next(stream)
    stream.close()
    done = threading.Event()
    threading.Thread(target=lambda: (llm.invoke(PROMPT, output="text"), done.set()), daemon=True).start()
    assert done.wait(timeout=60)


class WholeAnswerBackend:
    """A `Backend` without `stream` (as a remote one may be): its answer comes in one piece."""

    def __init__(self, inner: LocalBackend) -> None:
        self.inner, self.name, self.artifacts = inner, inner.name, inner.artifacts
        self.context_limit, self.vocabulary, self.embedder = inner.context_limit, inner.vocabulary, None

    def count_tokens(self, prompt: Any) -> int:
        return self.inner.count_tokens(prompt)

    def generate(self, request: GenerateRequest, *, progress: Any = None) -> GenerateResult:
        return self.inner.generate(request, progress=progress)

    async def agenerate(self, request: GenerateRequest, *, progress: Any = None) -> GenerateResult:
        return await self.inner.agenerate(request, progress=progress)


def test_a_backend_without_stream_gives_its_text_in_one_chunk(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    backend = WholeAnswerBackend(LocalBackend(tiny_model, ArtifactStore(tmp_path / "artifacts")))
    llm = ChatCoDi2(model=backend, num_inference_steps=STEPS)
    text_chunk, last = llm.stream(PROMPT, output="image")
    assert text_chunk.text == llm.invoke(PROMPT, output="image").text and text_chunk.text
    assert last.chunk_position == "last" and last.content_blocks[-1]["type"] == "image"


def test_a_call_names_its_session_for_a_served_model(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    sessions: list[str | None] = []

    class Spy(WholeAnswerBackend):
        def generate(self, request: GenerateRequest, *, progress: Any = None) -> GenerateResult:
            sessions.append(request.session)
            return super().generate(request, progress=progress)

    llm = ChatCoDi2(model=Spy(LocalBackend(tiny_model, ArtifactStore(tmp_path / "artifacts"))), output="text")
    llm.invoke(PROMPT, session="user-42")
    llm.invoke(PROMPT)
    assert sessions == ["user-42", None]
    with pytest.raises(ValueError, match="session"):  # it becomes a header: only safe characters
        llm.invoke(PROMPT, session="a\r\nX-Injected: 1")
