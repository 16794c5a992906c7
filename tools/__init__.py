"""LangChain surfaces of CoDi-2: the `ChatCoDi2` chat model and the `CoDi2Toolkit` agent tools.

Setup:
    Part of codi2-agent (``langchain-core`` and ``langchain`` are core dependencies).

Instantiate:
    .. code-block:: python

        from codi2_agent.tools import ChatCoDi2, CoDi2Toolkit

        llm = ChatCoDi2(model="tiny")                                  # stateless chat model
        tools = CoDi2Toolkit(model="tiny", media_roots=["./inputs"]).get_tools()   # stateful tools

Invoke:
    .. code-block:: python

        llm.invoke("draw a small red star in the snow", output="image").content_blocks
        from langchain.agents import create_agent
        agent = create_agent(model=some_tool_calling_llm, tools=tools)
"""

from __future__ import annotations

from ._access import MediaAccess, MediaAccessError
from ._chat_model import ChatCoDi2, CoDi2CapabilityError, MediaFileRefusedError
from ._toolkit import (
    ApplyExampleEditInput,
    CoDi2ApplyExampleEditTool,
    CoDi2DescribeTool,
    CoDi2EditTool,
    CoDi2GenerateTool,
    CoDi2RecallTool,
    CoDi2Toolkit,
    DescribeInput,
    EditInput,
    GenerateInput,
    RecallInput,
)

__all__ = [
    "ApplyExampleEditInput",
    "ChatCoDi2",
    "CoDi2ApplyExampleEditTool",
    "CoDi2CapabilityError",
    "CoDi2DescribeTool",
    "CoDi2EditTool",
    "CoDi2GenerateTool",
    "CoDi2RecallTool",
    "CoDi2Toolkit",
    "DescribeInput",
    "EditInput",
    "GenerateInput",
    "MediaAccess",
    "MediaAccessError",
    "MediaFileRefusedError",
    "RecallInput",
]
