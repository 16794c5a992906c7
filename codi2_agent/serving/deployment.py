"""The model as a Ray Serve deployment with a FastAPI ingress: the HTTP API of `codi2-agent serve`.

| route | does |
|---|---|
| ``GET /health`` | 200 while the replica lives |
| ``GET /ready`` | 200 once the model is loaded and warm (before that the proxy has no route: 404/503) |
| ``GET /v1/info`` | name, context limit, vocabulary, embedder name and size, weights' dtypes and devices |
| ``GET /v1/stats`` | how this replica batched its requests, and its id |
| ``POST /v1/generate`` | one request (JSON, media by value or by reference) → `GenerateResult` |
| ``POST /v1/generate/stream`` | the same as server-sent events: ``text`` pieces, then ``result`` |
| ``POST /v1/count_tokens`` | prompt tokens of a prompt |
| ``POST /v1/artifacts`` | upload one medium (its encoded bytes as the body) → its `MediaRef` |
| ``POST /v1/artifacts/missing`` | which of these ids the server lacks |
| ``GET /v1/artifacts/{id}`` | a medium's bytes |
| ``POST /v1/embed/media``, ``/v1/embed/text`` | memory embeddings (vectors as base64 float32) |

``?include=media,embeddings`` on either generate route attaches the outputs' bytes and memory
embeddings to the answer (``attachments``), so a client needs no call after it for those.
Requests to ``/v1/generate`` that arrive together are answered by one `LocalBackend.generate_batch`
call (``@serve.batch`` gathers them; `ModelBatcher` starts the model once they stop arriving); a bad
request is refused before it joins a batch. Errors are JSON
(`codi2_agent.serving.wire.error_body`): 400 bad input, 404 unknown artifact, 413 too large,
500 anything else.
"""

# No `from __future__ import annotations`: FastAPI reads the handlers' annotations (Request) at runtime.
import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from ray import serve

from codi2_agent._media_errors import MediaTooLargeError
from codi2_agent.artifacts import ArtifactNotFoundError
from codi2_agent.backends import GenerateRequest, GenerateResult
from codi2_agent.serving.batching import Arrival, ModelBatcher
from codi2_agent.serving.service import BatchSettings, ModelService, Outcome, ServerSettings
from codi2_agent.serving.wire import (
    ARTIFACT_HEADER,
    SESSION_HEADER,
    SESSION_PATTERN,
    error_body,
    vectors_to_wire,
)

__all__ = ["DEPLOYMENT_NAME", "CoDi2Server", "api"]

logger = logging.getLogger(__name__)
DEPLOYMENT_NAME = "CoDi2Server"

api = FastAPI(title="codi2-agent model server")


def _status(error: Exception) -> int:
    if isinstance(error, ArtifactNotFoundError):
        return 404
    if isinstance(error, MediaTooLargeError):
        return 413
    return 400


