"""A scripted stand-in for a tool-calling LLM, for `create_agent` tests that run offline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

# A planned call: (tool name, arguments), or a function of the tool results so far that returns one
# (so a later call can use an id an earlier result gave, as an LLM would).
Step = tuple[str, dict[str, Any]] | Callable[[list[ToolMessage]], tuple[str, dict[str, Any]]]


class ScriptedToolCaller(BaseChatModel):
    """Makes the planned tool calls one model step at a time, then answers with the last result's text."""

    plan: list[Any]
    seen: list[list[BaseMessage]] = Field(
        default_factory=list
    )  # the messages each step was shown, for tests to inspect

    @property
    def _llm_type(self) -> str:
        return "scripted-tool-caller"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedToolCaller:
        return self  # the plan already names the tools and their arguments

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        results = [m for m in messages if isinstance(m, ToolMessage)]
        if len(results) < len(self.plan):
            step = self.plan[len(results)]
            name, args = step(results) if callable(step) else step
            call = {"name": name, "args": args, "id": f"call_{len(results)}", "type": "tool_call"}
            message = AIMessage(content="", tool_calls=[call])
        else:
            message = AIMessage(content=f"Done. {results[-1].text}" if results else "Nothing to do.")
        return ChatResult(generations=[ChatGeneration(message=message)])
