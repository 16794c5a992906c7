"""Media that flows through codi2-agent: text, RGB images and mono audio, and references to them.

`Media` holds decoded content (a PIL image, a float32 waveform with its sample rate, or text) and
is what the model reads and writes. `MediaRef` is what graph state, checkpoints and memory carry:
a small, serialisable pointer into the `ArtifactStore` (sha256 id, uri, modality, mime, caption).

Example:
    >>> import numpy as np
    >>> m = Media.from_audio(np.zeros(16000, dtype=np.float32), sample_rate=16000)
    >>> m.modality, round(m.duration_s, 2)
    (<Modality.AUDIO: 'audio'>, 1.0)
    >>> Media.from_content_block(m.to_content_block()).sample_rate
    16000
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import struct
import warnings
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from codi2_agent._media_errors import (
    CorruptMediaError,
    EmptyMediaError,
    MediaError,
    MediaNotFoundError,
    MediaPathError,
    MediaTooLargeError,
    SampleRateError,
    UnknownLengthError,
    UnknownModalityError,
    UnsupportedFormatError,
)
from codi2_agent._media_files import (
    read_media_file,
    shorten,
)

__all__ = [
    "CorruptMediaError",
    "EmptyMediaError",
    "HasMedia",
    "Media",
    "MediaError",
    "MediaLimits",
    "MediaNotFoundError",
    "MediaPathError",
    "MediaRef",
    "MediaTooLargeError",
    "Modality",
    "OutputKind",
    "SampleRateError",
    "Task",
    "UnknownLengthError",
    "UnsupportedFormatError",
]


# What a generation call may be asked to produce: "auto" lets the model choose.
OutputKind = Literal["auto", "text", "image", "audio"]
# What a conversation turn asks for (the session graph's tasks; pipelines and tools name them too).
Task = Literal["generate", "edit", "analogy", "compose", "describe", "recall"]


class Modality(StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"

    @classmethod
    def parse(cls, value: str | Modality) -> Modality:
        try:
            return cls(value)
        except ValueError:
            raise UnknownModalityError(
                f"unknown modality {value!r}; expected one of {[m.value for m in cls]}"
            ) from None


# --- errors: every one is a ValueError, so callers may catch the family or a specific case -------
@dataclass(frozen=True)
class MediaLimits:
    """Caps applied when media enters the system (files, bytes, content blocks)."""

    max_bytes: int = 25 * 1024 * 1024  # raw encoded size
    max_pixels: int = 4096 * 4096  # PIL's own bomb check fires at 2x its limit; we refuse earlier
    max_duration_s: float = 60.0
    max_channels: int = 8  # FLAC's own maximum; decoding cost grows with channels x frames
    min_sample_rate: int = 4000
    max_sample_rate: int = 192_000
    image_formats: frozenset[str] = field(
        default_factory=lambda: frozenset({"PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"})
    )
    audio_formats: frozenset[str] = field(default_factory=lambda: frozenset({"WAV", "FLAC", "OGG"}))


DEFAULT_LIMITS = MediaLimits()

_IMAGE_MIME = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
}
_AUDIO_MIME = {"WAV": "audio/wav", "FLAC": "audio/flac", "OGG": "audio/ogg"}
MIME_TO_EXT = {"image/png": ".png", "audio/wav": ".wav", "text/plain": ".txt"}


class MediaRef(BaseModel):
    """A pointer to stored media; what state, checkpoints and memory hold instead of bytes.

    `id` is the sha256 of the stored bytes, so equal content always has the same id.
    """

    model_config = ConfigDict(frozen=True)

    id: str = Field(pattern=r"^[0-9a-f]{64}$", description="sha256 of the stored bytes")
    uri: str = Field(description="artifact://<id>")
    modality: Modality
    mime: str
    caption: str | None = None
    turn: int | None = None

    @property
    def short_id(self) -> str:
        return self.id[:12]


class Media:
    """Decoded text, image (RGB PIL) or audio (mono float32 numpy + sample rate).

    Build with `Media.from_text`, `Media.from_image`, `Media.from_audio` or `Media.open(path | bytes)`.
    """

    __slots__ = ("_audio", "_image", "_text", "caption", "content_id", "modality", "sample_rate")

    def __init__(
        self,
        modality: Modality | str,
        *,
        text: str | None = None,
        image: Image.Image | None = None,
        audio: np.ndarray | None = None,
        sample_rate: int | None = None,
        caption: str | None = None,
    ) -> None:
        self.modality = Modality.parse(modality)
        self._text, self._image, self._audio = text, image, audio
        self.sample_rate = sample_rate
        self.caption = caption
        # sha256 of the canonical bytes when a store has computed it (the artifact id): lets caches
        # key on content without re-encoding the medium.
        self.content_id: str | None = None
        if self.modality is Modality.TEXT and not isinstance(text, str):
            raise MediaError("text media needs a str")
        if self.modality is Modality.IMAGE and not isinstance(image, Image.Image):
            raise MediaError("image media needs a PIL image")
        if self.modality is Modality.AUDIO:
            if audio is None:
                raise MediaError("audio media needs a waveform")
            _check_sample_rate(sample_rate, DEFAULT_LIMITS)

    # --- constructors ---------------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str) -> Media:
        return cls(Modality.TEXT, text=text)

    @classmethod
    def from_image(cls, image: Image.Image | np.ndarray, *, caption: str | None = None) -> Media:
        """An RGB image from PIL or an (H, W, 3) uint8 / float-in-[0, 1] array."""
        if isinstance(image, np.ndarray):
            arr = image
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise MediaError(f"image array must be (H, W, 3), got shape {arr.shape}")
            if arr.dtype != np.uint8:
                arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
            image = Image.fromarray(arr, mode="RGB")
        if not isinstance(image, Image.Image):
            raise MediaError(f"expected a PIL image or numpy array, got {type(image).__name__}")
        return cls(Modality.IMAGE, image=image.convert("RGB"), caption=caption)

    @classmethod
    def from_audio(
        cls,
        waveform: np.ndarray,
        sample_rate: int | None,
        *,
        caption: str | None = None,
        limits: MediaLimits = DEFAULT_LIMITS,
        channel_axis: int | None = None,
    ) -> Media:
        """Mono float32 audio; multichannel (C, N) or (N, C) input is averaged to mono.

        Args:
            channel_axis: the axis of a 2-D `waveform` that holds the channels (soundfile's
                ``(frames, channels)`` is 1). None takes the shorter axis, which is right for any
                clip with more samples than channels; give it when a clip may be shorter than that.
        """
        _check_sample_rate(sample_rate, limits)
        wav = np.asarray(waveform)
        if wav.size == 0:  # before averaging: the mean of nothing is NaN, which would misname it
            raise EmptyMediaError(f"audio has no samples (shape {wav.shape})")
        if wav.ndim == 2:
            axis = channel_axis if channel_axis is not None else int(wav.shape[0] >= wav.shape[1])
            if axis not in (0, 1):
                raise MediaError(f"channel_axis must be 0 or 1 for a 2-D waveform, got {channel_axis}")
            wav = wav.mean(axis=axis)
        if wav.ndim != 1:
            raise MediaError(f"audio must be a 1-D (or 2-D multichannel) array, got {wav.shape}")
        if np.issubdtype(wav.dtype, np.integer):
            wav = wav.astype(np.float32) / float(np.iinfo(wav.dtype).max)
        wav = wav.astype(np.float32, copy=False)
        if not np.isfinite(wav).all():
            raise CorruptMediaError("audio contains NaN or infinite samples")
        assert sample_rate is not None
        if wav.size / sample_rate > limits.max_duration_s:
            raise MediaTooLargeError(
                f"audio is {wav.size / sample_rate:.1f} s long; the limit is {limits.max_duration_s:.0f} s"
            )
        return cls(Modality.AUDIO, audio=wav, sample_rate=sample_rate, caption=caption)

    @classmethod
    def open(
        cls,
        source: str | Path | bytes,
        *,
        limits: MediaLimits = DEFAULT_LIMITS,
        caption: str | None = None,
        name: str | None = None,
    ) -> Media:
        """Decode an image or audio file (path or raw bytes), validating format and size.

        A path is opened once and read from that descriptor; it must be a regular file (a folder,
        pipe or device is a `MediaPathError`, a missing file a `MediaNotFoundError`). `name` is
        what error messages call raw bytes (default ``"media bytes"``).
        """
        if isinstance(source, (str, Path)):
            where = shorten(str(source))
            data = read_media_file(source, limits.max_bytes)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            data = bytes(source)
            where = name or "media bytes"
        else:
            raise TypeError(f"Media.open takes a path or bytes, not {type(source).__name__}")
        if not data:  # said plainly: sniffing would call it an unsupported format
            raise EmptyMediaError(f"{where} is empty (0 bytes): nothing to decode")
        if len(data) > limits.max_bytes:
            raise MediaTooLargeError(f"{where}: {len(data)} bytes; the limit is {limits.max_bytes}")
        kind = _sniff(data)
        if kind == "image":
            return _decode_image(data, limits, where, caption)
        if kind == "audio":
            return _decode_audio(data, limits, where, caption)
        raise UnsupportedFormatError(
            f"{where}: not a supported image ({sorted(limits.image_formats)}) "
            f"or audio ({sorted(limits.audio_formats)}) format"
        )

    # --- accessors ------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        if self._text is None:
            raise MediaError(f"{self.modality.value} media has no text")
        return self._text

    @property
    def image(self) -> Image.Image:
        if self._image is None:
            raise MediaError(f"{self.modality.value} media has no image")
        return self._image

    @property
    def audio(self) -> np.ndarray:
        if self._audio is None:
            raise MediaError(f"{self.modality.value} media has no audio")
        return self._audio

    @property
    def duration_s(self) -> float:
        return self.audio.size / float(self.sample_rate or 1)

    # --- normalisation for a model ---------------------------------------------------------------
    def resized(self, size: int | tuple[int, int]) -> Media:
        """The image resized (bicubic, no crop) to `size` (square int or (W, H))."""
        wh = (size, size) if isinstance(size, int) else size
        img = self.image if self.image.size == wh else self.image.resize(wh, Image.Resampling.BICUBIC)
        return Media(Modality.IMAGE, image=img, caption=self.caption)

    def resampled(self, sample_rate: int) -> Media:
        """The audio resampled (polyphase, anti-aliased) to `sample_rate`."""
        _check_sample_rate(sample_rate, DEFAULT_LIMITS)
        assert self.sample_rate is not None
        if sample_rate == self.sample_rate:
            return self
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sample_rate, self.sample_rate)
        wav = resample_poly(self.audio, sample_rate // g, self.sample_rate // g).astype(np.float32)
        return Media(Modality.AUDIO, audio=wav, sample_rate=sample_rate, caption=self.caption)

    def image_array(self) -> np.ndarray:
        """(H, W, 3) float32 in [0, 1]."""
        return np.asarray(self.image, dtype=np.float32) / 255.0

    # --- serialisation --------------------------------------------------------------------------
    def to_bytes(self) -> tuple[bytes, str]:
        """Canonical encoded bytes and mime type: PNG for images, float WAV for audio, UTF-8 text.

        Canonical means deterministic, so the same content always hashes to the same artifact id.
        """
        if self.modality is Modality.IMAGE:
            buf = io.BytesIO()
            self.image.save(buf, format="PNG", optimize=False)
            return buf.getvalue(), "image/png"
        if self.modality is Modality.AUDIO:
            return _float_wav(self.audio, int(self.sample_rate or 0)), "audio/wav"
        return self.text.encode("utf-8"), "text/plain"

    def sha256(self) -> str:
        if self.content_id is not None:
            return self.content_id
        return hashlib.sha256(self.to_bytes()[0]).hexdigest()

    def save(self, path: str | Path) -> Path:
        """Write to `path` (PNG / WAV / TXT by modality; the suffix is added when missing)."""
        data, mime = self.to_bytes()
        path = Path(path)
        if not path.suffix:
            path = path.with_suffix(MIME_TO_EXT[mime])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def to_content_block(self) -> dict[str, Any]:
        """A LangChain v1 content block: `{"type": "image"|"audio", "base64": ..., "mime_type": ...}`."""
        if self.modality is Modality.TEXT:
            return {"type": "text", "text": self.text}
        data, mime = self.to_bytes()
        return {
            "type": self.modality.value,
            "base64": base64.b64encode(data).decode("ascii"),
            "mime_type": mime,
        }

    @classmethod
    def from_content_block(cls, block: dict[str, Any], *, limits: MediaLimits = DEFAULT_LIMITS) -> Media:
        """Decode a v1 content block carrying inline data (`base64`, or a `data:` url)."""
        kind = block.get("type")
        if kind == "text":
            return cls.from_text(str(block.get("text", "")))
        if kind not in ("image", "audio"):
            raise UnknownModalityError(f"content block type {kind!r} is not text, image or audio")
        payload = block.get("base64") or block.get("data")
        url = block.get("url")
        if payload is None and isinstance(url, str) and url.startswith("data:"):
            payload = url.split(",", 1)[1] if "," in url else ""
        if payload is None:
            raise MediaError(
                f"{kind} content block carries no inline data (base64 or data: url); "
                "file ids and artifact uris are resolved by the ArtifactStore"
            )
        if len(payload) > limits.max_bytes * 4 // 3 + 4:
            raise MediaTooLargeError(f"{kind} block is larger than {limits.max_bytes} bytes")
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as e:
            raise CorruptMediaError(f"{kind} content block: invalid base64 ({e})") from None
        media = cls.open(data, limits=limits)
        if media.modality.value != kind:
            raise MediaError(f"content block says {kind!r} but its data is {media.modality.value}")
        return media

    # --- notebook display -----------------------------------------------------------------------
    def _repr_png_(self) -> bytes | None:
        return self.to_bytes()[0] if self.modality is Modality.IMAGE else None

    def _repr_html_(self) -> str | None:
        if self.modality is not Modality.AUDIO:
            return None
        b64 = base64.b64encode(self.to_bytes()[0]).decode("ascii")
        return f'<audio controls src="data:audio/wav;base64,{b64}"></audio>'

    def __repr__(self) -> str:
        if self.modality is Modality.IMAGE:
            detail = f"{self.image.size[0]}x{self.image.size[1]}"
        elif self.modality is Modality.AUDIO:
            detail = f"{self.duration_s:.2f}s@{self.sample_rate}Hz"
        else:
            detail = repr(self.text[:40])
        return f"Media({self.modality.value}, {detail}" + (
            f", caption={self.caption!r})" if self.caption else ")"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Media) or other.modality is not self.modality:
            return NotImplemented if not isinstance(other, Media) else False
        if self.modality is Modality.TEXT:
            return self.text == other.text
        if self.modality is Modality.IMAGE:
            return self.image.size == other.image.size and np.array_equal(
                np.asarray(self.image), np.asarray(other.image)
            )
        return self.sample_rate == other.sample_rate and np.array_equal(self.audio, other.audio)

    __hash__ = None  # type: ignore[assignment]


class HasMedia:
    """The first image and the first sound of an answer's media, as `.image` and `.audio`.

    A mixin for results that carry media (`GenerationOutput`, `TurnResult`): the class provides
    `media`, a list of `Media` (a field, or a property that loads them), and gets the two shortcuts,
    each the first medium of its modality or None when the answer has none.
    """

    __slots__ = ()

    if TYPE_CHECKING:  # declared for type checkers only: a class attribute here would shadow a field

        @property
        def media(self) -> list[Media]: ...

    @property
    def image(self) -> Media | None:
        return self._first(Modality.IMAGE)

    @property
    def audio(self) -> Media | None:
        return self._first(Modality.AUDIO)

    def _first(self, modality: Modality) -> Media | None:
        return next((m for m in self.media if m.modality is modality), None)


# --- decoding helpers ---------------------------------------------------------------------------
def _float_wav(samples: np.ndarray, sample_rate: int) -> bytes:
    """Mono 32-bit float WAV, written byte by byte: libsndfile adds a PEAK chunk with the time of
    writing, so the same sound written a second later would hash to another artifact id."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # 3: IEEE float
    size = 4 + (8 + len(fmt)) + (8 + len(data))
    return b"".join(
        [b"RIFF", struct.pack("<I", size), b"WAVE", b"fmt ", struct.pack("<I", len(fmt)), fmt,
         b"data", struct.pack("<I", len(data)), data]
    )  # fmt: skip


