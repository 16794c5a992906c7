"""`ChatCoDi2` as a partner-package chat model: its own tokenizer (offline), usage metadata, named
refusals of tool calling and structured output, and local files in content blocks under allowed roots."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_socket
from langchain_core.language_models import base as language_model_base
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, trim_messages
from pydantic import BaseModel

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.backends import GenerateRequest, GenerateResult, LocalBackend, PromptTurn
from codi2_agent.media import Media
from codi2_agent.model import CoDi2Model
from codi2_agent.tools import ChatCoDi2, CoDi2CapabilityError, MediaFileRefusedError

STEPS = 2


@pytest.fixture
def llm(tiny_model: CoDi2Model, tmp_path: Path) -> ChatCoDi2:
    return ChatCoDi2(
        model=tiny_model,
        artifacts=tmp_path / "artifacts",
        num_inference_steps=STEPS,
        media_roots=[tmp_path / "in"],
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Any:
    """No sockets, and LangChain's GPT-2 fallback tokenizer made to fail loudly if anything reaches it."""

    def no_gpt2(text: str) -> list[int]:
        raise AssertionError("the GPT-2 fallback tokenizer was used")

    monkeypatch.setattr(language_model_base, "_get_token_ids_default_method", no_gpt2)
    pytest_socket.disable_socket()
    yield
    pytest_socket.enable_socket()


def _picture(colour: tuple[int, int, int] = (220, 30, 30)) -> Media:
    arr = np.zeros((32, 32, 3), np.uint8)
    arr[8:24, 8:24] = colour
    return Media.from_image(arr)


def conversation(turns: int) -> list[BaseMessage]:
    messages: list[BaseMessage] = [SystemMessage("You draw and describe pictures.")]
    for i in range(turns):
        messages += [HumanMessage(f"draw a small red star in the snow, number {i}"), AIMessage("Here it is.")]
    return [*messages, HumanMessage("now make it blue")]


# --- tokens ------------------------------------------------------------------------------------------
def test_text_tokens_are_the_models_own(llm: ChatCoDi2, tiny_model: CoDi2Model, offline: Any) -> None:
    text = "draw a large green square on a sunny day"
    own = tiny_model.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.get_token_ids(text) == list(own)
    assert llm.get_num_tokens(text) == len(own) > 0
    assert llm.get_num_tokens("") == 0


def test_message_tokens_are_the_prompt_the_model_reads(llm: ChatCoDi2, offline: Any) -> None:
    messages = conversation(2)
    turns = [
        PromptTurn(role="user", parts=("You draw and describe pictures.",
                                       "draw a small red star in the snow, number 0")),
        PromptTurn(role="assistant", parts=("Here it is.",)),
        PromptTurn(role="user", parts=("draw a small red star in the snow, number 1",)),
        PromptTurn(role="assistant", parts=("Here it is.",)),
        PromptTurn(role="user", parts=("now make it blue",)),
    ]  # fmt: skip
    assert llm.get_num_tokens_from_messages(messages) == llm.backend.count_tokens(turns)
    # A picture costs the model's placeholder tokens, however it is passed (nothing is decoded or stored).
    with_picture = HumanMessage([{"type": "text", "text": "describe this."}, _picture().to_content_block()])
    plain = HumanMessage("describe this.")
    extra = llm.get_num_tokens_from_messages([with_picture]) - llm.get_num_tokens_from_messages([plain])
    assert extra == llm.backend.model.processor.num_media_tokens
    assert list(llm.backend.artifacts.root.rglob("*.png")) == []
    assert llm.get_num_tokens_from_messages([]) == 0
    with pytest.raises(CoDi2CapabilityError, match="cannot count tool schemas"):
        llm.get_num_tokens_from_messages(messages, tools=[{"name": "x"}])


def test_trim_messages_with_the_chat_model_as_counter(llm: ChatCoDi2, offline: Any) -> None:
    messages = conversation(6)
    total = llm.get_num_tokens_from_messages(messages)
    budget = total // 2
    trimmed = trim_messages(
        messages, max_tokens=budget, token_counter=llm, strategy="last", include_system=True, start_on="human"
    )
    assert 2 < len(trimmed) < len(messages)
    assert isinstance(trimmed[0], SystemMessage) and trimmed[-1] is messages[-1]
    assert llm.get_num_tokens_from_messages(trimmed) <= budget
    # One more message would not have fitted: the trim is as long as the budget allows.
    kept = messages.index(trimmed[1])
    assert llm.get_num_tokens_from_messages([messages[0], *messages[kept - 2 :]]) > budget
    assert llm.invoke(trimmed, output="text").usage_metadata["input_tokens"] <= budget


