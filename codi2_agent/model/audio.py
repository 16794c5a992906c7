"""Log-mel spectrograms with `torch.stft` and their inversion (Griffin-Lim), without torchaudio.

The tiny audio encoder reads a log-mel "image"; the tiny audio decoder generates one and
`MelSpectrogram.invert` turns it back into a waveform: the mel is smoothed over neighbouring frames,
Griffin-Lim finds a phase, and a slow peak limiter fits the result into [-0.99, 0.99] without
turning the quiet frames down with the loud ones.

Example:
    >>> import torch
    >>> mel = MelSpectrogram(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32, num_frames=64)
    >>> mel(torch.zeros(2, 16000)).shape
    torch.Size([2, 1, 32, 64])
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["MelSpectrogram", "mel_filterbank"]


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)  # HTK formula


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular HTK mel filters, (n_mels, n_fft // 2 + 1), each normalised to unit area."""
    f_max = f_max or sample_rate / 2
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    mels = torch.linspace(
        float(_hz_to_mel(torch.tensor(f_min))), float(_hz_to_mel(torch.tensor(f_max))), n_mels + 2
    )
    hz = _mel_to_hz(mels)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    fb = torch.clamp(torch.minimum(up, down), min=0.0)
    return fb / fb.sum(dim=1, keepdim=True).clamp(min=1e-8)


