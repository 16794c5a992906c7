"""The model server's work, free of HTTP and Ray: one `LocalBackend` over the server's `ArtifactStore`.

`ModelService` turns wire requests (`codi2_agent.serving.wire`) into `GenerateRequest`s — storing
media sent by value, checking that media sent by reference are held — and answers them alone, in a
batch or as a stream. The Ray Serve deployment (`codi2_agent.serving.deployment`) is a thin HTTP
layer over it, so everything here also runs (and is tested) in a plain process.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from codi2_agent._media_errors import CorruptMediaError, MediaTooLargeError
from codi2_agent.artifacts import ArtifactNotFoundError, ArtifactStore
from codi2_agent.backends import _WORD_RE, GenerateRequest, GenerateResult, LocalBackend, PromptTurn
from codi2_agent.media import Media, MediaRef
from codi2_agent.serving.wire import vectors_to_wire
from codi2_agent.settings import check_device_name, check_dtype_name

__all__ = ["BadRequestError", "BatchSettings", "ModelService", "Outcome", "ServerSettings"]

logger = logging.getLogger(__name__)
TEXT_MIME = "text/plain"


class BadRequestError(ValueError):
    """A request the server cannot read: a malformed prompt part, an unknown field."""


class BatchSettings(BaseModel):
    """How requests are grouped into one model call (a deployment's ``user_config``, which Ray Serve
    applies to running replicas without restarting them; `codi2_agent.serving.batching`).

    Args:
        max_batch_size: the most requests in one model call.
        batch_wait_timeout_s: a free model starts once no request arrived for this long (a lone
            request waits this long). Sessions send their next turns some tens of ms apart after a
            shared answer (measured on 2 loaded cores: gaps up to ~30 ms), hence 0.05.
        max_batch_wait_s: the longest a free model waits for arriving requests.
    """

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(default=8, ge=1)
    batch_wait_timeout_s: float = Field(default=0.05, ge=0)
    max_batch_wait_s: float = Field(default=0.25, ge=0)


class ServerSettings(BatchSettings):
    """The application's arguments (``args:`` of an application in a Ray Serve config file).

    Args:
        model: ``"tiny"`` or a model folder (as `load_model` takes it), on the replica's machine.
        artifacts: the server's artifact store folder (absolute on a cluster: every replica of one
            deployment must see the same folder, e.g. a shared volume).
        num_inference_steps: diffusion steps for requests that do not say (None: the model's).
        device, dtype: placement, as `load_model` takes them (None: ``CODI2_*`` settings, then CPU).
        threads: torch CPU threads per replica (None: Ray's default, the replica's ``num_cpus``).
        max_batch_size, batch_wait_timeout_s, max_batch_wait_s: dynamic batching defaults
            (`BatchSettings`); the deployment's ``user_config`` overrides them.
        warm_up: run one short generate when a replica starts, so no request pays for lazy loading.
    """

    model: str = "tiny"
    artifacts: str = "codi2-serve/artifacts"
    num_inference_steps: int | None = Field(default=None, ge=1)
    device: str | None = None
    dtype: str | None = None
    threads: int | None = Field(default=None, ge=1)
    warm_up: bool = True

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, value: str | None) -> str | None:
        return None if value is None else check_dtype_name(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        # the name only: whether the replica's machine has that device is checked where it loads
        return None if value is None else check_device_name(value)


@dataclass
class Outcome:
    """One request's share of a batch: its result, or the error only it caused."""

    result: GenerateResult | None = None
    error: Exception | None = None

    def unwrap(self) -> GenerateResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@dataclass
class BatchStats:
    """How requests were grouped, for operators and the benchmark (``GET /v1/stats``)."""

    batches: int = 0
    requests: int = 0
    sizes: Counter[int] = field(default_factory=Counter)
    uploads: int = 0  # media received by value (uploads and inline parts)
    busy_seconds: float = 0.0  # wall time spent answering generate calls (streams not counted)

    def as_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "uploads": self.uploads,
            "busy_seconds": round(self.busy_seconds, 3),
            "largest_batch": max(self.sizes, default=0),
            "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())},
        }


