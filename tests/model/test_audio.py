"""MelSpectrogram.invert: the mel -> waveform step every generated sound goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from codi2_agent.data.world import render_audio
from codi2_agent.model.audio import MelSpectrogram

NOTES = [
    {"instrument": "saw", "pitch": "440", "ambience": "rain"},
    {"instrument": "square", "pitch": "220", "ambience": "quiet"},
    {"instrument": "pluck", "pitch": "660", "ambience": "wind"},
    {"instrument": "sine", "pitch": "880", "ambience": "crickets"},
]


@pytest.fixture(scope="module")
def mel() -> MelSpectrogram:
    return MelSpectrogram()


@pytest.fixture(scope="module")
def clean(mel: MelSpectrogram) -> torch.Tensor:
    """Log-mel images (4, 1, 32, 64) of rendered notes."""
    wav = torch.from_numpy(np.stack([render_audio(a, 3).audio for a in NOTES]))
    return mel(wav)


def _round_trip(mel: MelSpectrogram, image: torch.Tensor) -> torch.Tensor:
    return mel(mel.invert(image)[:, :16000])


def test_invert_is_deterministic_in_range_and_batch_independent(
    mel: MelSpectrogram, clean: torch.Tensor
) -> None:
    wav = mel.invert(clean)
    assert wav.shape == (4, mel.num_samples) and wav.dtype == torch.float32
    assert torch.equal(wav, mel.invert(clean))
    # A row inverts the same alone, to float rounding: a batched FFT may sum in another order on some
    # CPUs, and Griffin-Lim's iterations carry that on (an Intel Xeon: up to 3e-5 in a [-0.99, 0.99]
    # clip; equal bit for bit elsewhere).
    torch.testing.assert_close(mel.invert(clean[2:3])[0], wav[2], rtol=0, atol=1e-4)
    assert float(wav.abs().max()) <= 0.99 + 1e-6


def test_round_trip_of_rendered_notes_keeps_their_mel(mel: MelSpectrogram, clean: torch.Tensor) -> None:
    # Griffin-Lim leaks a little energy into near-silent bins (the quiet square: 0.11 of the
    # [-1, 1] range on average); everything else stays within 0.1 (measured 0.03-0.09).
    l1 = (_round_trip(mel, clean) - clean).abs().mean(dim=(1, 2, 3))
    assert float(l1.max()) < 0.14 and float(l1.median()) < 0.1, l1


def test_frame_noise_of_a_generated_mel_is_not_rendered(mel: MelSpectrogram, clean: torch.Tensor) -> None:
    # A diffusion decoder's mel carries frame-to-frame noise no waveform has. Plain Griffin-Lim
    # renders it into a peaky clip whose mel sits 0.13 from the clean one on average (measured);
    # smoothing over neighbouring frames brings that to 0.10.
    noise = 0.12 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    noisy = (clean + noise).clamp(-1.0, 1.0)
    l1 = (_round_trip(mel, noisy) - clean).abs().mean()
    assert float(l1) < 0.115, l1


def test_a_passage_beyond_full_scale_does_not_turn_the_rest_down(
    mel: MelSpectrogram, clean: torch.Tensor
) -> None:
    # The second half asks for ~4x the level (+0.2 of the range in log-mel): more than [-1, 1]
    # holds. One gain for the whole clip turned the first half down too (0.03-0.17 of the range,
    # measured); the limiter turns down only the loud blocks, so the first half stays where the
    # in-range clip puts it.
    loud = clean.clone()
    loud[..., 32:] = (loud[..., 32:] + 0.2).clamp(max=1.0)
    wav = mel.invert(loud)
    assert float(wav.abs().max()) <= 0.99 + 1e-6
    shift = (mel(wav[:, :16000]) - _round_trip(mel, clean))[..., 4:28].mean(dim=(1, 2, 3))
    assert float(shift.abs().max()) < 0.01, shift


def test_plain_griffin_lim_stays_available(mel: MelSpectrogram, clean: torch.Tensor) -> None:
    # smooth_frames=False, limit_peaks=False is the inversion before the clean-up: one gain per clip
    plain = MelSpectrogram(smooth_frames=False, limit_peaks=False)
    loud = clean.clone()
    loud[..., 32:] = (loud[..., 32:] + 0.2).clamp(max=1.0)
    wav = plain.invert(loud)
    assert torch.isclose(wav.abs().amax(dim=-1), torch.tensor(0.99)).all()  # every row peak-scaled
    shift = (plain(wav[:, :16000]) - _round_trip(plain, clean))[..., 4:28].mean()
    assert float(shift) < -0.05  # ...which turned its first half down
    assert not torch.equal(wav, mel.invert(loud))
