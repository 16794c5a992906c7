"""Backends: where the CoDi-2 model runs, behind one small protocol.

The session graph, `ChatCoDi2` and the tools never call a model directly; they hand a `Backend` a
`GenerateRequest` and get a `GenerateResult` back. Both are plain pydantic data holding text and
`MediaRef`s, never tensors, PIL images or bytes: the media themselves travel through the shared
`ArtifactStore`. That keeps the protocol remote-friendly — a remote backend (docs/architecture.md §4) can
implement it by reading and writing the same store — and keeps graph state small.

`LocalBackend` runs a `CoDi2Model` in this process. `ModelEmbedder` turns the model's own encoders
into the `Embedder` the exemplar memory needs, so "similar" in memory means similar to the model.

Setup:
    Part of codi2-agent; nothing extra to install.

Instantiate:
    .. code-block:: python

        from codi2_agent import ArtifactStore, load_model
        from codi2_agent.backends import LocalBackend

        backend = LocalBackend(load_model("tiny"), ArtifactStore("./artifacts"))

Invoke:
    .. code-block:: python

        from codi2_agent.backends import GenerateRequest, PromptTurn

        request = GenerateRequest(prompt=[PromptTurn(role="user", parts=["draw a red star"])], output="image")
        result = backend.generate(request, progress=lambda step, total: None)
        result.media[0].uri          # 'artifact://3f2a…'
        backend.artifacts.get(result.media[0]).image.size   # (32, 32)
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media, MediaRef, Modality, OutputKind

if TYPE_CHECKING:
    from codi2_agent.model import CoDi2Model, GenerationOutput, Vocabulary

__all__ = [
    "SESSION_KEY_PATTERN",
    "Backend",
    "GenerateRequest",
    "GenerateResult",
    "LocalBackend",
    "ModelEmbedder",
    "OutputKind",
    "ProgressFn",
    "PromptTurn",
    "TransientBackendError",
    "as_backend",
]

ProgressFn = Callable[[int, int], None]  # (step, total) of the diffusion decoder


class TransientBackendError(RuntimeError):
    """A failure worth retrying as is: a lost worker, a timeout, a full queue.

    The session graph's `RetryPolicy` retries this (and `ConnectionError` / `TimeoutError`), never
    bad input, which would fail the same way again.
    """


# --- the request and result: data only, so they cross process boundaries ------------------------
class PromptTurn(BaseModel):
    """One message of a prompt: its role and interleaved text and media references."""

    model_config = ConfigDict(frozen=True)

    role: Literal["user", "assistant"]
    parts: tuple[str | MediaRef, ...] = Field(min_length=1)


# What a session key may be (`GenerateRequest.session`, and the server's session header): 1-128 characters
# a header and a log line carry safely.
SESSION_KEY_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"


class GenerateRequest(BaseModel):
    """What to generate: an interleaved conversation and how to answer it (see `CoDi2Model.generate`)."""

    model_config = ConfigDict(frozen=True)

    prompt: tuple[PromptTurn, ...] = Field(min_length=1)
    output: OutputKind = "auto"
    seed: int | None = None  # diffusion noise; equal request and seed give equal media (and artifact ids)
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    max_new_tokens: int = Field(default=64, ge=1)
    turn: int | None = None  # stamped on the output refs
    captions: tuple[str | None, ...] = ()  # captions for the output media, in order (given by the caller)
    caption_outputs: bool = False  # caption uncaptioned outputs by reading them back with the model
    # Self-check: decode up to `verify` candidates per medium and keep the one the model's encoder
    # agrees with most (`CoDi2Model.generate`; at most codi2_agent.model.verification.MAX_VERIFY).
    verify: int | None = Field(default=None, ge=1, le=64)
    verify_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)  # keep candidate 0 at this cosine
    # The conversation this request belongs to, an opaque key: a served model answers one session's
    # requests on one replica, so sessions answered together are batched together again (the session
    # graph sets a hash of tenant and thread). It changes nothing in the answer.
    session: str | None = Field(default=None, pattern=SESSION_KEY_PATTERN)


class GenerateResult(BaseModel):
    """The answer: text, and any media already stored in the backend's `ArtifactStore`."""

    model_config = ConfigDict(frozen=True)

    text: str
    media: tuple[MediaRef, ...] = ()
    modality: Modality = Modality.TEXT
    created: tuple[str, ...] = ()  # artifact ids this call wrote (they were not stored before)
    seconds: float = 0.0  # wall time inside the model
    agreement: float | None = None  # with `verify`: cosine of the kept medium's C_x to c_MLLM