class ModelService:
    """The served model: request parsing, media in and out, generation alone, batched or streamed."""

    def __init__(self, settings: ServerSettings) -> None:
        from codi2_agent.model import load_model

        if settings.threads is not None:
            import torch

            torch.set_num_threads(settings.threads)
        self.settings = settings
        t0 = time.perf_counter()
        model = load_model(settings.model, device=settings.device, dtype=settings.dtype)
        self.store = ArtifactStore(Path(settings.artifacts))
        self.backend = LocalBackend(model, self.store)
        self.stats = BatchStats()
        self._stats_lock = threading.Lock()
        if settings.warm_up:
            hello = PromptTurn(role="user", parts=("hello",))
            self.backend.generate(GenerateRequest(prompt=(hello,), output="text", max_new_tokens=2))
        self.load_seconds = time.perf_counter() - t0
        logger.info("model %s ready in %.1f s (store %s)", settings.model, self.load_seconds, self.store.root)

    # --- what the model is ------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from codi2_agent.model.placement import parameter_placement  # torch: loaded by now, not at import

        embedder = self.backend.embedder
        return {
            "name": self.backend.name,
            "context_limit": self.backend.context_limit,
            "vocabulary": self.backend.vocabulary.to_dict(),
            "embedder": {"name": embedder.name, "dim": embedder.dim},
            "load_seconds": round(self.load_seconds, 3),
            "parameters": parameter_placement(
                self.backend.model
            ),  # an operator sees dtype reached every part
        }

    def count_tokens(self, body: dict[str, Any]) -> int:
        # Counting reads only each medium's modality, so references need not be held here.
        turns = _field(body, "prompt", list)
        try:
            prompt = [PromptTurn.model_validate(turn) for turn in turns]
        except ValueError as e:
            raise BadRequestError(f"prompt: {e}") from None
        return self.backend.count_tokens(prompt)

    # --- media --------------------------------------------------------------------------------------
    def upload(self, data: bytes, content_type: str | None) -> MediaRef:
        """Store one medium sent as its encoded bytes (validated and re-encoded canonically)."""
        with self._stats_lock:
            self.stats.uploads += 1
        if len(data) > self.store.limits.max_bytes:
            raise MediaTooLargeError(
                f"upload is {len(data)} bytes; the limit is {self.store.limits.max_bytes}"
            )
        if (content_type or "").split(";")[0].strip() == TEXT_MIME:
            try:
                return self.store.put(Media.from_text(data.decode("utf-8")))
            except UnicodeDecodeError:
                raise CorruptMediaError("text upload is not UTF-8") from None
        return self.store.put_bytes(data)

    def missing(self, ids: Sequence[str]) -> list[str]:
        """Which of `ids` this server does not hold (a client uploads those, and only those)."""
        return [i for i in (ArtifactStore.parse_id(raw) for raw in ids) if i not in self.store]

    def artifact(self, artifact_id: str) -> tuple[Path, str]:
        """The file of a held artifact and its mime type."""
        ref = self.store.ref(artifact_id)
        return self.store.path(ref), ref.mime

    def attachments(self, result: GenerateResult, include: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What a client asked to get with an answer (``?include=media,embeddings``), per output id:
        the medium's bytes (base64) and its memory embedding — so a client needs no further call
        for either. Unknown names are refused."""
        unknown = sorted(set(include) - {"media", "embeddings"})
        if unknown:
            raise BadRequestError(f"include takes 'media' and 'embeddings', got {unknown}")
        out: dict[str, dict[str, Any]] = {ref.id: {} for ref in result.media}
        if "media" in include:
            for ref in result.media:
                out[ref.id]["base64"] = base64.b64encode(self.store.path(ref).read_bytes()).decode("ascii")
        if "embeddings" in include and result.media:
            # The features of media the model just made are cached: this costs no encoder pass.
            vectors = self.embed_media([ref.id for ref in result.media])
            for ref, vector in zip(result.media, vectors, strict=True):
                out[ref.id]["embedding"] = vectors_to_wire(vector[None, :])
        return out

    def embed_media(self, ids: Sequence[str]) -> Any:
        media = [self.store.get(self._held(raw)) for raw in ids]
        return self.backend.embedder.embed_media(media)

    def embed_text(self, texts: Sequence[str]) -> Any:
        return self.backend.embedder.embed_text(list(texts))

    def _held(self, raw: str) -> MediaRef:
        artifact_id = ArtifactStore.parse_id(raw)
        if artifact_id not in self.store:
            raise ArtifactNotFoundError(
                f"unknown artifact {artifact_id}: the server does not hold it (upload it first)"
            )
        return self.store.ref(artifact_id)

    # --- requests -----------------------------------------------------------------------------------
    def request(self, body: dict[str, Any]) -> GenerateRequest:
        """A wire request as a `GenerateRequest`: inline media stored, references checked, sampling
        arguments validated — so a bad request fails alone, before it can join a batch."""
        from codi2_agent.model.configuration_codi2 import check_sampling_arguments

        unknown = sorted(set(body) - set(GenerateRequest.model_fields))
        if unknown:
            raise BadRequestError(
                f"unknown request field(s) {unknown}; expected some of {sorted(GenerateRequest.model_fields)}"
            )
        turns = []
        for i, turn in enumerate(_field(body, "prompt", list)):
            if not isinstance(turn, dict):
                raise BadRequestError(f"prompt[{i}] must be an object with 'role' and 'parts'")
            parts = [
                self._part(part, f"prompt[{i}].parts[{j}]") for j, part in enumerate(turn.get("parts") or [])
            ]
            turns.append({"role": turn.get("role"), "parts": parts})
        fields = {**body, "prompt": turns}
        if fields.get("num_inference_steps") is None:
            fields["num_inference_steps"] = self.settings.num_inference_steps
        try:
            request = GenerateRequest.model_validate(fields)
        except ValueError as e:
            raise BadRequestError(str(e)) from None
        check_sampling_arguments(request.num_inference_steps, request.guidance_scale)
        return request

    def _part(self, part: Any, where: str) -> str | MediaRef:
        if isinstance(part, str):
            return part
        if not isinstance(part, dict):
            raise BadRequestError(f"{where}: a part is a string or an object, got {type(part).__name__}")
        if "artifact" in part or "id" in part:
            raw = part.get("artifact", part.get("id"))
            return self._held(str(raw))
        if "base64" in part:
            try:
                data = base64.b64decode(str(part["base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise CorruptMediaError(f"{where}: 'base64' is not valid base64") from None
            return self.upload(data, part.get("mime_type"))
        raise BadRequestError(
            f"{where}: expected a string, {{'artifact': id}} or {{'type', 'base64', 'mime_type'}}; "
            f"got keys {sorted(part)}"
        )

    def generate(self, request: GenerateRequest) -> GenerateResult:
        self._count(1)
        t0 = time.perf_counter()
        try:
            return self.backend.generate(request)
        finally:
            self._busy(t0)

    def generate_many(self, requests: Sequence[GenerateRequest]) -> list[Outcome]:
        """Answer requests in one model call; if that call fails, each alone, so an error stays with
        the request that caused it."""
        self._count(len(requests))
        t0 = time.perf_counter()
        try:
            return self._generate_many(requests)
        finally:
            self._busy(t0)

    def _generate_many(self, requests: Sequence[GenerateRequest]) -> list[Outcome]:
        try:
            # Output captions are read back afterwards, for the whole batch in one more model call.
            plain = [r.model_copy(update={"caption_outputs": False}) for r in requests]
            results = self.backend.generate_batch(plain)
            return [Outcome(result=r) for r in self._with_captions(requests, results)]
        except Exception:
            if len(requests) == 1:
                raise
            logger.warning("a batch of %d failed; answering its requests one by one", len(requests))
        outcomes = []
        for request in requests:
            try:
                outcomes.append(Outcome(result=self.backend.generate(request)))
            except Exception as e:  # handed to that request's caller
                outcomes.append(Outcome(error=e))
        return outcomes

    def _with_captions(
        self, requests: Sequence[GenerateRequest], results: Sequence[GenerateResult]
    ) -> list[GenerateResult]:
        """Caption the outputs of requests with `caption_outputs` (and no caption given): what
        `LocalBackend` reads back one medium at a time, here in one batched text pass."""
        todo = [
            (i, j)
            for i, (request, result) in enumerate(zip(requests, results, strict=True))
            if request.caption_outputs
            for j, ref in enumerate(result.media)
            if ref.caption is None
        ]
        if not todo:
            return list(results)
        vocabulary = self.backend.vocabulary
        questions = []
        for i, j in todo:
            ref = results[i].media[j]
            parts = (ref, vocabulary.prompt(f"caption_{ref.modality.value}"))
            questions.append(
                GenerateRequest(
                    prompt=(PromptTurn(role="user", parts=parts),), output="text", max_new_tokens=24
                )
            )
        captions = self.backend.generate_batch(questions)
        media = [list(result.media) for result in results]
        for (i, j), answer in zip(todo, captions, strict=True):
            text = answer.text.strip()
            if len(_WORD_RE.findall(text)) >= 2:  # LocalBackend's rule: only what reads like words
                media[i][j] = media[i][j].model_copy(update={"caption": text})
        return [r.model_copy(update={"media": tuple(m)}) for r, m in zip(results, media, strict=True)]

    def stream(self, request: GenerateRequest) -> Iterator[str | GenerateResult]:
        self._count(1)
        return self.backend.stream(request)

    def _busy(self, since: float) -> None:
        with self._stats_lock:
            self.stats.busy_seconds += time.perf_counter() - since

    def _count(self, size: int) -> None:
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.requests += size
            self.stats.sizes[size] += 1


def _field(body: Any, name: str, kind: type) -> Any:
    if not isinstance(body, dict) or not isinstance(body.get(name), kind):
        raise BadRequestError(f"the request needs {name!r} ({kind.__name__})")
    return body[name]
