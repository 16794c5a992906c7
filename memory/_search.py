"""Similarity queries: items nearest to a query, and recorded edits (A -> A') like a request.

Whether the shared exemplar bank joins a query is decided by the caller (`ExemplarMemory` reads the
thread's opt-in) and passed in as ``shared``; this module only runs the vector queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from codi2_agent.media import Media, MediaRef

from ._collections import Collections, check_tenant, validated_item
from ._errors import EmbeddingDimensionError, UnknownReferenceError
from ._item import SHARED_TENANT, EditPair, MemoryItem
from ._lookups import Lookups
from ._protocol import QueryLike
from ._vectors import Vectors
from ._where import chroma_where, filters, matches

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

__all__ = ["Search"]

_SELECTIVE = frozenset({"thread", "subject"})  # filters that usually match a small share of a tenant
_Hit = tuple[str, float | None, dict[str, Any]]  # record id, distance, raw metadata


class Search:
    """Nearest-neighbour queries over one memory's tenants (and the shared bank)."""

    def __init__(self, collections: Collections, vectors: Vectors, lookups: Lookups):
        self._collections = collections
        self._vectors = vectors
        self._lookups = lookups

    def search(
        self, tenant: str, query: QueryLike, *, k: int, fields: dict[str, Any], shared: bool
    ) -> list[MemoryItem]:
        """Items most similar to `query` matching the equality `fields`, nearest first."""
        check_tenant(tenant)
        vec = self.query_vector(tenant, query)
        return self._hits(tenant, vec, k, fields, shared=shared)

    def analogous_edits(
        self,
        tenant: str,
        request: QueryLike | None,
        source: QueryLike | MediaRef | None,
        *,
        k: int,
        thread: str | None,
        shared: bool,
    ) -> list[EditPair]:
        """Edit pairs whose target is nearest to `request` + `source` (summed unit vectors), best first."""
        check_tenant(tenant)
        if request is None and source is None:
            raise ValueError(
                "analogous_edits needs request= (instruction), source= (the medium to edit), or both"
            )
        parts = []
        for q in (request, source):
            if isinstance(q, MediaRef):
                q = self._lookups.reference(tenant, q)
            if q is not None:
                parts.append(self.query_vector(tenant, q))
        vec = np.sum(parts, axis=0)
        vec = vec / (np.linalg.norm(vec) or 1.0)
        # Fetch extra: an edit whose source is no longer stored cannot serve as a pair.
        targets = self._hits(tenant, vec, 2 * k, filters(thread=thread, edit=True), shared=shared)
        pairs: list[EditPair] = []
        for owner in {t.tenant for t in targets}:
            group = [t for t in targets if t.tenant == owner]
            sources = self._lookups.sources(owner, group)
            pairs.extend(EditPair(sources[t.id], t, t.distance) for t in group if t.id in sources)
        pairs.sort(key=lambda p: p.distance if p.distance is not None else np.inf)
        return pairs[:k]

    def query_vector(self, tenant: str, query: QueryLike) -> np.ndarray:
        """A unit query vector from text (our Chroma embedding function), media, an item or a vector."""
        if isinstance(query, str):
            vec = self._vectors.embed_query_text(query)
        elif isinstance(query, Media):
            vec = self._vectors.embed_media([query])[0]
        elif isinstance(query, MemoryItem):
            vec = self._stored_vector(tenant, query)
        else:
            vec = np.asarray(query, dtype=np.float32)
            if vec.ndim != 1:
                raise ValueError(f"a query vector must be 1-D, got shape {vec.shape}")
        vec = vec.reshape(1, -1)
        self._vectors.check(vec, what="the query vector")
        return vec[0] / np.linalg.norm(vec[0])

    def _stored_vector(self, tenant: str, item: MemoryItem) -> np.ndarray:
        if item.tenant not in (tenant, SHARED_TENANT):
            raise ValueError(f"item {item.id} belongs to tenant {item.tenant!r}, not {tenant!r}")
        col = self._collections.open(item.tenant)
        got = col.get(ids=[item.id], include=["embeddings"]) if col is not None else None
        if not got or not got["ids"]:
            raise UnknownReferenceError(f"no memory item {item.id!r} in tenant {item.tenant!r}")
        return np.asarray(got["embeddings"][0], dtype=np.float32)  # type: ignore[index]

    def _hits(
        self, tenant: str, vec: np.ndarray, k: int, fields: dict[str, Any], *, shared: bool
    ) -> list[MemoryItem]:
        hits = self._nearest(tenant, vec, k, fields)
        if shared:
            # The bank has its own threads and subjects: only kind filters (modality, role, edit) apply.
            bank_fields = {key: v for key, v in fields.items() if key not in ("thread", "subject")}
            hits += self._nearest(SHARED_TENANT, vec, k, bank_fields)
            hits.sort(key=lambda h: h.distance if h.distance is not None else np.inf)
        return hits[:k]

    def _nearest(self, tenant: str, vec: np.ndarray, k: int, fields: dict[str, Any]) -> list[MemoryItem]:
        """k nearest items of one collection matching the equality `fields`, nearest first."""
        col = self._collections.open(tenant)
        if col is None or k <= 0:
            return []
        if fields and not (fields.keys() & _SELECTIVE):
            # A filtered Chroma query costs several unfiltered ones (docs/architecture.md §7). For broad
            # filters (edit / role / modality / task: a good share of all items) take the unfiltered
            # top-n and filter here: if k of them match, they are exactly the filtered top-k. Selective
            # filters (one thread or subject of many) would rarely fill k, so they go to `where` directly.
            n = max(4 * k, 16)
            hits = self._query(tenant, col, vec, n, None)
            matching = [h for h in hits if matches(h[2], fields)]
            if len(matching) >= k or len(hits) < n:
                return [validated_item(tenant, rid, meta, dist) for rid, dist, meta in matching[:k]]
        hits = self._query(tenant, col, vec, k, chroma_where(fields))
        return [validated_item(tenant, rid, meta, dist) for rid, dist, meta in hits]

    def _query(
        self, tenant: str, col: Collection, vec: np.ndarray, n: int, where: dict[str, Any] | None
    ) -> list[_Hit]:
        try:
            res = col.query(
                query_embeddings=[vec], n_results=n, where=where, include=["metadatas", "distances"]
            )
        except Exception as e:
            if "dimension" in str(e).lower():  # e.g. a collection written by other code
                raise EmbeddingDimensionError(f"tenant {tenant!r}: {e}") from e
            raise
        ids = res["ids"][0]
        dists: Sequence[float | None] = res["distances"][0] if res["distances"] else [None] * len(ids)
        metas = (res["metadatas"] or [[{}] * len(ids)])[0]
        return [
            (rid, float(d) if d is not None else None, dict(m or {}))
            for rid, d, m in zip(ids, dists, metas, strict=False)
        ]