@runtime_checkable
class Backend(Protocol):
    """Where generation runs. Implementations must be safe to call from several threads.

    Attributes:
        name: identity of the model behind it (recorded with results).
        artifacts: the store requests read media from and results write media to.
        context_limit: the most prompt tokens the model reads.
        vocabulary: the words and prompt shapes the model knows (`codi2_agent.model.Vocabulary`).
    """

    name: str
    artifacts: ArtifactStore

    @property
    def context_limit(self) -> int: ...

    @property
    def vocabulary(self) -> Vocabulary: ...

    def count_tokens(self, prompt: Sequence[PromptTurn]) -> int:
        """Tokens the prompt takes, with the generation prefix (no answer)."""
        ...

    def generate(self, request: GenerateRequest, *, progress: ProgressFn | None = None) -> GenerateResult:
        """Answer `request`; output media are in `artifacts` before this returns."""
        ...

    async def agenerate(
        self, request: GenerateRequest, *, progress: ProgressFn | None = None
    ) -> GenerateResult: ...

    @property
    def embedder(self) -> Any:
        """The `codi2_agent.memory.Embedder` of this model's feature space."""
        ...


def as_backend(model: str | Path | CoDi2Model | Backend, artifacts: ArtifactStore) -> Backend:
    """A `Backend` for a shipped model name (``"tiny"``), a model folder, a `CoDi2Model`, a model
    server's url (``"http://127.0.0.1:8000"``: a `RemoteBackend`) or a backend."""
    if isinstance(model, Backend):
        return model
    if isinstance(model, str) and model.startswith(("http://", "https://")):
        from codi2_agent.serving.remote import RemoteBackend

        return RemoteBackend(model, artifacts)
    if isinstance(model, (str, Path)):
        from codi2_agent.model import load_model

        model = load_model(model)
    return LocalBackend(model, artifacts)


