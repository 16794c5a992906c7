"""What an agent gets from the tools besides ids: capped media previews its LLM can see, and each
tool call's diffusion progress in the agent's ``stream_mode="custom"``."""

from __future__ import annotations

import base64
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage, convert_to_openai_messages
from langchain_core.messages.block_translators.anthropic import _convert_to_v1_from_anthropic_input
from PIL import Image
from scripted_agents import ScriptedToolCaller

from codi2_agent.media import Media
from codi2_agent.tools import CoDi2Toolkit
from codi2_agent.tools._preview import preview_block

STEPS = 3
CAP = 1500  # below the tiny model's 32x32 PNG (about 3 KB of noise), so the preview must shrink


@pytest.fixture
def toolkit(tiny_model: Any, tmp_path: Path) -> Iterator[CoDi2Toolkit]:
    kit = CoDi2Toolkit(
        tiny_model, root=tmp_path, num_inference_steps=STEPS, preview_media=True, preview_max_bytes=CAP
    )
    yield kit
    kit.close()


def _call(toolkit: CoDi2Toolkit, name: str, **args: Any) -> ToolMessage:
    tool = next(t for t in toolkit.get_tools() if t.name == name)
    msg = tool.invoke({"type": "tool_call", "id": f"call-{name}", "name": name, "args": args})
    assert isinstance(msg, ToolMessage) and msg.status == "success", msg.content
    return msg


def test_the_llm_sees_a_capped_png_of_what_the_tool_made(toolkit: CoDi2Toolkit) -> None:
    msg = _call(toolkit, "codi2_generate", prompt="a small red star in the snow")
    (ref,) = msg.artifact  # the artifact still references the stored medium, never bytes
    assert ref["url"].startswith("artifact://") and "base64" not in ref
    short = "@m:" + ref["extras"]["artifact_id"][:12]
    stored = toolkit.session.artifacts.get(ref["extras"]["artifact_id"])
    assert len(stored.to_bytes()[0]) > CAP  # the full picture would not fit: the preview is smaller

    (openai,) = convert_to_openai_messages([msg])
    assert openai["role"] == "tool" and openai["tool_call_id"] == "call-codi2_generate"
    texts = [p["text"] for p in openai["content"] if p["type"] == "text"]
    assert short in texts[0] and f"Preview of {short}" in texts[1]
    (image,) = [p for p in openai["content"] if p["type"] == "image_url"]
    prefix = "data:image/png;base64,"
    assert image["image_url"]["url"].startswith(prefix)
    png = base64.b64decode(image["image_url"]["url"][len(prefix) :])
    assert png.startswith(b"\x89PNG") and len(png) <= CAP
    picture = Image.open(io.BytesIO(png))
    picture.load()
    assert picture.format == "PNG" and picture.size[0] < stored.image.size[0]
    assert f"{picture.size[0]}x{picture.size[1]} PNG, downscaled from 32x32" in texts[1]

    # The block is the v1 form LangChain gives an Anthropic base64 image with the same bytes, so
    # every provider integration that reads v1 blocks (Anthropic's included) sends it as an image.
    block = next(b for b in msg.content_blocks if b["type"] == "image")
    anthropic = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": block["base64"]},
    }
    assert _convert_to_v1_from_anthropic_input([anthropic]) == [block]


def test_sounds_are_previewed_as_short_pcm_wav(toolkit: CoDi2Toolkit) -> None:
    msg = _call(toolkit, "codi2_generate", prompt="a high sine tone", modality="audio")
    (openai,) = convert_to_openai_messages([msg])
    (audio,) = [p for p in openai["content"] if p["type"] == "input_audio"]
    assert audio["input_audio"]["format"] == "wav"
    data = base64.b64decode(audio["input_audio"]["data"])
    assert len(data) <= CAP
    with wave.open(io.BytesIO(data)) as clip:
        assert clip.getsampwidth() == 2 and clip.getnchannels() == 1 and clip.getframerate() <= 16_000
        frames = clip.getnframes()
    stored = toolkit.session.artifacts.get(msg.artifact[0]["extras"]["artifact_id"])
    assert 0 < frames / clip.getframerate() < stored.duration_s  # cut to fit the cap, and said so
    assert "the first" in openai["content"][1]["text"]


