"""`CoDi2Toolkit`: the standard tool suite for each tool, then calls through the shared session graph."""

from __future__ import annotations

import asyncio
import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.messages import ToolMessage
from langchain_core.tools import BaseTool
from langchain_tests.unit_tests import ToolsUnitTests

from codi2_agent.media import Media
from codi2_agent.tools import CoDi2Toolkit, MediaAccess, MediaAccessError

STEPS = 2
_SHARED: dict[str, CoDi2Toolkit] = {}


@pytest.fixture(scope="module", autouse=True)
def shared_toolkit(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoDi2Toolkit]:
    """One toolkit for the standard suites (they take ready tool instances, outside fixtures)."""
    root = tmp_path_factory.mktemp("toolkit")
    toolkit = CoDi2Toolkit(tiny_model, root=root, num_inference_steps=STEPS)
    _SHARED["toolkit"] = toolkit
    yield toolkit
    toolkit.close()


def _tool(name: str) -> BaseTool:
    return next(t for t in _SHARED["toolkit"].get_tools() if t.name == name)


class TestGenerateTool(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return _tool("codi2_generate")

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"prompt": "a small red star in the snow", "modality": "image"}


class TestEditTool(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return _tool("codi2_edit")

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"media": "@m:4a8d5d3261e8", "instruction": "make it blue"}


class TestApplyExampleEditTool(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return _tool("codi2_apply_example_edit")

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"example_after": "@m:9edc168c4127", "target": "the last image"}


class TestDescribeTool(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return _tool("codi2_describe")

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"media": "the first picture"}


class TestRecallTool(ToolsUnitTests):
    @property
    def tool_constructor(self) -> BaseTool:
        return _tool("codi2_recall")

    @property
    def tool_invoke_params_example(self) -> dict[str, Any]:
        return {"query": "the picture with the blue star", "k": 2}


# --- behaviour -------------------------------------------------------------------------------------
@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    arr = np.full((32, 32, 3), 40, np.uint8)
    arr[10:22, 10:22] = (30, 200, 60)
    Media.from_image(arr).save(folder / "square.png")
    return folder


@pytest.fixture
def toolkit(tiny_model: Any, tmp_path: Path, inputs: Path) -> Iterator[CoDi2Toolkit]:
    kit = CoDi2Toolkit(tiny_model, root=tmp_path / "session", media_roots=[inputs], num_inference_steps=STEPS)
    yield kit
    kit.close()


def _call(tools: list[BaseTool], name: str, **args: Any) -> ToolMessage:
    tool = next(t for t in tools if t.name == name)
    msg = tool.invoke({"type": "tool_call", "id": f"call-{name}", "name": name, "args": args})
    assert isinstance(msg, ToolMessage)
    return msg


def _id(msg: ToolMessage) -> str:
    return "@m:" + msg.artifact[0]["extras"]["artifact_id"][:12]


def test_tools_share_one_thread_and_memory(toolkit: CoDi2Toolkit, inputs: Path) -> None:
    tools = toolkit.get_tools()
    star = _call(tools, "codi2_generate", prompt="a small red star in the snow")
    assert star.status == "success" and "@m:" in star.content
    (block,) = star.artifact
    assert block["type"] == "image" and block["url"].startswith("artifact://") and "base64" not in block
    blue = _call(tools, "codi2_edit", media=_id(star), instruction="make it blue")
    square = _call(tools, "codi2_edit", media=str(inputs / "square.png"), instruction="make it purple")
    same = _call(tools, "codi2_apply_example_edit", example_after=_id(blue), target=_id(square))
    assert same.status == "success"
    described = _call(tools, "codi2_describe", media="the first picture")
    assert described.status == "success" and described.artifact == []
    found = _call(tools, "codi2_recall", query="a small red star in the snow", k=2)
    assert found.status == "success" and 1 <= len(found.artifact) <= 2
    media = {r.id: r for r in toolkit.session.media_log()}
    made = media[same.artifact[0]["extras"]["artifact_id"]]
    assert made.task == "analogy" and made.parents == (square.artifact[0]["extras"]["artifact_id"],)
    assert len(toolkit.session.history()) == 6  # every call is one turn of one thread


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("/etc/hostname", "outside the allowed media folders"),
        ("../../etc/passwd", "outside the allowed media folders"),
        ("https://example.com/cat.png", "fetching urls is disabled"),
        ("ftp://example.com/cat.png", "fetching urls is disabled"),
        ("@m:abcdef123456", "can't find"),
        ("the dragon", "can't find the dragon"),
    ],
)
def test_refusals_become_error_tool_messages(toolkit: CoDi2Toolkit, source: str, says: str) -> None:
    msg = _call(toolkit.get_tools(), "codi2_edit", media=source, instruction="make it blue")
    assert msg.status == "error" and says in msg.content


