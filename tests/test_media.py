"""Media: decoding, validation, normalisation, content blocks, and the errors bad input gets."""

from __future__ import annotations

import io
import os
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from samples import image, tone

from codi2_agent.media import (
    CorruptMediaError,
    EmptyMediaError,
    Media,
    MediaError,
    MediaLimits,
    MediaNotFoundError,
    MediaPathError,
    MediaRef,
    MediaTooLargeError,
    Modality,
    SampleRateError,
    UnknownLengthError,
    UnsupportedFormatError,
)


def png_bytes(w: int = 16, h: int = 12, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), color=(10, 200, 30) if mode == "RGB" else 7).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(sr: int = 22050, channels: int = 1, seconds: float = 0.5, subtype: str = "PCM_16") -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(sr * seconds)) / sr
    wav = 0.3 * np.sin(2 * np.pi * 440 * t)
    data = np.stack([wav] * channels, axis=1) if channels > 1 else wav
    sf.write(buf, data, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_open_image_from_bytes_and_path(tmp_path):
    m = Media.open(png_bytes())
    assert m.modality is Modality.IMAGE and m.image.mode == "RGB" and m.image.size == (16, 12)
    assert np.asarray(m.image)[0, 0].tolist() == [10, 200, 30]
    (tmp_path / "a.png").write_bytes(png_bytes())
    assert Media.open(tmp_path / "a.png") == m


def test_greyscale_and_palette_images_become_rgb():
    m = Media.open(png_bytes(mode="L"))
    assert m.image.mode == "RGB" and np.asarray(m.image)[0, 0].tolist() == [7, 7, 7]


def test_open_audio_keeps_rate_and_mixes_stereo_to_mono():
    m = Media.open(wav_bytes(sr=22050, channels=2))
    assert m.modality is Modality.AUDIO and m.sample_rate == 22050
    assert m.audio.dtype == np.float32 and m.audio.ndim == 1
    assert m.duration_s == pytest.approx(0.5)
    assert np.abs(m.audio).max() == pytest.approx(0.3, abs=1e-3)


def test_resample_and_resize_normalise_for_a_model():
    m = Media.open(wav_bytes(sr=22050)).resampled(16000)
    assert m.sample_rate == 16000 and m.audio.size == 8000
    peak_hz = np.fft.rfftfreq(m.audio.size, 1 / 16000)[np.abs(np.fft.rfft(m.audio)).argmax()]
    assert peak_hz == pytest.approx(440, abs=3)
    assert Media.open(png_bytes()).resized(32).image.size == (32, 32)


def test_canonical_bytes_round_trip_exactly():
    for m in (image(1), tone(), Media.from_text("héllo")):
        data, mime = m.to_bytes()
        again = Media.from_text(data.decode()) if mime == "text/plain" else Media.open(data)
        assert again == m and again.to_bytes()[0] == data


def test_content_block_round_trip():
    for m in (image(2), tone(330.0)):
        block = m.to_content_block()
        assert block["type"] == m.modality.value and block["mime_type"] in ("image/png", "audio/wav")
        assert Media.from_content_block(block) == m
    data_url = {"type": "image", "url": "data:image/png;base64," + image(3).to_content_block()["base64"]}
    assert Media.from_content_block(data_url) == image(3)
    assert Media.from_content_block({"type": "text", "text": "hi"}).text == "hi"


def test_bad_content_blocks_get_clear_errors():
    with pytest.raises(MediaError, match="video"):
        Media.from_content_block({"type": "video", "base64": "AAAA"})
    with pytest.raises(CorruptMediaError, match="invalid base64"):
        Media.from_content_block({"type": "image", "base64": "@@not base64@@", "mime_type": "image/png"})
    with pytest.raises(MediaError, match="no inline data"):
        Media.from_content_block({"type": "image", "file_id": "abc"})
    with pytest.raises(MediaError, match="says 'audio' but its data is image"):
        Media.from_content_block({"type": "audio", "base64": image(0).to_content_block()["base64"]})


def test_corrupt_image_bytes():
    data = png_bytes()
    with pytest.raises(CorruptMediaError, match="corrupt or truncated image"):
        Media.open(data[: len(data) // 2])


def test_corrupt_audio_bytes():
    with pytest.raises(CorruptMediaError, match="corrupt or truncated audio"):
        Media.open(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")


def test_empty_files_and_bytes_are_called_empty(tmp_path):
    (tmp_path / "blank.png").write_bytes(b"")
    with pytest.raises(EmptyMediaError, match=r"blank\.png is empty \(0 bytes\)") as caught:
        Media.open(tmp_path / "blank.png")
    assert isinstance(caught.value, MediaError) and not isinstance(caught.value, UnsupportedFormatError)
    with pytest.raises(EmptyMediaError, match="media bytes is empty"):
        Media.open(b"")


def test_unsupported_formats_are_named():
    with pytest.raises(UnsupportedFormatError, match="not a supported image"):
        Media.open(b"%PDF-1.7 not media")
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    with pytest.raises(UnsupportedFormatError, match="image format PNG is not accepted"):
        Media.open(buf.getvalue(), limits=MediaLimits(image_formats=frozenset({"JPEG"})))


def test_too_many_pixels_and_decompression_bombs_are_refused():
    with pytest.raises(MediaTooLargeError, match="64x64 = 4096 pixels; the limit is 1000"):
        Media.open(png_bytes(64, 64), limits=MediaLimits(max_pixels=1000))
    # A real bomb: a tiny PNG whose header declares 30000 x 30000 pixels.
    buf = io.BytesIO()
    Image.new("1", (30000, 30000)).save(buf, format="PNG")
    assert len(buf.getvalue()) < 1_000_000
    with pytest.raises(MediaTooLargeError):
        Media.open(buf.getvalue())


def test_oversized_files_and_long_audio_are_refused(tmp_path):
    with pytest.raises(MediaTooLargeError, match="bytes; the limit is 100"):
        Media.open(image(0).to_bytes()[0], limits=MediaLimits(max_bytes=100))
    (tmp_path / "big.png").write_bytes(image(0).to_bytes()[0])
    with pytest.raises(MediaTooLargeError, match=r"big\.png"):
        Media.open(tmp_path / "big.png", limits=MediaLimits(max_bytes=100))
    with pytest.raises(MediaTooLargeError, match="the limit is 1 s"):
        Media.open(wav_bytes(seconds=2.0), limits=MediaLimits(max_duration_s=1.0))


def test_missing_and_wrong_sample_rates():
    wav = np.zeros(100, dtype=np.float32)
    with pytest.raises(SampleRateError, match="needs a sample_rate"):
        Media.from_audio(wav, None)
    with pytest.raises(SampleRateError, match="100 Hz is outside"):
        Media.from_audio(wav, 100)
    with pytest.raises(SampleRateError, match="must be an int"):
        Media.from_audio(wav, 16000.5)  # type: ignore[arg-type]
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:  # a real WAV file at 1 kHz
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(1000), w.writeframes(b"\x00\x00" * 100)
    with pytest.raises(SampleRateError, match="1000 Hz is outside"):
        Media.open(buf.getvalue())


def test_nan_audio_and_bad_arrays():
    with pytest.raises(CorruptMediaError, match="NaN"):
        Media.from_audio(np.array([0.0, np.nan], dtype=np.float32), 16000)
    with pytest.raises(MediaError, match=r"\(H, W, 3\)"):
        Media.from_image(np.zeros((4, 4)))
    with pytest.raises(MediaError, match="unknown modality 'smell'"):
        Media("smell", text="x")
    with pytest.raises(FileNotFoundError, match="no media file"):
        Media.open("/nonexistent/x.png")


def test_media_ref_is_validated_and_serialisable():
    ref = MediaRef(id="a" * 64, uri="artifact://" + "a" * 64, modality="image", mime="image/png", caption="x")
    assert MediaRef.model_validate_json(ref.model_dump_json()) == ref
    with pytest.raises(ValueError):
        MediaRef(id="../etc/passwd", uri="x", modality="image", mime="image/png")


def test_notebook_display_hooks():
    assert image(0)._repr_png_().startswith(b"\x89PNG")
    assert tone()._repr_html_().startswith("<audio controls")
    assert image(0)._repr_html_() is None


# --- edge cases: short multichannel audio, empty and endless audio, paths that name no file --------
def frames_wav(frames: np.ndarray, sr: int = 16000) -> bytes:
    """A float WAV of exactly `frames`, shaped (frames, channels) as soundfile writes and reads."""
    buf = io.BytesIO()
    sf.write(buf, frames, sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.mark.parametrize(
    "frames",
    [np.array([[0.2, 0.4]]), np.array([[0.2, 0.4, 0.9], [0.0, 0.3, 0.6]]), np.array([[0.5], [0.25]])],
    ids=["1 frame x 2 channels", "2 frames x 3 channels", "2 frames x 1 channel"],
)
def test_audio_shorter_than_its_channel_count_is_mixed_over_its_channels(frames):
    m = Media.open(frames_wav(frames.astype(np.float32)))
    assert m.audio.tolist() == pytest.approx(frames.mean(axis=1).tolist())  # one sample per frame


def test_from_audio_takes_the_channel_axis_when_told():
    one_frame = np.array([[0.2, 0.4]], dtype=np.float32)  # (frames=1, channels=2)
    assert Media.from_audio(one_frame, 16000, channel_axis=1).audio.tolist() == pytest.approx([0.3])
    assert Media.from_audio(one_frame.T, 16000, channel_axis=0).audio.tolist() == pytest.approx([0.3])
    with pytest.raises(MediaError, match="channel_axis must be 0 or 1"):
        Media.from_audio(one_frame, 16000, channel_axis=2)


def test_a_wav_with_no_frames_is_called_empty_not_nan():
    with pytest.raises(EmptyMediaError, match=r"no samples \(0 frames\)"):
        Media.open(frames_wav(np.zeros((0, 2), np.float32)))
    with pytest.raises(EmptyMediaError, match="no samples"):
        Media.from_audio(np.zeros((2, 0), np.float32), 16000)


def flac_with_total_samples(total: int) -> bytes:
    """A real one-second FLAC whose STREAMINFO claims `total` samples (0 means "unknown")."""
    buf = io.BytesIO()
    sf.write(buf, np.full((16000, 2), 0.1, np.float32), 16000, format="FLAC")
    data = bytearray(buf.getvalue())
    # STREAMINFO follows "fLaC" and its 4-byte header; the 36-bit total starts 4 bits into byte 13.
    info = 8
    data[info + 13] = (data[info + 13] & 0xF0) | (total >> 32)
    data[info + 14 : info + 18] = (total & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


def test_audio_of_unknown_length_is_refused_by_its_header():
    assert Media.open(flac_with_total_samples(16000)).duration_s == pytest.approx(1.0)
    started = time.monotonic()
    with pytest.raises(UnknownLengthError, match=r"no usable length.*the limit of 60 s") as caught:
        Media.open(flac_with_total_samples(0))  # libsndfile reports 2**63 - 1 frames: "unknown"
    assert time.monotonic() - started < 5 and "576460752303423" not in str(caught.value)
    assert isinstance(caught.value, MediaTooLargeError)
    with pytest.raises(MediaTooLargeError, match=r"4294967\.3 s of audio; the limit is 60 s"):
        Media.open(flac_with_total_samples(2**36 - 1))  # the largest length a FLAC header can state


def test_too_many_audio_channels_are_refused_before_decoding():
    with pytest.raises(MediaTooLargeError, match="9 audio channels; the limit is 8"):
        Media.open(frames_wav(np.zeros((10, 9), np.float32)))
    nine = Media.open(frames_wav(np.zeros((10, 9), np.float32)), limits=MediaLimits(max_channels=9))
    assert nine.audio.size == 10


def test_paths_that_name_no_readable_file_get_named_errors(tmp_path):
    with pytest.raises(MediaPathError, match="300 bytes; the limit is 255 bytes per name"):
        Media.open(tmp_path / ("a" * 296 + ".png"))
    with pytest.raises(MediaPathError, match="the limit is 4096 bytes"):
        Media.open(tmp_path.joinpath(*["d" * 200] * 21, "x.png"))
    with pytest.raises(MediaPathError, match="NUL byte"):
        Media.open(f"{tmp_path}/a\x00.png")
    with pytest.raises(MediaPathError, match="is a folder, not a media file"):
        Media.open(tmp_path)
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(MediaPathError, match="symlink loop"):
        Media.open(tmp_path / "loop.png")
    with pytest.raises(MediaNotFoundError, match="no media file") as caught:
        Media.open(tmp_path / "missing.png")
    assert isinstance(caught.value, FileNotFoundError)  # callers catching the OSError still do


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.wav")  # opening it for reading would wait forever for a writer
    started = time.monotonic()
    with pytest.raises(MediaPathError, match=r"named pipe \(FIFO\), not a media file"):
        Media.open(tmp_path / "pipe.wav")
    assert time.monotonic() - started < 5


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused():
    with pytest.raises(MediaPathError, match="character device"):
        Media.open("/dev/zero")  # endless bytes: it must not be read at all


def test_audio_bytes_are_canonical_over_time() -> None:
    """The same sound encodes to the same bytes whenever it is written (no timestamped chunks)."""
    import time

    import soundfile as sf

    tone = Media.from_audio(np.sin(np.linspace(0, 200, 16000)).astype(np.float32), 16000)
    first, mime = tone.to_bytes()
    time.sleep(1.1)
    assert tone.to_bytes()[0] == first and mime == "audio/wav"
    decoded, rate = sf.read(io.BytesIO(first), dtype="float32")
    assert rate == 16000 and np.array_equal(decoded, tone.audio)
    assert Media.open(first) == tone
