"""Start-up settings of the Serve launcher that hold without starting Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from codi2_agent.serving.launch import PROXY_START_ENVIRONMENT, patient_proxy_environment


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
