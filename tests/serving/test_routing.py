"""The session-affinity routing policy (`SessionHomes`) and the Ray Serve router around it, without a
server; test_served.py checks it on two real replicas."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest

from codi2_agent.backends import GenerateRequest, PromptTurn
from codi2_agent.serving.routing import SessionAffinityRouter, SessionHomes
from codi2_agent.serving.wire import SESSION_PATTERN


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_new_sessions_go_to_the_least_homed_replica_and_stay() -> None:
    homes: SessionHomes[str] = SessionHomes(clock=Clock())
    replicas = ["a", "b", "c"]
    first = {f"s{i}": homes.home(f"s{i}", replicas) for i in range(9)}
    assert Counter(first.values()) == {"a": 3, "b": 3, "c": 3}
    for _ in range(3):  # the same session, the same replica, however often it asks
        assert {s: homes.home(s, replicas) for s in first} == first
    assert [homes.live(r) for r in replicas] == [3, 3, 3] and len(homes) == 9


def test_idle_sessions_lose_their_home_and_stop_counting() -> None:
    clock = Clock()
    homes: SessionHomes[str] = SessionHomes(idle_s=30, clock=clock)
    for i in range(4):
        homes.home(f"old{i}", ["a", "b"])
    clock.now = 20.0
    kept = homes.home("old0", ["a", "b"])  # seen again: its 30 s start over
    clock.now = 45.0  # old1..old3 idle for 45 s, old0 for 25 s
    homes.home("new", ["a", "b"])
    assert len(homes) == 2 and homes.live(kept) >= 1
    assert homes.live("a") + homes.live("b") == 2
    # the new session went where fewer live sessions are: not next to old0
    assert homes.home("new", ["a", "b"]) != kept


def test_made_up_session_ids_cannot_grow_the_table() -> None:
    homes: SessionHomes[str] = SessionHomes(max_sessions=100, clock=Clock())
    for i in range(5_000):  # a client inventing a session per request
        homes.home(f"attack-{i}", ["a", "b"])
    assert len(homes) == 100
    assert homes.live("a") + homes.live("b") == 100 and abs(homes.live("a") - homes.live("b")) <= 1


def test_a_gone_replica_gives_its_sessions_new_homes() -> None:
    homes: SessionHomes[str] = SessionHomes(clock=Clock())
    placed = {f"s{i}": homes.home(f"s{i}", ["a", "b"]) for i in range(4)}
    on_b = [s for s, r in placed.items() if r == "b"]
    homes.keep_only({"a", "c"})  # b went away, c came
    assert homes.live("b") == 0 and homes.live("a") == 2
    assert {homes.home(s, ["a", "c"]) for s in on_b} == {"c"}  # the least homed replica now
    assert homes.home(on_b[0], ["a"]) == "a"  # a home missing from this call's candidates is replaced


def test_bad_settings_and_no_replicas_are_refused() -> None:
    with pytest.raises(ValueError, match="idle_s"):
        SessionHomes(idle_s=0)
    with pytest.raises(ValueError, match="max_sessions"):
        SessionHomes(max_sessions=0)
    with pytest.raises(ValueError, match="no replica"):
        SessionHomes().home("s", [])


def test_a_session_key_is_header_safe_and_bounded() -> None:
    prompt = (PromptTurn(role="user", parts=("hi",)),)
    for good in ["a1B2-c3_d.e:f", "k" * 128]:
        assert GenerateRequest(prompt=prompt, session=good).session == good
        assert SESSION_PATTERN.fullmatch(good)  # the server's header check takes what a request may carry
    for bad in ["", "a b", "x\r\nInjected: 1", "ok\n", "é", "k" * 129]:
        with pytest.raises(ValueError, match="session"):
            GenerateRequest(prompt=prompt, session=bad)
        assert SESSION_PATTERN.fullmatch(bad) is None


# --- the Ray Serve router: ranks for Ray's routing loop ----------------------------------------------
def _router(**kwargs: object) -> SessionAffinityRouter:
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    router = SessionAffinityRouter(
        deployment_id=DeploymentID(name="CoDi2Server", app_name="test"),
        handle_source=DeploymentHandleSource.UNKNOWN,
    )
    router.initialize_state(**kwargs)
    return router


def _pending(session: str) -> SimpleNamespace:
    return SimpleNamespace(
        metadata=SimpleNamespace(session_id=session), routing_context=SimpleNamespace(should_backoff=False)
    )


def test_the_router_ranks_the_home_first_then_the_others() -> None:
    router = _router(idle_s=60)
    replicas = [SimpleNamespace(replica_id=f"r{i}") for i in range(3)]

    def ranks(session: str) -> list[list[str]]:
        pending = _pending(session)
        chosen = asyncio.run(router.choose_replicas(replicas, pending))
        assert pending.routing_context.should_backoff  # all refusing: wait, do not spin
        return [[r.replica_id for r in rank] for rank in chosen]

    first = ranks("alice")
    assert len(first) == 2 and len(first[0]) == 1 and sorted(first[0] + first[1]) == ["r0", "r1", "r2"]
    assert ranks("alice") == first  # sticky
    assert ranks("bob")[0] != first[0]  # the next session goes to a less homed replica
    # no session: two replicas at random, the less queued wins (Ray's default)
    (pair,) = asyncio.run(router.choose_replicas(replicas, _pending("")))
    assert len(pair) == 2 and len({r.replica_id for r in pair}) == 2
    assert asyncio.run(router.choose_replicas([], _pending("alice"))) == []


def test_the_router_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="idle_s and max_sessions"):
        _router(idle_seconds=5)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0f3a9c", "0f3a9c"),
        ("tenant.a:thread-1_x", "tenant.a:thread-1_x"),
        ("", None),  # empty
        ("a b", None),  # a space
        ("../../etc", None),  # slashes
        ("x" * 129, None),  # too long
        (None, None),  # absent
    ],
)
def test_the_server_takes_a_well_formed_session_header_only(header: str | None, expected: str | None) -> None:
    # The header is a client's word: a malformed one is no session (for batching), never an error.
    from starlette.requests import Request

    from codi2_agent.serving.deployment import _session
    from codi2_agent.serving.wire import SESSION_HEADER

    headers = [] if header is None else [(SESSION_HEADER.encode(), header.encode())]
    request = Request({"type": "http", "method": "POST", "path": "/v1/generate", "headers": headers})
    assert _session(request) == expected
