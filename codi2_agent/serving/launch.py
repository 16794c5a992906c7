"""Starting and stopping the model server on a local Ray instance: what `codi2-agent serve` runs.

A config file is Ray Serve's own format (`ray.serve.schema.ServeDeploySchema`: ``http_options``,
``applications`` with ``import_path``, ``args`` and ``deployments``), deployed the way ``serve run
config.yaml`` deploys it, so the same file also goes to a cluster with ``serve deploy``. Without a
file, `default_config` describes one CPU replica of the shipped tiny model on 127.0.0.1:8000.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

__all__ = [
    "APP_IMPORT_PATH",
    "ServeConfigError",
    "ServeStartError",
    "default_config",
    "load_config",
    "model_urls",
    "serve_until_signalled",
    "server_url",
    "start_server",
    "stop_server",
    "wait_ready",
]

logger = logging.getLogger(__name__)
APP_IMPORT_PATH = "codi2_agent.serving.app:app_builder"
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8000


class ServeConfigError(ValueError):
    """A serve config file that cannot be read or is not a valid Ray Serve config."""


class ServeStartError(RuntimeError):
    """The server did not come up: an application failed to deploy, or it was not ready in time."""


def default_config(
    model: str = "tiny", *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> ServeDeploySchema:
    """One application, one replica on one CPU, batches of up to 8 (as ``serve_config.yaml``)."""
    from ray.serve.schema import ServeDeploySchema

    from codi2_agent.serving.routing import DEFAULT_IDLE_S, ROUTER_CLASS
    from codi2_agent.serving.service import BatchSettings

    return ServeDeploySchema.model_validate(
        {
            "http_options": {"host": host, "port": port},
            "applications": [
                {
                    "name": "codi2",
                    "route_prefix": "/",
                    "import_path": APP_IMPORT_PATH,
                    "args": {"model": model, "artifacts": "codi2-serve/artifacts"},
                    "deployments": [
                        {
                            "name": "CoDi2Server",
                            "num_replicas": 1,
                            "max_ongoing_requests": 64,
                            "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
                            "request_router_config": {
                                "request_router_class": ROUTER_CLASS,
                                "request_router_kwargs": {"idle_s": DEFAULT_IDLE_S},
                            },
                            "user_config": BatchSettings().model_dump(),
                        }
                    ],
                }
            ],
        }
    )


def load_config(path: str | Path) -> ServeDeploySchema:
    """Read and validate a Ray Serve config file; problems raise `ServeConfigError` naming the file."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ServeConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ServeConfigError(f"{path}: not YAML ({e})") from None
    try:
        return ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        raise ServeConfigError(f"{path}: not a Ray Serve config: {_problems(e)}") from None


def with_overrides(
    config: ServeDeploySchema,
    *,
    host: str | None = None,
    port: int | None = None,
    **args: Any,
) -> ServeDeploySchema:
    """`config` with the HTTP address and our applications' args changed (None leaves a value), and
    relative paths in those args made absolute (replicas need not share this process's folder).
    Raises `ServeConfigError` when an application's args would not load (`check_server_args`)."""
    data = config.model_dump(exclude_unset=True)
    http = data.setdefault("http_options", {})
    http.update({k: v for k, v in {"host": host, "port": port}.items() if v is not None})
    for app in data.get("applications", []):
        if app.get("import_path") != APP_IMPORT_PATH:
            continue
        app_args = app.setdefault("args", {})
        app_args.update({k: v for k, v in args.items() if v is not None})
        check_server_args(app.get("name", "?"), app_args)
        if "artifacts" in app_args:
            app_args["artifacts"] = str(Path(app_args["artifacts"]).expanduser().resolve())
        model = app_args.get("model")
        if isinstance(model, str) and model != "tiny" and Path(model).expanduser().exists():
            app_args["model"] = str(Path(model).expanduser().resolve())
    return type(config).model_validate(data)


def check_server_args(app: str, args: dict[str, Any]) -> None:
    """Validate an application's ``args`` as its replicas will (`ServerSettings`), here and now: a
    bad ``dtype`` or ``device`` is then one line naming it, before Ray starts, not a deploy failure
    in a replica's log minutes later."""
    from pydantic import ValidationError

    from codi2_agent.serving.service import ServerSettings

    try:
        ServerSettings.model_validate(args)
    except ValidationError as e:
        raise ServeConfigError(f"application {app!r}: bad args: {_problems(e)}") from None


