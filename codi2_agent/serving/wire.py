"""What travels over HTTP between `RemoteBackend` and the model server: JSON shapes shared by both.

- A prompt part is a string, a reference to an artifact the server holds (``{"artifact": id}`` or a
  `MediaRef` dump, which has an ``"id"``), or a medium by value (``{"type": "image", "base64": …,
  "mime_type": "image/png"}``, the LangChain content-block form).
- Vectors are float32 little-endian bytes in base64 with their shape, so embeddings cross exactly.
- Errors are ``{"error": {"type": "ArtifactNotFoundError", "message": "…"}}``; the client raises the
  named class again when it is one of ours (`ERROR_TYPES`).
"""

from __future__ import annotations

import base64
import re
from typing import Any

import numpy as np

from codi2_agent._media_errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaTooLargeError,
    SampleRateError,
    UnknownModalityError,
    UnsupportedFormatError,
)
from codi2_agent.artifacts import ArtifactNotFoundError, CorruptArtifactError, InvalidArtifactIdError
from codi2_agent.backends import SESSION_KEY_PATTERN

__all__ = [
    "ARTIFACT_HEADER",
    "ERROR_TYPES",
    "SESSION_HEADER",
    "SESSION_PATTERN",
    "error_body",
    "vectors_from_wire",
    "vectors_to_wire",
]

# The id the server gave an uploaded medium (also in the JSON body); lets a client check it cheaply.
ARTIFACT_HEADER = "X-CoDi2-Artifact-Id"
# A request's conversation (`GenerateRequest.session`): Ray Serve's session header
# (RAY_SERVE_SESSION_ID_HEADER_KEY), which `SessionAffinityRouter` routes by and the batcher waits on.
SESSION_HEADER = "x-session-id"
SESSION_PATTERN = re.compile(SESSION_KEY_PATTERN)


def _model_errors() -> dict[str, type[Exception]]:
    from codi2_agent.model.configuration_codi2 import ConfigError
    from codi2_agent.model.modeling_codi2 import PlaceholderMismatchError

    return {"ConfigError": ConfigError, "PlaceholderMismatchError": PlaceholderMismatchError}


# Errors raised again by name on the client: bad input the caller can act on. Anything else that is
# a 4xx becomes `RemoteRequestError` (a ValueError) carrying the server's message.
ERROR_TYPES: dict[str, type[Exception]] = {
    cls.__name__: cls
    for cls in (
        MediaError,
        UnsupportedFormatError,
        CorruptMediaError,
        EmptyMediaError,
        MediaTooLargeError,
        SampleRateError,
        UnknownModalityError,
        InvalidArtifactIdError,
        ArtifactNotFoundError,
        CorruptArtifactError,
    )
}


def error_type(name: str) -> type[Exception] | None:
    """The exception class a server error of type `name` is raised as on the client, if one of ours."""
    return ERROR_TYPES.get(name) or _model_errors().get(name)


def error_body(error: BaseException | str, message: str | None = None) -> dict[str, Any]:
    """The JSON body of an error response."""
    name = error if isinstance(error, str) else type(error).__name__
    return {"error": {"type": name, "message": message if message is not None else str(error)}}


def vectors_to_wire(vectors: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(vectors, dtype="<f4")
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode("ascii")}


def vectors_from_wire(data: dict[str, Any]) -> np.ndarray:
    shape = tuple(int(n) for n in data["shape"])
    array = np.frombuffer(base64.b64decode(data["float32"]), dtype="<f4")
    return array.reshape(shape).astype(np.float32)
