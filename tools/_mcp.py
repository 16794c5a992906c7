"""The `CoDi2Toolkit` tools as an MCP server, for MCP clients: desktop assistants, IDEs, other agent
frameworks (``codi2-agent mcp``).

Built on the official ``mcp`` SDK's low-level `Server`, so the tools' own pydantic argument schemas
are the MCP input schemas, and every call runs through the same toolkit code an in-process agent
uses (media-access policy, one-writer locks, error messages).

- **Results.** A call that makes or finds media answers with a text (the ``@m:`` ids, as the toolkit
  says them) followed by each medium itself: ``ImageContent`` (PNG) or ``AudioContent`` (WAV, the
  stored bytes), and ``structuredContent`` ``{"media": [{"id", "artifact_id", "modality",
  "mime_type", "caption"}]}`` for programs.
- **Refusals** (bad arguments, an unknown id, a path outside the media roots, a refused url, a thread
  another process holds) are results with ``isError=True`` whose text names the problem, so the
  client's LLM can fix its call; they never end the session.
- **Whose thread.** The tenant is the server's (``--tenant``): one server process serves one user,
  as a desktop assistant spawns it. Over stdio the client's one MCP session is the thread
  ``--thread``, so a restarted assistant continues where it left off. Over HTTP each MCP session is
  a thread of its own (``<thread>-<8 hex>``), so two clients never see each other's "last image";
  ids stay valid across sessions of the tenant (``@m:`` ids are looked up in its memory).
- **Progress.** A call made with a progress token gets one progress notification per diffusion
  step.
- Calls run one at a time (one model, one embedded memory), in a worker thread.

Example:
    >>> CoDi2MCPServer.loopback_security("127.0.0.1").allowed_hosts
    ['127.0.0.1:*', 'localhost:*', '[::1]:*']
    >>> CoDi2MCPServer.loopback_security("0.0.0.0") is None
    True
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import secrets
import sys
import weakref
from io import TextIOWrapper
from typing import TYPE_CHECKING, Any

import anyio
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from mcp import types
from mcp.server.lowlevel import Server
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel

from codi2_agent import __version__
from codi2_agent.media import Modality

from ._streaming import listening_to_tools
from ._toolkit import CoDi2Toolkit

if TYPE_CHECKING:
    from pathlib import Path

    from starlette.applications import Starlette
    from starlette.types import Receive, Scope, Send

    from codi2_agent.session import Session

__all__ = ["CoDi2MCPServer"]

logger = logging.getLogger(__name__)

INSTRUCTIONS = (
    "CoDi-2 makes, edits and describes images and sounds. Every medium a tool makes is returned with "
    "an id like @m:4a8d5d3261e8: pass that id (or words like 'the last image') to codi2_edit, "
    "codi2_describe or codi2_apply_example_edit to work on it later. Files can be read only from the "
    "folders the server was started with."
)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_PROGRESS_SEND_TIMEOUT_S = 10.0


class CoDi2MCPServer:
    """An MCP server whose tools are a `CoDi2Toolkit`'s, all in `session`'s folder and tenant.

    Args:
        session: the session that owns the parts (model, artifacts, memory, checkpoints); its thread
            is the one every MCP session uses unless `thread_per_session`.
        media_roots: folders whose files the tools may read (none by default).
        allow_urls: let the tools fetch ``http(s)://`` media.
        thread_per_session: give each MCP session its own thread (``<thread>-<8 hex>``): what an
            HTTP server with several clients wants.
    """

    def __init__(
        self,
        session: Session,
        *,
        media_roots: tuple[str | Path, ...] | list[str | Path] = (),
        allow_urls: bool = False,
        thread_per_session: bool = False,
    ) -> None:
        self.session = session
        self._media_roots = tuple(media_roots)
        self._allow_urls = allow_urls
        self._shared = self._tools_of(session)
        self._thread_per_session = thread_per_session
        self._per_session: weakref.WeakKeyDictionary[Any, dict[str, BaseTool]] = weakref.WeakKeyDictionary()
        self._one_call = asyncio.Lock()  # one model and one embedded memory: calls take turns
        self.server: Server[Any, Any] = Server("codi2-agent", version=__version__, instructions=INSTRUCTIONS)
        self.server.list_tools()(self._list_tools)
        self._schemas = {name: _input_schema(tool) for name, tool in self._shared.items()}
        # Arguments are checked here, so the refusal can name the argument (the SDK's check does not).
        self.server.call_tool(validate_input=False)(self._call_tool)

    # --- the tools --------------------------------------------------------------------------------
    def _tools_of(self, session: Session) -> dict[str, BaseTool]:
        toolkit = CoDi2Toolkit(session=session, media_roots=self._media_roots, allow_urls=self._allow_urls)
        return {tool.name: tool for tool in toolkit.get_tools()}

    def _tools_for(self, mcp_session: Any) -> dict[str, BaseTool]:
        """The tools of the thread that `mcp_session` (the SDK's session object) talks to."""
        if not self._thread_per_session:
            return self._shared
        tools = self._per_session.get(mcp_session)
        if tools is None:
            thread = self.session.open_thread(f"{self.session.thread}-{secrets.token_hex(4)}")
            tools = self._tools_of(thread)
            self._per_session[mcp_session] = tools
            logger.info("MCP session on thread %r", thread.thread)
        return tools

    async def _list_tools(self) -> list[types.Tool]:
        return [
            types.Tool(name=name, description=tool.description, inputSchema=self._schemas[name])
            for name, tool in self._shared.items()
        ]

    async def _call_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        context = self.server.request_context
        tools = self._tools_for(context.session)
        tool = tools.get(name)
        if tool is None:  # the SDK turns the exception into an isError result
            raise ValueError(f"unknown tool {name!r}; the tools are {', '.join(sorted(tools))}")
        problem = _argument_problem(arguments, self._schemas[name])
        if problem:
            text = f"invalid arguments for {name}: {problem}"
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)
        listener = self._progress_listener(context)
        call = {"type": "tool_call", "id": str(context.request_id), "name": name, "args": arguments}
        async with self._one_call:
            # A turn runs to its end in a worker thread whatever the client does: a cancelled call
            # waits for it (and is cancelled after), so the next call never runs beside it.
            with anyio.CancelScope(shield=True):
                with listening_to_tools(listener) if listener else contextlib.nullcontext():
                    message = await tool.ainvoke(call)
        return self._result(message, tool)

    def _progress_listener(self, context: Any) -> Any:
        """Diffusion steps as MCP progress notifications, when the call asked for them (a token)."""
        token = context.meta.progressToken if context.meta is not None else None
        if token is None:
            return None
        loop = asyncio.get_running_loop()

        def send(event: dict[str, Any]) -> None:  # runs in the tool's worker thread
            if event.get("event") != "progress":
                return
            note = context.session.send_progress_notification(
                token,
                float(event["step"]),
                float(event["total"]),
                message=f"{event.get('tool')}: diffusion step {event['step']}/{event['total']}",
                related_request_id=str(context.request_id),
            )
            try:  # waited for, so every step is out before the result
                asyncio.run_coroutine_threadsafe(note, loop).result(timeout=_PROGRESS_SEND_TIMEOUT_S)
            except Exception as e:  # a client that went away: the call itself goes on
                logger.warning("could not send a progress notification: %s", e)

        return send

    def _result(self, message: ToolMessage, tool: BaseTool) -> types.CallToolResult:
        text = message.text
        if message.status == "error":
            return types.CallToolResult(content=[types.TextContent(type="text", text=text)], isError=True)
        content: list[types.ContentBlock] = [types.TextContent(type="text", text=text)]
        media: list[dict[str, Any]] = []
        artifacts = tool.runner.session.artifacts  # type: ignore[attr-defined]
        for block in message.artifact or []:
            artifact_id = block["extras"]["artifact_id"]
            data, mime = artifacts.get(artifact_id).to_bytes()
            encoded = base64.b64encode(data).decode("ascii")
            if block["type"] == Modality.IMAGE.value:
                content.append(types.ImageContent(type="image", data=encoded, mimeType=mime))
            else:
                content.append(types.AudioContent(type="audio", data=encoded, mimeType=mime))
            media.append(
                {
                    "id": "@m:" + artifact_id[:12],
                    "artifact_id": artifact_id,
                    "modality": block["type"],
                    "mime_type": mime,
                    "caption": block["extras"].get("caption"),
                }
            )
        return types.CallToolResult(content=content, structuredContent={"media": media} if media else None)

    # --- transports -------------------------------------------------------------------------------
    async def serve_stdio(self) -> None:
        """Talk MCP over this process's stdin/stdout until the client closes them.

        stdout carries the protocol, so anything else a library prints goes to stderr meanwhile.
        """
        from mcp.server.stdio import stdio_server

        protocol_out = anyio.wrap_file(TextIOWrapper(sys.stdout.buffer, encoding="utf-8"))
        with contextlib.redirect_stdout(sys.stderr):
            async with stdio_server(stdout=protocol_out) as (read, write):
                await self.server.run(read, write, self.server.create_initialization_options())

    @staticmethod
    def loopback_security(host: str) -> TransportSecuritySettings | None:
        """DNS-rebinding protection for a server bound to loopback (a web page must not reach it
        through a name that resolves to 127.0.0.1); None for other hosts, which have no such check."""
        if host not in _LOOPBACK:
            return None
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
        )

    def http_app(self, host: str = "127.0.0.1") -> Starlette:
        """The streamable-HTTP app: MCP at ``/mcp``, one thread per MCP session."""
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from starlette.applications import Starlette
        from starlette.routing import Route

        manager = StreamableHTTPSessionManager(
            app=self.server, security_settings=self.loopback_security(host)
        )

        class Endpoint:  # a class, so Starlette hands it the raw ASGI call, as the SDK expects
            async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
                await manager.handle_request(scope, receive, send)

        return Starlette(routes=[Route("/mcp", endpoint=Endpoint())], lifespan=lambda app: manager.run())

    async def serve_http(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        """Serve streamable HTTP at ``http://host:port/mcp`` until interrupted."""
        import uvicorn

        if host not in _LOOPBACK:
            logger.warning(
                "serving MCP on %s without authentication: anyone who reaches it can call the tools", host
            )
        config = uvicorn.Config(self.http_app(host), host=host, port=port, log_level="warning", lifespan="on")
        await uvicorn.Server(config).serve()


def _argument_problem(arguments: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """What is wrong with `arguments` under the tool's JSON schema, naming the argument; None if fine."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(arguments))
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path)
    return f"{where}: {error.message}" if where else error.message


def _input_schema(tool: BaseTool) -> dict[str, Any]:
    """The JSON schema of what the LLM fills in (the toolkit's schemas are pydantic v2 models)."""
    schema = tool.tool_call_schema
    if isinstance(schema, dict):
        return schema
    if not issubclass(schema, BaseModel):
        raise TypeError(f"{tool.name}: a pydantic v1 argument schema is not supported")
    return schema.model_json_schema()
