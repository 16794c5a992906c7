"""The Agent Server's settings, read from ``CODI2_SERVER_*`` environment variables.

- `CODI2_SERVER_ROOT` (``codi2-server``, relative to the server's working folder): where the
  artifacts (``ROOT/artifacts``) and the exemplar memory (``ROOT/memory``) live. Checkpoints and the
  thread log live in the server's own persistence.
- `CODI2_SERVER_TOKENS` (``{}``): the bearer tokens the built-in auth accepts, as a JSON object
  ``{"token": "tenant", ...}``. Empty: every request is refused (401).
- `CODI2_SERVER_DIFFUSION_STEPS` (unset: the model's default): diffusion steps per generated medium.
- `CODI2_SERVER_MEMORY` (true): keep the exemplar memory (false: references resolve within a thread).
- `CODI2_SERVER_PRELOAD` (true): start loading the model when the server starts, not on the first run.

The model itself is `CODI2_MODEL` (`codi2_agent.settings`). A bad value raises `SettingsError`
naming the variable.

Example:
    >>> ServerSettings(tokens={"alice-s3cret": "alice"}).tokens
    {'alice-s3cret': 'alice'}
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as UnparsableSettingError

from codi2_agent.artifacts import check_name
from codi2_agent.settings import SettingsError

__all__ = ["SERVER_ENV_PREFIX", "ServerSettings", "load_server_settings"]

SERVER_ENV_PREFIX = "CODI2_SERVER_"


class ServerSettings(BaseSettings):
    """Where the server keeps media and memory, whom it lets in, and how it generates."""

    model_config = SettingsConfigDict(env_prefix=SERVER_ENV_PREFIX, extra="ignore")

    root: Path = Path("codi2-server")
    tokens: dict[str, str] = Field(default_factory=dict)
    diffusion_steps: int | None = Field(default=None, ge=1, le=1000)
    memory: bool = True
    preload: bool = True

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: dict[str, str]) -> dict[str, str]:
        for token, tenant in value.items():
            if len(token) < 8:
                raise ValueError("every token must be at least 8 characters long")
            check_name(tenant, "tenant")
        return value


def load_server_settings() -> ServerSettings:
    """Read the environment; a bad value raises `SettingsError` naming the variable (never the token)."""
    try:
        return ServerSettings()
    except UnparsableSettingError as e:  # a complex value (the token table) that is not JSON
        named = re.search(r'field "(\w+)"', str(e))
        name = f"{SERVER_ENV_PREFIX}{named.group(1).upper()}" if named else f"a {SERVER_ENV_PREFIX}* variable"
        raise SettingsError(
            f"invalid Agent Server setting: environment variable {name} is not valid JSON"
        ) from None
    except ValidationError as e:
        problems = []
        for error in e.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"environment variable {SERVER_ENV_PREFIX}{field.upper()}: {message}")
        raise SettingsError("invalid Agent Server setting: " + "; ".join(problems)) from None
