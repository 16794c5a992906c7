"""Start-up settings of the Serve launcher that hold without starting Ray."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from codi2_agent.serving.launch import (
    PROXY_START_ENVIRONMENT,
    ServeStartError,
    patient_proxy_environment,
    wait_ready,
)


def test_the_proxy_gets_a_patient_ready_check_unless_the_user_chose_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Serve's default (5 s) kills a proxy that a busy CPU starts slowly, and the whole start fails.
    for name in PROXY_START_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    assert patient_proxy_environment() == {
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
        "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    }
    monkeypatch.setenv("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "7.5")
    in_force = patient_proxy_environment()
    assert in_force["RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"] == "7.5"  # the user's value is kept
    assert in_force["RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S"] == "30"


def test_ray_reads_the_variables_these_names_set() -> None:
    # The names must be the ones Serve reads, or the setting does nothing.
    from ray.serve._private import constants

    source = Path(constants.__file__).read_text()
    for name in PROXY_START_ENVIRONMENT:
        assert f'"{name}"' in source


class _WarmingUp(BaseHTTPRequestHandler):
    """/ready answers 503 to its first `busy_answers` requests, then 200; /never always 503."""

    busy_answers = 2
    asked: ClassVar[dict[str, int]] = {}

    def do_GET(self) -> None:
        n = self.asked[self.path] = self.asked.get(self.path, 0) + 1
        ready = self.path == "/ready" and n > self.busy_answers
        self.send_response(200 if ready else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def warming_server() -> Iterator[str]:
    _WarmingUp.asked = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WarmingUp)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wait_ready_polls_until_every_url_has_answered_200(warming_server: str) -> None:
    wait_ready([warming_server + "/ready"], time.monotonic() + 30, interval_s=0.01)
    assert _WarmingUp.asked == {"/ready": 3}  # two 503s, then the 200; nothing after it


def test_wait_ready_names_the_url_that_stayed_silent(warming_server: str) -> None:
    with pytest.raises(ServeStartError) as caught:
        wait_ready(
            [warming_server + "/ready", warming_server + "/never"], time.monotonic() + 0.5, interval_s=0.01
        )
    message = str(caught.value)
    assert warming_server + "/never" in message and "503" in message
    assert warming_server + "/ready (" not in message  # the one that answered is not blamed
    assert _WarmingUp.asked["/ready"] == 3


def test_wait_ready_stops_at_once_when_the_watched_process_is_gone(warming_server: str) -> None:
    class Exited(RuntimeError):
        pass

    def alive() -> None:
        raise Exited("the server exited with 1")

    with pytest.raises(Exited):
        wait_ready([warming_server + "/never"], time.monotonic() + 60, alive=alive)
    assert _WarmingUp.asked == {}  # checked before the first poll, so the 60 s deadline never runs