# --- in process ----------------------------------------------------------------------------------
class LocalBackend:
    """A `CoDi2Model` in this process.

    Calls are serialised with a lock: one model, one forward pass at a time (async callers run in a
    worker thread, so they do not block their event loop).

    Args:
        model: the model (`load_model("tiny")`, or `CoDi2Model.from_config(...)` in tests).
        artifacts: where input media are read from and output media are written to.
    """

    def __init__(self, model: CoDi2Model, artifacts: ArtifactStore) -> None:
        self.model = model.eval()
        self.artifacts = artifacts
        self._lock = threading.RLock()
        self.name = f"codi2-local:{model.config.preset}"

    def __repr__(self) -> str:
        return f"LocalBackend(model={self.model.config.preset!r}, artifacts={str(self.artifacts.root)!r})"

    @property
    def context_limit(self) -> int:
        return int(self.model.processor.max_length)

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return self.model.vocabulary

    @cached_property
    def embedder(self) -> ModelEmbedder:
        return ModelEmbedder(self.model)

    # --- prompts --------------------------------------------------------------------------------
    def _turns(self, prompt: Sequence[PromptTurn], *, placeholders: bool = False) -> list[Any]:
        from codi2_agent.model import Turn

        turns = []
        for turn in prompt:
            content: list[str | Media] = []
            for part in turn.parts:
                if isinstance(part, MediaRef):
                    # Counting only needs each medium's modality: skip decoding the file.
                    content.append(_stand_in(part.modality) if placeholders else self.artifacts.get(part))
                else:
                    content.append(part)
            turns.append(Turn(turn.role, content))
        return turns

    def count_tokens(self, prompt: Sequence[PromptTurn]) -> int:
        # The processor refuses prompts over its limit; measuring one must not, so use an unlimited copy.
        processor = copy.copy(self.model.processor)
        processor.max_length = 1 << 30
        return int(processor.encode(self._turns(prompt, placeholders=True)).input_ids.numel())

    # --- generation -----------------------------------------------------------------------------
    def generate(self, request: GenerateRequest, *, progress: ProgressFn | None = None) -> GenerateResult:
        # 1. Load the prompt's media from the store (validated there; decoded once, then cached)
        turns = self._turns(request.prompt)
        with self._lock:
            t0 = time.perf_counter()
            # 2. Run the model; each produced medium is encoded once (C_x), right here
            out = self.model.generate(turns, callback=progress, **_generate_kwargs(request))
            return self._result(request, out, t0)

    def stream(
        self, request: GenerateRequest, *, progress: ProgressFn | None = None
    ) -> Iterator[str | GenerateResult]:
        """`generate`, streamed: the answer's text in pieces (`str`) as the model decodes it, then the
        `GenerateResult` (its text is the pieces joined; its media are stored as `generate` stores
        them). The pieces all come before the medium is decoded.

        The model is held from the first `next()` to the last: iterate from one thread, to the end
        or until you `close()` the iterator (a `for` loop left early does so when it is dropped).
        """
        turns = self._turns(request.prompt)  # bad references fail here, before anything streams
        return self._stream(request, turns, progress)

    def _stream(
        self, request: GenerateRequest, turns: list[Any], progress: ProgressFn | None
    ) -> Iterator[str | GenerateResult]:
        with self._lock:
            t0 = time.perf_counter()
            for item in self.model.generate_stream(turns, callback=progress, **_generate_kwargs(request)):
                if isinstance(item, str):
                    yield item
                else:
                    yield self._result(request, item, t0)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Answer several requests in one model call (`CoDi2Model.generate_batch`): their prompts are
        decoded together and their media decoded in one batch per modality.

        Result i equals `generate(requests[i])` in text; its media equal up to float rounding, so an
        artifact id may differ where a pixel rounds the other way. `seconds` is the batch's wall time
        up to that result. Progress is not reported (one diffusion loop serves several requests).
        """
        turns = [self._turns(r.prompt) for r in requests]
        if not requests:
            return []
        with self._lock:
            t0 = time.perf_counter()
            outs = self.model.generate_batch(
                turns,
                [r.output for r in requests],
                seeds=[r.seed for r in requests],
                num_inference_steps=[r.num_inference_steps for r in requests],
                guidance_scale=[r.guidance_scale for r in requests],
                max_new_tokens=[r.max_new_tokens for r in requests],
                verify=[r.verify for r in requests],
                verify_threshold=[r.verify_threshold for r in requests],
                return_media_features=True,
            )
            return [self._result(r, out, t0) for r, out in zip(requests, outs, strict=True)]

    @cached_property
    def _writer(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=1, thread_name_prefix="codi2-artifact-writer")

    def _result(self, request: GenerateRequest, out: GenerationOutput, t0: float) -> GenerateResult:
        """Store the model's media (content addressing: a retried request writes nothing new) and keep
        their features, which the caption below and the memory's embedding then reuse."""
        refs, created = [], []
        for i, (media, features) in enumerate(zip(out.media, out.media_features, strict=True)):
            artifact_id = media.sha256()
            new = artifact_id not in self.artifacts
            media.content_id = artifact_id  # the key of its cached features, which the caption reads
            self.model.cache_features(media.modality, media, features)
            # The file is written (and synced to disk) on another thread while the model captions the
            # medium here: the write waits on the disk, the caption on the CPU.
            stored = self._writer.submit(self.artifacts.put, media, turn=request.turn)
            caption = request.captions[i] if i < len(request.captions) else None
            if caption is None and request.caption_outputs:
                caption = self._caption(media, drafts=_caption_drafts(request, out.text))
            ref = stored.result()
            refs.append(ref.model_copy(update={"caption": caption}))
            if new:
                created.append(ref.id)
        seconds = time.perf_counter() - t0
        return GenerateResult(
            text=out.text,
            media=tuple(refs),
            modality=out.modality,
            created=tuple(created),
            seconds=seconds,
            agreement=out.agreement,
        )

    def _caption(self, media: Media, *, drafts: Sequence[str] = ()) -> str | None:
        """What the model reads back from a medium it made (None unless it reads like words).

        `drafts`: texts the caption probably repeats; they save LM calls, never change the caption."""
        question = self.vocabulary.prompt(f"caption_{media.modality.value}")
        out = self.model.generate([media, question], output="text", max_new_tokens=24, draft_texts=drafts)
        text = out.text.strip()
        return text if len(_WORD_RE.findall(text)) >= 2 else None

    async def agenerate(
        self, request: GenerateRequest, *, progress: ProgressFn | None = None
    ) -> GenerateResult:
        return await asyncio.to_thread(self.generate, request, progress=progress)


def _generate_kwargs(request: GenerateRequest) -> dict[str, Any]:
    """A request's arguments to `CoDi2Model.generate` (produced media are encoded once, for reuse)."""
    return {
        "output": request.output,
        "seed": request.seed,
        "num_inference_steps": request.num_inference_steps,
        "guidance_scale": request.guidance_scale,
        "max_new_tokens": request.max_new_tokens,
        "return_media_features": True,
        "verify": request.verify,
        "verify_threshold": request.verify_threshold,
    }


