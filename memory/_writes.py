"""Writing items: validate everything, link edits to their sources, upsert all-or-nothing.

Ids are deterministic (see `item_id`), so a retried turn writes the same ids again: an upsert then
changes only `updated_at`, and a re-added item keeps its `created_at`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media, MediaRef

from ._collections import Collections, check_tenant
from ._errors import ExemplarMemoryError
from ._item import MemoryItem, NewItem, item_id
from ._lookups import closest_source
from ._vectors import Vectors

if TYPE_CHECKING:
    from chromadb.api.models.Collection import Collection

__all__ = ["PreparedWrite", "Writer"]


@dataclass(frozen=True)
class PreparedWrite:
    """A checked batch, ready to be written: its items in the caller's order, the unique ones (the
    last of each id) with their (N, dim) vectors, and the entry each unique item came from."""

    tenant: str
    items: list[MemoryItem]
    unique: list[MemoryItem]
    vectors: np.ndarray
    entries: Mapping[str, NewItem]


class Writer:
    """Adds items to one memory's tenants."""

    def __init__(self, collections: Collections, vectors: Vectors, now: Callable[[], float]):
        self._collections = collections
        self._vectors = vectors
        self._now = now

    def prepare(
        self,
        tenant: str,
        entries: Sequence[NewItem],
        *,
        vectors: Any,
        vectors_name: str,
        media: Sequence[Media | None] | None,
        artifacts: ArtifactStore | None,
    ) -> PreparedWrite:
        """Steps 1-3 of `ExemplarMemory.add_many`, which read nothing from Chroma: every check that can
        refuse the caller's input, and the vectors (`vectors_name`: the keyword the caller used, for
        errors). What is left (`commit`) can run later, on another thread."""
        # 1. Check inputs and build the items (nothing is written before everything is valid).
        check_tenant(tenant)
        if isinstance(entries, NewItem):
            raise TypeError("add_many takes a sequence of NewItem; use add() for one")
        if not entries:
            return PreparedWrite(tenant, [], [], np.zeros((0, 0), np.float32), {})
        if media is not None and len(media) != len(entries):
            raise ValueError(f"media has {len(media)} entries for {len(entries)} items")
        now = self._now()
        items = [e.to_item(tenant, now) for e in entries]
        if artifacts is not None:
            for item in items:
                artifacts.path(item.artifact_id)  # raises ArtifactNotFoundError before any write

        # 2. Vectors for every item, validated; the encoder runs only when none were given.
        if vectors is not None:
            vecs = self._vectors.precomputed(vectors, len(items), what=vectors_name)
        else:
            vecs = self._vectors.embed_media(_media_for(items, media, artifacts))
            self._vectors.check(vecs, what="embeddings")

        # 3. Same place twice in one batch (a retried turn inside a batch): the last one wins.
        last = {item.id: i for i, item in enumerate(items)}
        keep = sorted(last.values())
        return PreparedWrite(
            tenant, items, [items[i] for i in keep], vecs[keep], {items[i].id: entries[i] for i in keep}
        )

    def commit(self, prepared: PreparedWrite) -> list[MemoryItem]:
        """Steps 4-5 of a write: read what is already stored, link, upsert (or roll back)."""
        tenant, items, unique, vecs = prepared.tenant, prepared.items, prepared.unique, prepared.vectors
        if not items:
            return []
        # 4. Keep created_at of items already stored, so a re-add is a no-op apart from updated_at;
        #    link edits to their parents' item ids.
        col = self._collections.create(tenant)
        existing = self._existing_created_at(col, [it.id for it in unique])
        unique = [
            it.model_copy(update={"created_at": existing[it.id]}) if it.id in existing else it
            for it in unique
        ]
        unique = self._link_parents(col, tenant, unique, prepared.entries)

        # 5. Write. Each upsert call is atomic in Chroma; a batch larger than Chroma's limit is split,
        #    and if a later chunk fails the items this call newly created are deleted again.
        self._write(col, unique, vecs, new_ids={it.id for it in unique} - set(existing))
        by_id = {it.id: it for it in unique}
        return [by_id[it.id] for it in items]

    def write_records(self, tenant: str, items: Sequence[MemoryItem], vectors: np.ndarray) -> None:
        """Write already-built items as they are (an import): vectors checked, same rollback."""
        check_tenant(tenant)
        vecs = self._vectors.precomputed(vectors, len(items), what="imported embeddings")
        col = self._collections.create(tenant)
        existing = self._existing_created_at(col, [it.id for it in items])
        self._write(col, items, vecs, new_ids={it.id for it in items} - set(existing))

    def _link_parents(
        self, col: Collection, tenant: str, items: list[MemoryItem], entries: Mapping[str, NewItem]
    ) -> list[MemoryItem]:
        """Record the item ids of each edit's parents, so edit pairs are fetched by id (about 1 ms)
        instead of by an `artifact_id` metadata filter (a scan: ~17 ms at 100k items).

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
                    linked.append(closest_source(local, it).id)
                    continue
                found = [c for c in guesses[it.id].get(pid, []) if c in stored or c in entries]
                if found:
                    linked.append(found[0])
            out.append(it.model_copy(update={"parent_items": tuple(dict.fromkeys(linked))}) if linked else it)
        return out

    def _existing_created_at(self, col: Collection, ids: list[str]) -> dict[str, float]:
        found: dict[str, float] = {}
        batch = self._collections.batch
        for start in range(0, len(ids), batch):
            got = col.get(ids=ids[start : start + batch], include=["metadatas"])
            for rid, meta in zip(got["ids"], got["metadatas"] or [], strict=False):
                ts = (meta or {}).get("created_at")
                if isinstance(ts, (int, float)) and not isinstance(ts, bool):
                    found[rid] = float(ts)
        return found

    def _write(
        self, col: Collection, items: Sequence[MemoryItem], vectors: np.ndarray, *, new_ids: set[str]
    ) -> None:
        written: list[str] = []
        batch = self._collections.batch
        try:
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                self._collections.upsert(
                    col,
                    [it.id for it in chunk],
                    vectors[start : start + len(chunk)],
                    [it.to_metadata() for it in chunk],
                )
                written.extend(it.id for it in chunk)
        except Exception as e:
            rollback = [i for i in written if i in new_ids]
            if rollback:
                try:
                    self._collections.delete(col, rollback)
                except Exception as cleanup:  # report both; the first failure is the cause
                    raise ExemplarMemoryError(
                        f"write to {col.name!r} failed ({e}) and rolling back {len(rollback)} items failed "
                        f"too ({cleanup}); re-run the same add (ids are deterministic) to complete it"
                    ) from e
            raise ExemplarMemoryError(
                f"write to {col.name!r} failed; nothing from this call is stored ({e})"
            ) from e


def _media_for(
    items: Sequence[MemoryItem], media: Sequence[Media | None] | None, artifacts: ArtifactStore | None
) -> list[Media]:
    """The decoded medium of each item: the caller's, else loaded from the artifact store."""
    out: list[Media] = []
    for i, item in enumerate(items):
        m = media[i] if media is not None else None
        if m is None:
            if artifacts is None:
                raise ValueError(
                    f"item {i} ({item.ref.short_id}): pass vectors= or media=, or give "
                    "ExemplarMemory an artifact store to load the media from"
                )
            m = artifacts.get(item.ref)
        if not isinstance(m, Media):
            raise TypeError(f"media[{i}] must be a Media, got {type(m).__name__}")
        if m.modality is not item.modality:
            raise ValueError(f"media[{i}] is {m.modality.value} but its ref says {item.modality.value}")
        if item.caption and not m.caption:  # captions feed caption-aware encoders (text-only trick)
            m = copy.copy(m)
            m.caption = item.caption
        out.append(m)
    return out
