"""A tenant's memory over time: the shared-bank opt-in, forgetting, compaction, reading it all out.

Export and import (the folder format) live in `_transfer.py` and use `ExemplarMemory`'s public
methods only; `records` here is what an export reads.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from codi2_agent.artifacts import ArtifactStore

from ._collections import PAGE, Collections, check_tenant, shared_threads, validated_item
from ._errors import CorruptMetadataError
from ._item import SHARED_TENANT, MemoryItem
from ._lookups import Lookups

__all__ = [
    "CompactReport",
    "compact",
    "forget_items",
    "forget_tenant",
    "forget_thread",
    "opt_in_shared",
    "reads_shared",
    "reconcile_thread",
    "records",
    "shared_opt_in",
]

_ITEM_ID = re.compile(r"^[0-9a-f]{32}$")
_ARTIFACT_ID = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class CompactReport:
    """What `ExemplarMemory.compact` found and did."""

    tenant: str
    kept: int = 0
    dropped_dangling: list[str] = field(default_factory=list)  # item ids whose artifact is gone
    dropped_corrupt: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)  # found but kept (drop_corrupt=False)


# --- shared exemplar bank ---------------------------------------------------------------------------
def opt_in_shared(collections: Collections, tenant: str, thread: str, enabled: bool) -> None:
    """Record in the tenant collection's metadata (seen by every process) that `thread` reads the bank."""
    check_tenant(tenant)
    if tenant == SHARED_TENANT:
        raise ValueError("the shared bank itself cannot opt in")
    col = collections.create(tenant)
    meta = collections.fresh_metadata(tenant)
    threads = set(shared_threads(meta, col.name))
    threads = threads | {thread} if enabled else threads - {thread}
    meta["shared_threads"] = json.dumps(sorted(threads))
    # Chroma's modify *replaces* collection metadata: write every key back, not just ours.
    col.modify(metadata=meta)
    collections.forget(tenant)


def shared_opt_in(collections: Collections, tenant: str, thread: str) -> bool:
    """Whether `thread` reads the shared bank by default."""
    if collections.open(tenant) is None:
        return False
    return thread in shared_threads(collections.fresh_metadata(tenant), collections.name(tenant))


def reads_shared(
    collections: Collections, tenant: str, thread: str | None, include_shared: bool | None
) -> bool:
    """Whether a query joins the shared bank: as asked, or (None) as the thread opted in."""
    if tenant == SHARED_TENANT:
        return False
    if include_shared is None:
        return thread is not None and shared_opt_in(collections, tenant, thread)
    return include_shared


# --- forgetting and tidying -----------------------------------------------------------------------
def forget_thread(collections: Collections, tenant: str, thread: str) -> int:
    """Delete every item of `thread`; returns how many."""
    check_tenant(tenant)
    col = collections.open(tenant)
    if col is None:
        return 0
    deleted = 0
    while True:  # page: Chroma refuses a single get that matches too many records
        ids = col.get(where={"thread": thread}, include=[], limit=PAGE)["ids"]
        if not ids:
            return deleted
        collections.delete(col, ids)
        deleted += len(ids)


def forget_items(collections: Collections, tenant: str, item_ids: Iterable[str]) -> int:
    """Delete these items of `tenant` (ids of other tenants match nothing); returns how many existed."""
    check_tenant(tenant)
    if isinstance(item_ids, (str, bytes)):
        raise TypeError("forget_items takes a list of item ids, not one id")
    ids = list(dict.fromkeys(item_ids))
    bad = [i for i in ids if not isinstance(i, str) or not _ITEM_ID.match(i)]
    if bad:
        raise ValueError(f"not an item id (32 hex digits): {bad[:3]!r}")
    col = collections.open(tenant)
    if col is None:
        return 0
    deleted = 0
    for start in range(0, len(ids), collections.batch):
        present = col.get(ids=ids[start : start + collections.batch], include=[])["ids"]
        if present:  # only what exists, so a repeated call reports 0
            collections.delete(col, present)
            deleted += len(present)
    return deleted


def reconcile_thread(
    collections: Collections, lookups: Lookups, tenant: str, thread: str, keep: Iterable[tuple[str, int]]
) -> int:
    """Delete `thread`'s items whose (artifact id, turn) is not in `keep`; returns how many.

    An item whose metadata is too damaged to name its place cannot be in `keep`, so it goes too.
    """
    check_tenant(tenant)
    if not isinstance(thread, str) or not thread:
        raise ValueError(f"thread must be a non-empty string, got {thread!r}")
    wanted = {_place(entry) for entry in keep}
    doomed = [
        rid
        for rid, meta in lookups.scan_raw(tenant, {"thread": thread})
        if (meta.get("artifact_id"), meta.get("turn")) not in wanted
    ]
    return forget_items(collections, tenant, doomed)


def _place(entry: object) -> tuple[str, int]:
    """One (artifact id, turn) of `reconcile_thread`'s keep, checked."""
    if not isinstance(entry, tuple) or len(entry) != 2:
        raise TypeError(f"keep holds (artifact id, turn) pairs, got {entry!r}")
    artifact_id, turn = entry
    if not isinstance(artifact_id, str) or not _ARTIFACT_ID.match(artifact_id):
        raise ValueError(f"keep: {artifact_id!r} is not an artifact id (64 hex digits)")
    if isinstance(turn, bool) or not isinstance(turn, numbers.Integral):
        raise TypeError(f"keep: the turn of {artifact_id[:12]} must be an int, got {turn!r}")
    return artifact_id, int(turn)


def forget_tenant(collections: Collections, tenant: str) -> int:
    """Delete a tenant's whole collection; returns how many items it held."""
    check_tenant(tenant)
    col = collections.open(tenant)
    if col is None:
        return 0
    n = col.count()
    collections.drop(tenant)
    return n


def compact(
    collections: Collections,
    lookups: Lookups,
    tenant: str,
    artifacts: ArtifactStore | None,
    *,
    drop_corrupt: bool,
) -> CompactReport:
    """Drop items whose artifact is gone from `artifacts` and, if asked, items with corrupt metadata."""
    check_tenant(tenant)
    report = CompactReport(tenant)
    col = collections.open(tenant)
    if col is None:
        return report
    doomed: list[str] = []
    for rid, meta in lookups.scan_raw(tenant, None):
        try:
            item = validated_item(tenant, rid, meta)
        except CorruptMetadataError:
            (report.dropped_corrupt if drop_corrupt else report.corrupt).append(rid)
            if drop_corrupt:
                doomed.append(rid)
            continue
        if artifacts is not None and item.artifact_id not in artifacts:
            report.dropped_dangling.append(rid)
            doomed.append(rid)
        else:
            report.kept += 1
    for start in range(0, len(doomed), collections.batch):
        collections.delete(col, doomed[start : start + collections.batch])
    return report


def records(collections: Collections, tenant: str) -> Iterator[tuple[MemoryItem, np.ndarray]]:
    """Every item of `tenant` with its stored vector, page by page (what an export writes)."""
    col = collections.open(tenant)
    if col is None:
        return
    offset = 0
    while True:
        got = col.get(include=["metadatas", "embeddings"], limit=PAGE, offset=offset)
        embs = got["embeddings"] if got["embeddings"] is not None else []
        for rid, meta, emb in zip(got["ids"], got["metadatas"] or [], embs, strict=False):
            yield validated_item(tenant, rid, meta), np.asarray(emb, dtype=np.float32)
        if len(got["ids"]) < PAGE:
            return
        offset += PAGE