def _problems(error: Any) -> str:
    """A pydantic ValidationError in one line: ``field.path: message; ...``."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())


def server_url(config: ServeDeploySchema) -> str:
    http = config.http_options
    host = "127.0.0.1" if http.host in ("0.0.0.0", "::", "") else http.host
    return f"http://{host}:{http.port}"


def model_urls(config: ServeDeploySchema) -> dict[str, str]:
    """Application name -> the url a `RemoteBackend` takes, for each model server of `config`
    (the server's url plus the application's ``route_prefix``)."""
    base = server_url(config)
    return {
        app.name: base + (app.route_prefix or "").rstrip("/")
        for app in config.applications
        if app.import_path == APP_IMPORT_PATH
    }


# Serve's controller gives a starting HTTP proxy 5 s to answer its ready check, then kills it, and the
# start fails ("ProxyActor ... killed by ray.kill ... never ran"). On a busy CPU a proxy can take longer
# than that to start (seen on a 2-core machine running two trainings beside the test suite). The
# controller reads these at start-up from the environment the local cluster inherits; a value the user
# set is kept.
PROXY_START_ENVIRONMENT = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
}


def patient_proxy_environment() -> dict[str, str]:
    """Set `PROXY_START_ENVIRONMENT` where the environment does not already say otherwise (before the
    local cluster starts); returns the values now in force."""
    for name, value in PROXY_START_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    return {name: os.environ[name] for name in PROXY_START_ENVIRONMENT}


def start_server(
    config: ServeDeploySchema, *, num_cpus: int | None = None, timeout: float = 300.0
) -> dict[str, str]:
    """Start Ray (locally, unless this process is already connected), Serve's proxy on the config's
    host and port, and every application of `config`; wait until they run and answer ``/ready``.

    Returns `model_urls`. Raises `ServeStartError` with Ray's message if an application fails to
    deploy or is not ready within `timeout` seconds.
    """
    import ray
    from ray.serve._private import api as serve_api  # what `serve run config.yaml` calls
    from ray.serve.config import gRPCOptions

    _check_port_free(config.http_options.host, config.http_options.port)
    if not ray.is_initialized():
        patient_proxy_environment()
        ray.init(num_cpus=num_cpus, include_dashboard=False, namespace="serve")
    client = serve_api.serve_start(
        http_options=config.http_options.model_dump(),
        proxy_location=config.proxy_location,
        grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
    )
    client.deploy_apps(config, _blocking=False)
    deadline = time.monotonic() + timeout
    _wait_running([app.name for app in config.applications], deadline)
    urls = model_urls(config)
    wait_ready([url + "/ready" for url in urls.values()], deadline)
    for name, url in urls.items():
        logger.info("serving %s at %s", name, url)
    return urls


def stop_server() -> None:
    """Shut Serve down (its proxy frees the port; replicas finish what they hold), then Ray."""
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def serve_until_signalled(
    config: ServeDeploySchema,
    *,
    num_cpus: int | None = None,
    timeout: float = 300.0,
    on_ready: Callable[[dict[str, str]], None] | None = None,
) -> None:
    """Start the server, block until SIGTERM or SIGINT, then stop it gracefully. `on_ready` gets
    `model_urls` once every application answers."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        logger.info("signal %s: stopping the server", signal.Signals(signum).name)
        stop.set()

    signals = (signal.SIGTERM, signal.SIGINT)
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        urls = start_server(config, num_cpus=num_cpus, timeout=timeout)
        for sig in signals:  # ray.init may have installed its own handlers
            signal.signal(sig, request_stop)
        if on_ready is not None:
            on_ready(urls)
        while not stop.wait(0.5):
            pass
    finally:
        stop_server()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            raise ServeStartError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def _wait_running(names: list[str], deadline: float) -> None:
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    while True:
        apps = serve.status().applications
        failed = [
            (n, apps[n].message)
            for n in names
            if n in apps and apps[n].status in (ApplicationStatus.DEPLOY_FAILED, ApplicationStatus.UNHEALTHY)
        ]
        if failed:
            raise ServeStartError("; ".join(f"application {n!r} failed: {m}" for n, m in failed))
        if all(n in apps and apps[n].status == ApplicationStatus.RUNNING for n in names):
            return
        if time.monotonic() > deadline:
            states = {n: str(apps[n].status.value) if n in apps else "absent" for n in names}
            raise ServeStartError(f"applications not running in time: {states}")
        time.sleep(0.5)


def wait_ready(
    urls: Iterable[str],
    deadline: float,
    *,
    alive: Callable[[], None] | None = None,
    interval_s: float = 0.25,
) -> None:
    """Poll every URL (a server's ``/ready``) until each has answered 200 once, or `deadline`
    (`time.monotonic()`) passes: then ServeStartError names the URLs still silent and the last
    error each gave. `alive` is called every round before polling; it raises to stop the wait at
    once (e.g. when the server process it watches has exited). Meant for a server the caller has
    just started (its own proxy, on the config's host, loopback by default): it reaches nothing else."""
    last = {url: "no answer" for url in urls}
    while True:
        if alive is not None:
            alive()
        for url in sorted(last):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        del last[url]
            except (urllib.error.URLError, OSError) as e:
                last[url] = str(e)
        if not last:
            return
        if time.monotonic() >= deadline:
            silent = "; ".join(f"{url} ({error})" for url, error in sorted(last.items()))
            raise ServeStartError(f"not ready in time: {silent}")
        time.sleep(interval_s)
