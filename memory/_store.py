"""`ExemplarMemory`: every turn's media embeddings in Chroma, retrievable as in-context exemplars.

Layout in Chroma (docs/architecture.md §7):
- one collection per tenant, ``<namespace>-t-<slug>-<sha256(tenant)[:16]>``: tenants are isolated by
  construction — a query opens exactly one tenant's collection, so there is no filter to forget;
- one optional shared exemplar bank, ``<namespace>-shared``, read only by threads that opted in;
- collection metadata records the tenant, encoder name and dimension (checked on every open), and the
  embedding function config records them again (it serves text queries, see `_chroma_ef.py`).

Thread-local lookups ("the last image") belong in graph state; the memory answers them too (after a
restart, or from another process), but its strength is similarity search across a tenant's history.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.media import Media, MediaRef, Modality

from ._chroma_ef import CoDi2EmbeddingFunction
from ._embedding import Embedder, HashingEmbedder, register_embedder
from ._errors import (
    AmbiguousReferenceError,
    CorruptMetadataError,
    EmbeddingDimensionError,
    EncoderMismatchError,
    ExemplarMemoryError,
    UnknownReferenceError,
)
from ._item import SHARED_TENANT, EditPair, MemoryItem, NewItem, Role, item_id
from ._policies import DEFAULT_MEDIA_TOKENS, default_token_cost, recency_key, select_budgeted

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["SHARED_TENANT", "CompactReport", "ExemplarMemory"]

COLLECTION_SCHEMA = 1
_NAMESPACE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_]{0,31}$")
_HEX_RE = re.compile(r"^[0-9a-f]+$")
_PAGE = 2000  # records per get() page when scanning a whole tenant
_SELECTIVE = frozenset({"thread", "subject"})  # filters that usually match a small share of a tenant
_MIN_PREFIX = 6  # shortest artifact-id prefix accepted as a reference
QueryLike = str | Media | MemoryItem | Sequence[float] | np.ndarray


@dataclass
class CompactReport:
    """What `ExemplarMemory.compact` found and did."""

    tenant: str
    kept: int = 0
    dropped_dangling: list[str] = field(default_factory=list)  # item ids whose artifact is gone
    dropped_corrupt: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # found but kept (drop_corrupt=False)


class ExemplarMemory:
    """Exemplar memory over Chroma: add media with lineage, retrieve in-context exemplars per tenant.

    Setup:
        Installed with codi2-agent (``chromadb``). For several processes, start a server:

        .. code-block:: bash

            chroma run --path ./memory-db --host 127.0.0.1 --port 8765

    Instantiate:
        .. code-block:: python

            from codi2_agent.artifacts import ArtifactStore
            from codi2_agent.memory import ExemplarMemory, HashingEmbedder

            memory = ExemplarMemory("./memory-db", embedder=HashingEmbedder(64),
                                    artifacts=ArtifactStore("./artifacts"))        # embedded
            memory = ExemplarMemory(host="127.0.0.1", port=8765, embedder=model.embedder)  # server

    Use:
        .. code-block:: python

            a = store.put(Media.open("star.png"), caption="a red star", turn=1)
            memory.add("alice", "t1", a, role="input")
            b = store.put(edited, caption="a blue star", turn=2)
            memory.add("alice", "t1", b, role="output", parents=[a], instruction="make it blue")

            memory.latest("alice", thread="t1").caption          # 'a blue star'
            memory.search("alice", "the picture with the blue star", k=1)[0].artifact_id == b.id
            pair = memory.analogous_edits("alice", "make the circle blue", k=1)[0]
            pair.source.ref, pair.target.ref                      # exemplar A -> A'
            memory.reference("alice", "@m:" + a.id[:8])           # explicit reference

    Args:
        path: folder of an embedded ``chromadb.PersistentClient`` (single process only: chroma#3792).
        host, port: a ``chroma run`` server; the way for several processes to share one memory.
        client: an existing Chroma client instead of `path` / `host` (its owner closes it).
        embedder: the encoder whose vector space the memory lives in; defaults to `HashingEmbedder()`.
        artifacts: the `ArtifactStore` (or its root) holding the media; used to embed refs without
            vectors, to check refs exist before writing, and by export / import / compact.
        namespace: prefix of every collection name, so several memories can share one Chroma.
        clock: time source for `created_at` / `updated_at` (tests pass a fake).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        host: str | None = None,
        port: int = 8000,
        client: ClientAPI | None = None,
        embedder: Embedder | None = None,
        artifacts: ArtifactStore | str | Path | None = None,
        namespace: str = "codi2",
        ssl: bool = False,
        headers: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # 1. Check arguments: exactly one way to reach Chroma.
        given = [name for name, v in (("path", path), ("host", host), ("client", client)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                "ExemplarMemory needs exactly one of path= (embedded Chroma), host= (a `chroma run` server) "
                f"or client=; got {given or 'none'}"
            )
        if not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE_RE.pattern}, got {namespace!r}")
        self.embedder: Embedder = register_embedder(embedder if embedder is not None else HashingEmbedder())
        self.artifacts = ArtifactStore(artifacts) if isinstance(artifacts, (str, Path)) else artifacts
        self.namespace = namespace
        self._clock = clock
        self._ef = CoDi2EmbeddingFunction(self.embedder)
        self._collections: dict[str, Collection] = {}

        # 2. Connect. Telemetry is off in every mode; the default ONNX embedder is never referenced.
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False)
        self._owns_client = client is None
        if client is not None:
            self._client = client
            self.mode = "client"
        elif host is not None:
            try:
                self._client = chromadb.HttpClient(
                    host=host, port=port, ssl=ssl, headers=dict(headers or {}), settings=settings
                )
            except Exception as e:  # chroma raises assorted errors for a refused connection
                raise ConnectionError(f"cannot reach a Chroma server at {host}:{port} ({e})") from e
            self.mode = "server"
        else:
            Path(path).expanduser().mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
            self._client = chromadb.PersistentClient(path=str(Path(path).expanduser()), settings=settings)  # type: ignore[arg-type]
            self.mode = "embedded"
        self._batch = max(1, int(self._client.get_max_batch_size()))

    def __repr__(self) -> str:
        return (
            f"ExemplarMemory(mode={self.mode!r}, namespace={self.namespace!r}, "
            f"encoder={self.embedder.name!r})"
        )

    def _now(self) -> float:
        # Millisecond resolution: the server's JSON float round trip is exact at 13 significant digits,
        # not always at 17, and an item must read back equal to what was written.
        return round(self._clock(), 3)

    def close(self) -> None:
        """Release the Chroma client if this memory created it (embedded: closes the SQLite files)."""
        self._collections.clear()
        if self._owns_client and hasattr(self._client, "close"):
            self._client.close()

    def __enter__(self) -> ExemplarMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # =============================================================================================
    # Collections
    # =============================================================================================
    def collection_name(self, tenant: str) -> str:
        """The Chroma collection that holds `tenant`'s memory (a pure function of the tenant)."""
        _check_tenant(tenant, writable=True)
        if tenant == SHARED_TENANT:
            return f"{self.namespace}-shared"
        slug = re.sub(r"[^a-z0-9]+", "-", tenant.lower()).strip("-")[:32].strip("-")
        digest = hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:16]
        return f"{self.namespace}-t-{slug}-{digest}" if slug else f"{self.namespace}-t-{digest}"

    def _collection(self, tenant: str, *, create: bool) -> Collection | None:
        col = self._collections.get(tenant)
        if col is not None:
            return col
        from chromadb.errors import NotFoundError

        name = self.collection_name(tenant)
        try:
            col = self._client.get_collection(name, embedding_function=self._ef)  # type: ignore[arg-type]
        except NotFoundError:
            if not create:
                return None
            # get_or_create: two processes may create a tenant at once; both then see one collection.
            col = self._client.get_or_create_collection(
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
                embedding_function=self._ef,  # type: ignore[arg-type]
            )
        self._check_collection(col, tenant)
        self._collections[tenant] = col
        return col

    def _check_collection(self, col: Collection, tenant: str) -> None:
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

    def tenants(self) -> list[str]:
        """Tenants that have a memory in this namespace (the shared bank is not listed)."""
        prefix = f"{self.namespace}-t-"
        out = []
        for col in self._client.list_collections():
            if col.name.startswith(prefix) and isinstance((col.metadata or {}).get("tenant"), str):
                out.append(str(col.metadata["tenant"]))
        return sorted(out)

    def count(self, tenant: str) -> int:
        col = self._collection(tenant, create=False)
        return 0 if col is None else col.count()

    # =============================================================================================
    # Writing
    # =============================================================================================
    def add(
        self,
        tenant: str,
        thread: str,
        ref: MediaRef,
        *,
        turn: int | None = None,
        role: Role = "input",
        parents: Sequence[MediaRef | str] = (),
        task: str | None = None,
        subject: str | None = None,
        caption: str | None = None,
        instruction: str | None = None,
        embedding: Sequence[float] | np.ndarray | None = None,
        media: Media | None = None,
    ) -> MemoryItem:
        """Remember one medium (idempotent: the same medium at the same place is stored once).

        The vector comes from `embedding` if given, else from embedding `media`, else from the media
        loaded from the artifact store. See `add_many` for the rules.
        """
        entry = NewItem(thread, ref, turn, role, tuple(parents), task, subject, caption, instruction)
        vecs = None if embedding is None else np.asarray(embedding, dtype=np.float32).reshape(1, -1)
        return self.add_many(tenant, [entry], embeddings=vecs, media=None if media is None else [media])[0]

    def add_many(
        self,
        tenant: str,
        entries: Sequence[NewItem],
        *,
        embeddings: np.ndarray | Sequence[Sequence[float]] | None = None,
        media: Sequence[Media | None] | None = None,
    ) -> list[MemoryItem]:
        """Remember a batch of media in one write; all of them are stored, or none.

        Args:
            tenant: whose memory; `SHARED_TENANT` writes to the shared exemplar bank.
            entries: what each medium is and where it sits (thread, turn, role, lineage).
            embeddings: (N, dim) precomputed vectors from this memory's encoder.
            media: decoded media to embed (entries with None are loaded from the artifact store).

        Returns:
            The stored items, in the order of `entries` (a re-added item keeps its `created_at`).

        Raises:
            ValueError: a bad entry (the message names it), or no way to get a vector.
            EmbeddingDimensionError: vectors of the wrong length.
            ArtifactNotFoundError: a ref the configured artifact store does not hold.
            ExemplarMemoryError: Chroma failed; nothing from this call is stored.
        """
        # 1. Check inputs and build the items (nothing is written before everything is valid).
        _check_tenant(tenant, writable=True)
        if isinstance(entries, NewItem):
            raise TypeError("add_many takes a sequence of NewItem; use add() for one")
        if not entries:
            return []
        if media is not None and len(media) != len(entries):
            raise ValueError(f"media has {len(media)} entries for {len(entries)} items")
        now = self._now()
        items = [e.to_item(tenant, now) for e in entries]
        if self.artifacts is not None:
            for item in items:
                self.artifacts.path(item.artifact_id)  # raises ArtifactNotFoundError before any write

        # 2. Vectors for every item, validated.
        vectors = self._vectors_for(items, embeddings, media)

        # 3. Same place twice in one batch (a retried turn inside a batch): the last one wins.
        last = {item.id: i for i, item in enumerate(items)}
        keep = sorted(last.values())
        unique, vectors = [items[i] for i in keep], vectors[keep]

        # 4. Keep created_at of items already stored, so a re-add is a no-op apart from updated_at;
        #    link edits to their parents' item ids.
        col = self._collection(tenant, create=True)
        assert col is not None
        existing = self._existing_created_at(col, [it.id for it in unique])
        unique = [
            it.model_copy(update={"created_at": existing[it.id]}) if it.id in existing else it
            for it in unique
        ]
        unique = self._link_parents(col, tenant, unique, {items[i].id: entries[i] for i in keep})

        # 5. Write. Each upsert call is atomic in Chroma; a batch larger than Chroma's limit is split,
        #    and if a later chunk fails the items this call newly created are deleted again.
        self._write(col, unique, vectors, new_ids={it.id for it in unique} - set(existing))
        by_id = {it.id: it for it in unique}
        return [by_id[it.id] for it in items]

    def _link_parents(
        self, col: Collection, tenant: str, items: list[MemoryItem], entries: Mapping[str, NewItem]
    ) -> list[MemoryItem]:
        """Record the item ids of each edit's parents, so edit pairs and lineage are fetched by id
        (about 1 ms) instead of by an `artifact_id` metadata filter (a scan: ~17 ms at 100k items).

        A parent resolves when it is in the same batch, or when it was given as a `MediaRef` with a
        turn (its id is then computable: same thread, that turn, output or input). Others stay
        unlinked, and lookups fall back to the metadata filter.
        """
        in_batch: dict[str, list[MemoryItem]] = {}
        for it in items:
            in_batch.setdefault(it.artifact_id, []).append(it)
        guesses: dict[str, dict[str, list[str]]] = {}  # item id -> parent artifact -> candidate ids
        for it in items:
            turns = {
                p.id: p.turn for p in entries[it.id].parents if isinstance(p, MediaRef) and p.turn is not None
            }
            guesses[it.id] = {
                pid: [item_id(tenant, it.thread, turns[pid], role, pid) for role in ("output", "input")]
                for pid in it.parent_ids
                if pid in turns
            }
        wanted = sorted({c for g in guesses.values() for ids in g.values() for c in ids})
        stored = set(col.get(ids=wanted, include=[])["ids"]) if wanted else set()
        out = []
        for it in items:
            linked = []
            for pid in it.parent_ids:
                local = [c for c in in_batch.get(pid, []) if c.id != it.id]
                if local:
                    linked.append(_closest_source(local, it).id)
                    continue
                found = [c for c in guesses[it.id].get(pid, []) if c in stored or c in entries]
                if found:
                    linked.append(found[0])
            out.append(it.model_copy(update={"parent_items": tuple(dict.fromkeys(linked))}) if linked else it)
        return out

    def _vectors_for(
        self,
        items: Sequence[MemoryItem],
        embeddings: np.ndarray | Sequence[Sequence[float]] | None,
        media: Sequence[Media | None] | None,
    ) -> np.ndarray:
        n, dim = len(items), self.embedder.dim
        if embeddings is not None:
            vecs = np.asarray(embeddings, dtype=np.float32)
            if vecs.ndim != 2 or vecs.shape[0] != n:
                raise ValueError(f"embeddings must be ({n}, {dim}); got shape {vecs.shape}")
        else:
            todo: list[Media] = []
            for i, item in enumerate(items):
                m = media[i] if media is not None else None
                if m is None:
                    if self.artifacts is None:
                        raise ValueError(
                            f"item {i} ({item.ref.short_id}): pass embeddings= or media=, or give "
                            "ExemplarMemory an artifact store to load the media from"
                        )
                    m = self.artifacts.get(item.ref)
                if not isinstance(m, Media):
                    raise TypeError(f"media[{i}] must be a Media, got {type(m).__name__}")
                if m.modality is not item.modality:
                    raise ValueError(
                        f"media[{i}] is {m.modality.value} but its ref says {item.modality.value}"
                    )
                if item.caption and not m.caption:  # captions feed caption-aware encoders (text-only trick)
                    m = copy.copy(m)
                    m.caption = item.caption
                todo.append(m)
            vecs = self._embed_media(todo)
        self._check_vectors(vecs, what="embeddings")
        return vecs

    def _embed_media(self, media: Sequence[Media]) -> np.ndarray:
        """Embed media with the encoder; text media go through the text side."""
        out = np.zeros((len(media), self.embedder.dim), dtype=np.float32)
        text_idx = [i for i, m in enumerate(media) if m.modality is Modality.TEXT]
        media_idx = [i for i, m in enumerate(media) if m.modality is not Modality.TEXT]
        if text_idx:
            out[text_idx] = self._encoder_output(
                self.embedder.embed_text([media[i].text for i in text_idx]), len(text_idx)
            )
        if media_idx:
            out[media_idx] = self._encoder_output(
                self.embedder.embed_media([media[i] for i in media_idx]), len(media_idx)
            )
        return out

    def _encoder_output(self, vecs: np.ndarray, n: int) -> np.ndarray:
        arr = np.asarray(vecs, dtype=np.float32)
        if arr.shape != (n, self.embedder.dim):
            raise EmbeddingDimensionError(
                f"encoder {self.embedder.name!r} returned shape {arr.shape}; "
                f"expected ({n}, {self.embedder.dim})"
            )
        return arr

    def _check_vectors(self, vecs: np.ndarray, *, what: str) -> None:
        if vecs.shape[1] != self.embedder.dim:
            raise EmbeddingDimensionError(
                f"{what} have {vecs.shape[1]} dimensions, but this memory's encoder {self.embedder.name!r} "
                f"gives {self.embedder.dim}-d vectors"
            )
        if not np.isfinite(vecs).all():
            bad = np.where(~np.isfinite(vecs).all(axis=1))[0].tolist()
            raise ValueError(f"{what} contain NaN or infinite values (rows {bad})")
        zero = np.where(np.linalg.norm(vecs, axis=1) == 0)[0]
        if zero.size:  # a zero vector has no cosine distance to anything
            raise ValueError(f"{what} rows {zero.tolist()} are all zeros")

    def _existing_created_at(self, col: Collection, ids: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        for start in range(0, len(ids), self._batch):
            got = col.get(ids=ids[start : start + self._batch], include=["metadatas"])
            for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=False):
                ts = (meta or {}).get("created_at")
                if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                    found[rid] = float(ts)
        return found

    def _write(
        self, col: Collection, items: Sequence[MemoryItem], vectors: np.ndarray, *, new_ids: set[str]
    ) -> None:
        written: list[str] = []
        try:
            for start in range(0, len(items), self._batch):
                chunk = items[start : start + self._batch]
                col.upsert(
                    ids=[it.id for it in chunk],
                    embeddings=vectors[start : start + len(chunk)],
                    metadatas=[it.to_metadata() for it in chunk],
                )
                written.extend(it.id for it in chunk)
        except Exception as e:
            rollback = [i for i in written if i in new_ids]
            if rollback:
                try:
                    col.delete(ids=rollback)
                except Exception as cleanup:  # report both; the first failure is the cause
                    raise ExemplarMemoryError(
                        f"write to {col.name!r} failed ({e}) and rolling back {len(rollback)} items failed "
                        f"too ({cleanup}); re-run the same add (ids are deterministic) to complete it"
                    ) from e
            raise ExemplarMemoryError(
                f"write to {col.name!r} failed; nothing from this call is stored ({e})"
            ) from e

    # =============================================================================================
    # Reading: helpers
    # =============================================================================================
    def get(self, tenant: str, item_id: str) -> MemoryItem:
        """The item with this id (see `item_id`), or `UnknownReferenceError`."""
        col = self._collection(tenant, create=False)
        if col is not None:
            got = col.get(ids=[item_id], include=["metadatas"])
            if got["ids"]:
                return self._item(tenant, got["ids"][0], got["metadatas"][0] if got["metadatas"] else None)
        raise UnknownReferenceError(f"no memory item {item_id!r} in tenant {tenant!r}")

    def items(
        self,
        tenant: str,
        *,
        thread: str | None = None,
        subject: str | None = None,
        modality: Modality | str | None = None,
        role: Role | None = None,
        task: str | None = None,
    ) -> list[MemoryItem]:
        """Every matching item, oldest first (`recency_key` order)."""
        where = _chroma_where(
            _filters(thread=thread, subject=subject, modality=modality, role=role, task=task)
        )
        return sorted(self._scan(tenant, where), key=recency_key)

    def threads(self, tenant: str) -> list[str]:
        """Names of the tenant's threads (a scan of its metadata)."""
        names = {meta.get("thread") for _, meta in self._scan_raw(tenant, None)}
        return sorted(n for n in names if isinstance(n, str))

    def _item(
        self, tenant: str, rid: str, meta: Mapping[str, Any] | None, distance: float | None = None
    ) -> MemoryItem:
        item = MemoryItem.from_record(rid, meta, distance=distance)
        if item.tenant != tenant:  # defence in depth: a tenant collection only ever holds its tenant
            raise CorruptMetadataError(
                f"memory item {rid!r} in tenant {tenant!r}'s collection claims tenant {item.tenant!r}; "
                "refusing it"
            )
        return item

    def _scan_raw(self, tenant: str, where: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        col = self._collection(tenant, create=False)
        if col is None:
            return
        offset = 0
        while True:
            got = col.get(where=where, include=["metadatas"], limit=_PAGE, offset=offset)
            for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=False):
                yield rid, dict(meta or {})
            if len(got["ids"]) < _PAGE:
                return
            offset += _PAGE

    def _scan(self, tenant: str, where: dict[str, Any] | None) -> list[MemoryItem]:
        return [self._item(tenant, rid, meta) for rid, meta in self._scan_raw(tenant, where)]

    def _query_vector(self, tenant: str, query: QueryLike) -> np.ndarray:
        """A unit query vector from text (our Chroma embedding function), media, an item or a vector."""
        if isinstance(query, str):
            if not query.strip():
                raise ValueError("query text is empty")
            vec = np.asarray(self._ef.embed_query([query])[0], dtype=np.float32)
        elif isinstance(query, Media):
            vec = self._embed_media([query])[0]
        elif isinstance(query, MemoryItem):
            if query.tenant not in (tenant, SHARED_TENANT):
                raise ValueError(f"item {query.id} belongs to tenant {query.tenant!r}, not {tenant!r}")
            col = self._collection(query.tenant, create=False)
            got = col.get(ids=[query.id], include=["embeddings"]) if col is not None else None
            if not got or not got["ids"]:
                raise UnknownReferenceError(f"no memory item {query.id!r} in tenant {query.tenant!r}")
            vec = np.asarray(got["embeddings"][0], dtype=np.float32)  # type: ignore[index]
        else:
            vec = np.asarray(query, dtype=np.float32)
            if vec.ndim != 1:
                raise ValueError(f"a query vector must be 1-D, got shape {vec.shape}")
        vec = vec.reshape(1, -1)
        self._check_vectors(vec, what="the query vector")
        return vec[0] / np.linalg.norm(vec[0])

    def _nearest(
        self,
        tenant: str,
        vec: np.ndarray,
        k: int,
        where: dict[str, Any] | None,
        *,
        embeddings: bool = False,
    ) -> list[tuple[MemoryItem, np.ndarray | None]]:
        """k nearest items matching `where` (equality filters), nearest first."""
        col = self._collection(tenant, create=False)
        if col is None or k <= 0:
            return []
        include = ["metadatas", "distances"] + (["embeddings"] if embeddings else [])
        if where and not (where.keys() & _SELECTIVE):
            # A filtered Chroma query costs several unfiltered ones (docs/architecture.md §7). For broad
            # filters (edit / role / modality / task: a good share of all items) take the unfiltered
            # top-n and filter here: if k of them match, they are exactly the filtered top-k. Selective
            # filters (one thread or subject of many) would rarely fill k, so they go to `where` directly.
            n = max(4 * k, 16)
            hits = self._run_query(tenant, col, vec, n, None, include)
            matching = [h for h in hits if _matches(h[2], where)]
            if len(matching) >= k or len(hits) < n:
                return [(self._item(tenant, rid, meta, dist), emb) for rid, dist, meta, emb in matching[:k]]
        hits = self._run_query(tenant, col, vec, k, _chroma_where(where), include)
        return [(self._item(tenant, rid, meta, dist), emb) for rid, dist, meta, emb in hits]

    def _run_query(
        self,
        tenant: str,
        col: Collection,
        vec: np.ndarray,
        n: int,
        where: dict[str, Any] | None,
        include: list[str],
    ) -> list[tuple[str, float | None, dict[str, Any], np.ndarray | None]]:
        try:
            res = col.query(query_embeddings=[vec], n_results=n, where=where, include=include)  # type: ignore[arg-type]
        except Exception as e:
            if "dimension" in str(e).lower():  # e.g. a collection written by other code
                raise EmbeddingDimensionError(f"tenant {tenant!r}: {e}") from e
            raise
        ids = res["ids"][0]
        dists: Sequence[float | None] = res["distances"][0] if res["distances"] else [None] * len(ids)
        metas = (res["metadatas"] or [[{}] * len(ids)])[0]
        embs = res["embeddings"][0] if res.get("embeddings") is not None else [None] * len(ids)  # type: ignore[index]
        return [
            (
                rid,
                float(d) if d is not None else None,
                dict(m or {}),
                None if e is None else np.asarray(e, np.float32),
            )
            for rid, d, m, e in zip(ids, dists, metas, embs, strict=False)
        ]

    def _with_shared(self, tenant: str, thread: str | None, include_shared: bool | None) -> bool:
        if tenant == SHARED_TENANT:
            return False
        if include_shared is None:
            return thread is not None and self.shared_opt_in(tenant, thread)
        return include_shared

    def _search(
        self,
        tenant: str,
        vec: np.ndarray,
        k: int,
        filters: dict[str, Any],
        *,
        shared: bool,
        embeddings: bool = False,
    ) -> list[tuple[MemoryItem, np.ndarray | None]]:
        hits = self._nearest(tenant, vec, k, filters or None, embeddings=embeddings)
        if shared:
            # The bank has its own threads and subjects: only kind filters (modality, role, edit) apply.
            bank_filters = {key: v for key, v in filters.items() if key not in ("thread", "subject")}
            hits += self._nearest(SHARED_TENANT, vec, k, bank_filters or None, embeddings=embeddings)
            hits.sort(key=lambda h: h[0].distance if h[0].distance is not None else np.inf)
        return hits[:k]

    # =============================================================================================
    # Retrieval policies
    # =============================================================================================
    def search(
        self,
        tenant: str,
        query: QueryLike,
        *,
        k: int = 4,
        thread: str | None = None,
        subject: str | None = None,
        modality: Modality | str | None = None,
        role: Role | None = None,
        task: str | None = None,
        include_shared: bool | None = None,
    ) -> list[MemoryItem]:
        """Items most similar to `query`, nearest first — free text ("the picture with the blue star"),
        a `Media`, a stored `MemoryItem` ("more like this") or a raw vector.

        Text goes through this memory's registered Chroma embedding function (the model's text side).
        `include_shared=None` adds the shared bank when `thread` has opted in (`opt_in_shared`).
        """
        _check_tenant(tenant)
        vec = self._query_vector(tenant, query)
        filters = _filters(thread=thread, subject=subject, modality=modality, role=role, task=task)
        shared = self._with_shared(tenant, thread, include_shared)
        return [item for item, _ in self._search(tenant, vec, k, filters, shared=shared)]

    def latest(
        self,
        tenant: str,
        *,
        thread: str | None = None,
        subject: str | None = None,
        modality: Modality | str | None = None,
        role: Role | None = None,
        task: str | None = None,
    ) -> MemoryItem:
        """The most recent matching item (multi-round consistency: "the last image", "the dog again").

        Raises `UnknownReferenceError` when nothing matches.
        """
        _check_tenant(tenant)
        filters = _filters(thread=thread, subject=subject, modality=modality, role=role, task=task)
        # Rank on the raw metadata and validate only the winner: building every item of a long thread
        # would cost more than fetching it.
        best: tuple[tuple[Any, ...], str, dict[str, Any]] | None = None
        for rid, meta in self._scan_raw(tenant, _chroma_where(filters)):
            key = _raw_recency_key(rid, meta)
            if best is None or key > best[0]:
                best = (key, rid, meta)
        if best is None:
            raise UnknownReferenceError(f"tenant {tenant!r} has no item" + _describe(filters))
        return self._item(tenant, best[1], best[2])

    def reference(
        self,
        tenant: str,
        ref: str | int | MediaRef | MemoryItem,
        *,
        thread: str | None = None,
        role: Role | None = None,
        modality: Modality | str | None = None,
    ) -> MemoryItem:
        """Resolve an explicit reference to one item.

        `ref` may be an item id (32 hex), an artifact id (64 hex), an ``artifact://`` uri, a `MediaRef`,
        an artifact-id prefix of at least 6 hex digits (optionally written ``@m:ab12cd``), or a turn
        number (needs `thread`; outputs of the turn win over its inputs). An artifact mentioned several
        times resolves to its latest mention.

        Raises:
            UnknownReferenceError: nothing matches (the message says what was looked for).
            AmbiguousReferenceError: a prefix or turn that matches several different media.
        """
        _check_tenant(tenant)
        narrow = _filters(thread=thread, role=role, modality=modality)
        if isinstance(ref, MemoryItem):
            return self.get(tenant, ref.id)
        if isinstance(ref, MediaRef):
            return self._by_artifact(tenant, ref.id, narrow)
        if isinstance(ref, int) and not isinstance(ref, bool):
            return self._by_turn(tenant, ref, thread, narrow)
        if not isinstance(ref, str):
            raise TypeError(f"a reference is a str, int, MediaRef or MemoryItem, not {type(ref).__name__}")
        raw = ref.strip()
        if raw.startswith(URI_SCHEME):
            return self._by_artifact(tenant, ArtifactStore.parse_id(raw), narrow)
        raw = raw[3:] if raw.startswith("@m:") else raw
        raw = raw.rstrip("…").rstrip(".").lower()
        if _HEX_RE.match(raw):
            if len(raw) == 32:
                try:
                    return self.get(tenant, raw)
                except UnknownReferenceError:
                    pass  # 32 hex digits may also be an artifact-id prefix
            if len(raw) == 64:
                return self._by_artifact(tenant, raw, narrow)
            if len(raw) >= _MIN_PREFIX:
                return self._by_prefix(tenant, raw, narrow)
        raise UnknownReferenceError(
            f"{ref!r} is not a reference this memory understands: use an item id, an artifact id or uri, "
            f"an artifact-id prefix of at least {_MIN_PREFIX} hex digits ('@m:ab12cd'), or a turn number"
        )

    def _by_artifact(self, tenant: str, artifact_id: str, narrow: dict[str, Any]) -> MemoryItem:
        found = self._scan(tenant, _chroma_where({"artifact_id": artifact_id, **narrow}))
        if not found:
            raise UnknownReferenceError(
                f"tenant {tenant!r} has no item for artifact {artifact_id}" + _describe(narrow)
            )
        return max(found, key=recency_key)

    def _by_prefix(self, tenant: str, prefix: str, narrow: dict[str, Any]) -> MemoryItem:
        if len(prefix) >= 12:  # `short_id` is indexed: no scan
            where = _chroma_where({"short_id": prefix[:12], **narrow})
            found = [it for it in self._scan(tenant, where) if it.artifact_id.startswith(prefix)]
        else:
            found = [
                self._item(tenant, rid, meta)
                for rid, meta in self._scan_raw(tenant, _chroma_where(narrow) if narrow else None)
                if str(meta.get("artifact_id", "")).startswith(prefix)
            ]
        artifacts = sorted({it.artifact_id for it in found})
        if not artifacts:
            raise UnknownReferenceError(
                f"tenant {tenant!r} has no media whose id starts with {prefix!r}" + _describe(narrow)
            )
        if len(artifacts) > 1:
            shown = ", ".join(a[:12] for a in artifacts[:5])
            raise AmbiguousReferenceError(
                f"{prefix!r} matches {len(artifacts)} media in tenant {tenant!r} "
                f"({shown}{', …' if len(artifacts) > 5 else ''}); give more digits"
            )
        return max(found, key=recency_key)

    def _by_turn(self, tenant: str, turn: int, thread: str | None, narrow: dict[str, Any]) -> MemoryItem:
        if thread is None:
            raise ValueError("a turn reference needs thread=")
        found = self._scan(tenant, _chroma_where({**narrow, "turn": turn}))
        if not found:
            raise UnknownReferenceError(
                f"thread {thread!r} of tenant {tenant!r} has no item at turn {turn}"
                + _describe({k: v for k, v in narrow.items() if k != "thread"})
            )
        outputs = [it for it in found if it.role == "output"]
        found = outputs or found
        if len({it.artifact_id for it in found}) > 1:
            shown = ", ".join(
                f"{it.role} {it.modality.value} {it.artifact_id[:12]}"
                for it in sorted(found, key=recency_key)
            )
            raise AmbiguousReferenceError(
                f"turn {turn} of thread {thread!r} holds several media ({shown}); "
                "narrow it with role= or modality="
            )
        return max(found, key=recency_key)

    def lineage(
        self, tenant: str, ref: str | int | MediaRef | MemoryItem, *, thread: str | None = None
    ) -> list[MemoryItem]:
        """The edit chain that led to `ref`, root first: [A, A′, A″]. Stops where a parent is unknown."""
        item = self.reference(tenant, ref, thread=thread)
        chain, seen = [item], {item.artifact_id}
        while chain[-1].parent_ids:
            child = chain[-1]
            parent_id = child.parent_ids[0]
            if parent_id in seen:  # a cycle can only come from hand-written data; do not loop forever
                break
            candidates = self._sources(tenant, [child]).get(child.id)
            if candidates is None:
                break
            chain.append(candidates)
            seen.add(parent_id)
        return chain[::-1]

    def analogous_edits(
        self,
        tenant: str,
        request: QueryLike | None = None,
        *,
        source: QueryLike | MediaRef | None = None,
        k: int = 2,
        thread: str | None = None,
        include_shared: bool | None = None,
    ) -> list[EditPair]:
        """Recorded edits (A → A′) most similar to the current request, for "do to this what you did to
        that": by the instruction text (`request`), by the medium to edit (`source`), or both combined.
        """
        pairs = self._edit_candidates(tenant, request, source, k, thread, include_shared, embeddings=False)
        return [pair for pair, _ in pairs[:k]]

    def _edit_candidates(
        self,
        tenant: str,
        request: QueryLike | None,
        source: QueryLike | MediaRef | None,
        k: int,
        thread: str | None,
        include_shared: bool | None,
        *,
        embeddings: bool,
    ) -> list[tuple[EditPair, np.ndarray | None]]:
        _check_tenant(tenant)
        if request is None and source is None:
            raise ValueError(
                "analogous_edits needs request= (instruction), source= (the medium to edit), or both"
            )
        parts = []
        for q in (request, source):
            if isinstance(q, MediaRef):
                q = self.reference(tenant, q)
            if q is not None:
                parts.append(self._query_vector(tenant, q))
        vec = np.sum(parts, axis=0)
        vec = vec / (np.linalg.norm(vec) or 1.0)
        filters = _filters(thread=thread, edit=True)
        shared = self._with_shared(tenant, thread, include_shared)
        # Fetch extra: an edit whose source is no longer stored cannot serve as a pair.
        hits = self._search(tenant, vec, 2 * k, filters, shared=shared, embeddings=embeddings)
        out: list[tuple[EditPair, np.ndarray | None]] = []
        for owner in {h[0].tenant for h in hits}:
            group = [h for h in hits if h[0].tenant == owner]
            sources = self._sources(owner, [target for target, _ in group])
            for target, emb in group:
                if target.id in sources:
                    out.append((EditPair(sources[target.id], target, target.distance), emb))
        out.sort(key=lambda p: p[0].distance if p[0].distance is not None else np.inf)
        return out

    def _sources(self, tenant: str, children: Sequence[MemoryItem]) -> dict[str, MemoryItem]:
        """The item each child was made from (its first parent), by child id; absent if not stored."""
        out: dict[str, MemoryItem] = {}
        col = self._collection(tenant, create=False)
        if col is None:
            return out
        # 1. Linked parents: one get by ids.
        ids = sorted({p for c in children for p in c.parent_items})
        if ids:
            got = col.get(ids=ids, include=["metadatas"])
            linked = {
                rid: self._item(tenant, rid, meta)
                for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=False)
            }
            for c in children:
                hits = [
                    linked[p]
                    for p in c.parent_items
                    if p in linked and linked[p].artifact_id == c.parent_ids[0]
                ]
                if hits:
                    out[c.id] = hits[0]
        # 2. The rest by artifact id (a metadata filter).
        rest = [c for c in children if c.id not in out and c.parent_ids]
        if rest:
            sources = self._scan(tenant, {"artifact_id": {"$in": sorted({c.parent_ids[0] for c in rest})}})
            for c in rest:
                candidates = [s for s in sources if s.artifact_id == c.parent_ids[0]]
                if candidates:
                    out[c.id] = _closest_source(candidates, c)
        return out

    @overload
    def select_exemplars(
        self,
        tenant: str,
        query: QueryLike,
        *,
        pairs: Literal[False] = ...,
        k: int = ...,
        max_tokens: int | None = ...,
        token_cost: Callable[[MemoryItem], int] | None = ...,
        media_tokens: Mapping[str, int] | None = ...,
        diversity: float = ...,
        thread: str | None = ...,
        modality: Modality | str | None = ...,
        include_shared: bool | None = ...,
        pool: int | None = ...,
    ) -> list[MemoryItem]: ...

    @overload
    def select_exemplars(
        self,
        tenant: str,
        query: QueryLike,
        *,
        pairs: Literal[True],
        k: int = ...,
        max_tokens: int | None = ...,
        token_cost: Callable[[EditPair], int] | None = ...,
        media_tokens: Mapping[str, int] | None = ...,
        diversity: float = ...,
        thread: str | None = ...,
        modality: Modality | str | None = ...,
        include_shared: bool | None = ...,
        pool: int | None = ...,
    ) -> list[EditPair]: ...

    def select_exemplars(
        self,
        tenant: str,
        query: QueryLike,
        *,
        pairs: bool = False,
        k: int = 4,
        max_tokens: int | None = None,
        token_cost: Callable[[Any], int] | None = None,
        media_tokens: Mapping[str, int] | None = None,
        diversity: float = 0.3,
        thread: str | None = None,
        modality: Modality | str | None = None,
        include_shared: bool | None = None,
        pool: int | None = None,
    ) -> list[MemoryItem] | list[EditPair]:
        """Choose up to `k` in-context exemplars for a prompt, within `max_tokens`.

        Candidates are the `pool` (default 4k) items — or edit pairs, with ``pairs=True`` — most
        similar to `query`; the pick is greedy maximal marginal relevance (`diversity` trades relevance
        for variety), skipping any candidate that would overrun the budget. The cost of a candidate is
        `token_cost(candidate)`, by default `media_tokens` placeholders per medium plus its words.
        Returns the picks most useful first; the caller orders them in the prompt.
        """
        if k <= 0:
            return []
        pool = pool or max(4 * k, 8)
        if token_cost is None:
            tokens = dict(media_tokens) if media_tokens is not None else dict(DEFAULT_MEDIA_TOKENS)

            def token_cost(c: Any) -> int:
                return default_token_cost(c, tokens)

        if pairs:
            found = self._edit_candidates(tenant, query, None, pool, thread, include_shared, embeddings=True)
            if modality is not None:
                found = [f for f in found if f[0].target.modality is Modality.parse(modality)]
            candidates: list[Any] = [p for p, _ in found]
            vectors = [e for _, e in found]
            dists = [p.distance for p in candidates]
        else:
            _check_tenant(tenant)
            vec = self._query_vector(tenant, query)
            filters = _filters(thread=thread, modality=modality)
            hits = self._search(
                tenant,
                vec,
                pool,
                filters,
                shared=self._with_shared(tenant, thread, include_shared),
                embeddings=True,
            )
            candidates = [h[0] for h in hits]
            vectors = [h[1] for h in hits]
            dists = [c.distance for c in candidates]
        if not candidates:
            return []
        mat = np.stack([_unit(v) for v in vectors])
        relevance = 1.0 - np.array([d if d is not None else 1.0 for d in dists], dtype=np.float32)
        return select_budgeted(
            candidates, mat, relevance, k=k, max_tokens=max_tokens, cost=token_cost, diversity=diversity
        )

    # =============================================================================================
    # Shared exemplar bank
    # =============================================================================================
    def opt_in_shared(self, tenant: str, thread: str, enabled: bool = True) -> None:
        """Let `thread` read the shared exemplar bank (`SHARED_TENANT`) in its queries (or stop it).

        Stored in the tenant collection's metadata, so every process sees it. Writes to the bank are
        explicit: ``memory.add(SHARED_TENANT, ...)``; a tenant's own items never move there.
        """
        _check_tenant(tenant)
        if tenant == SHARED_TENANT:
            raise ValueError("the shared bank itself cannot opt in")
        col = self._collection(tenant, create=True)
        assert col is not None
        meta = self._fresh_metadata(tenant)
        threads = set(_shared_threads(meta, col.name))
        threads = threads | {thread} if enabled else threads - {thread}
        meta["shared_threads"] = json.dumps(sorted(threads))
        # Chroma's modify *replaces* collection metadata: write every key back, not just ours.
        col.modify(metadata=meta)
        self._collections.pop(tenant, None)

    def shared_opt_in(self, tenant: str, thread: str) -> bool:
        """Whether `thread` reads the shared bank by default."""
        if self._collection(tenant, create=False) is None:
            return False
        return thread in _shared_threads(self._fresh_metadata(tenant), self.collection_name(tenant))

    def _fresh_metadata(self, tenant: str) -> dict[str, Any]:
        # Re-read, since another process may have changed it since we cached the collection.
        col = self._client.get_collection(self.collection_name(tenant), embedding_function=self._ef)  # type: ignore[arg-type]
        return dict(col.metadata or {})

    # =============================================================================================
    # Lifecycle
    # =============================================================================================
    def forget_thread(self, tenant: str, thread: str) -> int:
        """Delete every item of `thread`; returns how many. Artifacts stay (other items may share them)."""
        _check_tenant(tenant, writable=True)
        col = self._collection(tenant, create=False)
        if col is None:
            return 0
        deleted = 0
        while True:  # page: Chroma refuses a single get that matches too many records
            ids = col.get(where={"thread": thread}, include=[], limit=_PAGE)["ids"]
            if not ids:
                return deleted
            col.delete(ids=ids)
            deleted += len(ids)

    def forget_tenant(self, tenant: str) -> int:
        """Delete a tenant's whole memory (its collection); returns how many items it held."""
        _check_tenant(tenant, writable=True)
        col = self._collection(tenant, create=False)
        if col is None:
            return 0
        n = col.count()
        self._client.delete_collection(col.name)
        self._collections.pop(tenant, None)
        return n

    def export_tenant(self, tenant: str, dest: str | Path) -> Path:
        """Write `tenant`'s memory to the new folder `dest`: ``memory.jsonl`` (a header line, then one
        line per item with its vector) and ``artifacts/`` (the media, in `ArtifactStore` layout).

        The folder appears complete or not at all (written beside it, then renamed).
        """
        from ._transfer import export_tenant

        return export_tenant(self, tenant, Path(dest))

    def import_tenant(self, src: str | Path, *, tenant: str | None = None) -> int:
        """Load an `export_tenant` folder (into `tenant`, default the exported one); returns the item count.

        Everything is validated (encoder, dimensions, every record, every artifact's hash) before the
        first write; re-importing is idempotent.
        """
        from ._transfer import import_tenant

        return import_tenant(self, Path(src), tenant=tenant)

    def compact(self, tenant: str, *, drop_corrupt: bool = False) -> CompactReport:
        """Tidy a tenant's memory: drop items whose artifact is gone from the store (they can never be
        shown as exemplars) and, with ``drop_corrupt=True``, items whose metadata is corrupt.

        To reclaim disk space of an embedded memory afterwards, stop all users and run
        ``chroma vacuum --path <path>``.
        """
        _check_tenant(tenant, writable=True)
        report = CompactReport(tenant)
        col = self._collection(tenant, create=False)
        if col is None:
            return report
        doomed: list[str] = []
        for rid, meta in self._scan_raw(tenant, None):
            try:
                item = self._item(tenant, rid, meta)
            except CorruptMetadataError:
                (report.dropped_corrupt if drop_corrupt else report.corrupt).append(rid)
                if drop_corrupt:
                    doomed.append(rid)
                continue
            if self.artifacts is not None and item.artifact_id not in self.artifacts:
                report.dropped_dangling.append(rid)
                doomed.append(rid)
            else:
                report.kept += 1
        for start in range(0, len(doomed), self._batch):
            col.delete(ids=doomed[start : start + self._batch])
        return report

    def _all_records(self, tenant: str) -> Iterator[tuple[MemoryItem, np.ndarray]]:
        """Every item with its vector (for export), page by page."""
        col = self._collection(tenant, create=False)
        if col is None:
            return
        offset = 0
        while True:
            got = col.get(include=["metadatas", "embeddings"], limit=_PAGE, offset=offset)
            embs = got["embeddings"] if got["embeddings"] is not None else []
            for rid, meta, emb in zip(got["ids"], got["metadatas"] or [], embs, strict=False):
                yield self._item(tenant, rid, meta), np.asarray(emb, dtype=np.float32)
            if len(got["ids"]) < _PAGE:
                return
            offset += _PAGE

    def _write_items(self, tenant: str, items: Sequence[MemoryItem], vectors: np.ndarray) -> None:
        """Write already-built items (import): validated like `add_many`, same rollback."""
        self._check_vectors(vectors, what="imported embeddings")
        col = self._collection(tenant, create=True)
        assert col is not None
        existing = self._existing_created_at(col, [it.id for it in items])
        self._write(col, items, vectors, new_ids={it.id for it in items} - set(existing))


