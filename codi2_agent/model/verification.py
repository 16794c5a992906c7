"""Self-check at generation time: decode several candidates for one c_MLLM and keep the one the
model itself agrees with most.

The LM predicts c_MLLM, a feature in the space of the model's own encoder C_x (training pulls
c_MLLM towards C_x(target), docs/architecture.md §3). A decoded medium whose re-encoding C_x(medium)
lies close to c_MLLM is one the decoder rendered faithfully; one far from it lost something on the
way (a wrong shape, a drifted pitch). So `generate(..., verify=n)` decodes up to n candidates —
different diffusion noise, the same c_MLLM, one LM pass — re-encodes them and keeps the one with the
highest cosine agreement. This needs nothing but the model's own parts, so it works for every preset
(at paper scale C_x is CLIP / CLAP, the spaces unCLIP and AudioLDM-2 are conditioned in).

Candidate 0 uses the caller's seed (so `verify=1` is the plain answer, scored); the others use
seeds derived from it, so a seeded call is deterministic.

Example:
    >>> from codi2_agent.model import CoDi2Config, CoDi2Model
    >>> model = CoDi2Model.from_config(CoDi2Config.tiny(), seed=0)
    >>> out = model.generate(["draw"], output="image", seed=0, verify=3, num_inference_steps=2)
    >>> len(out.candidate_agreements), out.agreement == max(out.candidate_agreements)
    (3, True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from codi2_agent.media import Media, Modality

if TYPE_CHECKING:
    from codi2_agent.model.decoders import MediaDecoder, ProgressCallback

__all__ = [
    "MAX_VERIFY",
    "Verified",
    "agreement",
    "candidate_seeds",
    "check_verify_arguments",
    "choose",
    "decode_verified",
]

# More candidates than this is a typo, not a setting: each one is a full diffusion decode.
MAX_VERIFY = 64
# Seeds stay within what `torch.Generator.manual_seed` and diffusers accept on every platform.
_SEED_BITS = 62


def check_verify_arguments(verify: int | None, threshold: float | None) -> None:
    """Refuse a bad `verify` / `verify_threshold` up front with a `ValueError` that names it."""
    if verify is not None and (
        isinstance(verify, bool) or not isinstance(verify, int) or not 1 <= verify <= MAX_VERIFY
    ):
        raise ValueError(f"verify must be an integer from 1 to {MAX_VERIFY} (candidates), got {verify!r}")
    if threshold is not None:
        if verify is None:
            raise ValueError("verify_threshold needs verify (the number of candidates to draw)")
        number = isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
        if not number or not math.isfinite(threshold):
            raise ValueError(f"verify_threshold must be a finite number (a cosine), got {threshold!r}")
        if not -1.0 <= float(threshold) <= 1.0:
            raise ValueError(f"verify_threshold is a cosine in [-1, 1], got {threshold!r}")


def candidate_seeds(seed: int | None, n: int) -> list[int | None]:
    """The diffusion seeds of `n` candidates: `seed` itself first, then seeds derived from it.

    With `seed=None` one candidate draws from the global RNG as a plain `generate` does; several
    start from a base seed drawn from the global torch RNG (so `torch.manual_seed` makes them repeat;
    a batch of diffusers generators cannot mix in the global RNG).
    """
    if n < 1:
        raise ValueError(f"need at least one candidate, got {n}")
    if seed is None and n == 1:
        return [None]
    base = seed if seed is not None else int(torch.randint(0, 2**_SEED_BITS, (1,)))
    derived = np.random.SeedSequence(entropy=abs(int(base)), spawn_key=(1 + (base < 0),))
    others = derived.generate_state(n - 1, dtype=np.uint64) >> np.uint64(64 - _SEED_BITS)
    return [base, *(int(s) for s in others)]


def agreement(c_mllm: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine between the predicted feature c_MLLM (K, D) and each candidate's C_x (N, K, D): (N,).

    The K vectors are compared as one flattened vector, as the decoders read them.
    """
    target = c_mllm.detach().float().flatten()
    feats = features.detach().float().flatten(1).to(target.device)
    return torch.nn.functional.cosine_similarity(feats, target[None], dim=-1)


@dataclass(frozen=True)
class Verified:
    """The kept candidate and what the check measured."""

    media: Media
    features: torch.Tensor  # (K, D) C_x of the kept medium
    agreement: float  # its cosine to c_MLLM
    agreements: list[float]  # every decoded candidate's, in candidate order
    index: int  # which candidate was kept


def decode_verified(
    decoder: MediaDecoder,
    encode: Callable[[Modality, Sequence[Media]], list[torch.Tensor]],
    c_mllm: torch.Tensor,
    *,
    n: int,
    seed: int | None,
    threshold: float | None = None,
    prompt: str | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    callback: ProgressCallback | None = None,
) -> Verified:
    """Decode up to `n` candidates of c_MLLM (K, D) and keep the one whose C_x agrees best with it.

    Without `threshold` every candidate goes through `decoder` in one call (one sampling loop for a
    decoder that batches rows; a pipeline decoder batches them as diffusers does). With `threshold`,
    candidate 0 is decoded first and kept if its agreement reaches the threshold; otherwise the rest
    are decoded in one call and the best of all n is kept. `encode(modality, media)` is the model's
    C_x, one pass for the candidates of a call. `callback` sees each decoder call's steps.
    """
    generators = [_generator(s) for s in candidate_seeds(seed, n)]

    def run(rows: list[torch.Generator | None]) -> tuple[list[Media], list[torch.Tensor]]:
        media = decoder.decode(
            c_mllm[None].expand(len(rows), *c_mllm.shape),
            # one row: the plain `generate` call exactly (a single generator, not a list of one)
            generator=rows[0] if len(rows) == 1 else rows,
            num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale,
            callback=callback,
            prompt=prompt,
        )
        return media, encode(decoder.modality, media)

    if threshold is None or n == 1:
        media, feats = run(generators)
    else:
        media, feats = run(generators[:1])
        if float(agreement(c_mllm, feats[0][None])[0]) < threshold:
            more_media, more_feats = run(generators[1:])
            media, feats = media + more_media, feats + more_feats
    scores = agreement(c_mllm, torch.stack(feats)).tolist()
    best = choose(scores, threshold)
    return Verified(media[best], feats[best], scores[best], scores, best)


def choose(scores: Sequence[float], threshold: float | None = None) -> int:
    """The kept candidate: 0 when its score reaches `threshold`, else the best (ties: the earliest)."""
    if threshold is not None and scores[0] >= threshold:
        return 0
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None