def test_symlinks_cannot_escape_the_roots(toolkit: CoDi2Toolkit, inputs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Media.from_image(np.zeros((8, 8, 3), np.uint8)).save(outside)
    (inputs / "innocent.png").symlink_to(outside)
    msg = _call(toolkit.get_tools(), "codi2_describe", media=str(inputs / "innocent.png"))
    assert msg.status == "error" and "outside the allowed" in msg.content


def test_no_roots_means_no_files(tiny_model: Any, tmp_path: Path, inputs: Path) -> None:
    access = MediaAccess()
    with pytest.raises(MediaAccessError, match="reading files is disabled"):
        access.read_file(str(inputs / "square.png"), max_bytes=1 << 20)
    assert (
        MediaAccess(roots=[inputs])
        .read_file(str(inputs / "square.png"), max_bytes=1 << 20)
        .startswith(b"\x89PNG")
    )


def test_urls_are_fetched_only_when_enabled(tmp_path: Path, inputs: Path) -> None:
    from codi2_agent.artifacts import ArtifactStore

    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(inputs))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/square.png"
    store = ArtifactStore(tmp_path / "a")
    try:
        with pytest.raises(Exception, match="fetching urls is disabled"):
            MediaAccess().load(url, store)
        ref = MediaAccess(allow_urls=True).load(url, store)
        assert ref is not None and store.get(ref) == Media.open(inputs / "square.png")
        with pytest.raises(Exception, match="larger than"):
            MediaAccess(allow_urls=True, max_url_bytes=10).load(url, store)
    finally:
        server.shutdown()


def test_bad_arguments_and_async(toolkit: CoDi2Toolkit) -> None:
    tools = toolkit.get_tools()
    bad = _call(tools, "codi2_recall", query="stars", k=99)
    assert bad.status == "error"  # validation error, reported to the agent rather than raised

    async def run() -> ToolMessage:
        tool = next(t for t in tools if t.name == "codi2_generate")
        return await tool.ainvoke(
            {
                "type": "tool_call",
                "id": "a1",
                "name": "codi2_generate",
                "args": {"prompt": "a high sine tone", "modality": "audio"},
            }
        )

    msg = asyncio.run(run())
    assert msg.status == "success" and msg.artifact[0]["type"] == "audio"


def test_data_urls_need_no_allow_urls_but_keep_the_size_caps(tmp_path: Path, inputs: Path) -> None:
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.media import MediaLimits

    png = (inputs / "square.png").read_bytes()
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    store = ArtifactStore(tmp_path / "a")
    ref = MediaAccess().load(url, store)  # inline bytes: nothing is fetched
    assert ref is not None and store.get(ref) == Media.open(png)
    small = ArtifactStore(tmp_path / "b", limits=MediaLimits(max_bytes=100))
    with pytest.raises(MediaAccessError, match="larger than 100 bytes"):
        MediaAccess().load(url, small)
    with pytest.raises(MediaAccessError, match="invalid base64"):
        MediaAccess().load("data:image/png;base64,@@@", store)
