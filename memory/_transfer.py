"""Export and import of one tenant's memory: a folder with ``memory.jsonl`` and ``artifacts/``.

``memory.jsonl``: the first line is a header (format, version, tenant, encoder, dim, count); each
further line is ``{"item": {...}, "embedding": [...]}``. Vectors travel with the items, so an import
needs no model — but it must be the same encoder (name and dimension), which the header records.
``artifacts/`` uses the `ArtifactStore` layout (``<id[:2]>/<id><ext>``), so it is itself a store.

Everything here goes through `ExemplarMemory`'s public methods (`records`, `write_records`,
`collection_name`, `embedder`, `artifacts`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from codi2_agent.artifacts import ArtifactStore

from ._errors import CorruptMetadataError, EmbeddingDimensionError, EncoderMismatchError
from ._item import MemoryItem, item_id

if TYPE_CHECKING:
    from ._store import ExemplarMemory

FORMAT = "codi2-agent/exemplar-memory"
VERSION = 1
JSONL = "memory.jsonl"
ARTIFACTS = "artifacts"


def export_tenant(memory: ExemplarMemory, tenant: str, dest: Path) -> Path:
    if dest.exists():
        raise FileExistsError(f"export destination {dest} already exists; choose a new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the destination and rename at the end: a failed export leaves no partial folder.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        records = list(memory.records(tenant))  # raises CorruptMetadataError on a damaged item
        artifact_ids = sorted({a for item, _ in records for a in (item.artifact_id, *item.parent_ids)})
        copied, missing = 0, 0
        if memory.artifacts is not None:
            for aid in artifact_ids:
                if aid not in memory.artifacts:
                    missing += 1
                    continue
                src = memory.artifacts.path(aid)
                target = tmp / ARTIFACTS / aid[:2] / src.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                copied += 1
        header = {
            "format": FORMAT,
            "version": VERSION,
            "tenant": tenant,
            "encoder": memory.embedder.name,
            "dim": memory.embedder.dim,
            "count": len(records),
            "artifacts": copied,
            "missing_artifacts": missing if memory.artifacts is not None else None,
        }
        with (tmp / JSONL).open("w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for item, vec in records:
                row = {"item": item.model_dump(mode="json", exclude={"distance"}), "embedding": vec.tolist()}
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def import_tenant(memory: ExemplarMemory, src: Path, *, tenant: str | None = None) -> int:
    # 1. Header: format and encoder must match this memory.
    path = src / JSONL
    if not path.is_file():
        raise FileNotFoundError(f"{src} is not a memory export (no {JSONL})")
    with path.open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        raise CorruptMetadataError(f"{path} is empty")
    header = _json(lines[0], path, 1)
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise CorruptMetadataError(f"{path}: not a {FORMAT} v{VERSION} file (header {header})")
    source_tenant = header.get("tenant")
    if not isinstance(source_tenant, str) or not source_tenant:
        raise CorruptMetadataError(f"{path}: header has no tenant")
    target = tenant or source_tenant
    memory.collection_name(target)  # validates the tenant name
    if header.get("dim") != memory.embedder.dim:
        raise EmbeddingDimensionError(
            f"{path} holds {header.get('dim')}-d vectors from encoder {header.get('encoder')!r}; "
            f"this memory's encoder {memory.embedder.name!r} gives {memory.embedder.dim}-d vectors"
        )
    if header.get("encoder") != memory.embedder.name:
        raise EncoderMismatchError(
            f"{path} was exported with encoder {header.get('encoder')!r}; "
            f"this memory uses {memory.embedder.name!r}"
        )

    # 2. Every record, validated before anything is written.
    items: list[MemoryItem] = []
    vectors = np.zeros((len(lines) - 1, memory.embedder.dim), dtype=np.float32)
    for n, line in enumerate(lines[1:], start=2):
        row = _json(line, path, n)
        try:
            item = MemoryItem.model_validate(row.get("item"))
        except ValidationError as e:
            raise CorruptMetadataError(f"{path} line {n}: invalid item ({e.errors()[0]['msg']})") from None
        if item.tenant != source_tenant:
            raise CorruptMetadataError(
                f"{path} line {n}: item of tenant {item.tenant!r} in an export of {source_tenant!r}"
            )
        if item.id != item_id(item.tenant, item.thread, item.turn, item.role, item.artifact_id):
            raise CorruptMetadataError(f"{path} line {n}: item id {item.id} does not match its fields")
        if target != source_tenant:  # ids depend on the tenant, so a renamed import gets new ids
            item = item.model_copy(
                update={
                    "tenant": target,
                    "id": item_id(target, item.thread, item.turn, item.role, item.artifact_id),
                }
            )
        vec = np.asarray(row.get("embedding"), dtype=np.float32)
        if vec.shape != (memory.embedder.dim,):
            raise EmbeddingDimensionError(
                f"{path} line {n}: embedding of shape {vec.shape}, expected ({memory.embedder.dim},)"
            )
        vectors[len(items)] = vec
        items.append(item)
    if header.get("count") != len(items):
        raise CorruptMetadataError(
            f"{path}: header says {header.get('count')} items, file holds {len(items)} (truncated?)"
        )

    # 3. Artifacts: verify every file's hash, then copy (atomic per file; content-addressed, so harmless).
    files = (
        sorted(p for p in (src / ARTIFACTS).glob("??/*") if p.is_file()) if (src / ARTIFACTS).is_dir() else []
    )
    if files and memory.artifacts is None:
        raise ValueError(
            f"{src} carries {len(files)} artifacts but this ExemplarMemory has no artifact store"
        )
    for p in files:
        if hashlib.sha256(p.read_bytes()).hexdigest() != p.stem:
            raise CorruptMetadataError(f"artifact file {p} does not hash to its name; the export is damaged")
    if memory.artifacts is not None:
        for p in files:
            _copy_artifact(memory.artifacts, p)

    # 4. Items, in Chroma-sized atomic chunks (a retry after a failure is idempotent: same ids).
    if items:
        memory.write_records(target, items, vectors)
    return len(items)


def _copy_artifact(store: ArtifactStore, src: Path) -> None:
    artifact_id = ArtifactStore.parse_id(src.stem)
    if artifact_id in store:
        return
    target = store.root / artifact_id[:2] / src.name  # the store's documented layout
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=target.suffix)
    try:
        with os.fdopen(fd, "wb") as f, src.open("rb") as r:
            shutil.copyfileobj(r, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    store.path(artifact_id)  # the store must now find it under its own rules


def _json(line: str, path: Path, n: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorruptMetadataError(f"{path} line {n}: not JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise CorruptMetadataError(f"{path} line {n}: expected a JSON object")
    return row
