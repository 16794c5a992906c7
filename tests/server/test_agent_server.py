"""The session graph under a real LangGraph Agent Server (``langgraph dev``), driven with langgraph-sdk.

Two tenants (alice, bob) with their bearer tokens: threads, streamed runs, state, media fetched over
HTTP and decoded, a fork from an earlier checkpoint, isolation through the auth rules, refusals.
Every test makes the threads it needs, so they run in any order against the module's one server.

The server: a real ``langgraph dev`` (in-memory runtime) on loopback, one for the module, running the
repository's own langgraph.json on a seeded random tiny model with few diffusion steps, offline (no
analytics, no version check, no tracing), in a temporary working folder (the server's
``.langgraph_api`` persistence and ``CODI2_SERVER_ROOT`` live there). Start-up is bounded in time
and fails with the server's log; teardown stops the whole process group.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_sync_client
from langgraph_sdk.client import SyncLangGraphClient
from langgraph_sdk.errors import APIStatusError, NotFoundError
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
TOKENS = {"alice-token-0001": "alice", "bob-token-000002": "bob"}
ALICE, BOB = "alice-token-0001", "bob-token-000002"
GRAPH = "codi2"
START_TIMEOUT_S = 120.0  # a cold start on 2 busy cores; typically 5-10 s
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",  # the CLI's usage analytics
    "LANGGRAPH_NO_VERSION_CHECK": "true",  # the server's PyPI version check
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_API_KEY": "",
    "LANGGRAPH_CLOUD_LICENSE_KEY": "",  # no key: the metadata beacon loop is skipped
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
}


@dataclass
class AgentServer:
    url: str
    log: Path
    root: Path  # CODI2_SERVER_ROOT: artifacts and memory

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def agent_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[AgentServer]:
    work = tmp_path_factory.mktemp("agent-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "CODI2_MODEL": str(tiny_model_dir),
        "CODI2_SERVER_ROOT": str(work / "codi2-server"),
        "CODI2_SERVER_TOKENS": json.dumps(TOKENS),
        "CODI2_SERVER_DIFFUSION_STEPS": "2",
        "OMP_NUM_THREADS": "1",
    }
    log = work / "server.log"
    command = [
        sys.executable, "-m", "langgraph_cli", "dev",
        "--config", str(REPO / "langgraph.json"),
        "--host", "127.0.0.1", "--port", str(port),
        "--no-browser", "--no-reload",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = AgentServer(url=url, log=log, root=work / "codi2-server")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"langgraph dev exited with {process.returncode}:\n{server.log_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/ok", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"langgraph dev not ready after {START_TIMEOUT_S} s:\n{server.log_text()[-4000:]}"
                )
            time.sleep(0.25)
        yield server
    finally:
        _stop(process)


TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # the first run waits for the model to load


def client(server: AgentServer, token: str | None) -> SyncLangGraphClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return get_sync_client(url=server.url, api_key=None, headers=headers, timeout=TIMEOUT)


def say(
    lg: SyncLangGraphClient, thread_id: str, text: str, **run: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One turn, streamed: the custom (progress) events and the final state values."""
    custom: list[dict[str, Any]] = []
    values: dict[str, Any] = {}
    for part in lg.runs.stream(
        thread_id,
        GRAPH,
        input={"messages": [{"role": "user", "content": text}]},
        stream_mode=["values", "custom"],
        **run,
    ):
        assert part.event != "error", part.data
        if part.event == "custom":
            custom.append(part.data)
        elif part.event == "values":
            values = part.data
    return custom, values


