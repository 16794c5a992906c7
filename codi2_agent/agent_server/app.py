"""The Agent Server's extra HTTP routes (langgraph.json ``http.app``): media for authorised callers.

Graph state holds ``artifact://<id>`` references, never bytes, so a remote client fetches a produced
picture or sound here: ``GET /artifacts/{id}`` returns its bytes with their content type
(``image/png``, ``audio/wav``, ``text/plain``). The server runs its auth on this route
(``http.enable_custom_route_auth``) and the caller is a tenant: it reads only media it holds (that
its own turns stored or made, or that were shared with it), and another tenant's id is a 404 exactly
like an unknown one, so ids are no oracle. Bytes are checked against their id (a damaged file is a
500, never served). Content-addressed bytes never change, so responses are cacheable (private).

The app's lifespan starts loading the model in the background when the server starts
(`CODI2_SERVER_PRELOAD`), so the first run does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .graph import loaded_parts, server_parts
from .settings import load_server_settings

if TYPE_CHECKING:
    from codi2_agent.artifacts import ArtifactStore

__all__ = ["app", "artifact_response"]

logger = logging.getLogger(__name__)

_CONTENT_TYPES = {".png": "image/png", ".wav": "audio/wav", ".txt": "text/plain; charset=utf-8"}


@functools.cache
def _artifacts() -> ArtifactStore:
    """The server's artifact store (the same folder the graph writes; opening it loads no model)."""
    from codi2_agent.artifacts import ArtifactStore

    return ArtifactStore(load_server_settings().root.expanduser().resolve() / "artifacts")


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)


def artifact_response(store: ArtifactStore, tenant: str, artifact_id: str) -> Response:
    """The HTTP response for `tenant` asking for `artifact_id` in `store` (blocking file IO)."""
    from codi2_agent.artifacts import ArtifactNotFoundError, InvalidArtifactIdError

    try:
        path = store.for_tenant(tenant).path(artifact_id)
    except InvalidArtifactIdError:
        return _error(400, "an artifact id is 64 lowercase hex digits (the part after artifact://)")
    except ArtifactNotFoundError:
        return _error(404, f"no artifact {artifact_id}")  # unknown and not-yours read the same
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != artifact_id:
        logger.error("artifact %s at %s does not match its id (changed or damaged)", artifact_id, path)
        return _error(500, f"artifact {artifact_id} is damaged on the server")
    return Response(
        data,
        media_type=_CONTENT_TYPES.get(path.suffix, "application/octet-stream"),
        headers={"ETag": f'"{artifact_id}"', "Cache-Control": "private, max-age=31536000, immutable"},
    )


def get_artifact(request: Request) -> Response:
    """GET /artifacts/{artifact_id} (a sync endpoint: Starlette runs it in a worker thread)."""
    user = request.scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return _error(401, "authentication required")  # fail closed if the route ever runs without auth
    return artifact_response(_artifacts(), str(user.identity), request.path_params["artifact_id"])


def _report_preload(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # the first run retries the load and reports the same error to its client
        logger.error("loading the model in the background failed", exc_info=task.exception())


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    loading = None
    if load_server_settings().preload:
        loading = asyncio.create_task(asyncio.to_thread(server_parts))
        loading.add_done_callback(_report_preload)
    try:
        yield
    finally:
        if loading is not None and not loading.done():
            loading.cancel()  # the thread itself finishes on its own; nothing waits for it
        parts = loaded_parts()
        if parts is not None:
            parts.close()


app = Starlette(routes=[Route("/artifacts/{artifact_id}", get_artifact, methods=["GET"])], lifespan=lifespan)
