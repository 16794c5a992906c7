"""`RemoteBackend`: the `Backend` protocol over HTTP, against a `codi2-agent serve` server.

``Session(model="http://127.0.0.1:8000")``, ``CoDi2Toolkit(model=...)`` and ``ChatCoDi2(model=...)``
take the server's url where they take a model name; `as_backend` builds one of these. The session's
artifact store stays local: a prompt's media are uploaded once (the server is asked which ids it
lacks; content ids are the same on both sides), outputs are downloaded once into the local store,
and from then on both sides refer to them by id. The memory's embedder runs on the server too
(`RemoteEmbedder`), so vectors come from the same model as the answers.

Instantiate:
    .. code-block:: python

        from codi2_agent.serving import RemoteBackend

        backend = RemoteBackend("http://127.0.0.1:8000", artifacts="./artifacts", timeout=60)

Invoke:
    .. code-block:: python

        from codi2_agent.backends import GenerateRequest, PromptTurn

        result = backend.generate(GenerateRequest(prompt=[PromptTurn(role="user", parts=["draw a red star"])],
                                                  output="image"))
        backend.artifacts.get(result.media[0]).image.size   # (32, 32), now in the local store
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codi2_agent.artifacts import ArtifactStore, CorruptArtifactError
from codi2_agent.backends import GenerateRequest, GenerateResult, ProgressFn, PromptTurn
from codi2_agent.media import Media, MediaRef, Modality
from codi2_agent.serving.client import RemoteClient, RemoteServerError
from codi2_agent.serving.wire import SESSION_HEADER, error_type, vectors_from_wire

if TYPE_CHECKING:
    from codi2_agent.model import Vocabulary

__all__ = ["RemoteBackend", "RemoteEmbedder", "is_server_url"]

TEXT_MIME = "text/plain"
COUNT_CACHE_SIZE = 2048
EMBEDDING_CACHE_SIZE = 1024
# Asked with every answer: the outputs' bytes and embeddings, so neither needs another round trip.
ATTACH = "media,embeddings"


def _session_header(request: GenerateRequest) -> dict[str, str]:
    """Ray Serve's session header: the server's `SessionAffinityRouter` keeps a session on one replica."""
    return {SESSION_HEADER: request.session} if request.session else {}


def is_server_url(model: object) -> bool:
    """Whether a `model` argument names a model server (``http://`` or ``https://``)."""
    return isinstance(model, str) and model.startswith(("http://", "https://"))


class RemoteBackend:
    """A model served by ``codi2-agent serve``, behind the `Backend` protocol.

    Args:
        url: the server, e.g. ``"http://127.0.0.1:8000"``.
        artifacts: the local `ArtifactStore` (or its folder) prompts read from and outputs are
            downloaded to; None: a temporary folder removed with this backend.
        timeout: seconds to wait for one answer; `BackendTimeoutError` after that.
        connect_timeout, retries, backoff: connection attempts (see `RemoteClient`); an unreachable
            or unavailable (503) server raises `BackendUnavailableError` after the retries.

    The server's identity (name, context limit, vocabulary, embedder) is read once, here.
    """

    def __init__(
        self,
        url: str,
        artifacts: ArtifactStore | str | Path | None = None,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
    ) -> None:
        if not is_server_url(url):
            raise ValueError(f"a model server url starts with http:// or https://, got {url!r}")
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if artifacts is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="codi2-remote-")
            artifacts = self._temporary.name
        self.artifacts = artifacts if isinstance(artifacts, ArtifactStore) else ArtifactStore(artifacts)
        self.client = RemoteClient(
            url, timeout=timeout, connect_timeout=connect_timeout, retries=retries, backoff=backoff
        )
        self.url = self.client.url
        self.info: dict[str, Any] = self.client.get_json("/v1/info")
        self.name = f"codi2-remote:{str(self.info['name']).split(':', 1)[-1]}@{self.url}"
        self._on_server: set[str] = set()  # ids the server is known to hold
        self._lock = threading.Lock()
        self._counts: OrderedDict[tuple[Any, ...], int] = OrderedDict()
        # Made here, not lazily: answers hand it embeddings from several threads at once.
        self.embedder = RemoteEmbedder(self)

    def __repr__(self) -> str:
        return f"RemoteBackend({self.url!r}, artifacts={str(self.artifacts.root)!r})"

    def close(self) -> None:
        """Close the connection pool (and remove the temporary store, if this backend made one)."""
        self.client.close()
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    # --- what the model is (read once) ------------------------------------------------------------
    @property
    def context_limit(self) -> int:
        return int(self.info["context_limit"])

    @cached_property
    def vocabulary(self) -> Vocabulary:
        from codi2_agent.model import Vocabulary

        return Vocabulary.from_dict(self.info["vocabulary"])

    def count_tokens(self, prompt: Sequence[PromptTurn]) -> int:
        # Counts depend on the words and each medium's modality only; the graph asks about the same
        # prompts repeatedly while it fits a budget, so answers are cached.
        key = tuple(
            (t.role, tuple(p if isinstance(p, str) else (p.modality.value,) for p in t.parts)) for t in prompt
        )
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        body = {"prompt": [t.model_dump(mode="json") for t in prompt]}
        tokens = int(self.client.post_json("/v1/count_tokens", body)["tokens"])
        with self._lock:
            self._counts[key] = tokens
            while len(self._counts) > COUNT_CACHE_SIZE:
                self._counts.popitem(last=False)
        return tokens

    # --- generation -------------------------------------------------------------------------------
    def generate(self, request: GenerateRequest, *, progress: ProgressFn | None = None) -> GenerateResult:
        """Answer `request` on the server; its output media are in the local store on return.
        (`progress` is not reported: the diffusion steps run on the server.)"""
        body = self._body(request)
        answer = self.client.request(
            "POST", f"/v1/generate?include={ATTACH}", json=body, headers=_session_header(request)
        )
        return self._localise(answer.json())

    async def agenerate(
        self, request: GenerateRequest, *, progress: ProgressFn | None = None
    ) -> GenerateResult:
        return await asyncio.to_thread(self.generate, request, progress=progress)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Send the requests together; the server batches what arrives together."""
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=min(16, len(requests))) as pool:
            return list(pool.map(self.generate, requests))

    def stream(
        self, request: GenerateRequest, *, progress: ProgressFn | None = None
    ) -> Iterator[str | GenerateResult]:
        """`generate`, streamed: text pieces as the server's model decodes them, then the result."""
        body = self._body(request)  # uploads happen here, before anything streams
        return self._stream(body, _session_header(request))

    def _stream(self, body: dict[str, Any], headers: dict[str, str]) -> Iterator[str | GenerateResult]:
        path = f"/v1/generate/stream?include={ATTACH}"
        with self.client.stream("POST", path, json=body, headers=headers) as response:
            for event, data in _sse_events(response.iter_lines()):
                if event == "text":
                    yield str(data["text"])
                elif event == "result":
                    yield self._localise(data)
                elif event == "error":
                    error = data.get("error", {})
                    cls = error_type(str(error.get("type"))) or RemoteServerError
                    raise cls(str(error.get("message", "the stream failed on the server")))

    def _body(self, request: GenerateRequest) -> dict[str, Any]:
        refs = [p for turn in request.prompt for p in turn.parts if isinstance(p, MediaRef)]
        self._ensure_on_server(refs)
        return request.model_dump(mode="json")

    # --- media, each way once ---------------------------------------------------------------------
    def _ensure_on_server(self, refs: Sequence[MediaRef]) -> None:
        """Upload the stored media the server lacks (it is asked first, by id)."""
        self._send_missing({r.id: partial(self._stored_bytes, r) for r in refs})

    def _send_missing(self, sources: dict[str, Callable[[], tuple[bytes, str]]]) -> None:
        """`sources`: id -> its bytes and mime, read only if the server lacks that id."""
        with self._lock:
            unknown = [i for i in sources if i not in self._on_server]
        if not unknown:
            return
        for artifact_id in self.client.post_json("/v1/artifacts/missing", {"ids": unknown})["missing"]:
            self._upload(artifact_id, *sources[artifact_id]())
        with self._lock:
            self._on_server.update(unknown)

    def _stored_bytes(self, ref: MediaRef) -> tuple[bytes, str]:
        ref = self.artifacts.ref(ref.id)  # ArtifactNotFoundError if the local store lacks it too
        return self.artifacts.path(ref).read_bytes(), ref.mime

    def _upload(self, artifact_id: str, data: bytes, mime: str) -> None:
        stored = self.client.request(
            "POST", "/v1/artifacts", content=data, headers={"content-type": mime}
        ).json()
        if stored.get("id") != artifact_id:
            raise CorruptArtifactError(
                f"the server stored artifact {artifact_id[:12]} as {str(stored.get('id'))[:12]}"
            )

    def _localise(self, answer: dict[str, Any]) -> GenerateResult:
        """Store the answer's media the local store lacks, from the bytes attached to it (or
        downloaded, for a server that did not attach them); `created` is what this store gained.
        Attached embeddings go to the embedder, so the memory asks the server for none of them."""
        attachments: dict[str, dict[str, Any]] = answer.pop("attachments", None) or {}
        result = GenerateResult.model_validate(answer)
        created = []
        for ref in result.media:
            attached = attachments.get(ref.id, {})
            if "embedding" in attached:
                self.embedder.remember(ref.id, vectors_from_wire(attached["embedding"])[0])
            if ref.id in self.artifacts:
                continue
            if "base64" in attached:
                data = base64.b64decode(attached["base64"])
            else:
                data = self.client.request("GET", f"/v1/artifacts/{ref.id}").content
            media = (
                Media.from_text(data.decode("utf-8"))
                if ref.mime == TEXT_MIME
                else Media.open(data, limits=self.artifacts.limits)
            )
            stored = self.artifacts.put(media)
            if stored.id != ref.id:
                raise CorruptArtifactError(f"downloaded artifact {ref.id[:12]} does not match its id")
            created.append(ref.id)
        with self._lock:
            self._on_server.update(r.id for r in result.media)
        return result.model_copy(update={"created": tuple(created)})


