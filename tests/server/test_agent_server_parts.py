"""The Agent Server's parts without a server: langgraph.json, factory, tenants, tokens, media route."""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from langgraph_sdk import Auth
from PIL import Image
from starlette.applications import Starlette

from codi2_agent.agent_server import graph as server_graph
from codi2_agent.agent_server.app import artifact_response
from codi2_agent.agent_server.auth import TokenTable
from codi2_agent.agent_server.graph import TenantMismatchError, make_graph, tenant_of
from codi2_agent.agent_server.settings import load_server_settings
from codi2_agent.artifacts import ArtifactStore
from codi2_agent.graphs import allowlist, build_session_graph
from codi2_agent.media import Media
from codi2_agent.settings import SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "diffusers", "chromadb", "langgraph", "langchain_core")


def _attr(spec: str) -> object:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def test_langgraph_json_names_the_factory_the_auth_and_the_app() -> None:
    config = json.loads((REPO / "langgraph.json").read_text())
    assert _attr(config["graphs"]["codi2"]["path"]) is make_graph
    assert isinstance(_attr(config["auth"]["path"]), Auth)
    assert config["auth"]["disable_studio_auth"] is True  # no unauthenticated Studio bypass
    assert isinstance(_attr(config["http"]["app"]), Starlette)
    assert config["http"]["enable_custom_route_auth"] is True  # /artifacts runs behind the auth
    listed = {tuple(t) for t in config["checkpointer"]["serde"]["allowed_msgpack_modules"]}
    assert listed == {tuple(t) for t in allowlist()}  # kept in step with the state's types
    assert config["env"]["LANGGRAPH_STRICT_MSGPACK"] == "true"


def test_importing_the_graph_module_loads_nothing_heavy() -> None:
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import codi2_agent.agent_server.graph"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    rows = [line.split("|") for line in out.splitlines() if line.startswith("import time:")][1:]
    modules = {row[2].strip(): int(row[1]) for row in rows}  # name -> cumulative microseconds
    assert not [m for m in modules if m.split(".")[0] in HEAVY]
    assert modules["codi2_agent.agent_server.graph"] < 1_000_000  # the ≤ 1 s budget, with room


def test_the_tenant_is_the_authenticated_caller_and_nobody_else() -> None:
    authed = {"configurable": {"langgraph_auth_user_id": "alice"}}
    assert tenant_of(authed) == "alice"
    assert tenant_of({"configurable": {"langgraph_auth_user_id": "alice", "tenant": "alice"}}) == "alice"
    assert tenant_of({}) == "default"  # a server run without auth is single-tenant
    with pytest.raises(TenantMismatchError, match="'alice'"):
        tenant_of({"configurable": {"langgraph_auth_user_id": "alice", "tenant": "bob"}})
    with pytest.raises(TenantMismatchError):
        tenant_of({"configurable": {"tenant": "bob"}})


def test_bearer_tokens_map_to_tenants() -> None:
    table = TokenTable({"alice-token-0001": "alice", "bob-token-000002": "bob"})
    assert table.tenant("Bearer alice-token-0001") == "alice"
    assert table.tenant("bearer  bob-token-000002 ") == "bob"
    for header in (
        None,
        "",
        "alice-token-0001",
        "Basic alice-token-0001",
        "Bearer ",
        "Bearer alice-token-0002",
    ):
        with pytest.raises(Auth.exceptions.HTTPException) as refused:
            table.tenant(header)
        assert refused.value.status_code == 401


def test_bad_server_settings_name_the_variable_and_never_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODI2_SERVER_TOKENS", '{"secret-but-short": "al\\u0001ice"}')
    with pytest.raises(SettingsError, match="CODI2_SERVER_TOKENS") as bad:
        load_server_settings()
    assert "secret-but-short" not in str(bad.value)
    monkeypatch.setenv("CODI2_SERVER_TOKENS", '{"short": "alice"}')
    with pytest.raises(SettingsError, match="at least 8 characters"):
        load_server_settings()
    monkeypatch.setenv("CODI2_SERVER_TOKENS", "not json")
    with pytest.raises(SettingsError, match="CODI2_SERVER_TOKENS"):
        load_server_settings()
    monkeypatch.setenv("CODI2_SERVER_TOKENS", '{"long-enough-token": "alice"}')
    monkeypatch.setenv("CODI2_SERVER_DIFFUSION_STEPS", "0")
    with pytest.raises(SettingsError, match="CODI2_SERVER_DIFFUSION_STEPS"):
        load_server_settings()


def test_the_model_comes_from_codi2_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CODI2_MODEL", raising=False)
    assert load_settings().model == "tiny"
    monkeypatch.setenv("CODI2_MODEL", "/models/codi2-paper")
    assert load_settings().model == "/models/codi2-paper"
    monkeypatch.setenv("CODI2_MODEL", "  ")
    with pytest.raises(SettingsError, match="CODI2_MODEL"):
        load_settings()


