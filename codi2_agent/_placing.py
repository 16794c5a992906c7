"""`device=` / `dtype=` / `device_map=` / `offload=` as `Session`, `CoDi2Toolkit`, `ChatCoDi2` and the
CLI take them: applied by loading the model with `load_model`, where they are resolved and checked.

Arguments left as None fall back to the `CODI2_*` environment (`codi2_agent.settings`) inside
`load_model`, so a model name with no arguments is simply passed on (and loads where it is used).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from codi2_agent.settings import SettingsError

if TYPE_CHECKING:
    import torch

    from codi2_agent.backends import Backend
    from codi2_agent.model import CoDi2Model

__all__ = ["load_placed"]

REMOTE_PREFIXES = ("http://", "https://")


def load_placed(
    model: str | Path | CoDi2Model | Backend,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    device_map: str | dict[str, Any] | None = None,
    offload: bool | None = None,
) -> str | Path | CoDi2Model | Backend:
    """`model` loaded with the given placement, or `model` unchanged when none is given.

    Raises:
        SettingsError: a placement was given for a model this process does not load — a model
            server's url or a `Backend` (its server places it), or a `CoDi2Model` already loaded
            (place it with ``load_model(..., dtype=...)`` instead); or a value `load_model` refuses.
    """
    placement: dict[str, Any] = {
        "device": device,
        "dtype": dtype,
        "device_map": device_map,
        "offload": offload,
    }
    given = {name: value for name, value in placement.items() if value is not None}
    if not given:
        return model
    names = ", ".join(f"{name}=" for name in given)
    if isinstance(model, str) and model.startswith(REMOTE_PREFIXES):
        raise SettingsError(
            f"{names} cannot place the model served at {model}: a model server sets its own device and "
            "dtype (its CODI2_DEVICE / CODI2_DTYPE)"
        )
    if not isinstance(model, (str, Path)):
        what = type(model).__name__
        raise SettingsError(
            f"{names} apply when the model is loaded by name or folder, not to a {what} that exists "
            "already; load it placed instead: load_model('tiny', dtype='bfloat16')"
        )
    from codi2_agent.model import load_model

    return load_model(model, device=device, dtype=dtype, device_map=device_map, offload=offload)
