"""Helpers for tests that run `codi2-agent serve` (tests/serving): free ports, the config, the process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from codi2_agent.serving.launch import ServeStartError, wait_ready

STEPS = 2
START_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Server:
    url: str
    port: int
    artifacts: Path
    process: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def stop(self) -> int:
        """SIGTERM, then wait (bounded); SIGKILL only if it hangs. Returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)


PAIR_PREFIX = "/pair"  # the two-replica application (`start_server(pair=True)`)


def pair_application(folder: Path, model_dir: Path) -> dict:
    """The model on two replicas (half a CPU each) behind the session-affinity router."""
    return {
        "name": "pair",
        "route_prefix": PAIR_PREFIX,
        "import_path": "codi2_agent.serving.app:app_builder",
        "args": {
            "model": str(model_dir),
            "artifacts": str(folder / "pair-artifacts"),  # one store, shared by both replicas
            "num_inference_steps": STEPS,
            "threads": 1,
        },
        "deployments": [
            {
                "name": "CoDi2Server",
                "num_replicas": 2,
                "ray_actor_options": {"num_cpus": 0.5},
                "request_router_config": {
                    "request_router_class": "codi2_agent.serving.routing:SessionAffinityRouter",
                    "request_router_kwargs": {"idle_s": 600},
                },
            }
        ],
    }


def write_config(folder: Path, model_dir: Path, port: int, *, pair: bool = False) -> Path:
    config = {
        "http_options": {"host": "127.0.0.1", "port": port},
        "applications": [
            {
                "name": "codi2",
                "route_prefix": "/",
                "import_path": "codi2_agent.serving.app:app_builder",
                "args": {
                    "model": str(model_dir),
                    "artifacts": str(folder / "server-artifacts"),
                    "num_inference_steps": STEPS,
                    "threads": 1,
                },
                "deployments": [
                    {
                        "name": "CoDi2Server",
                        "num_replicas": 1,
                        "ray_actor_options": {"num_cpus": 1},
                        # long enough for requests sent together from test threads to meet in one batch
                        # (and for requests sent 0.1 s apart to count as arriving together)
                        "user_config": {
                            "max_batch_size": 8,
                            "batch_wait_timeout_s": 0.25,
                            "max_batch_wait_s": 2.0,
                        },
                    }
                ],
            }
        ],
    }
    if pair:
        config["applications"].append(pair_application(folder, model_dir))
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def start_server(folder: Path, model_dir: Path, *, pair: bool = False) -> Server:
    """`codi2-agent serve` on a free port of 127.0.0.1 (Ray in that process: 2 CPUs, no dashboard),
    returned once it answers /ready; raises RuntimeError with the log's tail if it does not.
    `pair`: also the two-replica application under `PAIR_PREFIX`."""
    port = free_port()
    config = write_config(folder, model_dir, port, pair=pair)
    log = folder / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ANONYMIZED_TELEMETRY": "False", "OMP_NUM_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "codi2_agent.cli", "serve", "--config", str(config), "--num-cpus", "2"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=folder,
        )
    served = Server(f"http://127.0.0.1:{port}", port, folder / "server-artifacts", process, log)
    ready = [served.url + "/ready", *([served.url + PAIR_PREFIX + "/ready"] if pair else [])]

    def alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{served.log_tail()}")

    try:
        wait_ready(ready, time.monotonic() + START_TIMEOUT_S, alive=alive, interval_s=0.5)
    except ServeStartError as e:
        served.stop()
        raise RuntimeError(
            f"the server was not ready in {START_TIMEOUT_S} s ({e}):\n{served.log_tail()}"
        ) from e
    return served
