"""The optional planner: a chat model's structured plan drives the real session graph, is checked
against the thread's media, and falls back to the rules when it names an unknown id or fails."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from codi2_agent.graphs import MediaRecord, TurnOptions, thread_media
from codi2_agent.graphs._planner import Plan, Planner
from codi2_agent.media import MediaRef
from codi2_agent.messages import message_parts

CONFIG = {"configurable": {"thread_id": "planned"}}


class ScriptedPlanner(BaseChatModel):
    """Answers each request with the plan `decide(message, media ids oldest first)` returns, as a
    structured-output tool call (what `with_structured_output` asks a tool-calling model for)."""

    decide: Callable[[str, list[str]], dict[str, Any] | Exception]
    prompts: list[str] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted-planner"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        return self

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        prompt = str(messages[-1].content)
        self.prompts.append(prompt)
        ids = re.findall(r"^(@m:\w+) — ", prompt, flags=re.M)
        text = prompt.rsplit("Message: ", 1)[-1]
        plan = self.decide(text, ids)
        if isinstance(plan, Exception):
            raise plan
        call = {"name": "Plan", "args": plan, "id": "plan-1", "type": "tool_call"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))])


def _say(graph: Any, text: str, options: TurnOptions | None = None) -> AIMessage:
    out = graph.invoke({"messages": [HumanMessage(content=text)], "options": options}, CONFIG)
    return out["messages"][-1]


def _made(message: AIMessage) -> list[MediaRef]:
    return [p for p in message_parts(message) if isinstance(p, MediaRef)]


def _media(graph: Any) -> list[MediaRecord]:
    return thread_media(graph, CONFIG)


def test_the_plan_picks_the_source_the_rules_would_not(make_graph: Any) -> None:
    """'the one I liked' means nothing to the rules; the planner names the very first picture."""

    def decide(text: str, ids: list[str]) -> dict[str, Any]:
        if "liked" in text:
            return {"action": "make", "task": "edit", "output": "image", "sources": [ids[0]],
                    "instruction": "make it green"}  # fmt: skip
        return {"action": "make", "task": "edit", "sources": [ids[-1]], "instruction": text}

    planner = ScriptedPlanner(decide=decide)
    graph = make_graph(caption_outputs=False, planner=planner)
    first = _made(_say(graph, "draw a small red star in the snow", TurnOptions(task="generate")))[0]
    blue = _made(_say(graph, "make it blue"))[0]
    assert _media(graph)[-1].parents == (first.id,)
    _say(graph, "take the one I liked and make it green")
    made = _media(graph)[-1]
    assert made.parents == (first.id,) and made.id != blue.id
    assert made.instruction == "make it green"
    # The planner read the thread's media: both earlier pictures, with what made the second.
    assert f"@m:{first.short_id}" in planner.prompts[-1] and f"@m:{blue.short_id}" in planner.prompts[-1]
    assert "by 'make it blue'" in planner.prompts[-1]


def test_tool_options_skip_the_planner(make_graph: Any) -> None:
    planner = ScriptedPlanner(decide=lambda text, ids: AssertionError("the planner was asked"))
    graph = make_graph(caption_outputs=False, planner=planner)
    _say(graph, "draw a small red star in the snow", TurnOptions(task="generate"))
    assert planner.prompts == []


@pytest.mark.parametrize(
    "bad",
    [
        {"action": "make", "task": "edit", "sources": ["@m:ffffff"], "instruction": "make it green"},
        {"action": "make", "task": "compose", "sources": [], "instruction": "make it green"},
        RuntimeError("the planner's server is down"),
    ],
    ids=["unknown-id", "task-without-sources", "planner-fails"],
)
def test_a_plan_that_does_not_check_out_falls_back_to_the_rules(
    make_graph: Any, bad: Any, caplog: pytest.LogCaptureFixture
) -> None:
    graph = make_graph(caption_outputs=False, planner=ScriptedPlanner(decide=lambda text, ids: bad))
    first = _made(_say(graph, "draw a small red star in the snow", TurnOptions(task="generate")))[0]
    with caplog.at_level("WARNING", logger="codi2_agent.graphs._planner"):
        made = _made(_say(graph, "make it green"))
    # The rules resolved "it" to the star: an edit of it, as if there were no planner.
    assert len(made) == 1 and _media(graph)[-1].parents == (first.id,)
    assert any("falling back to the rules" in r.getMessage() for r in caplog.records)


def test_the_planner_can_answer_in_words_or_ask_back(make_graph: Any) -> None:
    def decide(text: str, ids: list[str]) -> dict[str, Any]:
        if text.startswith("hi"):
            return {"action": "answer", "reply": "Hello! I can draw shapes and play tones."}
        return {"action": "ask", "sources": ids, "reply": "Which picture: the star or the blue one?"}

    graph = make_graph(caption_outputs=False, planner=ScriptedPlanner(decide=decide))
    _made(_say(graph, "draw a small red star in the snow", TurnOptions(task="generate")))
    _say(graph, "make it blue", TurnOptions(task="edit", sources=("the last image",)))
    before = len(_media(graph))
    answer = _say(graph, "hi there")
    assert answer.text == "Hello! I can draw shapes and play tones." and not _made(answer)
    question = _say(graph, "change that picture")
    assert question.text.startswith("Which picture") and question.response_metadata.get("clarification")
    assert len(_media(graph)) == before  # neither made a medium


def test_a_planner_must_be_a_chat_model() -> None:
    with pytest.raises(TypeError, match="LangChain chat model"):
        Planner(object())


def test_plan_schema_offers_only_plannable_tasks() -> None:
    tasks = Plan.model_json_schema()["properties"]["task"]["enum"]
    assert sorted(tasks) == ["analogy", "compose", "describe", "edit", "generate"]


def test_session_takes_a_planner(tiny_model: Any, tmp_path: Any) -> None:
    from codi2_agent import Session

    def decide(text: str, ids: list[str]) -> dict[str, Any]:
        return {"action": "answer", "reply": "I only make shapes and tones."}

    s = Session(tiny_model, root=tmp_path, num_inference_steps=2, planner=ScriptedPlanner(decide=decide))
    try:
        answer = s.say("what's the weather like?")
        assert answer.text == "I only make shapes and tones." and not answer.media
    finally:
        s.close()
