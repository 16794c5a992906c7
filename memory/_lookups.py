"""Lookups without vectors: items by id, by filter, and explicit references across threads.

These read metadata only (Chroma ``get``). What a thread's own conversation refers to — "the last
image", "turn 3" — is resolved by the session graph from its media log; the memory answers explicit
ids (an artifact id, an ``@m:`` prefix, a uri, a `MediaRef`), which may name media of any thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.media import MediaRef

from ._collections import PAGE, Collections, check_tenant, validated_item
from ._errors import AmbiguousReferenceError, UnknownReferenceError
from ._item import MemoryItem, recency_key
from ._where import chroma_where, describe

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

__all__ = ["MIN_PREFIX", "Lookups", "closest_source"]

MIN_PREFIX = 6  # shortest artifact-id prefix accepted as a reference
_HEX_RE = re.compile(r"^[0-9a-f]+$")


class Lookups:
    """Metadata reads of one memory's tenants."""

    def __init__(self, collections: Collections):
        self._collections = collections

    def get(self, tenant: str, item_id: str) -> MemoryItem:
        col = self._collections.open(tenant)
        if col is not None:
            got = col.get(ids=[item_id], include=["metadatas"])
            if got["ids"]:
                meta = got["metadatas"][0] if got["metadatas"] else None
                return validated_item(tenant, got["ids"][0], meta)
        raise UnknownReferenceError(f"no memory item {item_id!r} in tenant {tenant!r}")

    def items(self, tenant: str, fields: dict[str, Any]) -> list[MemoryItem]:
        """Items matching the equality `fields` (see `_where.filters`), oldest first."""
        return sorted(self.scan(tenant, chroma_where(fields)), key=recency_key)

    def threads(self, tenant: str) -> list[str]:
        names = {meta.get("thread") for _, meta in self.scan_raw(tenant, None)}
        return sorted(n for n in names if isinstance(n, str))

    def scan_raw(self, tenant: str, where: dict[str, Any] | None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(id, unvalidated metadata) of every record matching `where`, page by page."""
        col = self._collections.open(tenant)
        if col is None:
            return
        offset = 0
        while True:
            got = col.get(where=where, include=["metadatas"], limit=PAGE, offset=offset)
            for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=False):
                yield rid, dict(meta or {})
            if len(got["ids"]) < PAGE:
                return
            offset += PAGE

    def scan(self, tenant: str, where: dict[str, Any] | None) -> list[MemoryItem]:
        return [validated_item(tenant, rid, meta) for rid, meta in self.scan_raw(tenant, where)]

    # --- explicit references ---------------------------------------------------------------------
    def reference(
        self, tenant: str, ref: str | MediaRef | MemoryItem, narrow: dict[str, Any] | None = None
    ) -> MemoryItem:
        """The item `ref` names, among those matching the equality filter `narrow`."""
        check_tenant(tenant)
        narrow = narrow or {}
        if isinstance(ref, MemoryItem):
            return self.get(tenant, ref.id)
        if isinstance(ref, MediaRef):
            return self._by_artifact(tenant, ref.id, narrow)
        if not isinstance(ref, str):
            raise TypeError(
                f"a reference is a str, MediaRef or MemoryItem, not {type(ref).__name__} (turn numbers "
                "are resolved by the session graph from its media log)"
            )
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
            if len(raw) >= MIN_PREFIX:
                return self._by_prefix(tenant, raw, narrow)
        raise UnknownReferenceError(
            f"{ref!r} is not a reference this memory understands: use an item id, an artifact id or uri, "
            f"or an artifact-id prefix of at least {MIN_PREFIX} hex digits ('@m:ab12cd')"
        )

    def _by_artifact(self, tenant: str, artifact_id: str, narrow: dict[str, Any]) -> MemoryItem:
        found = self.scan(tenant, chroma_where({"artifact_id": artifact_id, **narrow}))
        if not found:
            raise UnknownReferenceError(
                f"tenant {tenant!r} has no item for artifact {artifact_id}" + describe(narrow)
            )
        return max(found, key=recency_key)

    def _by_prefix(self, tenant: str, prefix: str, narrow: dict[str, Any]) -> MemoryItem:
        if len(prefix) >= 12:  # `short_id` is indexed: no scan
            where = chroma_where({"short_id": prefix[:12], **narrow})
            found = [it for it in self.scan(tenant, where) if it.artifact_id.startswith(prefix)]
        else:
            found = [
                validated_item(tenant, rid, meta)
                for rid, meta in self.scan_raw(tenant, chroma_where(narrow))
                if str(meta.get("artifact_id", "")).startswith(prefix)
            ]
        artifacts = sorted({it.artifact_id for it in found})
        if not artifacts:
            raise UnknownReferenceError(
                f"tenant {tenant!r} has no media whose id starts with {prefix!r}" + describe(narrow)
            )
        if len(artifacts) > 1:
            shown = ", ".join(a[:12] for a in artifacts[:5])
            raise AmbiguousReferenceError(
                f"{prefix!r} matches {len(artifacts)} media in tenant {tenant!r} "
                f"({shown}{', …' if len(artifacts) > 5 else ''}); give more digits"
            )
        return max(found, key=recency_key)

    # --- edit sources ----------------------------------------------------------------------------
    def sources(self, tenant: str, children: Sequence[MemoryItem]) -> dict[str, MemoryItem]:
        """The item each child was made from (its first parent), by child id; absent if not stored."""
        out: dict[str, MemoryItem] = {}
        col = self._collections.open(tenant)
        if col is None:
            return out
        out.update(self._linked_sources(col, tenant, children))
        # The rest by artifact id (a metadata filter).
        rest = [c for c in children if c.id not in out and c.parent_ids]
        if rest:
            wanted = sorted({c.parent_ids[0] for c in rest})
            sources = self.scan(tenant, {"artifact_id": {"$in": wanted}})
            for c in rest:
                candidates = [s for s in sources if s.artifact_id == c.parent_ids[0]]
                if candidates:
                    out[c.id] = closest_source(candidates, c)
        return out

    def _linked_sources(
        self, col: Collection, tenant: str, children: Sequence[MemoryItem]
    ) -> dict[str, MemoryItem]:
        """Sources recorded by item id when the child was written: one get by ids (no scan)."""
        ids = sorted({p for c in children for p in c.parent_items})
        if not ids:
            return {}
        got = col.get(ids=ids, include=["metadatas"])
        linked = {
            rid: validated_item(tenant, rid, meta)
            for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=False)
        }
        out = {}
        for c in children:
            parent = c.parent_ids[0]
            hits = [linked[p] for p in c.parent_items if p in linked and linked[p].artifact_id == parent]
            if hits:
                out[c.id] = hits[0]
        return out


def closest_source(candidates: Sequence[MemoryItem], child: MemoryItem) -> MemoryItem:
    """Of the items holding a parent artifact, the one that most plausibly fed `child`: same thread and
    not after it, latest first; otherwise the latest anywhere."""
    before = [c for c in candidates if c.thread == child.thread and recency_key(c) < recency_key(child)]
    return max(before or list(candidates), key=recency_key)