class MelSpectrogram(nn.Module):
    """Waveform (B, N) -> normalised log-mel (B, 1, n_mels, num_frames) in roughly [-1, 1].

    Always computes in float32 and returns float32, whatever dtype the model around it runs in:
    torch.stft/istft take no 16-bit input, and its buffers are in `placement.FLOAT32_BUFFERS`.
    """

    filters: torch.Tensor
    window: torch.Tensor
    filters_pinv: torch.Tensor

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 256,
        n_mels: int = 32,
        num_frames: int = 64,
        log_floor: float = 1e-4,
        log_ceil: float = 1e2,
        smooth_frames: bool = True,
        limit_peaks: bool = True,
    ) -> None:
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.n_mels, self.num_frames = n_mels, num_frames
        self.log_floor, self.log_ceil = log_floor, log_ceil
        # How `invert` treats generated mels (see `_smooth_frames` and `_limit_peaks`); False, False
        # is plain Griffin-Lim with one gain for the whole clip.
        self.smooth_frames, self.limit_peaks = smooth_frames, limit_peaks
        fb = mel_filterbank(sample_rate, n_fft, n_mels)
        self.register_buffer("filters", fb, persistent=False)  # (M, F)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        # Pseudo-inverse used to go back from mel to linear magnitudes before Griffin-Lim.
        self.register_buffer("filters_pinv", torch.linalg.pinv(fb), persistent=False)  # (F, M)

    @property
    def num_samples(self) -> int:
        return (self.num_frames - 1) * self.hop_length

    def _normalise(self, log_mel: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.log_floor), math.log(self.log_ceil)
        return (log_mel - lo) / ((hi - lo) / 2) - 1.0  # [log_floor, log_ceil] -> [-1, 1]

    def _denormalise(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = math.log(self.log_floor), math.log(self.log_ceil)
        return (x + 1.0) * ((hi - lo) / 2) + lo

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            waveform.float(),
            self.n_fft,
            self.hop_length,
            window=self.window.float(),
            center=True,
            return_complex=True,
        ).abs()  # (B, F, T)
        mel = self.filters.float() @ spec  # (B, M, T)
        log_mel = torch.log(mel.clamp(min=self.log_floor))
        frames = log_mel.shape[-1]
        if frames < self.num_frames:  # pad with silence
            log_mel = nn.functional.pad(
                log_mel, (0, self.num_frames - frames), value=math.log(self.log_floor)
            )
        return self._normalise(log_mel[..., : self.num_frames]).unsqueeze(1).clamp(-1.0, 1.0)

    @torch.no_grad()
    def invert(self, mel_image: torch.Tensor, n_iter: int = 32) -> torch.Tensor:
        """Normalised log-mel (B, 1, M, T) -> waveform (B, num_samples) in [-0.99, 0.99].

        Deterministic, and a row inverts the same alone or in a batch. Runs in float32 on the
        device of the filterbank (a GPU model inverts on the GPU).
        """
        mel_image = mel_image.to(self.filters_pinv.device).squeeze(1).float()  # (B, M, T)
        if self.smooth_frames:
            mel_image = self._smooth_frames(mel_image)
        mel = torch.exp(self._denormalise(mel_image))
        mag = (self.filters_pinv.float() @ mel).clamp(min=0.0)  # (B, F, T)
        wav = self._griffin_lim(mag, n_iter)
        if self.limit_peaks:
            wav = self._limit_peaks(wav)
        peak = wav.abs().amax(dim=-1, keepdim=True).clamp(min=1e-6)
        return torch.where(peak > 0.99, wav / peak * 0.99, wav)

    def _griffin_lim(self, mag: torch.Tensor, n_iter: int) -> torch.Tensor:
        """Linear magnitudes (B, F, T) -> waveform (B, num_samples) with a phase found by Griffin-Lim.

        32 plain iterations: more (100) or momentum ("fast Griffin-Lim", 0.99) measured no better on
        decoded mels (benchmarks/results/tiny_audio_inversion.txt).
        """
        window = self.window.float()
        gen = torch.Generator().manual_seed(0)  # fixed phase init: inversion is deterministic
        # one initial phase shared by every row, so a row inverts the same alone or in a batch
        phase = torch.rand((1, *mag.shape[1:]), generator=gen).expand(mag.shape).to(mag.device)
        angles = torch.exp(2j * math.pi * phase).to(torch.complex64)
        length = self.num_samples
        for _ in range(n_iter):
            wav = torch.istft(mag * angles, self.n_fft, self.hop_length, window=window, length=length)
            rebuilt = torch.stft(wav, self.n_fft, self.hop_length, window=window, return_complex=True)
            angles = torch.exp(1j * torch.angle(rebuilt[..., : mag.shape[-1]]))
        return torch.istft(mag * angles, self.n_fft, self.hop_length, window=window, length=length)

    @staticmethod
    def _smooth_frames(mel_image: torch.Tensor) -> torch.Tensor:
        """A [1, 2, 1] / 4 filter along time over the normalised log-mel (B, M, T).

        Neighbouring STFT frames share half their window, so the mel of a real sound changes little
        from one frame to the next; a diffusion decoder's mel carries frame-to-frame noise no
        waveform has. Griffin-Lim turns that noise into loud, peaky waveforms, which the final
        limiting then has to turn down. The filter leaves real mels nearly as they are.
        """
        kernel = torch.tensor([0.25, 0.5, 0.25], device=mel_image.device).view(1, 1, 3)
        b, m, t = mel_image.shape
        rows = F.pad(mel_image.reshape(b * m, 1, t), (1, 1), mode="replicate")
        return F.conv1d(rows, kernel).view(b, m, t)

    def _limit_peaks(self, wav: torch.Tensor, ceiling: float = 0.99, reach: int = 2) -> torch.Tensor:
        """Turn down only the hop-long blocks (and their `reach` neighbours) that exceed `ceiling`.

        A generated mel may ask for more than full scale; one gain for the whole clip (what the
        final normalisation alone does) then also turns down the quiet frames, and the clip no
        longer sounds like what the mel describes. The gain here is per block, taken as the lowest
        any peak within `reach` blocks needs, averaged over the same span and interpolated per
        sample, so it changes over tens of milliseconds: no clipping, little distortion.
        """
        b, n = wav.shape
        block, width = self.hop_length, 2 * reach + 1
        pad = (-n) % block
        peaks = F.pad(wav.abs(), (0, pad)).view(b, -1, block).amax(dim=-1)  # (B, blocks)
        peaks = F.max_pool1d(peaks[:, None], width, stride=1, padding=reach)  # (B, 1, blocks)
        gain = (ceiling / peaks.clamp(min=1e-6)).clamp(max=1.0)
        gain = F.avg_pool1d(F.pad(gain, (reach, reach), mode="replicate"), width, stride=1)
        per_sample = F.interpolate(gain, size=n + pad, mode="linear", align_corners=False)
        return wav * per_sample[:, 0, :n]