class RemoteEmbedder:
    """The server model's `ModelEmbedder`, over HTTP: the exemplar memory's `Embedder`.

    Its `name` is the server's embedder name (the weights' fingerprint), so a memory built against a
    local copy of the same weights accepts it, and one built with other weights refuses it.
    """

    def __init__(self, backend: RemoteBackend) -> None:
        self.backend = backend
        self.name = str(backend.info["embedder"]["name"])
        self.dim = int(backend.info["embedder"]["dim"])
        self._known: OrderedDict[str, np.ndarray] = OrderedDict()  # artifact id -> vector
        self._lock = threading.Lock()

    def remember(self, artifact_id: str, vector: np.ndarray) -> None:
        """Keep a medium's vector that came with a generate answer (the memory embeds it next)."""
        with self._lock:
            self._known[artifact_id] = np.asarray(vector, dtype=np.float32)
            while len(self._known) > EMBEDDING_CACHE_SIZE:
                self._known.popitem(last=False)

    def __repr__(self) -> str:
        return f"RemoteEmbedder(name={self.name!r}, dim={self.dim}, url={self.backend.url!r})"

    def embed_media(self, media: Sequence[Media]) -> np.ndarray:
        out = np.zeros((len(media), self.dim), dtype=np.float32)
        text_idx = [i for i, m in enumerate(media) if m.modality is Modality.TEXT]
        media_idx = [i for i, m in enumerate(media) if m.modality is not Modality.TEXT]
        with self._lock:
            for i in list(media_idx):
                known = self._known.get(media[i].content_id or "")
                if known is not None:
                    out[i] = known
                    media_idx.remove(i)
        if media_idx:
            ids = [self._on_server(media[i]) for i in media_idx]
            vectors = self.backend.client.post_json("/v1/embed/media", {"ids": ids})["vectors"]
            out[media_idx] = vectors_from_wire(vectors)
        if text_idx:
            out[text_idx] = self.embed_text([media[i].text for i in text_idx])
        return out

    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("embed_text takes a sequence of strings, not one string")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.backend.client.post_json("/v1/embed/text", {"texts": list(texts)})["vectors"]
        return vectors_from_wire(vectors)

    def _on_server(self, media: Media) -> str:
        """The id of `media`, uploaded first if the server lacks it."""
        if media.content_id is not None and media.content_id in self.backend.artifacts:
            self.backend._ensure_on_server([self.backend.artifacts.ref(media.content_id)])
            return media.content_id
        data, mime = media.to_bytes()
        artifact_id = hashlib.sha256(data).hexdigest()
        self.backend._send_missing({artifact_id: lambda: (data, mime)})
        return artifact_id


def _sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event, JSON data) pairs of a server-sent event stream."""
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))
