"""Errors raised by the exemplar memory.

Every error is an `ExemplarMemoryError`; each also derives from the builtin a caller would expect
(`ValueError` for bad input or bad stored data, `KeyError` for a missing item), so code may catch the
family, the builtin, or one specific case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = [
    "AmbiguousReferenceError",
    "CorruptMemoryError",
    "CorruptMetadataError",
    "EmbeddingDimensionError",
    "EncoderMismatchError",
    "EncoderUnavailableError",
    "ExemplarMemoryError",
    "UnknownReferenceError",
]


class ExemplarMemoryError(Exception):
    """Base class for every error raised by `codi2_agent.memory`."""


class EmbeddingDimensionError(ExemplarMemoryError, ValueError):
    """A vector whose length differs from the collection's encoder dimension.

    Raised before Chroma sees the vector, with both dimensions and encoder names in the message,
    instead of Chroma's terse "Collection expecting embedding with dimension of ...".
    """


class EncoderMismatchError(ExemplarMemoryError, ValueError):
    """Same dimension, different encoder: the vectors live in another space, so distances are noise."""


class EncoderUnavailableError(ExemplarMemoryError, LookupError):
    """A collection's embedding function names an encoder that this process has not registered."""


class UnknownReferenceError(ExemplarMemoryError, KeyError):
    """A reference (item id, artifact id or prefix, turn) that matches nothing in the tenant's memory."""

    def __str__(self) -> str:  # KeyError would print the message quoted
        return str(self.args[0]) if self.args else ""


class AmbiguousReferenceError(ExemplarMemoryError, ValueError):
    """A reference that matches several different items; the message lists the candidates."""


class CorruptMetadataError(ExemplarMemoryError, ValueError):
    """Stored metadata that does not follow the memory's schema (written by hand, or damaged)."""


class CorruptMemoryError(ExemplarMemoryError, ValueError):
    """An embedded memory's files are damaged beyond what opening it can repair: `folder` is the
    memory's folder, `reason` what failed (a damaged index whose vectors have no readable copy, an
    unreadable Chroma database, a damaged vector copy)."""

    def __init__(self, folder: Path, reason: str) -> None:
        super().__init__(f"exemplar memory {folder} is damaged: {reason}")
        self.folder = folder
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes, like other exceptions
        return (type(self), (self.folder, self.reason))
