"""Size-capped previews of produced media, as LangChain v1 content blocks a multimodal LLM can see.

Tool results normally carry ``artifact://`` references only: small, and safe to checkpoint, but
invisible to the agent's LLM, which then cannot check what an edit did. A preview is the medium
itself, made small enough for a chat request and for the agent's checkpoints:

- an image is a PNG; when that is larger than the cap it is downscaled (keeping its aspect) until it
  fits;
- a sound is a 16-bit PCM WAV (the form LLM APIs accept), resampled down to at most 16 kHz; when that
  is still too large, to 8 kHz, and then only its beginning is kept.

The cap counts the encoded file's bytes (its base64 text is 4/3 of that).

Example:
    >>> import numpy as np
    >>> from codi2_agent.media import Media
    >>> block, note = preview_block(Media.from_image(np.zeros((64, 64, 3), np.uint8)), max_bytes=100_000)
    >>> block["type"], block["mime_type"], note
    ('image', 'image/png', '64x64 PNG')
"""

from __future__ import annotations

import base64
import io
import math
import wave

import numpy as np
from PIL import Image

from codi2_agent.media import Media, Modality

__all__ = ["MIN_PREVIEW_BYTES", "preview_block"]

MIN_PREVIEW_BYTES = 1024  # below this no picture or sound says anything
_MAX_AUDIO_RATE = 16_000
_MIN_AUDIO_RATE = 8_000
_WAV_HEADER = 44
_MIN_SIDE = 8


def preview_block(media: Media, max_bytes: int) -> tuple[dict[str, str], str] | None:
    """A v1 ``image`` / ``audio`` block of `media` within `max_bytes`, and what it shows in words
    ("16x16 PNG, downscaled from 64x64"); None for text, or when nothing useful fits."""
    if max_bytes < MIN_PREVIEW_BYTES:
        raise ValueError(f"preview_max_bytes must be at least {MIN_PREVIEW_BYTES}, got {max_bytes}")
    if media.modality is Modality.IMAGE:
        found = _image_preview(media.image, max_bytes)
        mime = "image/png"
    elif media.modality is Modality.AUDIO:
        found = _audio_preview(media.audio, int(media.sample_rate or 0), max_bytes)
        mime = "audio/wav"
    else:
        return None
    if found is None:
        return None
    data, note = found
    block = {
        "type": media.modality.value,
        "base64": base64.b64encode(data).decode("ascii"),
        "mime_type": mime,
    }
    return block, note


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _image_preview(image: Image.Image, max_bytes: int) -> tuple[bytes, str] | None:
    width, height = image.size
    data = _png(image)
    if len(data) <= max_bytes:
        return data, f"{width}x{height} PNG"
    scale = 1.0
    while True:
        # PNG size grows about with the pixel count: shrink by the square root of the overshoot,
        # a little more each round so the loop ends in a few encodes.
        scale *= min(0.9, 0.95 * math.sqrt(max_bytes / len(data)))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        if min(size) < _MIN_SIDE:
            return None
        data = _png(image.resize(size, Image.Resampling.LANCZOS))
        if len(data) <= max_bytes:
            return data, f"{size[0]}x{size[1]} PNG, downscaled from {width}x{height}"


def _audio_preview(samples: np.ndarray, sample_rate: int, max_bytes: int) -> tuple[bytes, str] | None:
    if sample_rate <= 0 or samples.size == 0:
        return None
    duration = samples.size / sample_rate
    rate = min(sample_rate, _MAX_AUDIO_RATE)
    if _WAV_HEADER + 2 * math.ceil(duration * rate) > max_bytes:
        rate = min(sample_rate, _MIN_AUDIO_RATE)
    wav = _resample(samples, sample_rate, rate)
    fits = (max_bytes - _WAV_HEADER) // 2
    notes = [f"{rate} Hz 16-bit WAV"]
    if rate != sample_rate:
        notes.append(f"resampled from {sample_rate} Hz")
    if wav.size > fits:
        wav = wav[:fits]
        notes.append(f"the first {wav.size / rate:.2f} s of {duration:.2f} s")
    pcm = (np.clip(wav, -1.0, 1.0) * 32767.0).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
    return buf.getvalue(), ", ".join(notes)


def _resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return samples
    from scipy.signal import resample_poly  # anti-aliased, as `Media.resampled`

    g = math.gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)
