"""codi2-agent: CoDi-2-style any-to-any generation (text, image, audio) for agents, pipelines and notebooks.

Heavy parts (torch, transformers, diffusers, chroma, langgraph) load lazily, so `import codi2_agent`
stays fast; the names below resolve on first use.

Example:
    >>> from codi2_agent import Media
    >>> Media.from_text("hello").text
    'hello'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from codi2_agent.artifacts import ArtifactStore
    from codi2_agent.media import Media, MediaRef, Modality
    from codi2_agent.model import CoDi2Config, CoDi2Model, load_model

__all__ = ["ArtifactStore", "CoDi2Config", "CoDi2Model", "Media", "MediaRef", "Modality", "load_model"]
__version__ = "0.1.0"

_LAZY = {
    "ArtifactStore": "codi2_agent.artifacts",
    "Media": "codi2_agent.media",
    "MediaRef": "codi2_agent.media",
    "Modality": "codi2_agent.media",
    "CoDi2Config": "codi2_agent.model",
    "CoDi2Model": "codi2_agent.model",
    "load_model": "codi2_agent.model",
    "Session": "codi2_agent.session",
    "RemoteBackend": "codi2_agent.serving.remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'codi2_agent' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
