"""What one remembered medium looks like, and how it maps to a Chroma record.

A `MemoryItem` is one medium that entered or left a session, placed in (tenant, thread, turn, role).
Chroma metadata is flat and scalar, so lists (parent ids) are stored comma-joined and optional fields
are simply absent. Reading a record back re-validates it against this schema: anything else is a
`CorruptMetadataError` naming the item and the field, never a half-read item.

Ids are deterministic — a hash of (tenant, thread, turn, role, artifact id) — so a retried turn writes
the same ids again and an upsert changes nothing (no duplicates).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from codi2_agent.artifacts import URI_SCHEME, ArtifactStore
from codi2_agent.media import MediaRef, Modality

from ._errors import CorruptMetadataError

__all__ = [
    "SCHEMA_VERSION",
    "SHARED_TENANT",
    "EditPair",
    "MemoryItem",
    "NewItem",
    "Role",
    "item_id",
    "recency_key",
]

SCHEMA_VERSION = 1
SHARED_TENANT = "__shared__"  # the opt-in exemplar bank; user tenants may not start with "__"
Role = Literal["input", "output"]
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_ITEM_RE = re.compile(r"^[0-9a-f]{32}$")
_DEFAULT_MIME = {Modality.IMAGE: "image/png", Modality.AUDIO: "audio/wav", Modality.TEXT: "text/plain"}
_REQUIRED = ("v", "tenant", "thread", "turn", "role", "modality", "artifact_id", "parent_ids", "created_at")


def item_id(tenant: str, thread: str, turn: int, role: str, artifact_id: str) -> str:
    """The deterministic id of a medium at a place: 32 hex digits."""
    # \x1f (unit separator) cannot be confused with characters inside the parts.
    key = "\x1f".join([tenant, thread, str(turn), role, artifact_id])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


class MemoryItem(BaseModel):
    """One remembered medium, as stored (plus `distance` when it came from a similarity query)."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{32}$", description="deterministic item id")
    tenant: str = Field(min_length=1)
    thread: str = Field(min_length=1)
    turn: int = Field(ge=0)
    role: Role
    modality: Modality
    artifact_id: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 in the ArtifactStore")
    mime: str
    caption: str | None = None
    instruction: str | None = Field(
        default=None, description="the request that produced an output (edit text)"
    )
    parent_ids: tuple[str, ...] = Field(default=(), description="artifact ids this medium was made from")
    parent_items: tuple[str, ...] = Field(
        default=(), description="item ids of those parents, where memory held them when this item was added"
    )
    task: str | None = Field(default=None, description="task kind, e.g. 'edit', 'generate', 'analogy'")
    subject: str | None = Field(
        default=None, description="a name that groups media of one subject across turns"
    )
    created_at: float
    updated_at: float
    distance: float | None = Field(default=None, description="query distance (cosine); None outside queries")

    @field_validator("parent_ids")
    @classmethod
    def _check_parents(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not _SHA_RE.match(p):
                raise ValueError(f"parent id {p!r} is not an artifact id (64 lowercase hex digits)")
        return v

    @field_validator("parent_items")
    @classmethod
    def _check_parent_items(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for p in v:
            if not _ITEM_RE.match(p):
                raise ValueError(f"parent item id {p!r} is not an item id (32 lowercase hex digits)")
        return v

    @property
    def shared(self) -> bool:
        """True for items of the shared exemplar bank."""
        return self.tenant == SHARED_TENANT

    @property
    def is_edit(self) -> bool:
        """An output made from earlier media (one step of an edit chain)."""
        return self.role == "output" and bool(self.parent_ids)

    @property
    def ref(self) -> MediaRef:
        """The `MediaRef` of this item's artifact (what graph state carries)."""
        return MediaRef(
            id=self.artifact_id,
            uri=URI_SCHEME + self.artifact_id,
            modality=self.modality,
            mime=self.mime,
            caption=self.caption,
            turn=self.turn,
        )

    # --- Chroma record mapping ------------------------------------------------------------------
    def to_metadata(self) -> dict[str, str | int | float | bool]:
        meta: dict[str, str | int | float | bool] = {
            "v": SCHEMA_VERSION,
            "tenant": self.tenant,
            "thread": self.thread,
            "turn": self.turn,
            "role": self.role,
            "modality": self.modality.value,
            "artifact_id": self.artifact_id,
            "short_id": self.artifact_id[:12],  # indexed prefix for "@m:ab12cd34ef56"-style references
            "mime": self.mime,
            "parent_ids": ",".join(self.parent_ids),
            "parent_items": ",".join(self.parent_items),
            "edit": self.is_edit,  # a flat flag, so "edit pairs only" is a plain equality filter
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }
        for key in ("caption", "instruction", "task", "subject"):
            value = getattr(self, key)
            if value is not None:  # Chroma treats None as "delete this key": store absence instead
                meta[key] = value
        return meta

    @classmethod
    def from_record(
        cls, record_id: str, metadata: Mapping[str, Any] | None, *, distance: float | None = None
    ) -> MemoryItem:
        """Validate a stored record; raises `CorruptMetadataError` naming the item and what is wrong."""
        if not metadata:
            raise CorruptMetadataError(f"memory item {record_id!r} has no metadata")
        missing = [k for k in _REQUIRED if k not in metadata]
        if missing:
            raise CorruptMetadataError(f"memory item {record_id!r} lacks metadata field(s) {missing}")
        if metadata["v"] != SCHEMA_VERSION:
            raise CorruptMetadataError(
                f"memory item {record_id!r} has schema version {metadata['v']!r}; "
                f"this code reads {SCHEMA_VERSION}"
            )
        joined = {}
        for key in ("parent_ids", "parent_items"):
            raw = metadata.get(key, "")
            if not isinstance(raw, str):
                raise CorruptMetadataError(f"memory item {record_id!r}: {key} must be a comma-joined string")
            joined[key] = tuple(p for p in raw.split(",") if p)
        fields = {k: metadata[k] for k in cls.model_fields if k in metadata and k not in joined}
        fields.update(
            joined,
            id=record_id,
            updated_at=metadata.get("updated_at", metadata["created_at"]),
            distance=distance,
        )
        try:
            item = cls.model_validate(fields, strict=False)
        except ValidationError as e:
            problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
            raise CorruptMetadataError(
                f"memory item {record_id!r} has invalid metadata ({problems})"
            ) from None
        # Strict types for what validation would coerce: a turn stored as "3" is damage, not data.
        if isinstance(metadata["turn"], bool) or not isinstance(metadata["turn"], int):
            raise CorruptMetadataError(
                f"memory item {record_id!r}: turn must be an int, got {metadata['turn']!r}"
            )
        expected = item_id(item.tenant, item.thread, item.turn, item.role, item.artifact_id)
        if expected != record_id:
            raise CorruptMetadataError(
                f"memory item {record_id!r}: its metadata (tenant/thread/turn/role/artifact) hashes to "
                f"{expected!r}; the record was altered or written by other code"
            )
        return item


def recency_key(item: MemoryItem) -> tuple[int, bool, float, str]:
    """Sort key for "latest": turn, then outputs after inputs of the same turn, then write time."""
    return (item.turn, item.role == "output", item.created_at, item.id)


@dataclass(frozen=True)
class NewItem:
    """What a caller tells the memory about one medium to remember (see `ExemplarMemory.add_many`).

    `turn` defaults to `ref.turn` and `caption` to `ref.caption`. `parents` are the media this one
    was made from (an edit's source), as `MediaRef`s, artifact ids or `artifact://` uris.
    """

    thread: str
    ref: MediaRef
    turn: int | None = None
    role: Role = "input"
    parents: Sequence[MediaRef | str] = field(default_factory=tuple)
    task: str | None = None
    subject: str | None = None
    caption: str | None = None
    instruction: str | None = None

    def to_item(self, tenant: str, now: float, created_at: float | None = None) -> MemoryItem:
        """The `MemoryItem` this describes; raises `ValueError` naming the bad argument."""
        if not isinstance(self.ref, MediaRef):
            raise TypeError(f"ref must be a MediaRef, got {type(self.ref).__name__}")
        if not isinstance(self.thread, str) or not self.thread:
            raise ValueError(f"thread must be a non-empty string, got {self.thread!r}")
        turn = self.turn if self.turn is not None else self.ref.turn
        if turn is None:
            raise ValueError(f"item {self.ref.short_id}: no turn given and its MediaRef carries none")
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise ValueError(f"turn must be a non-negative int, got {turn!r}")
        if self.role not in ("input", "output"):
            raise ValueError(f"role must be 'input' or 'output', got {self.role!r}")
        if isinstance(self.parents, (str, MediaRef)):
            raise TypeError("parents must be a sequence of MediaRefs / ids, not a single one")
        parents = tuple(dict.fromkeys(ArtifactStore.parse_id(p) for p in self.parents))
        caption = self.caption if self.caption is not None else self.ref.caption
        return MemoryItem(
            id=item_id(tenant, self.thread, turn, self.role, self.ref.id),
            tenant=tenant,
            thread=self.thread,
            turn=turn,
            role=self.role,
            modality=self.ref.modality,
            artifact_id=self.ref.id,
            mime=self.ref.mime or _DEFAULT_MIME[self.ref.modality],
            caption=caption,
            instruction=self.instruction,
            parent_ids=parents,
            task=self.task,
            subject=self.subject,
            created_at=created_at if created_at is not None else now,
            updated_at=now,
        )


@dataclass(frozen=True)
class EditPair:
    """An edit exemplar: `source` became `target` (following `target.instruction`, if recorded)."""

    source: MemoryItem
    target: MemoryItem
    distance: float | None = None

    @property
    def instruction(self) -> str | None:
        return self.target.instruction

    @property
    def items(self) -> tuple[MemoryItem, MemoryItem]:
        return (self.source, self.target)
