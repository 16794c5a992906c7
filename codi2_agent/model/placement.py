"""Where a CoDi-2 model runs and in what precision: one `Placement` for every component.

`load_model` / `CoDi2Model.from_pretrained` take `device`, `dtype`, `device_map` and `offload`;
what is not given comes from the `CODI2_*` environment (`codi2_agent.settings`). `Placement.resolve`
turns them into torch objects and checks them against this machine, so a bad request fails before
anything is loaded, with an error that names the argument or variable it came from.

Every floating parameter and buffer ends up in `dtype`, except the ones in `FLOAT32_BUFFERS`:
numeric constants that lose what they are for in 16 bits.

Example:
    >>> Placement.resolve(device="cpu", dtype="bf16").dtype
    torch.bfloat16
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from codi2_agent.settings import ENV_PREFIX, SettingsError, load_settings

__all__ = ["FLOAT32_BUFFERS", "DeviceUnavailableError", "Placement", "cast_floating", "parameter_placement"]

logger = logging.getLogger(__name__)

# Buffers kept in float32 whatever dtype the model is cast to, by owning class name:
# - STFT windows and mel filterbanks (our `MelSpectrogram`, the AudioLDM-2 decoder's training mel):
#   torch.stft/istft take no 16-bit input, and Griffin-Lim inverts the filterbank through its
#   pseudo-inverse, which bf16's 8-bit mantissa turns into audible error.
# - RoPE inverse frequencies: transformers itself loads them in float32 whatever `dtype` it is given
#   (positions times frequencies need float32 beyond a few hundred tokens); casting the LM keeps that.
FLOAT32_BUFFERS: dict[str, tuple[str, ...]] = {
    "MelSpectrogram": ("filters", "window", "filters_pinv"),
    "AudioLDM2Decoder": ("mel_filters", "window"),
    "LlamaRotaryEmbedding": ("inv_freq", "original_inv_freq"),
}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceUnavailableError(RuntimeError):
    """The device asked for does not exist on this machine (e.g. `cuda` with a CPU-only torch)."""


def cast_floating(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating parameters and buffers to `dtype` in place, sparing `FLOAT32_BUFFERS`.

    Assigns `.data`, so parameters keep their identity: tied weights stay tied and optimisers and
    accelerate hooks keep pointing at them.
    """
    for owner in module.modules():
        kept = FLOAT32_BUFFERS.get(type(owner).__name__, ())
        for tensor in owner._parameters.values():
            if tensor is not None and tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
        for name, buffer in owner._buffers.items():
            if buffer is None or not buffer.is_floating_point():
                continue
            target = torch.float32 if name in kept else dtype
            if buffer.dtype != target:
                owner._buffers[name] = buffer.to(target)
    return module


def parameter_placement(module: nn.Module) -> dict[str, list[str]]:
    """Where `module`'s weights are and in what precision, read from its parameters (not from the
    settings it was loaded with): ``{"dtypes": ["bfloat16"], "devices": ["cpu"]}``; one of each
    unless a part ignored the placement."""
    params = list(module.parameters())
    return {
        "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in params}),
        "devices": sorted({str(p.device) for p in params}),
    }


def _origin(name: str, given: bool) -> str:
    return f"argument {name}" if given else f"environment variable {ENV_PREFIX}{name.upper()}"


def _check_available(device: torch.device, origin: str) -> None:
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) was built without CUDA"
                if torch.version.cuda is None
                else "torch sees no CUDA GPU"
            )
            raise DeviceUnavailableError(
                f"{origin} asks for {str(device)!r}, but CUDA is not available: {why}; "
                "use device='cpu' (or 'auto')"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"{origin} asks for {str(device)!r}, but this machine has {count} CUDA device(s)"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailableError(f"{origin} asks for device 'mps', but MPS is not available here")


@dataclass(frozen=True)
class Placement:
    """Resolved placement. `device` None: follow the LM's input embeddings (set with a device map).
    `dtype` None: "auto", the LM checkpoint's own dtype (known once the LM is loaded)."""

    device: torch.device | None = None
    dtype: torch.dtype | None = torch.float32
    device_map: str | dict[str, Any] | None = None
    offload: bool = False

    @classmethod
    def resolve(
        cls,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        device_map: str | dict[str, Any] | None = None,
        offload: bool | None = None,
    ) -> Placement:
        """Arguments first, then `CODI2_*` variables, then defaults (cpu, float32, no map, no offload).

        Raises `SettingsError` for a value we cannot parse and `DeviceUnavailableError` for a
        device this machine lacks; both name where the value came from.
        """
        given = {"device": device is not None, "dtype": dtype is not None, "offload": offload is not None}
        strings: dict[str, Any] = {}
        if isinstance(device, str):
            strings["device"] = device
        if isinstance(dtype, str):
            strings["dtype"] = dtype
        if isinstance(device_map, str):
            strings["device_map"] = device_map
        if offload is not None:
            strings["offload"] = offload
        settings = load_settings(**strings)  # reads CODI2_* for everything not given
        # dtype
        if isinstance(dtype, torch.dtype):
            if dtype not in _DTYPES.values():
                raise SettingsError(f"argument dtype={dtype}: expected torch.float32, bfloat16 or float16")
            torch_dtype: torch.dtype | None = dtype
        else:
            torch_dtype = None if settings.dtype == "auto" else _DTYPES[settings.dtype]
        # device map (the LM only) and device (everything else, and the LM without a map)
        dev_map: str | dict[str, Any] | None = (
            device_map if isinstance(device_map, dict) else settings.device_map
        )
        name = device if isinstance(device, torch.device) else settings.device
        if name is None:
            resolved = None if dev_map is not None else torch.device("cpu")
        elif str(name) == "auto":
            resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            resolved = torch.device(name)
            _check_available(resolved, _origin("device", given["device"]))
        if isinstance(dev_map, str) and dev_map not in ("auto", "balanced", "balanced_low_0", "sequential"):
            _check_available(torch.device(dev_map), _origin("device_map", device_map is not None))
        # offload swaps pipeline models between CPU and an accelerator: it needs one
        if settings.offload and (resolved is None or resolved.type == "cpu"):
            if resolved is None and torch.cuda.is_available():
                resolved = torch.device("cuda")
            else:
                raise SettingsError(
                    f"{_origin('offload', given['offload'])} asks for CPU offload, which moves the diffusion "
                    "pipelines' models to an accelerator while they run; it needs device='cuda', got "
                    f"{str(resolved or 'cpu')!r}"
                )
        if torch_dtype is torch.float16 and resolved is not None and resolved.type == "cpu":
            logger.warning("float16 on CPU is slow and some CPU kernels lack it; bfloat16 is the CPU choice")
        return cls(device=resolved, dtype=torch_dtype, device_map=dev_map, offload=settings.offload)

    def lm_kwargs(self) -> dict[str, Any]:
        """transformers `from_pretrained` arguments for the LM."""
        kwargs: dict[str, Any] = {"dtype": self.dtype if self.dtype is not None else "auto"}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map  # accelerate dispatches the layers
        return kwargs
