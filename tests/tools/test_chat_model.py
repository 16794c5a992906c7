"""`ChatCoDi2`: the LangChain standard unit suite, then v1 content blocks in and out, sync and async."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from langchain_tests.unit_tests import ChatModelUnitTests

from codi2_agent.media import Media
from codi2_agent.tools import ChatCoDi2

STEPS = 2


class TestChatCoDi2Standard(ChatModelUnitTests):
    """The standard suite. The model loads on first use, so none of these tests needs weights."""

    @property
    def chat_model_class(self) -> type[ChatCoDi2]:
        return ChatCoDi2

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "tiny", "num_inference_steps": STEPS}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return {"CODI2_AGENT_MODEL": "/models/codi2-tiny"}, {}, {"model": "/models/codi2-tiny"}

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # CoDi-2 answers in text, images and sounds: bind_tools / with_structured_output refuse by name.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @pytest.mark.xfail(
        strict=True,
        reason="dumpd works, but langchain-core's load(allowed_objects='all') revives only classes listed in "
        "its own SERIALIZABLE_MAPPING, so no third-party chat model can round-trip",
    )
    def test_serdes(self, model: Any, snapshot: Any) -> None:
        super().test_serdes(model, snapshot)


@pytest.fixture
def llm(tiny_model: Any, tmp_path: Path) -> ChatCoDi2:
    return ChatCoDi2(model=tiny_model, artifacts=tmp_path / "artifacts", num_inference_steps=STEPS)


def _image() -> Media:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[8:24, 8:24] = (220, 30, 30)
    return Media.from_image(arr)


def test_text_in_image_out(llm: ChatCoDi2) -> None:
    msg = llm.invoke("draw a small red star in the snow", output="image")
    (block,) = [b for b in msg.content_blocks if b["type"] == "image"]
    assert block["mime_type"] == "image/png"
    assert Media.from_content_block(block).image.size == (32, 32)
    assert msg.response_metadata["modality"] == "image"
    # Deterministic: same input, same seed, same picture.
    again = llm.invoke("draw a small red star in the snow", output="image")
    assert again.content_blocks[-1]["base64"] == block["base64"]


def test_audio_output_and_artifact_format(llm: ChatCoDi2) -> None:
    llm = llm.model_copy(update={"media_format": "artifact"})
    msg = llm.invoke("play a high sine tone with wind", output="audio")
    block = msg.content_blocks[-1]
    assert block["type"] == "audio" and block["url"].startswith("artifact://")
    assert llm.backend.artifacts.get(block["url"]).modality.value == "audio"


def test_media_inputs_base64_file_id_and_artifact_url(llm: ChatCoDi2) -> None:
    image = _image()
    by_value = HumanMessage(
        content=[{"type": "text", "text": "describe this picture."}, image.to_content_block()]
    )
    a = llm.invoke([SystemMessage("You describe pictures."), by_value], output="text")
    ref = llm.backend.artifacts.put(image)
    for block in ({"type": "image", "file_id": ref.id}, {"type": "image", "url": ref.uri}):
        msg = HumanMessage(content=[{"type": "text", "text": "describe this picture."}, block])
        b = llm.invoke([SystemMessage("You describe pictures."), msg], output="text")
        assert b.text == a.text  # the same picture, however it was passed
    data_url = "data:image/png;base64," + image.to_content_block()["base64"]
    legacy = HumanMessage(content=[{"type": "text", "text": "describe this picture."},
                                   {"type": "image_url", "image_url": {"url": data_url}}])  # fmt: skip
    assert llm.invoke([SystemMessage("You describe pictures."), legacy], output="text").text == a.text


def test_refuses_remote_urls_and_unknown_files(llm: ChatCoDi2) -> None:
    remote = HumanMessage(content=[{"type": "image", "url": "https://example.com/cat.png"}, "describe it"])
    with pytest.raises(ValueError, match="remote media are not fetched"):
        llm.invoke([remote])
    unknown = HumanMessage(content=[{"type": "image", "file_id": "ab" * 32}, "describe it"])
    with pytest.raises(ValueError, match="no artifact"):
        llm.invoke([unknown])
    with pytest.raises(ValueError, match="end with a user message"):
        llm.invoke([AIMessage("hello")])


def test_streaming_text_then_media(llm: ChatCoDi2) -> None:
    chunks = list(llm.stream("draw a large blue circle at night", output="image"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last" and chunks[-1].content_blocks[-1]["type"] == "image"
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    direct = llm.invoke("draw a large blue circle at night", output="image")
    assert whole.text == direct.text
    assert whole.content_blocks[-1]["base64"] == direct.content_blocks[-1]["base64"]


def test_stop_sequences_cut_the_text(llm: ChatCoDi2) -> None:
    full = llm.invoke("describe this picture.", output="text").text
    assert full
    cut = llm.invoke("describe this picture.", output="text", stop=[full[1:3]]).text
    assert cut == full[: full.index(full[1:3])]


def test_async_invoke_and_stream(llm: ChatCoDi2) -> None:
    async def run() -> tuple[AIMessage, list[AIMessageChunk]]:
        msg = await llm.ainvoke("draw a small green square in the desert", output="image")
        chunks = [c async for c in llm.astream("draw a small green square in the desert", output="image")]
        return msg, chunks

    msg, chunks = asyncio.run(run())
    assert msg.content_blocks[-1]["base64"] == chunks[-1].content_blocks[-1]["base64"]


def test_lazy_loading_and_params() -> None:
    llm = ChatCoDi2(model="no-such-model", max_tokens=12, stop=["."], temperature=0.0)
    assert llm._backend is None  # nothing loaded yet
    params = llm._get_ls_params()
    assert params["ls_provider"] == "codi2" and params["ls_max_tokens"] == 12 and params["ls_stop"] == ["."]
    with pytest.raises(Exception, match="neither a shipped model"):
        llm.invoke("hi")
