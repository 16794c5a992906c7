"""Reaching Chroma, and one checked collection per tenant.

Layout in Chroma (docs/architecture.md §7):
- one collection per tenant, ``<namespace>-t-<slug>-<sha256(tenant)[:16]>``: tenants are isolated by
  construction — a query opens exactly one tenant's collection, so there is no filter to forget;
- one optional shared exemplar bank, ``<namespace>-shared``, read only by threads that opted in;
- collection metadata records the tenant, encoder name and dimension (checked on every open), and the
  embedding function config records them again (it serves text queries, see `_chroma_ef.py`).

Every record read back goes through `validated_item`, which re-checks it against the item schema and
against the tenant whose collection it came from.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._chroma_ef import CoDi2EmbeddingFunction
from ._embedding import Embedder
from ._errors import CorruptMetadataError, EmbeddingDimensionError, EncoderMismatchError
from ._item import SHARED_TENANT, MemoryItem
from ._vector_copy import VectorCopy

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["Collections", "check_namespace", "check_tenant", "connect", "shared_threads", "validated_item"]

COLLECTION_SCHEMA = 1
NAMESPACE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_]{0,31}$")
PAGE = 2000  # records per get() page when scanning a whole tenant


def connect(
    path: str | Path | None,
    host: str | None,
    port: int,
    client: ClientAPI | None,
    *,
    ssl: bool,
    headers: Mapping[str, str] | None,
) -> tuple[ClientAPI, str]:
    """A Chroma client from exactly one of `path` / `host` / `client`, and its mode's name.

    Telemetry is off in every mode; Chroma's default ONNX embedder is never referenced.
    """
    given = [name for name, v in (("path", path), ("host", host), ("client", client)) if v is not None]
    if len(given) != 1:
        raise ValueError(
            "ExemplarMemory needs exactly one of path= (embedded Chroma), host= (a `chroma run` server) "
            f"or client=; got {given or 'none'}"
        )
    if client is not None:
        return client, "client"
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    if host is not None:
        try:
            server = chromadb.HttpClient(
                host=host, port=port, ssl=ssl, headers=dict(headers or {}), settings=settings
            )
        except Exception as e:  # chroma raises assorted errors for a refused connection
            raise ConnectionError(f"cannot reach a Chroma server at {host}:{port} ({e})") from e
        return server, "server"
    folder = Path(path).expanduser()  # type: ignore[arg-type]
    folder.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(folder), settings=settings), "embedded"


def check_namespace(namespace: str) -> None:
    """Raise `ValueError` for a namespace that cannot prefix collection names."""
    if not isinstance(namespace, str) or not NAMESPACE_RE.match(namespace):
        raise ValueError(f"namespace must match {NAMESPACE_RE.pattern}, got {namespace!r}")


def check_tenant(tenant: str) -> None:
    """Raise `ValueError` for a tenant name the memory does not accept."""
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"tenant must be a non-empty string, got {tenant!r}")
    if len(tenant) > 256:
        raise ValueError(f"tenant names are at most 256 characters, got {len(tenant)}")
    if tenant.startswith("__") and tenant != SHARED_TENANT:
        raise ValueError(f"tenant names starting with '__' are reserved, got {tenant!r}")


def validated_item(
    tenant: str, rid: str, meta: Mapping[str, Any] | None, distance: float | None = None
) -> MemoryItem:
    """A stored record as a `MemoryItem`, or `CorruptMetadataError`."""
    item = MemoryItem.from_record(rid, meta, distance=distance)
    if item.tenant != tenant:  # defence in depth: a tenant collection only ever holds its tenant
        raise CorruptMetadataError(
            f"memory item {rid!r} in tenant {tenant!r}'s collection claims tenant {item.tenant!r}; "
            "refusing it"
        )
    return item


def shared_threads(meta: Mapping[str, Any], name: str) -> list[str]:
    """The threads recorded in collection metadata as reading the shared bank."""
    raw = meta.get("shared_threads", "[]")
    try:
        threads = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError:
        threads = None
    if not isinstance(threads, list) or not all(isinstance(t, str) for t in threads):
        raise CorruptMetadataError(
            f"collection {name!r}: shared_threads must be a JSON list of thread names, got {raw!r}"
        )
    return threads


class Collections:
    """Opens (and creates) tenants' collections, checks them against the encoder, and caches them.

    Every write and delete of records goes through `upsert` / `delete`, which keep the embedded
    memory's vector copy (`_vector_copy.py`) in step with Chroma.
    """

    def __init__(
        self,
        client: ClientAPI,
        embedder: Embedder,
        namespace: str,
        now: Callable[[], float],
        copy: VectorCopy | None = None,
    ):
        check_namespace(namespace)
        self.client = client
        self.copy = copy
        self.embedder = embedder
        self.namespace = namespace
        self.ef = CoDi2EmbeddingFunction(embedder)
        self.batch = max(1, int(client.get_max_batch_size()))  # records per upsert / get by ids
        self._now = now
        self._cache: dict[str, Collection] = {}

    def name(self, tenant: str) -> str:
        """The Chroma collection that holds `tenant`'s memory (a pure function of the tenant)."""
        check_tenant(tenant)
        if tenant == SHARED_TENANT:
            return f"{self.namespace}-shared"
        slug = re.sub(r"[^a-z0-9]+", "-", tenant.lower()).strip("-")[:32].strip("-")
        digest = hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:16]
        return f"{self.namespace}-t-{slug}-{digest}" if slug else f"{self.namespace}-t-{digest}"

    def open(self, tenant: str) -> Collection | None:
        """The tenant's collection, or None if it has none yet."""
        return self._get(tenant, create=False)

    def create(self, tenant: str) -> Collection:
        """The tenant's collection, created (with its encoder record) if it has none yet."""
        col = self._get(tenant, create=True)
        assert col is not None
        return col

    def forget(self, tenant: str) -> None:
        """Drop the cached handle (after the collection was deleted or its metadata rewritten)."""
        self._cache.pop(tenant, None)

    def clear(self) -> None:
        self._cache.clear()

    def upsert(
        self, col: Collection, ids: Sequence[str], vectors: np.ndarray, metadatas: Sequence[Mapping[str, Any]]
    ) -> None:
        """Write records: the vector copy first, so it always holds every vector Chroma holds."""
        if self.copy is not None:
            self.copy.put(col.name, ids, vectors)
        col.upsert(ids=list(ids), embeddings=vectors, metadatas=list(metadatas))

    def delete(self, col: Collection, ids: Sequence[str]) -> None:
        """Delete records from Chroma, then their copied vectors."""
        col.delete(ids=list(ids))
        if self.copy is not None:
            self.copy.delete(col.name, ids)

    def drop(self, tenant: str) -> None:
        """Delete the tenant's whole collection (and its copied vectors)."""
        name = self.name(tenant)
        self.client.delete_collection(name)
        self.forget(tenant)
        if self.copy is not None:
            self.copy.drop(name)

    def fresh_metadata(self, tenant: str) -> dict[str, Any]:
        """Collection metadata read again now: another process may have changed it since we cached it."""
        col = self.client.get_collection(self.name(tenant), embedding_function=self.ef)  # type: ignore[arg-type]
        return dict(col.metadata or {})

    def tenants(self) -> list[str]:
        """Tenants that have a memory in this namespace (the shared bank is not listed)."""
        prefix = f"{self.namespace}-t-"
        out = []
        for col in self.client.list_collections():
            if col.name.startswith(prefix) and isinstance((col.metadata or {}).get("tenant"), str):
                out.append(str(col.metadata["tenant"]))
        return sorted(out)

    def _get(self, tenant: str, *, create: bool) -> Collection | None:
        col = self._cache.get(tenant)
        if col is not None:
            return col
        from chromadb.errors import NotFoundError

        name = self.name(tenant)
        try:
            col = self.client.get_collection(name, embedding_function=self.ef)  # type: ignore[arg-type]
        except NotFoundError:
            if not create:
                return None
            # get_or_create: two processes may create a tenant at once; both then see one collection.
            col = self.client.get_or_create_collection(
                name,
                metadata={
                    "codi2_memory": COLLECTION_SCHEMA,
                    "tenant": tenant,
                    "encoder": self.embedder.name,
                    "dim": self.embedder.dim,
                    "space": "cosine",
                    "created_at": self._now(),
                },
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=self.ef,  # type: ignore[arg-type]
            )
        self._check(col, tenant)
        self._cache[tenant] = col
        return col

    def _check(self, col: Collection, tenant: str) -> None:
        meta = dict(col.metadata or {})
        missing = [k for k in ("codi2_memory", "tenant", "encoder", "dim") if k not in meta]
        if missing:
            raise CorruptMetadataError(
                f"collection {col.name!r} (tenant {tenant!r}) lacks metadata {missing}: it was not "
                "created by ExemplarMemory, or its metadata was overwritten"
            )
        if meta["tenant"] != tenant:
            raise CorruptMetadataError(
                f"collection {col.name!r} belongs to tenant {meta['tenant']!r}, not {tenant!r}; "
                "refusing to mix them"
            )
        dim = meta["dim"]
        if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise CorruptMetadataError(f"collection {col.name!r} has an invalid dim {dim!r} in its metadata")
        if dim != self.embedder.dim:
            raise EmbeddingDimensionError(
                f"tenant {tenant!r}'s memory was built with encoder {meta['encoder']!r} ({dim}-d vectors), "
                f"but this ExemplarMemory embeds with {self.embedder.name!r} ({self.embedder.dim}-d). Use "
                "the same encoder, or export the tenant and re-embed it into a new namespace."
            )
        if meta["encoder"] != self.embedder.name:
            raise EncoderMismatchError(
                f"tenant {tenant!r}'s memory was built with encoder {meta['encoder']!r}; this ExemplarMemory "
                f"uses {self.embedder.name!r}. Both give {dim}-d vectors, but from different spaces, so "
                "distances between them mean nothing."
            )
