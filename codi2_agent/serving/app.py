"""The Ray Serve application: what a config file's ``import_path`` names.

``codi2_agent.serving.app:app_builder`` is an application builder: Ray Serve calls it with the
application's ``args:`` (`ServerSettings`), and the config's ``deployments:`` entry for
``CoDi2Server`` (``num_replicas``, ``ray_actor_options``, ``user_config``, …) then overrides the
deployment's defaults — the same in ``codi2-agent serve``, ``serve run`` and ``serve deploy``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from codi2_agent.serving.deployment import CoDi2Server
from codi2_agent.serving.service import BatchSettings, ServerSettings

__all__ = ["app_builder"]


def app_builder(args: dict[str, Any]) -> Application:
    """The model server application for `args` (a bad argument raises pydantic's ValidationError,
    which Ray Serve reports as the application's deploy failure)."""
    settings = ServerSettings.model_validate(args or {})
    batching = settings.model_dump(include=set(BatchSettings.model_fields))
    deployment: Any = CoDi2Server  # @serve.deployment made the class a Deployment
    return deployment.options(user_config=batching).bind(settings.model_dump())
