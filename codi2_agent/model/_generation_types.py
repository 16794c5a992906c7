"""What `generate` and `generate_batch` share besides methods: the answer (`GenerationOutput`), how one
answer's text is decoded (`_TextRules`), and the checks and seeding both apply to their arguments.
Its own module because both generation mixins (generation.py, _batch_generation.py) import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from codi2_agent.media import HasMedia, Media, Modality, OutputKind

__all__ = ["GenerationOutput"]


@dataclass(frozen=True)
class _TextRules:
    """How one answer's text is decoded (`CoDi2Model._text_rules`)."""

    target: Modality | None  # the medium the answer must end in (None: the model decides, or text only)
    banned: list[int]  # token ids never chosen
    budget: int  # most text tokens


def _output_kind(output: OutputKind | Modality) -> str:
    kind = str(output.value if isinstance(output, Modality) else output)
    if kind not in ("auto", "text", "image", "audio"):
        raise ValueError(f"output must be 'auto', 'text', 'image' or 'audio', got {output!r}")
    return kind


def _seeded_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with `seed` (None: the global RNG), as `generate` draws its noise."""
    return torch.Generator().manual_seed(seed) if seed is not None else None


@dataclass
class GenerationOutput(HasMedia):
    """`generate`'s result: the text answer and any generated media (with its c_MLLM features)."""

    text: str
    media: list[Media] = field(default_factory=list)
    features: torch.Tensor | None = None  # (K, D) c_MLLM of the generated medium
    modality: Modality = Modality.TEXT
    media_features: list[torch.Tensor] = field(default_factory=list)  # (K, D) C_x of each medium, if asked
    # With `verify=n`: cosine of the kept medium's C_x to c_MLLM, and of every decoded candidate's.
    agreement: float | None = None
    candidate_agreements: list[float] = field(default_factory=list)
