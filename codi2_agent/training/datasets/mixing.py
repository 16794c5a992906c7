"""`mix`: interleave several sample streams with weights, deterministically.

Each next sample comes from a source drawn with probability proportional to its weight, among the
sources not yet exhausted; so a source with twice the weight supplies about twice the samples while
both last. Streams are pulled lazily, one sample at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

from codi2_agent.data.samples import Sample

__all__ = ["mix"]


def mix(
    sources: Mapping[str, Iterable[Sample]] | Sequence[Iterable[Sample]],
    weights: Mapping[str, float] | Sequence[float] | None = None,
    *,
    seed: int = 0,
    until: str = "all",
) -> Iterator[Sample]:
    """Samples of `sources` interleaved at random in proportion to `weights` (equal by default).

    Args:
        sources: named streams (``{"laion": ..., "audiocaps": ...}``) or a list of streams (then
            named ``"0"``, ``"1"``, ...). Each sample's ``meta["mix_source"]`` names where it came from.
        weights: one non-negative weight per source, by name or in order; not all zero.
        seed: the draws' seed: the same streams, weights and seed give the same order.
        until: ``"all"`` (go on until every source is exhausted, the weights renormalised over
            the rest) or ``"first"`` (stop when any source is exhausted, keeping the proportions).

    Raises:
        ValueError: mismatched or invalid weights, no sources, an unknown `until`.
    """
    named = dict(sources) if isinstance(sources, Mapping) else {str(i): s for i, s in enumerate(sources)}
    if not named:
        raise ValueError("mix needs at least one source")
    if until not in ("all", "first"):
        raise ValueError(f"until must be 'all' or 'first', got {until!r}")
    names = list(named)
    if weights is None:
        values = [1.0] * len(names)
    elif isinstance(weights, Mapping):
        if set(weights) != set(names):
            raise ValueError(f"weights name {sorted(weights)}, but the sources are {sorted(names)}")
        values = [float(weights[n]) for n in names]
    else:
        values = [float(w) for w in weights]
        if len(values) != len(names):
            raise ValueError(f"{len(values)} weights for {len(names)} sources")
    if any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {values}")
    return _interleave(names, [iter(named[n]) for n in names], np.asarray(values), seed, until)


def _interleave(
    names: list[str], streams: list[Iterator[Sample]], weights: np.ndarray, seed: int, until: str
) -> Iterator[Sample]:
    rng = np.random.default_rng(seed)
    live = weights > 0  # a source of weight 0 is never drawn
    while live.any():
        p = np.where(live, weights, 0.0)
        i = int(rng.choice(len(names), p=p / p.sum()))
        try:
            sample = next(streams[i])
        except StopIteration:
            if until == "first":
                return
            live[i] = False
            continue
        sample.meta["mix_source"] = names[i]
        yield sample