def test_a_backend_without_a_tokenizer_still_counts(tiny_model: CoDi2Model, tmp_path: Path) -> None:
    """A served model (a `Backend` with `count_tokens` but no local tokenizer) counts the same."""

    class CountingOnly:
        def __init__(self, inner: LocalBackend) -> None:
            self.inner, self.name, self.artifacts = inner, inner.name, inner.artifacts
            self.context_limit, self.vocabulary, self.embedder = inner.context_limit, inner.vocabulary, None

        def count_tokens(self, prompt: Any) -> int:
            return self.inner.count_tokens(prompt)

        def generate(self, request: GenerateRequest, *, progress: Any = None) -> GenerateResult:
            return self.inner.generate(request, progress=progress)

        async def agenerate(self, request: GenerateRequest, *, progress: Any = None) -> GenerateResult:
            return await self.inner.agenerate(request, progress=progress)

    local = LocalBackend(tiny_model, ArtifactStore(tmp_path / "artifacts"))
    served = ChatCoDi2(model=CountingOnly(local))
    text = "play a high sine tone with wind"
    assert served.get_num_tokens(text) == len(
        tiny_model.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    with pytest.raises(CoDi2CapabilityError, match="does not hand out token ids"):
        served.get_token_ids(text)


# --- usage metadata ----------------------------------------------------------------------------------
def test_usage_metadata_on_results_and_the_last_streamed_chunk(llm: ChatCoDi2) -> None:
    messages = conversation(1)
    msg = llm.invoke(messages, output="image")
    usage = msg.usage_metadata
    assert usage is not None
    assert usage["input_tokens"] == llm.get_num_tokens_from_messages(messages)
    assert usage["output_tokens"] == llm.get_num_tokens(msg.text) > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    chunks = list(llm.stream(messages, output="image"))
    assert [c.usage_metadata is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    whole = chunks[0]
    for c in chunks[1:]:
        whole += c
    assert whole.usage_metadata == usage


# --- what it cannot do ---------------------------------------------------------------------------------
class Answer(BaseModel):
    text: str


def test_tools_and_structured_output_are_refused_by_name(llm: ChatCoDi2) -> None:
    with pytest.raises(CoDi2CapabilityError, match=r"codi2-tiny cannot call tools.*CoDi2Toolkit") as e:
        llm.bind_tools([Answer])
    assert isinstance(e.value, NotImplementedError)
    with pytest.raises(CoDi2CapabilityError, match=r"cannot produce structured output.*CoDi2Toolkit"):
        llm.with_structured_output(Answer)


# --- local files ------------------------------------------------------------------------------------------
def _describe(llm: ChatCoDi2, block: dict[str, Any]) -> str:
    return llm.invoke(
        [HumanMessage([{"type": "text", "text": "describe this picture."}, block])], output="text"
    ).text


def test_local_files_under_the_roots_are_read(llm: ChatCoDi2, tmp_path: Path) -> None:
    picture = _picture()
    path = picture.save(tmp_path / "in" / "nested" / "star")
    by_value = _describe(llm, picture.to_content_block())
    assert _describe(llm, {"type": "image", "url": str(path)}) == by_value
    assert _describe(llm, {"type": "image", "url": path.as_uri()}) == by_value  # file:// url
    legacy = {"type": "image_url", "image_url": {"url": path.as_uri()}}  # OpenAI chat-completions shape
    assert _describe(llm, legacy) == by_value
    relative = os.path.relpath(path)  # relative to the working directory, resolved before the check
    assert _describe(llm, {"type": "image", "url": relative}) == by_value


def test_local_files_elsewhere_are_refused(llm: ChatCoDi2, tmp_path: Path) -> None:
    outside = _picture().save(tmp_path / "elsewhere" / "star")
    (tmp_path / "in").mkdir()
    with pytest.raises(MediaFileRefusedError, match="outside the allowed media folders"):
        _describe(llm, {"type": "image", "url": str(outside)})
    (tmp_path / "in" / "link.png").symlink_to(outside)  # a link inside the root that leads out of it
    with pytest.raises(MediaFileRefusedError, match="outside the allowed media folders"):
        _describe(llm, {"type": "image", "url": str(tmp_path / "in" / "link.png")})
    with pytest.raises(MediaFileRefusedError, match="no media file at"):
        _describe(llm, {"type": "image", "url": str(tmp_path / "in" / "missing.png")})
    sound = Media.from_audio(np.zeros(1600, np.float32), 16000).save(tmp_path / "in" / "tone")
    with pytest.raises(MediaFileRefusedError, match="which is an audio file"):
        _describe(llm, {"type": "image", "url": str(sound)})
    no_roots = llm.model_copy(update={"media_roots": []})
    with pytest.raises(MediaFileRefusedError, match="reading files is off: pass media_roots"):
        _describe(no_roots, {"type": "image", "url": str(outside)})
    assert isinstance(MediaFileRefusedError("x"), ValueError)  # callers catching ValueError see it
