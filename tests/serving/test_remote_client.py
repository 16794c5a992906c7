"""`RemoteBackend` without a server: bounded retries, configs and `as_backend`'s url case."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from served_model import free_port

from codi2_agent.backends import TransientBackendError, as_backend
from codi2_agent.serving import BackendUnavailableError, RemoteBackend, ServeConfigError, load_config
from codi2_agent.serving.launch import APP_IMPORT_PATH, default_config, with_overrides
from codi2_agent.serving.routing import ROUTER_CLASS
from codi2_agent.serving.service import BatchSettings, ServerSettings

EXAMPLE_CONFIG = Path(__file__).parents[2] / "codi2_agent" / "serving" / "serve_config.yaml"


def test_connection_refused_is_retried_a_bounded_number_of_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="codi2_agent.serving.client"),
        pytest.raises(BackendUnavailableError, match="after 3 attempt") as caught,
    ):
        RemoteBackend(url, artifacts=tmp_path, retries=2, backoff=0.05)
    elapsed = time.monotonic() - started
    assert isinstance(caught.value, TransientBackendError) and isinstance(caught.value, ConnectionError)
    assert url in str(caught.value)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert len(retries) == 2  # 3 attempts: 2 retries, waiting 0.05 then 0.1 s
    assert 0.15 <= elapsed < 10


def test_a_url_model_becomes_a_remote_backend(tmp_path: Path) -> None:
    from codi2_agent.artifacts import ArtifactStore

    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendUnavailableError):  # it was tried as a server, not as a folder
        as_backend(url, ArtifactStore(tmp_path))
    with pytest.raises(ValueError, match="http://"):
        RemoteBackend("127.0.0.1:8000")


def test_the_example_config_is_a_valid_serve_config() -> None:
    config = load_config(EXAMPLE_CONFIG)
    (app,) = config.applications
    assert app.import_path == APP_IMPORT_PATH
    ServerSettings.model_validate(app.args)  # our arguments, every one known
    (deployment,) = app.deployments
    assert deployment.name == "CoDi2Server" and deployment.num_replicas == 1
    # the shipped batching: what BatchSettings defaults to, and what `default_config` deploys
    shipped = default_config().applications[0].deployments[0].user_config
    assert deployment.user_config == BatchSettings().model_dump() == shipped
    assert config.http_options.port == default_config().http_options.port == 8000
    # sessions stay on one replica, in the file and in what `codi2-agent serve` deploys without one
    shipped_router = default_config().applications[0].deployments[0].request_router_config
    for router in (deployment.request_router_config, shipped_router):
        fields = router if isinstance(router, dict) else router.model_dump()
        assert fields["request_router_class"] == ROUTER_CLASS
        assert fields["request_router_kwargs"] == {"idle_s": 30}


def test_overrides_set_the_address_and_make_paths_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = with_overrides(load_config(EXAMPLE_CONFIG), port=9123, num_inference_steps=3)
    assert config.http_options.port == 9123 and config.http_options.host == "127.0.0.1"
    args = config.applications[0].args
    assert args["artifacts"] == str(tmp_path / "codi2-serve" / "artifacts")
    assert args["num_inference_steps"] == 3 and args["model"] == "tiny"
    placed = with_overrides(load_config(EXAMPLE_CONFIG), dtype="bf16", device="cpu").applications[0].args
    assert (placed["dtype"], placed["device"]) == ("bf16", "cpu")  # the replicas read "bf16" as bfloat16


def test_overrides_that_no_replica_could_load_are_refused_naming_the_arg() -> None:
    with pytest.raises(
        ServeConfigError, match=r"application 'codi2': bad args: dtype: .*unknown dtype 'fp8'"
    ):
        with_overrides(load_config(EXAMPLE_CONFIG), dtype="fp8")
    with pytest.raises(ServeConfigError, match=r"bad args: device: .*'gpu'"):
        with_overrides(load_config(EXAMPLE_CONFIG), device="gpu")


def test_a_bad_config_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications:\n  - import_path: 3\n    num_replicas: two\n", encoding="utf-8")
    with pytest.raises(ServeConfigError, match=r"serve\.yaml"):
        load_config(bad)
    with pytest.raises(ServeConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "codi2_agent.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def test_serve_refuses_a_bad_config_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "serve.yaml"
    bad.write_text("applications: 3\n", encoding="utf-8")
    proc = _serve("--config", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "serve.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_refuses_an_unknown_dtype_in_one_line_before_starting_ray(tmp_path: Path) -> None:
    proc = _serve("--dtype", "fp8", "--artifacts", str(tmp_path / "artifacts"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "unknown dtype 'fp8'" in proc.stderr
    assert "Traceback" not in proc.stderr and "ray" not in proc.stdout.lower()


def test_serve_refuses_a_busy_port_before_starting_ray(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _serve("--port", str(port), "--artifacts", str(tmp_path / "artifacts"))
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