# --- module helpers -------------------------------------------------------------------------------
def _check_tenant(tenant: str, *, writable: bool = False) -> None:
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"tenant must be a non-empty string, got {tenant!r}")
    if len(tenant) > 256:
        raise ValueError(f"tenant names are at most 256 characters, got {len(tenant)}")
    if tenant.startswith("__") and tenant != SHARED_TENANT:
        raise ValueError(f"tenant names starting with '__' are reserved, got {tenant!r}")


def _filters(**kw: Any) -> dict[str, Any]:
    out = {}
    for key, value in kw.items():
        if value is None:
            continue
        if key == "modality":
            value = Modality.parse(value).value
        if key == "role" and value not in ("input", "output"):
            raise ValueError(f"role must be 'input' or 'output', got {value!r}")
        out[key] = value
    return out


def _chroma_where(filters: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not filters:
        return None
    clauses = [{k: v} for k, v in filters.items()]
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def _matches(meta: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    return all(meta.get(k) == v for k, v in filters.items())


def _describe(filters: Mapping[str, Any]) -> str:
    return (" with " + ", ".join(f"{k}={v!r}" for k, v in filters.items())) if filters else ""


def _shared_threads(meta: Mapping[str, Any], name: str) -> list[str]:
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


def _unit(vec: np.ndarray | None) -> np.ndarray:
    if vec is None:  # cannot happen: candidates are fetched with their embeddings
        raise ExemplarMemoryError("a candidate came back without its embedding")
    return vec / (float(np.linalg.norm(vec)) or 1.0)


def _raw_recency_key(rid: str, meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """`recency_key` on unvalidated metadata; damaged fields sort first (and fail validation if chosen)."""
    turn, ts = meta.get("turn"), meta.get("created_at")
    return (
        turn if isinstance(turn, int) and not isinstance(turn, bool) else -1,
        meta.get("role") == "output",
        ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else float("-inf"),
        rid,
    )


def _closest_source(candidates: Sequence[MemoryItem], child: MemoryItem) -> MemoryItem:
    """Of the items holding a parent artifact, the one that most plausibly fed `child`: same thread and
    not after it, latest first; otherwise the latest anywhere."""
    before = [c for c in candidates if c.thread == child.thread and recency_key(c) < recency_key(child)]
    return max(before or list(candidates), key=recency_key)
