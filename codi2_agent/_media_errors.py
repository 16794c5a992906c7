"""The named errors of media handling (`codi2_agent.media` re-exports them).

A module of its own so that file reading (`codi2_agent._media_files`) and decoding share them
without importing each other.
"""

from __future__ import annotations

__all__ = [
    "CorruptMediaError",
    "EmptyMediaError",
    "MediaError",
    "MediaNotFoundError",
    "MediaPathError",
    "MediaTooLargeError",
    "SampleRateError",
    "UnknownLengthError",
    "UnknownModalityError",
    "UnsupportedFormatError",
]


class MediaError(ValueError):
    """Base class for bad media input."""


class UnsupportedFormatError(MediaError):
    """The bytes are a format we do not accept (or not media at all)."""


class CorruptMediaError(MediaError):
    """The bytes claim a supported format but cannot be decoded."""


class EmptyMediaError(MediaError):
    """A file (or bytes) with nothing in it: often a download or copy that did not finish."""


class MediaTooLargeError(MediaError):
    """Too many bytes, pixels, channels or seconds."""


class UnknownLengthError(MediaTooLargeError):
    """Audio whose header gives no usable length, so it cannot be held to the duration limit."""


class MediaPathError(MediaError):
    """A path that names no readable media file: a NUL byte, too long, a folder, a pipe, unreadable."""


class MediaNotFoundError(MediaPathError, FileNotFoundError):
    """No file at the path (also a `FileNotFoundError`)."""


class SampleRateError(MediaError):
    """Audio without a sample rate, or with one we cannot use."""


class UnknownModalityError(MediaError):
    """A modality name that is not text, image or audio."""
