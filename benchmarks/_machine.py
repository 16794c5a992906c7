"""What a CPU benchmark's figures depend on, for its header: the processor and its bf16 support.

A bf16 table from a CPU with AMX (Sapphire Rapids and later) and one from a CPU without it differ
several-fold, so every table that may run in bf16 names which kind of CPU made it.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

# cpuinfo flags that give bf16 matrix math its own hardware; without them torch converts bf16 to fp32
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_line() -> str:
    """``CPU: <model name>; torch kernels <capability>; bf16 hardware: <flags or none>``."""
    name, flags = platform.processor() or platform.machine(), set[str]()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    bf16 = ", ".join(flag for flag in BF16_FLAGS if flag in flags) or "none"
    return f"CPU: {name}; torch kernels {torch.backends.cpu.get_cpu_capability()}; bf16 hardware: {bf16}"
