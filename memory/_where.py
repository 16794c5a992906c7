"""Equality filters on item metadata, and the Chroma ``where`` clause they become.

Every query narrows by a handful of flat fields (thread, subject, modality, role, task, edit); they
are kept as a plain ``{field: value}`` mapping until the moment Chroma needs its own syntax, so the
same mapping can also be matched against metadata in Python (see `_search.py`'s over-fetch).

Example:
    >>> where = filters(thread="t1", modality="image", role=None)
    >>> where
    {'thread': 't1', 'modality': 'image'}
    >>> chroma_where(where)
    {'$and': [{'thread': 't1'}, {'modality': 'image'}]}
    >>> matches({"thread": "t1", "modality": "image", "turn": 3}, where), describe(where)
    (True, " with thread='t1', modality='image'")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from codi2_agent.media import Modality

__all__ = ["chroma_where", "describe", "filters", "matches"]


def filters(**fields: Any) -> dict[str, Any]:
    """The given fields that are not None, normalised (modality by name); checks `role`."""
    out = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "modality":
            value = Modality.parse(value).value
        if key == "role" and value not in ("input", "output"):
            raise ValueError(f"role must be 'input' or 'output', got {value!r}")
        out[key] = value
    return out


def chroma_where(fields: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Chroma's form of an equality filter: one clause, or an ``$and`` of several; None for none."""
    if not fields:
        return None
    clauses = [{k: v} for k, v in fields.items()]
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def matches(meta: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
    """Whether raw metadata satisfies every equality in `fields`."""
    return all(meta.get(k) == v for k, v in fields.items())


def describe(fields: Mapping[str, Any]) -> str:
    """The filter for an error message: ``" with thread='t1'"``, or nothing."""
    return (" with " + ", ".join(f"{k}={v!r}" for k, v in fields.items())) if fields else ""