def test_previews_are_off_by_default_and_recall_previews_what_it_found(
    tiny_model: Any, tmp_path: Path
) -> None:
    plain = CoDi2Toolkit(tiny_model, root=tmp_path / "plain", num_inference_steps=STEPS)
    try:
        assert isinstance(_call(plain, "codi2_generate", prompt="a small red star").content, str)
    finally:
        plain.close()
    big = CoDi2Toolkit(tiny_model, root=tmp_path / "big", num_inference_steps=STEPS, preview_media=True)
    try:
        made = _call(big, "codi2_generate", prompt="a small red star")
        full = big.session.artifacts.get(made.artifact[0]["extras"]["artifact_id"]).image
        block = next(b for b in made.content_blocks if b["type"] == "image")
        assert Image.open(io.BytesIO(base64.b64decode(block["base64"]))).size == full.size  # fits: as is
        found = _call(big, "codi2_recall", query="a small red star", k=1)
        assert [b["type"] for b in found.content_blocks].count("image") == 1
    finally:
        big.close()
    with pytest.raises(ValueError, match="preview_max_bytes must be at least 1024"):
        CoDi2Toolkit(tiny_model, root=tmp_path / "bad", preview_media=True, preview_max_bytes=10)


def test_large_pictures_shrink_until_they_fit() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    block, note = preview_block(Media.from_image(noise), max_bytes=20_000) or ({}, "")
    data = base64.b64decode(block["base64"])
    size = Image.open(io.BytesIO(data)).size
    assert len(data) <= 20_000 and size[0] < 200 and abs(size[0] / size[1] - 200 / 300) < 0.05
    assert note == f"{size[0]}x{size[1]} PNG, downscaled from 200x300"
    assert preview_block(Media.from_text("hi"), max_bytes=20_000) is None


def test_each_tool_calls_progress_reaches_the_agents_custom_stream(toolkit: CoDi2Toolkit) -> None:
    def edit_what_was_made(results: list[ToolMessage]) -> tuple[str, dict[str, Any]]:
        made = results[-1].artifact[0]["extras"]["artifact_id"]
        return "codi2_edit", {"media": "@m:" + made[:12], "instruction": "make it blue"}

    plan = [("codi2_generate", {"prompt": "a small red star in the snow"}), edit_what_was_made]
    agent = create_agent(model=ScriptedToolCaller(plan=plan), tools=toolkit.get_tools())
    events = list(
        agent.stream({"messages": [HumanMessage("draw a star, then make it blue")]}, stream_mode="custom")
    )

    for call_id, tool in (("call_0", "codi2_generate"), ("call_1", "codi2_edit")):
        mine = [e for e in events if e.get("tool_call_id") == call_id]
        assert {e["tool"] for e in mine} == {tool}
        steps = [e["step"] for e in mine if e["event"] == "progress"]
        assert len(steps) >= 2 and steps == sorted(set(steps)) and steps[-1] == STEPS
        assert {e["total"] for e in mine if e["event"] == "progress"} == {STEPS}
        assert mine[0]["event"] == "start" and mine[-1]["event"] == "end"
    assert {e["tool_call_id"] for e in events} == {"call_0", "call_1"}


def test_progress_reaches_an_async_agents_custom_stream(toolkit: CoDi2Toolkit) -> None:
    """The async path (``astream``: the tool runs in an executor thread) forwards the same events."""
    import asyncio

    plan = [("codi2_generate", {"prompt": "a high sine tone", "modality": "audio"})]
    agent = create_agent(model=ScriptedToolCaller(plan=plan), tools=toolkit.get_tools())

    async def stream() -> list[dict[str, Any]]:
        inputs = {"messages": [HumanMessage("play a tone")]}
        return [e async for e in agent.astream(inputs, stream_mode="custom")]

    events = asyncio.run(stream())
    steps = [e["step"] for e in events if e["event"] == "progress"]
    assert steps == list(range(1, STEPS + 1))
    assert {(e["tool"], e["tool_call_id"]) for e in events} == {("codi2_generate", "call_0")}
