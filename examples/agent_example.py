"""An LLM agent that draws, edits, and repeats an edit by analogy, with CoDi-2 as its tools.

`langchain.agents.create_agent` gets the `CoDi2Toolkit` tools. The agent's brain here is a scripted
chat model (no API key, fully offline) that plays the part of a tool-calling LLM over four user turns:

1. "Draw a small red star in the snow."              -> codi2_generate
2. "Make it blue."                                    -> codi2_edit (the star, by its @m: id)
3. "Now draw a large green circle on a sunny day."    -> codi2_generate
4. "Do to the circle what you did to the star."       -> codi2_apply_example_edit (star edit -> circle)

Swap `ScriptedAgentModel()` for any tool-calling chat model (``init_chat_model("...")``) to let a real
LLM plan the calls. The tools keep one CoDi-2 session thread, so every call sees the same history and
exemplar memory.

Run:
    python examples/agent_example.py                    # shipped tiny weights (random ones if absent)
    python examples/agent_example.py --root /tmp/agent --steps 20
"""

from __future__ import annotations

import argparse
import contextlib
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

USER_TURNS = (
    "Draw a small red star in the snow.",
    "Make it blue.",
    "Now draw a large green circle on a sunny day.",
    "Do to the circle what you did to the star.",
)
_ID = re.compile(r"@m:[0-9a-f]{12}")


class ScriptedAgentModel(BaseChatModel):
    """A stand-in for a tool-calling LLM: for the n-th user turn it calls the n-th planned tool, then
    answers with what the tool returned. Media ids come from the tool results, as a real LLM's would."""

    @property
    def _llm_type(self) -> str:
        return "scripted-agent"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> ScriptedAgentModel:
        return self  # the script already knows the tools' names and arguments

    def _plan(self, turn: int, ids: list[str]) -> tuple[str, dict[str, Any]]:
        if turn == 0:
            return "codi2_generate", {"prompt": "a small red star in the snow"}
        if turn == 1:
            return "codi2_edit", {"media": ids[0], "instruction": "make it blue"}
        if turn == 2:
            return "codi2_generate", {"prompt": "a large green circle on a sunny day"}
        # The blue star is the edit's result; the toolkit finds its source (the red star) itself.
        return "codi2_apply_example_edit", {"example_after": ids[1], "target": ids[2]}

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:  # fmt: skip
        turn = sum(isinstance(m, HumanMessage) for m in messages) - 1
        last_human = max(i for i, m in enumerate(messages) if isinstance(m, HumanMessage))
        results = [m for m in messages[last_human:] if isinstance(m, ToolMessage)]
        if results:  # the tool ran: report back
            message = AIMessage(content=f"Done. {results[-1].content}")
        else:
            ids = [i for m in messages if isinstance(m, ToolMessage) for i in _ID.findall(str(m.content))]
            name, args = self._plan(turn, ids)
            message = AIMessage(content="", tool_calls=[{"name": name, "args": args, "id": f"call_{turn}"}])
        return ChatResult(generations=[ChatGeneration(message=message)])


def load_tiny(allow_random: bool = True) -> Any:
    """The shipped tiny model, or (when its weights are not there yet) a seeded random one."""
    from codi2_agent.model import CoDi2Config, CoDi2Model, WeightsNotFoundError, load_model

    try:
        return load_model("tiny")
    except WeightsNotFoundError:
        if not allow_random:
            raise
        print("(the shipped tiny weights are not installed: using random weights, so the pictures are noise)")
        return CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)


def main(model: Any = None, root: str | Path | None = None, steps: int | None = None,
         verbose: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Run the four-turn job; returns one record per user turn (request, tool call, tool result, answer)."""
    from langchain.agents import create_agent
    from langgraph.checkpoint.memory import InMemorySaver

    from codi2_agent.tools import CoDi2Toolkit

    records = []
    temporary = root is None  # no --root: a temporary session folder, removed when the job ends
    with contextlib.ExitStack() as cleanup:  # closes the toolkit, then removes a temporary root
        if root is None:
            root = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="codi2-agent-"))
        root = Path(root)
        toolkit = CoDi2Toolkit(
            model if model is not None else load_tiny(), root=root, num_inference_steps=steps
        )
        cleanup.callback(toolkit.close)
        agent = create_agent(
            model=ScriptedAgentModel(), tools=toolkit.get_tools(), checkpointer=InMemorySaver()
        )
        config = {"configurable": {"thread_id": "example"}}
        for text in USER_TURNS:
            state = agent.invoke({"messages": [HumanMessage(text)]}, config)
            call = next(m for m in reversed(state["messages"]) if isinstance(m, AIMessage) and m.tool_calls)
            result = next(m for m in reversed(state["messages"]) if isinstance(m, ToolMessage))
            record = {
                "user": text,
                "tool": call.tool_calls[0]["name"],
                "args": call.tool_calls[0]["args"],
                "result": result,
                "answer": state["messages"][-1].text,
            }
            records.append(record)
            if verbose:
                print(
                    f"user:  {text}\ncall:  {record['tool']}({record['args']})\nagent: {record['answer']}\n"
                )
        out = root / "out"
        for turn in toolkit.session.history():
            turn.save(out)
        if verbose:
            note = " (a temporary folder, removed on exit: pass --root to keep them)" if temporary else ""
            print(f"media saved under {out}{note}")
    return records


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=None, help="session folder (default: a temporary one)")
    parser.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's)")
    args = parser.parse_args()
    main(root=args.root, steps=args.steps)
