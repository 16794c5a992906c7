"""Media: decoding, validation, normalisation, content blocks, and the errors bad input gets."""

from __future__ import annotations

import io
import wave

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
    MediaRef,
    MediaTooLargeError,
    Modality,
    SampleRateError,
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
