"""Fixtures for the memory tests: real Chroma, embedded and as a `chroma run` server on loopback."""

from __future__ import annotations

import os

os.environ["ANONYMIZED_TELEMETRY"] = "False"  # before chromadb is imported anywhere

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media
from codi2_agent.memory import HashingEmbedder

DIM = 32
COLORS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}


@dataclass(frozen=True)
class ChromaServer:
    host: str
    port: int
    path: Path
    log: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chroma_exe() -> str:
    # The venv's own `chroma`, next to the interpreter running the tests (not whatever is on PATH).
    exe = Path(sys.executable).parent / "chroma"
    if exe.is_file():
        return str(exe)
    found = shutil.which("chroma")
    if found is None:
        pytest.fail(
            "the `chroma` executable is not installed next to this Python (chromadb is a core dependency)"
        )
    return found


def _wait_for_heartbeat(proc: subprocess.Popen[bytes], port: int, log: Path, timeout: float = 60.0) -> None:
    url = f"http://127.0.0.1:{port}/api/v2/heartbeat"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chroma server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(
        f"chroma server did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-2000:]}"
    )


@pytest.fixture(scope="session")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChromaServer]:
    """A `chroma run` server on a free loopback port for the whole session, stopped afterwards."""
    root = tmp_path_factory.mktemp("chroma-server")
    port, log = _free_port(), root / "server.log"
    env = {**os.environ, "ANONYMIZED_TELEMETRY": "False"}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_chroma_exe(), "run", "--path", str(root / "db"), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        _wait_for_heartbeat(proc, port, log)
        yield ChromaServer("127.0.0.1", port, root / "db", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def _no_default_embedding_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything reaches Chroma's default (downloading) ONNX embedding model."""
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("Chroma's default ONNX embedding function was used")

    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__init__", refuse)
    monkeypatch.setattr(onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2, "__call__", refuse)


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder(dim=DIM)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


@pytest.fixture(params=["embedded", "server"])
def memory(request: pytest.FixtureRequest, tmp_path: Path, embedder: HashingEmbedder, store: ArtifactStore):
    """An ExemplarMemory in each mode; server tests get their own namespace on the shared server."""
    from codi2_agent.memory import ExemplarMemory

    if request.param == "embedded":
        mem = ExemplarMemory(tmp_path / "db", embedder=embedder, artifacts=store)
    else:
        server: ChromaServer = request.getfixturevalue("chroma_server")
        mem = ExemplarMemory(
            host=server.host,
            port=server.port,
            embedder=embedder,
            artifacts=store,
            namespace="n" + uuid.uuid4().hex[:12],
        )
    yield mem
    mem.close()


def _shape_image(color: str, *, size: int = 16, square: bool = False, caption: str | None = None) -> Media:
    arr = np.full((size, size, 3), 128, dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    if square:
        mask = (np.abs(yy - c) < size / 3) & (np.abs(xx - c) < size / 3)
    else:
        mask = (yy - c) ** 2 + (xx - c) ** 2 < (size / 3) ** 2
    arr[mask] = COLORS[color]
    return Media.from_image(arr, caption=caption)


@pytest.fixture
def shape_image():
    """Factory of tiny synthetic images: a coloured disc or square on grey."""
    return _shape_image
