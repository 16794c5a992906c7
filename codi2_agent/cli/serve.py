"""`codi2-agent serve`: the model over HTTP on Ray Serve, until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from codi2_agent.cli._common import STEPS_HELP, DeviceOption, DtypeOption, _fail, _say


def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            help="A Ray Serve config file (e.g. codi2_agent/serving/serve_config.yaml); "
            "default: one CPU replica of --model on 127.0.0.1:8000."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="'tiny' or a model folder (overrides the config's args.model).")
    ] = None,
    artifacts: Annotated[
        Path | None, typer.Option(help="The server's artifact folder (default: ./codi2-serve/artifacts).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help=STEPS_HELP, min=1)] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: the config's).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: the config's, else 8000).", min=1)] = None,
    num_cpus: Annotated[
        int | None, typer.Option(help="CPUs the local Ray instance may use (default: all).", min=1)
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the model to be ready.")] = 300.0,
) -> None:
    """Serve the model over HTTP on a local Ray instance (dynamic batching, SSE streaming).

    The same config file deploys to a Ray cluster with `serve deploy CONFIG` (see the README).
    Stops gracefully on SIGTERM or Ctrl-C.
    """
    from codi2_agent.serving.launch import (
        ServeConfigError,
        ServeStartError,
        default_config,
        load_config,
        serve_until_signalled,
        with_overrides,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        base = load_config(config) if config is not None else default_config()
        deploy = with_overrides(
            base,
            host=host,
            port=port,
            model=model,
            artifacts=str(artifacts) if artifacts is not None else None,
            num_inference_steps=steps,
            device=device,
            dtype=dtype,
        )
        serve_until_signalled(deploy, num_cpus=num_cpus, timeout=timeout, on_ready=_print_urls)
    except (ServeConfigError, ServeStartError) as e:
        raise _fail(str(e)) from None
    _say("stopped")


def _print_urls(urls: dict[str, str]) -> None:
    for name, url in urls.items():
        _say(f"serving {name} on {url}")