# Bad input (our named errors are ValueErrors): a 4xx naming the problem. Registered per class, so
# Starlette answers them as handled; anything else is a 500 (logged with its traceback).
@api.exception_handler(ValueError)
@api.exception_handler(TypeError)
async def _bad_input(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse(error_body(error), status_code=_status(error))


@api.exception_handler(Exception)
async def _server_error(request: Request, error: Exception) -> JSONResponse:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse(error_body(error), status_code=500)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the request body is not JSON") from None


def _include(request: Request) -> list[str]:
    """``?include=media,embeddings``: what to attach to a generate answer."""
    raw = request.query_params.get("include", "")
    return [name.strip() for name in raw.split(",") if name.strip()]


def _session(request: Request) -> str | None:
    """The request's session header, if well formed: a hint for batching, so a bad one is ignored (the
    body's `GenerateRequest.session` is validated and refused with a named error like any field)."""
    value = request.headers.get(SESSION_HEADER)
    return value if value is not None and SESSION_PATTERN.fullmatch(value) else None


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class CoDi2Server:
    """One replica: the model loaded once, requests batched, media in the server's store."""

    def __init__(self, settings: dict[str, Any]) -> None:
        parsed = ServerSettings.model_validate(settings)
        self.service = ModelService(parsed)
        self.batcher: ModelBatcher[GenerateRequest, Outcome] = ModelBatcher(
            self._call_model, **BatchSettings().model_dump()
        )
        self.reconfigure(parsed.model_dump(include=set(BatchSettings.model_fields)))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Ray Serve's ``user_config``: batch size and waits, applied to a running replica."""
        batching = BatchSettings.model_validate(user_config or {})
        self.batcher.configure(**batching.model_dump())
        batched: Any = self._generate_batched  # @serve.batch's handle has the setters
        batched.set_max_batch_size(batching.max_batch_size)
        batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        logger.info(
            "batching: up to %d requests, until none arrived for %.3f s (at most %.3f s)",
            batching.max_batch_size,
            batching.batch_wait_timeout_s,
            batching.max_batch_wait_s,
        )

    def check_health(self) -> None:
        """Ray Serve's periodic health check: a replica whose model is gone is restarted."""
        if getattr(self, "service", None) is None:
            raise RuntimeError("the model is not loaded")

    # Ray Serve forms the next batch as soon as the last one is handed over, while the model still
    # runs it, and closes a batch a fixed time after its first request: so batches only gather
    # requests here (any number in flight), and `ModelBatcher` starts the model when it is free and
    # the requests stop arriving, on everything waiting, up to max_batch_size.
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=64)
    async def _generate_batched(self, items: list[tuple[Arrival, GenerateRequest]]) -> list[Outcome]:
        return await self.batcher.answer([a for a, _ in items], [r for _, r in items])

    async def _call_model(self, requests: list[GenerateRequest]) -> list[Outcome]:
        try:
            # The model call blocks: off the event loop, so health checks and uploads still answer.
            if len(requests) == 1:
                return [Outcome(result=await asyncio.to_thread(self.service.generate, requests[0]))]
            return await asyncio.to_thread(self.service.generate_many, requests)
        except Exception as e:  # a lone request's own error
            return [Outcome(error=e) for _ in requests]

    # --- liveness -----------------------------------------------------------------------------------
    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> dict[str, Any]:
        # Ray Serve routes to a replica only once __init__ (load and warm-up) has returned.
        return {"ready": True, "model": self.service.backend.name}

    @api.get("/v1/info")
    async def info(self) -> dict[str, Any]:
        return self.service.info()

    @api.get("/v1/stats")
    async def stats(self) -> dict[str, Any]:
        return {
            **self.service.stats.as_dict(),
            "gather_seconds": round(self.batcher.gather_seconds, 3),
            "replica": serve.get_replica_context().replica_id.unique_id,  # /v1/stats is this replica's
        }

    # --- generation ---------------------------------------------------------------------------------
    @api.post("/v1/generate")
    async def generate(self, request: Request) -> dict[str, Any]:
        # From now on a free model waits for this request (bounded), and for this session's next one.
        arrival = self.batcher.expect(_session(request))
        try:
            include = _include(request)
            parsed = await asyncio.to_thread(self.service.request, await _json(request))
            outcome: Outcome = await self._generate_batched((arrival, parsed))
        finally:
            self.batcher.discard(arrival)  # refused or cancelled before it joined a batch
        return await self._answer(outcome.unwrap(), include)

    async def _answer(self, result: GenerateResult, include: list[str]) -> dict[str, Any]:
        """The result as JSON, with ``attachments`` (output bytes, embeddings) when asked for."""
        answer = result.model_dump(mode="json")
        if include:
            answer["attachments"] = await asyncio.to_thread(self.service.attachments, result, include)
        return answer

    @api.post("/v1/generate/stream")
    async def generate_stream(self, request: Request) -> StreamingResponse:
        include = _include(request)
        parsed = await asyncio.to_thread(self.service.request, await _json(request))
        return StreamingResponse(self._events(parsed, include), media_type="text/event-stream")

    async def _events(self, request: GenerateRequest, include: list[str]) -> AsyncIterator[str]:
        """SSE events of one streamed answer. `LocalBackend.stream` holds the model from its first
        item to its last and must be iterated from one thread: a worker thread does that and hands
        each item over; a client that goes away stops it at the next piece."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def work() -> None:
            items = self.service.stream(request)
            try:
                for item in items:
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, ("item", item))
            except Exception as e:
                loop.call_soon_threadsafe(queue.put_nowait, ("error", e))
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
                loop.call_soon_threadsafe(queue.put_nowait, ("end", None))

        worker = threading.Thread(target=work, name="codi2-stream", daemon=True)
        worker.start()
        try:
            while True:
                kind, item = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    yield _sse("error", error_body(item))
                elif isinstance(item, GenerateResult):
                    yield _sse("result", await self._answer(item, include))
                else:
                    yield _sse("text", {"text": item})
        finally:
            stop.set()

    @api.post("/v1/count_tokens")
    async def count_tokens(self, request: Request) -> dict[str, int]:
        return {"tokens": await asyncio.to_thread(self.service.count_tokens, await _json(request))}

    # --- media --------------------------------------------------------------------------------------
    @api.post("/v1/artifacts")
    async def upload(self, request: Request) -> JSONResponse:
        size = int(request.headers.get("content-length") or 0)
        if size > self.service.store.limits.max_bytes:  # refused before the body is read
            raise MediaTooLargeError(
                f"upload is {size} bytes; the limit is {self.service.store.limits.max_bytes}"
            )
        data = await request.body()
        ref = await asyncio.to_thread(self.service.upload, data, request.headers.get("content-type"))
        return JSONResponse(ref.model_dump(mode="json"), headers={ARTIFACT_HEADER: ref.id})

    @api.post("/v1/artifacts/missing")
    async def missing(self, request: Request) -> dict[str, list[str]]:
        body = await _json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            raise ValueError("the request needs 'ids' (a list of artifact ids)")
        return {"missing": self.service.missing([str(i) for i in ids])}

    @api.get("/v1/artifacts/{artifact_id}")
    async def download(self, artifact_id: str) -> FileResponse:
        path, mime = self.service.artifact(artifact_id)
        return FileResponse(path, media_type=mime, headers={ARTIFACT_HEADER: artifact_id})

    @api.post("/v1/embed/media")
    async def embed_media(self, request: Request) -> dict[str, Any]:
        body = await _json(request)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list):
            raise ValueError("the request needs 'ids' (a list of artifact ids)")
        vectors = await asyncio.to_thread(self.service.embed_media, [str(i) for i in ids])
        return {"vectors": vectors_to_wire(vectors)}

    @api.post("/v1/embed/text")
    async def embed_text(self, request: Request) -> dict[str, Any]:
        body = await _json(request)
        texts = body.get("texts") if isinstance(body, dict) else None
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ValueError("the request needs 'texts' (a list of strings)")
        vectors = await asyncio.to_thread(self.service.embed_text, texts)
        return {"vectors": vectors_to_wire(vectors)}
