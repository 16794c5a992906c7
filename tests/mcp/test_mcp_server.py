"""`codi2-agent mcp` as MCP clients use it: the SDK's own client over stdio and streamable HTTP, and
`langchain-mcp-adapters` tools in a `create_agent` run. The server is a real subprocess on the seeded
random tiny model (few diffusion steps)."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_mcp_adapters.client import MultiServerMCPClient
from langchain_mcp_adapters.tools import load_mcp_tools
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image
from scripted_agents import ScriptedToolCaller
from served_model import free_port

from codi2_agent.graphs import thread_key
from codi2_agent.locking import LOCKS_FOLDER, thread_lock
from codi2_agent.media import Media

TOOLS = {"codi2_generate", "codi2_edit", "codi2_apply_example_edit", "codi2_describe", "codi2_recall"}
STARTUP_S = 180  # importing torch and loading the model on a busy 2-core machine


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    arr = np.full((32, 32, 3), 40, np.uint8)
    arr[10:22, 10:22] = (30, 200, 60)
    Media.from_image(arr).save(folder / "square.png")
    return folder


def _command(tiny_model_dir: Path, root: Path, inputs: Path, *extra: str) -> list[str]:
    return [
        "-m", "codi2_agent.cli", "mcp", "--model", str(tiny_model_dir), "--root", str(root),
        "--media-root", str(inputs), "--steps", "2", "--lock-timeout", "0.5", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "OMP_NUM_THREADS": "1"}


def _text(result: types.CallToolResult) -> str:
    return " ".join(c.text for c in result.content if isinstance(c, types.TextContent))


def _png(data: str) -> Image.Image:
    raw = base64.b64decode(data)
    assert raw.startswith(b"\x89PNG")
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def test_stdio_tools_media_and_refusals(tiny_model_dir: Path, tmp_path: Path, inputs: Path) -> None:
    root = tmp_path / "server"
    params = StdioServerParameters(
        command=sys.executable, args=_command(tiny_model_dir, root, inputs), env=_env()
    )
    progress: list[tuple[float, float | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total))

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        with anyio.fail_after(STARTUP_S + 120):
            async with stdio_client(params) as (read, write), ClientSession(read, write) as client:
                init = await client.initialize()
                out["instructions"] = init.instructions
                out["tools"] = {t.name: t for t in (await client.list_tools()).tools}
                out["made"] = await client.call_tool(
                    "codi2_generate",
                    {"prompt": "a small red star in the snow"},
                    progress_callback=on_progress,
                )
                made_id = out["made"].structuredContent["media"][0]["id"]
                out["edited"] = await client.call_tool(
                    "codi2_edit", {"media": made_id, "instruction": "make it blue"}
                )
                out["sound"] = await client.call_tool(
                    "codi2_generate", {"prompt": "a high tone", "modality": "audio"}
                )
                out["square"] = await client.call_tool(
                    "codi2_describe", {"media": str(inputs / "square.png")}
                )
                out["outside"] = await client.call_tool("codi2_describe", {"media": "/etc/hostname"})
                out["unknown"] = await client.call_tool(
                    "codi2_edit", {"media": "@m:abcdef123456", "instruction": "x"}
                )
                out["invalid"] = await client.call_tool("codi2_recall", {"query": "stars", "k": 99})
                out["no_tool"] = await client.call_tool("codi2_paint", {})
                # Another process holds the thread: the call gives up after --lock-timeout, and says so.
                with thread_lock(root / LOCKS_FOLDER, thread_key("default", "mcp"), timeout=5):
                    out["busy"] = await client.call_tool("codi2_describe", {"media": made_id})
        return out

    out = anyio.run(scenario)
    assert set(out["tools"]) == TOOLS and "@m:" in out["instructions"]
    schema = out["tools"]["codi2_generate"].inputSchema
    assert schema["required"] == ["prompt"] and set(schema["properties"]) == {"prompt", "modality", "seed"}

    made = out["made"]
    assert not made.isError
    text, image = made.content
    (media,) = made.structuredContent["media"]
    assert media["id"] in text.text and media["mime_type"] == "image/png"
    assert isinstance(image, types.ImageContent) and image.mimeType == "image/png"
    assert _png(image.data).size == (32, 32)  # the tiny model's image size
    stored = next((root / "artifacts").rglob(media["artifact_id"] + ".png"))
    assert base64.b64decode(image.data) == stored.read_bytes()  # the very medium the id names
    steps = [done for done, _ in progress]
    assert len(steps) >= 2 and steps == sorted(steps) and {total for _, total in progress} == {2.0}

    edited = out["edited"]
    assert not edited.isError and isinstance(edited.content[1], types.ImageContent)
    assert edited.structuredContent["media"][0]["artifact_id"] != media["artifact_id"]
    assert "Edited into image" in _text(edited)

    sound = out["sound"].content[1]
    assert isinstance(sound, types.AudioContent) and sound.mimeType == "audio/wav"
    assert base64.b64decode(sound.data)[:4] == b"RIFF"
    assert not out["square"].isError and out["square"].content  # a file under --media-root

    for name, says in [
        ("outside", "outside the allowed media folders"),
        ("unknown", "can't find"),
        ("invalid", "invalid arguments for codi2_recall: k: 99 is greater than the maximum of 10"),
        ("no_tool", "unknown tool 'codi2_paint'"),
        ("busy", "busy"),
    ]:
        assert out[name].isError, name
        assert says in _text(out[name]), (name, _text(out[name]))


@pytest.fixture(scope="module")
def http_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, inputs: Path
) -> Iterator[str]:
    """One streamable-HTTP server for this module's HTTP tests, on a free loopback port."""
    port = free_port()
    command = [sys.executable, *_command(tiny_model_dir, tmp_path_factory.mktemp("server"), inputs)]
    process = subprocess.Popen(
        [*command, "--transport", "http", "--port", str(port)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, f"the MCP server did not listen within {STARTUP_S} s"
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_streamable_http_sessions_are_threads_of_one_tenant(http_server: str) -> None:
    async def call(url: str, *calls: tuple[str, dict[str, Any]]) -> list[types.CallToolResult]:
        async with streamable_http_client(url) as (read, write, _), ClientSession(read, write) as client:
            await client.initialize()
            return [await client.call_tool(name, args) for name, args in calls]

    async def scenario() -> tuple[list[types.CallToolResult], list[types.CallToolResult]]:
        with anyio.fail_after(120):
            first = await call(http_server, ("codi2_generate", {"prompt": "a small red star in the snow"}))
            made = first[0].structuredContent["media"][0]["id"]
            # A second MCP session is another thread: "the last image" is not there, the id still is.
            second = await call(
                http_server,
                ("codi2_describe", {"media": "the last image"}),
                ("codi2_describe", {"media": made}),
            )
        return first, second

    (made,), (last, by_id) = anyio.run(scenario)
    assert not made.isError and _png(made.content[1].data).size == (32, 32)
    assert last.isError and "There are no images so far" in _text(last)
    assert not by_id.isError and _text(by_id)


def test_langchain_mcp_adapters_in_create_agent(http_server: str) -> None:
    client = MultiServerMCPClient({"codi2": {"url": http_server, "transport": "streamable_http"}})

    def edit_the_star(results: list[ToolMessage]) -> tuple[str, dict[str, Any]]:
        made = results[-1].artifact["structured_content"]["media"][0]["id"]  # as the server gave it
        return "codi2_edit", {"media": made, "instruction": "make it blue"}

    plan = [("codi2_generate", {"prompt": "a small red star in the snow"}), edit_the_star]

    async def scenario() -> list[ToolMessage]:
        with anyio.fail_after(STARTUP_S + 120):
            async with client.session("codi2") as session:  # one MCP session (one thread) for the run
                tools = await load_mcp_tools(session)
                agent = create_agent(model=ScriptedToolCaller(plan=plan), tools=tools)
                state = await agent.ainvoke(
                    {"messages": [HumanMessage("draw a red star, then make it blue")]}
                )
        return [m for m in state["messages"] if isinstance(m, ToolMessage)]

    made, edited = anyio.run(scenario)
    for message, verb in ((made, "Made image"), (edited, "Edited into image")):
        assert message.status == "success" and verb in message.text
        (image,) = [b for b in message.content_blocks if b["type"] == "image"]
        assert _png(image["base64"]).size == (32, 32)
    (star,) = made.artifact["structured_content"]["media"]
    (blue,) = edited.artifact["structured_content"]["media"]
    assert edited.name == "codi2_edit" and blue["artifact_id"] != star["artifact_id"]


def test_bad_options_are_one_line_errors(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from codi2_agent.cli import app

    missing = tmp_path / "nowhere"
    result = CliRunner().invoke(app, ["mcp", "--media-root", str(missing)])
    assert result.exit_code == 1 and f"--media-root {str(missing)!r} is not a folder" in result.output
    result = CliRunner().invoke(app, ["mcp", "--transport", "carrier-pigeon"])
    assert result.exit_code == 2 and "carrier-pigeon" in result.output
    with socket.socket() as taken:  # a port another program listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["mcp", "--transport", "http", "--port", str(port)])
    assert result.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in result.output


def test_http_refuses_a_foreign_host_or_origin(http_server: str) -> None:
    """A web page that resolves its own name to 127.0.0.1 (DNS rebinding) must not reach the tools."""
    import httpx

    client = {"name": "page", "version": "1"}
    params = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": client}
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": params}
    accept = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    for headers in ({"Host": "evil.example"}, {"Origin": "http://evil.example"}):
        refused = httpx.post(http_server, json=hello, headers={**accept, **headers}, timeout=30)
        assert refused.status_code in (400, 403, 421), (headers, refused.status_code)
    welcome = httpx.post(http_server, json=hello, headers=accept, timeout=30)
    assert welcome.status_code == 200 and welcome.headers.get("mcp-session-id")
