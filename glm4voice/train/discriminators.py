"""The HiFT stage's discriminators and their least-squares GAN losses (HiFi-GAN, UnivNet; SPEC §2).

- Multi-period (HiFi-GAN): the waveform folded into [T / p, p] for p in 2, 3, 5, 7, 11, read by 2-D
  convolutions that stride over time only, so each column is one phase of a period.
- Multi-resolution (UnivNet): magnitude spectrograms at three STFT resolutions, read by 2-D
  convolutions over (frames, bins).

Each returns, per sub-discriminator, a score map and the feature maps feature matching compares. Widths are
HiFi-GAN's times `scale` (the trainer passes HiFT's base_channels / 512: the release's sizes for the release,
an eighth for the tiny CPU model). Training only: these never ship in a decoder folder.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

PERIODS = (2, 3, 5, 7, 11)
RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))  # (n_fft, hop, window)
SLOPE = 0.1


def _width(channels: int, scale: float) -> int:
    return max(8, round(channels * scale))


def _read(convs: nn.ModuleList, post: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """A sub-discriminator's stack: (scores [B, N], every layer's output for feature matching)."""
    features = []
    for conv in convs:
        x = F.leaky_relu(conv(x), SLOPE)
        features.append(x)
    x = post(x)
    features.append(x)
    return x.flatten(1), features


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, scale: float):
        super().__init__()
        self.period = period
        widths = [1, *(_width(c, scale) for c in (32, 128, 512, 1024))]
        self.convs = nn.ModuleList(weight_norm(nn.Conv2d(a, b, (5, 1), (3, 1), padding=(2, 0)))
                                   for a, b in zip(widths, widths[1:]))  # fmt: skip
        self.convs.append(weight_norm(nn.Conv2d(widths[-1], widths[-1], (5, 1), 1, padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = audio[:, None]  # [B, 1, T]
        short = (-x.shape[-1]) % self.period
        x = F.pad(x, (0, short), mode="reflect")
        x = x.reshape(x.shape[0], 1, -1, self.period)  # [B, 1, T / p, p]
        return _read(self.convs, self.post, x)


class ResolutionDiscriminator(nn.Module):
    def __init__(self, n_fft: int, hop: int, window: int, scale: float):
        super().__init__()
        self.n_fft, self.hop, self.window = n_fft, hop, window
        c = _width(32, scale)
        self.convs = nn.ModuleList([weight_norm(nn.Conv2d(1, c, (3, 9), padding=(1, 4))),
                                    *(weight_norm(nn.Conv2d(c, c, (3, 9), (1, 2), padding=(1, 4))) for _ in range(3)),
                                    weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1)))])  # fmt: skip
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        window = torch.hann_window(self.window, device=audio.device, dtype=audio.dtype)
        spec = torch.stft(audio, self.n_fft, self.hop, self.window, window=window, return_complex=True)
        return _read(self.convs, self.post, spec.abs().transpose(1, 2)[:, None])  # [B, 1, frames, bins]


class Discriminators(nn.Module):
    """Multi-period and multi-resolution discriminators together: audio [B, T] -> (scores, features) lists."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.subs = nn.ModuleList([*(PeriodDiscriminator(p, scale) for p in PERIODS),
                                   *(ResolutionDiscriminator(*r, scale) for r in RESOLUTIONS)])  # fmt: skip

    def forward(self, audio: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        outputs = [sub(audio) for sub in self.subs]
        return [s for s, _ in outputs], [f for _, f in outputs]


def discriminator_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: real scores towards 1, fake towards 0 (summed over sub-discriminators)."""
    return sum(((r - 1) ** 2).mean() + (f**2).mean() for r, f in zip(real, fake))


def generator_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: the generator pushes its scores towards 1."""
    return sum(((f - 1) ** 2).mean() for f in fake)


def feature_matching(real: list[list[torch.Tensor]], fake: list[list[torch.Tensor]]) -> torch.Tensor:
    """Mean L1 between the discriminators' feature maps of real and generated audio (real ones as targets)."""
    return sum(F.l1_loss(g, r.detach()) for rs, gs in zip(real, fake) for r, g in zip(rs, gs))
