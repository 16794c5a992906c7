"""Small real media for tests."""

from __future__ import annotations

import numpy as np

from codi2_agent.media import Media


def image(seed: int, size: int = 32) -> Media:
    return Media.from_image(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def tone(freq: float = 440.0, sr: int = 16000, seconds: float = 1.0) -> Media:
    t = np.arange(int(sr * seconds)) / sr
    return Media.from_audio((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), sr)
