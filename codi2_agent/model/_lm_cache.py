"""The KV cache of a transformers causal LM, under either of its names.

transformers 5.24 renamed the forward argument and output field ``past_key_values`` to ``cache``
(the old name is deprecated there and goes in 5.40). GPU images often ship an earlier 5.x, so the
generation loops ask for the cache through these two functions instead of naming either field;
`drop_last` takes rejected draft tokens back out of it.
"""

from __future__ import annotations

from typing import Any

from transformers.modeling_outputs import CausalLMOutputWithPast

_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def cache_kwargs(past: Any) -> dict[str, Any]:
    """The forward keyword that hands `past` (a KV cache, or None) back to the LM."""
    return {_FIELD: past}


def cache_of(output: Any) -> Any:
    """The KV cache a forward pass with ``use_cache=True`` returned."""
    return getattr(output, _FIELD)


def drop_last(cache: Any, n: int) -> None:
    """Forget the cache's last `n` positions (draft tokens the greedy choice did not keep).

    `crop` with a negative count removes that many tokens in every transformers 5.x (a positive
    argument means a length in earlier releases and is refused from 5.24 on)."""
    if n > 0:
        cache.crop(-n)