def _caption_drafts(request: GenerateRequest, reply: str) -> list[str]:
    """What an output's caption probably repeats, likeliest first: the captions of the prompt's media
    (an edit changes one word of its source's; the subject comes last in a prompt), then the prompt's
    words ("draw a small red star in the snow"), then the model's reply."""
    parts = [part for turn in request.prompt for part in turn.parts][::-1]
    captions = [p.caption for p in parts if isinstance(p, MediaRef) and p.caption]
    return [*captions, *(p for p in parts if isinstance(p, str)), reply]


_WORD_RE = re.compile(r"[a-zA-Z]{2,}")
_STAND_INS: dict[Modality, Media] = {}


def _stand_in(modality: Modality) -> Media:
    """A tiny medium of `modality`: the processor counts placeholders by modality only."""
    if modality not in _STAND_INS:
        if modality is Modality.IMAGE:
            _STAND_INS[modality] = Media.from_image(np.zeros((1, 1, 3), np.uint8))
        elif modality is Modality.AUDIO:
            _STAND_INS[modality] = Media.from_audio(np.zeros(16, np.float32), 16000)
        else:
            _STAND_INS[modality] = Media.from_text("")
    return _STAND_INS[modality]


# --- the model as the memory's encoder -----------------------------------------------------------
class ModelEmbedder:
    """An `Embedder` (see `codi2_agent.memory`) backed by the model's encoders and text path.

    Images and audio live in different feature spaces, so vectors are block-structured:
    ``[image part | audio part]``. An image fills the first block, a sound the second, and a text
    query fills both (the model's predicted image feature and its predicted audio feature for that
    text, `CoDi2Model.embed_text`). Cosine similarity then compares a query with images in image
    space and with sounds in audio space, and never compares an image's pixels with a sound's.

    `name` fingerprints the weights, so a memory built with one checkpoint refuses another.

    Setup:
        Part of codi2-agent.

    Instantiate:
        .. code-block:: python

            from codi2_agent.backends import ModelEmbedder
            embedder = ModelEmbedder(model)       # a CoDi2Model
            embedder.name, embedder.dim           # ('codi2:tiny:1a2b3c4d5e6f', 128)

    Invoke:
        .. code-block:: python

            from codi2_agent.memory import ExemplarMemory
            memory = ExemplarMemory("./memory-db", embedder=embedder, artifacts=store)
    """

    def __init__(self, model: CoDi2Model, *, name: str | None = None) -> None:
        self.model = model
        self._dims = {
            Modality.IMAGE: int(model.encoder(Modality.IMAGE).feature_dim),
            Modality.AUDIO: int(model.encoder(Modality.AUDIO).feature_dim),
        }
        self.dim = sum(self._dims.values())
        self.name = name or f"codi2:{model.config.preset}:{_fingerprint(model)}"
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"ModelEmbedder(name={self.name!r}, dim={self.dim})"

    def _block(self, modality: Modality, vecs: np.ndarray) -> np.ndarray:
        out = np.zeros((vecs.shape[0], self.dim), dtype=np.float32)
        start = 0 if modality is Modality.IMAGE else self._dims[Modality.IMAGE]
        out[:, start : start + vecs.shape[1]] = _unit_rows(vecs)
        return out

    def embed_media(self, media: Sequence[Media]) -> np.ndarray:
        out = np.zeros((len(media), self.dim), dtype=np.float32)
        for modality in (Modality.IMAGE, Modality.AUDIO):
            idx = [i for i, m in enumerate(media) if m.modality is modality]
            if idx:
                with self._lock:
                    vecs = self.model.embed_media([media[i] for i in idx]).float().cpu().numpy()
                out[idx] = self._block(modality, vecs)
        text_idx = [i for i, m in enumerate(media) if m.modality is Modality.TEXT]
        if text_idx:
            out[text_idx] = self.embed_text([media[i].text for i in text_idx])
        return out

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_text takes a sequence of strings, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            parts = [
                self._block(m, self.model.embed_text(list(texts), m).float().cpu().numpy())
                for m in (Modality.IMAGE, Modality.AUDIO)
            ]
        return (parts[0] + parts[1]) / np.sqrt(2.0, dtype=np.float32)


def _unit_rows(vecs: np.ndarray) -> np.ndarray:
    vecs = np.asarray(vecs, dtype=np.float32)
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs / np.where(norms > 0, norms, 1.0)


def _fingerprint(model: CoDi2Model) -> str:
    """12 hex digits identifying the weights behind `embed_media` / `embed_text`.

    Samples at most 64 values per tensor (plus names and shapes), so it costs milliseconds even for
    the paper preset, while any retraining changes it.
    """
    import torch

    h = hashlib.sha256(model.identity().encode())
    state = model.state_dict()
    for key in sorted(state):
        t = state[key]
        if not torch.is_floating_point(t):
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 64)
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(flat[::step][:64].float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]