def media_blocks(message: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [b for b in message["content"] if isinstance(b, dict) and b.get("type") == kind]


def artifact_id(values: dict[str, Any]) -> str:
    (block,) = media_blocks(values["messages"][-1], "image")
    assert block["url"].startswith("artifact://")
    return str(block["url"].removeprefix("artifact://"))


def fetch(server: AgentServer, token: str | None, artifact: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{server.url}/artifacts/{artifact}", headers=headers, timeout=TIMEOUT)


def test_two_threads_stream_turns_keep_state_and_serve_their_pictures(agent_server: AgentServer) -> None:
    alice = client(agent_server, ALICE)
    star = alice.threads.create()["thread_id"]
    circle = alice.threads.create()["thread_id"]

    progress, values = say(alice, star, "draw a large red star in the desert")
    steps = [e for e in progress if e.get("event") == "progress"]
    assert steps and steps[-1]["step"] == steps[-1]["total"] == 2  # CODI2_SERVER_DIFFUSION_STEPS
    first = artifact_id(values)
    assert values["turn"] == 1

    _, values = say(alice, circle, "draw a small green circle in the snow")
    circle_picture = artifact_id(values)
    _, values = say(alice, star, "make it blue")  # "it": the star, from this thread's log
    blue = artifact_id(values)
    assert values["turn"] == 2
    assert values["messages"][-1]["response_metadata"]["task"] == "edit"

    state = alice.threads.get_state(star)
    assert state["values"]["turn"] == 2
    texts = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
    assert texts == ["draw a large red star in the desert", "make it blue"]  # not the circle's
    assert alice.threads.get_state(circle)["values"]["turn"] == 1
    assert len({first, blue, circle_picture}) == 3

    for artifact in (first, blue, circle_picture):
        response = fetch(agent_server, ALICE, artifact)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        picture = Image.open(io.BytesIO(response.content))
        assert picture.format == "PNG"
        picture.load()  # decodes the whole image, not only its header
        assert picture.size == (32, 32)

    log = agent_server.log_text()
    # langgraph.json turns on LANGGRAPH_STRICT_MSGPACK: turn 2 above read turn 1's checkpoint, so our
    # state types revived under the strict allowlist; and nothing was revived by the permissive path
    assert "Deserializing unregistered type" not in log
    assert "Blocked deserialization" not in log
    assert "Traceback" not in log


def test_a_fork_from_an_earlier_checkpoint_branches_the_thread(agent_server: AgentServer) -> None:
    alice = client(agent_server, ALICE)
    thread = alice.threads.create()["thread_id"]
    _, values = say(alice, thread, "draw a large red star in the desert")
    star = artifact_id(values)
    _, values = say(alice, thread, "make it blue")
    blue = artifact_id(values)

    after_first_turn = next(
        s
        for s in alice.threads.get_history(thread, limit=50)
        if s["values"].get("turn") == 1 and not s["next"]
    )
    alice.threads.update_state(
        thread,
        {"options": None},
        as_node="respond",
        checkpoint_id=after_first_turn["checkpoint"]["checkpoint_id"],
    )
    assert alice.threads.get_state(thread)["values"]["turn"] == 1  # the branch is the thread's head now

    _, values = say(alice, thread, "make it green")  # "it" is still the star of turn 1
    green = artifact_id(values)
    assert values["turn"] == 2
    assert green not in (star, blue)
    assert values["messages"][-1]["response_metadata"]["task"] == "edit"
    human = [m["content"] for m in values["messages"] if m["type"] == "human"]
    assert human == ["draw a large red star in the desert", "make it green"]
    # the abandoned branch stays in the history
    turns_seen = [s["values"].get("turn") for s in alice.threads.get_history(thread, limit=100)]
    assert turns_seen.count(2) >= 2
    assert fetch(agent_server, ALICE, green).status_code == 200


def test_tenants_see_only_their_own_threads_and_media(agent_server: AgentServer) -> None:
    alice, bob = client(agent_server, ALICE), client(agent_server, BOB)
    thread = alice.threads.create(metadata={"title": "alice's"})["thread_id"]
    _, values = say(alice, thread, "draw a small red square on a sunny day")
    picture = artifact_id(values)

    assert thread not in [t["thread_id"] for t in bob.threads.search(limit=100)]
    assert thread in [t["thread_id"] for t in alice.threads.search(limit=100)]
    with pytest.raises(NotFoundError):
        bob.threads.get_state(thread)
    with pytest.raises(NotFoundError):
        say(bob, thread, "make it blue")
    with pytest.raises(NotFoundError):
        bob.threads.update_state(thread, {"options": None}, as_node="respond")
    assert alice.threads.get_state(thread)["values"]["turn"] == 1  # untouched by bob

    theirs, unknown = fetch(agent_server, BOB, picture), fetch(agent_server, BOB, "0" * 64)
    assert theirs.status_code == unknown.status_code == 404  # another tenant's id reads as unknown
    assert theirs.json()["detail"].replace(picture, "ID") == unknown.json()["detail"].replace("0" * 64, "ID")
    assert fetch(agent_server, ALICE, "not-an-id").status_code == 400

    # bob cannot borrow alice's tenant through the run's config: the auth rules pin it to bob
    own = bob.threads.create()["thread_id"]
    _, values = say(
        bob, own, "draw a large blue star in the snow", config={"configurable": {"tenant": "alice"}}
    )
    bobs = artifact_id(values)
    assert fetch(agent_server, BOB, bobs).status_code == 200
    assert fetch(agent_server, ALICE, bobs).status_code == 404


def test_missing_or_wrong_credentials_are_refused(agent_server: AgentServer) -> None:
    for lg in (client(agent_server, None), client(agent_server, "not-a-known-token")):
        with pytest.raises(APIStatusError) as refused:
            lg.threads.search()
        assert refused.value.response.status_code in (401, 403)
    studio = httpx.post(
        f"{agent_server.url}/threads/search", json={}, headers={"x-auth-scheme": "langsmith"}, timeout=TIMEOUT
    )
    assert studio.status_code in (401, 403)  # the dev server's Studio bypass is switched off
    assert fetch(agent_server, None, "0" * 64).status_code in (401, 403)
    assert fetch(agent_server, "Bearer-less", "0" * 64).status_code in (401, 403)


def test_store_namespaces_are_per_tenant_and_the_thread_log_is_unreachable(agent_server: AgentServer) -> None:
    alice = client(agent_server, ALICE)
    key = uuid.uuid4().hex
    alice.store.put_item(("tenants", "alice", "notes"), key, {"text": "mine"})
    assert alice.store.get_item(("tenants", "alice", "notes"), key)["value"] == {"text": "mine"}
    for namespace in (("tenants", "bob", "notes"), ("codi2", "threads")):
        with pytest.raises(APIStatusError) as refused:
            alice.store.search_items(namespace)
        assert refused.value.response.status_code == 403
    listed = alice.store.list_namespaces()["namespaces"]
    assert listed and all(tuple(ns[:2]) == ("tenants", "alice") for ns in listed)
