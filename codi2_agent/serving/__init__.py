"""Serving: the model on Ray Serve (`codi2-agent serve`) and `RemoteBackend`, its client.

- `RemoteBackend(url)` implements the `Backend` protocol against a running server, so `Session`,
  the session graph, `CoDi2Toolkit` and `ChatCoDi2` run unchanged (``model="http://host:8000"``).
  It needs httpx only.
- `app_builder` is the Ray Serve application (a config file's ``import_path``:
  ``codi2_agent.serving.app:app_builder``); `start_server` / `stop_server` /
  `serve_until_signalled` run it on a local Ray instance (the ``serve`` extra: ``ray[serve]``).

Names load lazily, so importing the client does not import Ray.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codi2_agent.serving.app import app_builder
    from codi2_agent.serving.client import (
        BackendTimeoutError,
        BackendUnavailableError,
        RemoteRequestError,
        RemoteServerError,
    )
    from codi2_agent.serving.launch import (
        ServeConfigError,
        ServeStartError,
        default_config,
        load_config,
        serve_until_signalled,
        start_server,
        stop_server,
    )
    from codi2_agent.serving.remote import RemoteBackend, RemoteEmbedder, is_server_url

__all__ = [
    "BackendTimeoutError",
    "BackendUnavailableError",
    "RemoteBackend",
    "RemoteEmbedder",
    "RemoteRequestError",
    "RemoteServerError",
    "ServeConfigError",
    "ServeStartError",
    "app_builder",
    "default_config",
    "is_server_url",
    "load_config",
    "serve_until_signalled",
    "start_server",
    "stop_server",
]

_LAZY = {
    "RemoteBackend": "codi2_agent.serving.remote",
    "RemoteEmbedder": "codi2_agent.serving.remote",
    "is_server_url": "codi2_agent.serving.remote",
    "BackendTimeoutError": "codi2_agent.serving.client",
    "BackendUnavailableError": "codi2_agent.serving.client",
    "RemoteRequestError": "codi2_agent.serving.client",
    "RemoteServerError": "codi2_agent.serving.client",
    "app_builder": "codi2_agent.serving.app",
    "ServeConfigError": "codi2_agent.serving.launch",
    "ServeStartError": "codi2_agent.serving.launch",
    "default_config": "codi2_agent.serving.launch",
    "load_config": "codi2_agent.serving.launch",
    "serve_until_signalled": "codi2_agent.serving.launch",
    "start_server": "codi2_agent.serving.launch",
    "stop_server": "codi2_agent.serving.launch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'codi2_agent.serving' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
