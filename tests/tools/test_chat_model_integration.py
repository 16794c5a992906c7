"""`ChatCoDi2` under the LangChain standard *integration* suite, offline.

The suite downloads its test media (an image from GitHub, a sound from Wikimedia) with `httpx.get`
inside the test bodies; it offers no property or fixture to point them elsewhere. So a loopback
HTTP server started here serves media of the tiny world, and the suite module's `httpx` is given a
client that sends each of the suite's media urls to it over real HTTP (any other url is refused:
nothing leaves the machine). Capabilities CoDi-2 lacks are declared through the suite's own
properties (tool calling, structured output, remote image urls, PDFs, model override), never xfailed.

The model is the shipped tiny model when its weights are present, else the seeded random tiny model
(the same architecture and cost), loaded once and shared by the suite's per-test chat models.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.integration_tests import chat_models as suite

from codi2_agent.data import world
from codi2_agent.media import Media
from codi2_agent.model import CoDi2Config, CoDi2Model, load_model, shipped_model_path
from codi2_agent.tools import ChatCoDi2

STEPS = 2

# What the suite fetches, and which loopback file stands in for each (same kind and format).
SUITE_MEDIA = {
    "agentic-rag-output.png": "/image.png",
    "Northern_Flicker_202280456.wav": "/sound.wav",
}


@functools.cache
def _model() -> CoDi2Model:
    if (shipped_model_path("tiny") / "config.json").is_file():
        return load_model("tiny")
    return CoDi2Model.from_config(CoDi2Config.tiny(), seed=0).eval()


@pytest.fixture(scope="module")
def media_server() -> Iterator[str]:
    """A loopback HTTP server with one picture and one sound of the tiny world; yields its base url."""
    picture = world.render({"shape": "star", "colour": "red", "size": "large", "scene": "desert"}, 0)
    sound = world.render({"instrument": "sine", "pitch": "440", "ambience": "wind"}, 0)
    files = {
        "/image.png": (picture.to_bytes()[0], "image/png"),
        "/sound.wav": (sound.to_bytes()[0], "audio/wav"),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body, mime = files.get(self.path, (b"", ""))
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", mime or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # keep the test output clean
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


class LoopbackHttpx:
    """The `httpx` the suite module sees: its media urls go to the loopback server, for real."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.fetched: list[str] = []

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        name = url.rsplit("/", 1)[-1]
        if name not in SUITE_MEDIA:
            raise AssertionError(f"the standard suite fetched {url!r}, which has no loopback copy")
        response = httpx.get(self.base + SUITE_MEDIA[name], timeout=10.0)
        response.raise_for_status()
        self.fetched.append(name)
        return response


@pytest.fixture(scope="module")
def served_media(media_server: str) -> Iterator[LoopbackHttpx]:
    client = LoopbackHttpx(media_server)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(suite, "httpx", client)
        patch.setenv("LANGCHAIN_TESTS_USER_AGENT", "codi2-agent-tests/1 (loopback only)")
        yield client


# The suite mixes sync and coroutine tests and this project runs pytest-asyncio in strict mode: the
# class mark runs the coroutine ones on asyncio; pytest-asyncio warns that the sync ones carry it too.
@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore:.*marked with '@pytest.mark.asyncio' but it is not an async function")
class TestChatCoDi2Integration(ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _media_from_loopback(self, served_media: LoopbackHttpx) -> None:
        return None

    @property
    def chat_model_class(self) -> type[ChatCoDi2]:
        return ChatCoDi2

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": _model(), "num_inference_steps": STEPS}

    # What CoDi-2 reads and reports
    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    # What it does not do: it answers in text, images and sounds, never in tool calls or JSON
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False  # remote urls are refused, not fetched (the toolkit fetches them when allowed)

    @property
    def supports_model_override(self) -> bool:
        return False  # one loaded model per chat model; `model=` at call time cannot swap it


def test_the_suite_fetches_its_media_from_loopback(served_media: LoopbackHttpx) -> None:
    """The suite's own fetch paths (its module-level helper and its inline `httpx.get`) now return the
    loopback server's files, and an url it does not use is refused rather than fetched."""
    sound = suite._get_base64_from_url(
        "https://upload.wikimedia.org/wikipedia/commons/6/6a/Northern_Flicker_202280456.wav"
    )
    assert (
        Media.from_content_block({"type": "audio", "base64": sound, "mime_type": "audio/wav"}).modality.value
        == "audio"
    )
    picture = suite.httpx.get("https://raw.githubusercontent.com/x/agentic-rag-output.png", timeout=10.0)
    assert Media.open(picture.content).image.size == (32, 32)
    with pytest.raises(AssertionError, match="no loopback copy"):
        suite.httpx.get("https://example.com/other.png")
