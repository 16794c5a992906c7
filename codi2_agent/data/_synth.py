"""Audio synthesis for the tiny world: a note of an instrument and pitch over an ambience.

Private: `world.render_audio` is the public entry point. Clips are 1.0 s at 16 kHz (16000 float32
samples, peak <= 0.9). The parts are laid out so each attribute owns its own region of the log-mel
"image": the note's energy sits below ~3 kHz (harmonics rolled off), the insects above 4 kHz, wind
below 500 Hz, rain across the band, and the instrument shows in its harmonic pattern and envelope.

Example:
    >>> wav = synth_audio({"instrument": "pluck", "pitch": "440", "ambience": "wind"}, seed=0)
    >>> wav.shape, wav.dtype, float(abs(wav).max()) <= 0.9
    ((16000,), dtype('float32'), True)
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

__all__ = ["NUM_SAMPLES", "PITCH_HZ", "SAMPLE_RATE", "synth_audio"]

SAMPLE_RATE = 16000
NUM_SAMPLES = 16000
PEAK = 0.9
# Ratios of 1.5 / 1.33 / 1.5 / 1.33: adjacent notes sit >= 1.4 mel bins apart at 32 bins.
PITCH_HZ: dict[str, float] = {"220": 220.0, "330": 330.0, "440": 440.0, "660": 660.0, "880": 880.0}
_T = np.arange(NUM_SAMPLES, dtype=np.float64) / SAMPLE_RATE


def synth_audio(attrs: dict[str, str], seed: int) -> np.ndarray:
    """(16000,) float32 waveform of `attrs`; every random choice comes from `seed`."""
    # Separate streams: editing the ambience keeps the note (onset, detune) and vice versa.
    tone_rng = np.random.default_rng([seed, 11])
    onset, end = tone_rng.uniform(0.0, 0.08), tone_rng.uniform(0.88, 0.97)
    detune = 2.0 ** (tone_rng.uniform(-0.15, 0.15) / 12)  # +-0.15 semitone; notes are >= 5 apart
    amp = tone_rng.uniform(0.38, 0.48)
    phase = tone_rng.uniform(0.0, 2 * math.pi)
    note = _instrument(attrs["instrument"], PITCH_HZ[attrs["pitch"]] * detune, onset, end, phase)
    amb_rng = np.random.default_rng([seed, 12])
    # The same faint room tone under every clip, so "quiet" differs from the others only by what is
    # missing and no ambience can be told apart by its noise floor alone.
    amb = 0.002 * amb_rng.standard_normal(NUM_SAMPLES) + _ambience(attrs["ambience"], amb_rng)
    wav = amp * note + amb
    peak = float(np.abs(wav).max())
    if peak > PEAK:
        wav *= PEAK / peak
    return wav.astype(np.float32)


def _instrument(name: str, f0: float, onset: float, end: float, phase: float) -> np.ndarray:
    """Unit-peak note from `onset` to `end` seconds, band-limited additive synthesis (no aliasing)."""
    t = _T - onset
    on = t >= 0
    if name == "sine":
        ks, amps = np.array([1.0]), np.array([1.0])
    elif name in ("square", "saw", "pluck"):
        ks = np.arange(1, int(6000 // f0) + 1, dtype=np.float64)
        if name == "square":
            ks = ks[ks % 2 == 1]  # odd harmonics only: the hollow sound
        amps = 1.0 / ks
        amps = amps / (1.0 + (ks * f0 / 3000.0) ** 4)  # roll off above 3 kHz: leave room for insects
    else:
        raise ValueError(f"unknown instrument {name!r}")
    partials = np.sin(2 * math.pi * f0 * ks[:, None] * t[None] + phase * ks[:, None])  # (K, N)
    if name == "pluck":
        # Plucked string: sharp attack, exponential decay, upper partials die first.
        decay = np.exp(-np.clip(t, 0, None)[None] * (5.0 + 2.0 * ks[:, None]))
        wave = (amps[:, None] * partials * decay).sum(0)
        env = np.clip(t / 0.003, 0.0, 1.0)
    else:
        wave = amps @ partials
        env = np.clip(t / 0.01, 0.0, 1.0) * np.clip((end - _T) / 0.03, 0.0, 1.0)  # 10 ms in, 30 ms out
    wave = np.where(on, wave * env, 0.0)
    return wave / max(float(np.abs(wave).max()), 1e-9)


@cache
def _sos(lo: float | None, hi: float | None, order: int) -> np.ndarray | None:
    from scipy.signal import butter  # scipy.signal costs ~0.5 s to import; only audio needs it

    if lo and hi:
        return butter(order, [lo, hi], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    if lo or hi:
        return butter(order, lo or hi, btype="highpass" if lo else "lowpass", fs=SAMPLE_RATE, output="sos")
    return None


def _band_noise(rng: np.random.Generator, lo: float | None, hi: float | None, order: int = 4) -> np.ndarray:
    """Unit-RMS white noise filtered to [lo, hi] Hz (either end may be open)."""
    from scipy.signal import sosfilt

    noise = rng.standard_normal(NUM_SAMPLES + 2048)
    sos = _sos(lo, hi, order)
    out = sosfilt(sos, noise)[2048:] if sos is not None else noise[2048:]  # drop the filter's warm-up
    return out / max(float(out.std()), 1e-9)


def _ambience(name: str, rng: np.random.Generator) -> np.ndarray:
    """The background layer; levels are chosen so each one dominates its own band of the spectrum."""
    n = NUM_SAMPLES
    if name == "quiet":  # just the room tone
        return np.zeros(n)
    if name == "rain":  # steady broadband hiss plus drops
        hiss = 0.035 * _band_noise(rng, 300.0, 7000.0, order=2)
        drops = np.zeros(n)
        burst = 240  # 15 ms
        shape = np.exp(-np.arange(burst) / 40.0)
        for start in rng.integers(0, n - burst, size=int(rng.integers(20, 35))):
            drops[start : start + burst] += rng.uniform(0.05, 0.12) * shape * rng.standard_normal(burst)
        return hiss + drops
    if name == "wind":  # low rumble that swells and fades in gusts
        f, ph = rng.uniform(0.6, 1.2), rng.uniform(0, 2 * math.pi)
        gust = 0.35 + 0.65 * (0.5 + 0.5 * np.sin(2 * math.pi * f * _T + ph)) ** 1.5
        return 0.12 * gust * _band_noise(rng, 60.0, 450.0, order=4)
    if name == "crickets":  # pulsed chirps of a ~4.5 kHz carrier, three pulses per chirp
        fc, period = rng.uniform(4300.0, 4700.0), rng.uniform(0.25, 0.33)
        start = rng.uniform(0.0, period)
        tc = (_T - start) % period
        pulses = ((tc < 0.15) & ((tc % 0.05) < 0.025)).astype(np.float64)
        pulses = np.convolve(pulses, np.hanning(48) / np.hanning(48).sum(), mode="same")  # soften clicks
        return 0.18 * pulses * np.sin(2 * math.pi * fc * _T + rng.uniform(0, 2 * math.pi))
    if name == "cicadas":  # a steady high buzz, 5.8-7.2 kHz, fast tremolo
        trem = 1.0 + 0.5 * np.sin(2 * math.pi * rng.uniform(120.0, 160.0) * _T)
        return 0.06 * trem * _band_noise(rng, 5800.0, 7200.0)
    if name == "birds":  # a few short, falling whistles around 2.5-3.8 kHz
        out = np.zeros(n)
        count = int(rng.integers(4, 7))
        for i in range(count):  # one per time slot, so the chirps never pile up into one blob
            dur = rng.uniform(0.06, 0.11)
            m = int(dur * SAMPLE_RATE)
            start = int((i + rng.uniform(0.0, 0.6)) / count * (n - m))
            tt = np.arange(m) / SAMPLE_RATE
            f_start = rng.uniform(3200.0, 3800.0)
            freq = f_start - rng.uniform(600.0, 1000.0) * tt / dur + 120.0 * np.sin(2 * math.pi * 30.0 * tt)
            chirp = np.sin(2 * math.pi * np.cumsum(freq) / SAMPLE_RATE) * np.sin(math.pi * tt / dur)
            out[start : start + m] += rng.uniform(0.2, 0.3) * chirp
        return out
    raise ValueError(f"unknown ambience {name!r}")