def _check_sample_rate(sample_rate: int | None, limits: MediaLimits) -> None:
    if sample_rate is None:
        raise SampleRateError("audio needs a sample_rate (Hz); none was given")
    if not isinstance(sample_rate, (int, np.integer)) or isinstance(sample_rate, bool):
        raise SampleRateError(f"sample_rate must be an int in Hz, got {sample_rate!r}")
    if not limits.min_sample_rate <= sample_rate <= limits.max_sample_rate:
        raise SampleRateError(
            f"sample_rate {sample_rate} Hz is outside the accepted range "
            f"{limits.min_sample_rate}-{limits.max_sample_rate} Hz"
        )


def _sniff(data: bytes) -> Literal["image", "audio"] | None:
    head = data[:16]
    if head.startswith((b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    ):
        return "image"
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head.startswith((b"fLaC", b"OggS")):
        return "audio"
    return None


def _decode_image(data: bytes, limits: MediaLimits, where: str, caption: str | None) -> Media:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "?"
            if fmt not in limits.image_formats:
                raise UnsupportedFormatError(f"{where}: image format {fmt} is not accepted")
            w, h = img.size
            if w * h > limits.max_pixels:  # checked on the header, before any pixel is decoded
                raise MediaTooLargeError(
                    f"{where}: {w}x{h} = {w * h} pixels; the limit is {limits.max_pixels}"
                )
            img.load()
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaTooLargeError(f"{where}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise CorruptMediaError(f"{where}: corrupt or truncated image ({e})") from None
    return Media(Modality.IMAGE, image=img.convert("RGB"), caption=caption)


# libsndfile reports SF_COUNT_MAX frames when a header has no length (e.g. a FLAC STREAMINFO
# total of 0); no real header field comes near this, so anything past it is "unknown".
_UNKNOWN_FRAMES = 2**62


def _decode_audio(data: bytes, limits: MediaLimits, where: str, caption: str | None) -> Media:
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
        if info.format not in limits.audio_formats:
            raise UnsupportedFormatError(f"{where}: audio format {info.format} is not accepted")
        _check_audio_header(info.frames, info.channels, info.samplerate, limits, where)
        wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except MediaError:
        raise
    except (RuntimeError, sf.LibsndfileError, ValueError) as e:
        raise CorruptMediaError(f"{where}: corrupt or truncated audio ({e})") from None
    if wav.shape[0] == 0:
        raise EmptyMediaError(f"{where}: the audio has no samples (0 frames)")
    # soundfile gives (frames, channels): average over that axis, never guess it from the shape.
    return Media.from_audio(wav, int(sr), caption=caption, limits=limits, channel_axis=1)


def _check_audio_header(
    frames: int, channels: int, sample_rate: int, limits: MediaLimits, where: str
) -> None:
    """Refuse audio by its header, before a sample is decoded (decoding cost is frames x channels)."""
    cap = limits.max_duration_s
    _check_sample_rate(sample_rate, limits)
    if not 1 <= channels <= limits.max_channels:
        raise MediaTooLargeError(f"{where}: {channels} audio channels; the limit is {limits.max_channels}")
    if frames < 0 or frames >= _UNKNOWN_FRAMES:
        raise UnknownLengthError(
            f"{where}: the audio's header gives no usable length ({frames} frames), so it cannot be "
            f"held to the limit of {cap:.0f} s; write it with its length (e.g. re-encode the file)"
        )
    if frames == 0:
        raise EmptyMediaError(f"{where}: the audio has no samples (0 frames)")
    if frames / sample_rate > cap:
        raise MediaTooLargeError(f"{where}: {frames / sample_rate:.1f} s of audio; the limit is {cap:.0f} s")