def test_the_artifact_route_serves_a_tenant_its_own_media_only(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    pixels = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    picture = store.for_tenant("alice").put(Media.from_image(Image.fromarray(pixels)))
    sound = store.for_tenant("alice").put(Media.from_audio(np.zeros(1600, np.float32), 16000))

    ok = artifact_response(store, "alice", picture.id)
    assert ok.status_code == 200 and ok.media_type == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(ok.body))), pixels)
    assert ok.headers["etag"] == f'"{picture.id}"'
    assert artifact_response(store, "alice", sound.id).media_type == "audio/wav"

    theirs, unknown = artifact_response(store, "bob", picture.id), artifact_response(store, "bob", "f" * 64)
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.body.replace(picture.id.encode(), b"ID") == unknown.body.replace(b"f" * 64, b"ID")
    assert artifact_response(store, "alice", "../etc/passwd").status_code == 400

    path = store.path(picture)
    path.write_bytes(path.read_bytes()[:-1] + b"\0")  # damaged on disk: never served
    damaged = artifact_response(store, "alice", picture.id)
    assert damaged.status_code == 500 and hashlib.sha256(path.read_bytes()).hexdigest() != picture.id


def test_a_graph_for_the_server_has_no_persistence_of_its_own(tiny_model: object, tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    graph = build_session_graph(tiny_model, None, store, server_persistence=True)  # type: ignore[arg-type]
    assert graph.checkpointer is None and graph.store is None
    with pytest.raises(ValueError, match="server provides"):
        build_session_graph(tiny_model, None, store, server_persistence=True, checkpointer=tmp_path / "c.db")  # type: ignore[arg-type]


@pytest.fixture
def fresh_parts(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("CODI2_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("CODI2_SERVER_ROOT", str(tmp_path / "server"))
    monkeypatch.setenv("CODI2_SERVER_MEMORY", "false")
    monkeypatch.setattr(server_graph, "_parts", None)
    yield
    parts = server_graph.loaded_parts()
    if parts is not None:
        parts.close()


def test_the_factory_compiles_one_graph_per_tenant_over_shared_parts(
    fresh_parts: None, tmp_path: Path
) -> None:
    def graph_of(user: str, **configurable: str) -> object:
        config = {"configurable": {"langgraph_auth_user_id": user, **configurable}}
        return asyncio.run(make_graph(config))  # type: ignore[arg-type]

    alice, bob = graph_of("alice"), graph_of("bob")
    assert graph_of("alice") is alice and bob is not alice
    assert alice.checkpointer is None and alice.store is None  # type: ignore[attr-defined]
    parts = server_graph.loaded_parts()
    assert parts is not None and parts.artifacts.root == (tmp_path / "server" / "artifacts").resolve()
    assert parts.memory is None  # CODI2_SERVER_MEMORY=false
    with pytest.raises(TenantMismatchError):
        graph_of("bob", tenant="alice")
    assert alice.name == "codi2"  # type: ignore[attr-defined]


def test_server_copies_of_a_graph_keep_its_serializer_allowlist() -> None:
    """The server attaches its checkpointer with graph.copy(); LangGraph's copy drops the allowlist
    the graph compiled (under LANGGRAPH_STRICT_MSGPACK), which would block our state types."""
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from typing_extensions import TypedDict

    class State(TypedDict):
        turn: int

    builder = StateGraph(State)
    builder.add_node("step", lambda state: {"turn": state["turn"] + 1})
    builder.add_edge(START, "step")
    builder.add_edge("step", END)
    compiled = builder.compile()
    compiled._serde_allowlist = {tuple(t) for t in allowlist()}
    assert compiled.copy()._serde_allowlist is None, "LangGraph keeps it now: drop _keeping_serde_allowlist"

    kept = server_graph._keeping_serde_allowlist(compiled)
    served = kept.copy(update={"checkpointer": InMemorySaver()})
    assert served._serde_allowlist == {tuple(t) for t in allowlist()}
    config = {"configurable": {"thread_id": "t"}}
    assert served.invoke({"turn": 1}, config) == {"turn": 2}  # still the same graph


def test_a_model_that_cannot_load_fails_the_run_and_is_retried(fresh_parts: None, tmp_path: Path) -> None:
    from codi2_agent.model import WeightsNotFoundError

    missing = tmp_path / "no-such-model"
    config = {"configurable": {"langgraph_auth_user_id": "alice"}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CODI2_MODEL", str(missing))
        with pytest.raises(WeightsNotFoundError, match="no-such-model"):
            asyncio.run(make_graph(config))  # type: ignore[arg-type]
    assert server_graph.loaded_parts() is None  # nothing half-open is kept: the next run loads again
    assert asyncio.run(make_graph(config)).checkpointer is None  # type: ignore[arg-type]
