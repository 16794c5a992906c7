"""Fuzzed media: random bytes and damaged real files only ever raise a `MediaError`, and never hang.

Everything a user or an agent sends is decoded by `Media.open` (directly, or through
`ArtifactStore.put_bytes`), so no byte string may get any other exception out of it (which would
crash a turn instead of naming the bad input) or keep it busy. Inputs: arbitrary bytes, bytes behind
each accepted format's magic number (so they reach the decoders), and real PNG / JPEG / GIF / WAV /
FLAC / OGG files flipped, truncated, spliced or with a header field overwritten.
"""

from __future__ import annotations

import contextlib
import faulthandler
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from codi2_agent.artifacts import ArtifactStore
from codi2_agent.media import Media, MediaError, MediaLimits

# Small caps keep a damaged header that claims a long clip or a big picture cheap to refuse.
LIMITS = MediaLimits(max_bytes=1 << 20, max_pixels=512 * 512, max_duration_s=5.0)
HANG_S = 120  # the whole module: a decoder stuck in C cannot be interrupted, only reported


def _image(fmt: str) -> bytes:
    arr = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _audio(fmt: str, subtype: str | None = None) -> bytes:
    t = np.arange(2000) / 8000
    wav = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 220 * t)], axis=1).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, 0.3 * wav, 8000, format=fmt, subtype=subtype)
    return buf.getvalue()


SEEDS = {
    "png": _image("PNG"),
    "jpeg": _image("JPEG"),
    "gif": _image("GIF"),
    "bmp": _image("BMP"),
    "wav": _audio("WAV", "PCM_16"),
    "wav-float": _audio("WAV", "FLOAT"),
    "flac": _audio("FLAC"),
    "ogg": _audio("OGG"),
}
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"fLaC", b"OggS"]
MAGIC += [b"RIFF\x00\x00\x00\x00WAVE", b"RIFF\x00\x00\x00\x00WEBP"]


@st.composite
def damaged_files(draw: st.DrawFn) -> bytes:
    """A real file with a few flipped bytes, a cut, a spliced-in run, or a header field overwritten."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 4))):
        if not data:  # cut to nothing: still a case worth sending
            break
        how = draw(st.sampled_from(["flip", "cut", "splice", "header"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if how == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif how == "cut":
            del data[at:]
        elif how == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:  # lengths, sizes, counts and rates live in the first few dozen bytes
            field = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
            start = draw(st.integers(0, min(60, max(len(data) - 4, 0))))
            data[start : start + 4] = field
    return bytes(data)


inputs = st.one_of(
    st.binary(max_size=2048),
    st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGIC), st.binary(max_size=2048)),
    damaged_files(),
)


@pytest.fixture(scope="module", autouse=True)
def _report_a_hang() -> Iterator[None]:
    faulthandler.dump_traceback_later(HANG_S, exit=True)  # ends the run with the stuck stack
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ArtifactStore:
    return ArtifactStore(tmp_path_factory.mktemp("fuzz-artifacts"), limits=LIMITS, cache_size=0)


def _only_media_errors(decode: object, data: bytes) -> None:
    with contextlib.suppress(MediaError):  # named and expected: the input is bad, the message says how
        decode(data)  # type: ignore[operator]


_FUZZ = settings(
    max_examples=1000,
    deadline=2000,  # ms per example: a slow decode is reported as a failure
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
    derandomize=True,  # the same inputs on every run, so CI cannot flake
)


@_FUZZ
@given(data=inputs)
def test_media_open_raises_only_media_errors(data: bytes) -> None:
    _only_media_errors(lambda d: Media.open(d, limits=LIMITS), data)


@_FUZZ
@given(data=inputs)
def test_put_bytes_raises_only_media_errors(store: ArtifactStore, data: bytes) -> None:
    _only_media_errors(store.put_bytes, data)


def test_the_seeds_themselves_decode(tmp_path: Path) -> None:
    """The damaged files start from real, decodable media (else the fuzzing tests nothing)."""
    for name, data in SEEDS.items():
        media = Media.open(data, limits=LIMITS)
        assert media.modality.value == ("audio" if name.startswith(("wav", "flac", "ogg")) else "image")
