"""HiFT vocoder: 80-bin mel at 86.13 frames/s -> 22.05 kHz audio (CosyVoice `HiFTGenerator`).

Neural source filter + iSTFT HiFi-GAN: an F0 predictor (5 conv + ELU, Linear,
|.|) gives F0 per frame; a sine source with harmonics (voiced where F0 > 10 Hz,
plus noise) is merged to one excitation; its STFT (n_fft 16, hop 4) is fused
into each upsampling stage; the last stage predicts log-magnitude and phase of
an STFT that iSTFT turns into audio (256 samples per mel frame).

Parameter names follow the released `hift.pt`; its weight-norm pairs
(`weight_g`, `weight_v`) are folded into plain weights when loading
(`fold_weight_norm`), which is exact and costs nothing at inference.

The source is the only random part. `SineSource` keeps its phase between calls,
so `VocoderStream` generates one continuous excitation chunk by chunk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import HiftConfig

_NORM_PAIRS = (
    (".weight_g", ".weight_v"),
    (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
)


def fold_weight_norm(state: dict) -> dict:
    """Replace each `X.weight_g`/`X.weight_v` pair (or torch's parametrizations naming) by `X.weight`.

    weight = g * v / ||v||, the norm taken over every dim but 0 (torch's default dim=0).
    """
    out = dict(state)
    for key in list(state):
        for g_suffix, v_suffix in _NORM_PAIRS:
            stem = key[: -len(g_suffix)]
            if key.endswith(g_suffix) and stem + v_suffix in state:
                g, v = out.pop(key), out.pop(stem + v_suffix)
                out[stem + ".weight"] = v * (g / v.norm(dim=tuple(range(1, v.dim())), keepdim=True))
    return out


class F0Predictor(nn.Module):
    """ConvRNNF0Predictor: mel [B, 80, T] -> F0 in Hz [B, T]."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(5):
            layers += [nn.Conv1d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ELU()]
        self.condnet = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, 1)

    def forward(self, mel):
        return self.classifier(self.condnet(mel).transpose(1, 2)).squeeze(-1).abs()


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        alpha = self.alpha[None, :, None]
        return x + torch.sin(x * alpha).pow(2) / (alpha + 1e-9)


class ResBlock(nn.Module):
    """HiFi-GAN ResBlock1 with Snake: per dilation, x += conv2(snake(conv1_d(snake(x))))."""

    def __init__(self, channels: int, kernel: int, dilations):
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2) for d in dilations
        )
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations)
        self.activations1 = nn.ModuleList(Snake(channels) for _ in dilations)
        self.activations2 = nn.ModuleList(Snake(channels) for _ in dilations)

    def forward(self, x):
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations1, self.activations2, strict=True):
            x = x + c2(a2(c1(a1(x))))
        return x


class SineSource(nn.Module):
    """F0 per sample -> merged harmonic excitation [B, 1, S] (SourceModuleHnNSF + SineGen).

    Random parts (per-harmonic start phase, additive noise) come from `generator`.
    `phase` [B, H] is the running phase in cycles; pass the returned one back in
    to continue a signal across calls.
    """

    def __init__(self, cfg: HiftConfig):
        super().__init__()
        self.harmonics = cfg.nb_harmonics + 1
        self.rate = cfg.sampling_rate
        self.amp, self.noise_std, self.threshold = cfg.nsf_alpha, cfg.nsf_sigma, cfg.nsf_voiced_threshold
        self.l_linear = nn.Linear(self.harmonics, 1)
        self.noise_scale = 1.0  # 0 makes the source a pure function of F0 and phase (tests)

    def start_phase(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """Random start phase in cycles, [B, H]; the fundamental starts at 0."""
        phase = torch.rand(batch, self.harmonics, generator=generator, dtype=torch.float64) - 0.5
        phase[:, 0] = 0
        return phase

    def forward(self, f0, phase, generator=None):
        # f0 [B, S] Hz per sample; phase [B, H] cycles -> (source [B, 1, S], phase after the last sample)
        mult = torch.arange(1, self.harmonics + 1, dtype=torch.float64, device=f0.device)
        step = f0.double()[:, None, :] * mult[None, :, None] / self.rate  # [B, H, S] cycles per sample
        cycles = torch.cumsum(step, dim=-1) + phase.to(f0.device)[:, :, None]
        end_phase = torch.remainder(cycles[:, :, -1], 1.0) if f0.shape[-1] else phase
        sines = self.amp * torch.sin(2 * math.pi * torch.remainder(cycles, 1.0)).float()
        voiced = (f0 > self.threshold).float()[:, None, :]
        noise_amp = voiced * self.noise_std + (1 - voiced) * self.amp / 3
        noise = torch.randn(sines.shape, generator=generator).to(f0.device) * self.noise_scale
        sines = sines * voiced + noise_amp * noise
        merged = torch.tanh(self.l_linear(sines.transpose(1, 2).to(self.l_linear.weight.dtype)))
        return merged.transpose(1, 2), end_phase


class HiFT(nn.Module):
    def __init__(self, cfg: HiftConfig):
        super().__init__()
        self.cfg = cfg
        base = cfg.base_channels
        self.m_source = SineSource(cfg)
        self.f0_predictor = F0Predictor(cfg.in_channels, cfg.f0_cond_channels)
        self.conv_pre = nn.Conv1d(cfg.in_channels, base, 7, 1, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(base // 2**i, base // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True))
        )
        # Source STFT is brought to each stage's rate: strides are the remaining upsampling factors.
        n_stages = len(cfg.upsample_rates)
        strides = [math.prod(cfg.upsample_rates[i + 1 :]) for i in range(n_stages)]
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (u, k, d) in enumerate(
            zip(strides, cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes, strict=True)
        ):
            ch = base // 2 ** (i + 1)
            if u == 1:
                self.source_downs.append(nn.Conv1d(cfg.n_fft + 2, ch, 1, 1))
            else:
                self.source_downs.append(nn.Conv1d(cfg.n_fft + 2, ch, u * 2, u, padding=u // 2))
            self.source_resblocks.append(ResBlock(ch, k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(base // 2 ** (i + 1), k, d)
            for i in range(n_stages)
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = nn.Conv1d(base // 2**n_stages, cfg.n_fft + 2, 7, 1, padding=3)
        # Periodic Hann, as scipy.signal.get_window("hann", n_fft).
        self.register_buffer("window", torch.hann_window(cfg.n_fft, periodic=True), persistent=False)

    @property
    def samples_per_frame(self) -> int:
        return self.cfg.samples_per_frame

    def f0(self, mel):
        return self.f0_predictor(mel)

    def source_from_f0(self, f0, phase=None, generator=None):
        """F0 per frame [B, T] -> (source [B, 1, T * 256], end phase)."""
        per_sample = f0.repeat_interleave(self.samples_per_frame, dim=-1)
        if phase is None:
            phase = self.m_source.start_phase(f0.shape[0], generator)
        return self.m_source(per_sample, phase, generator)

    def forward(self, mel: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """mel [B, 80, T], source [B, 1, T * 256] -> audio [B, T * 256]."""
        cfg = self.cfg
        n_bins = cfg.n_fft // 2 + 1
        spec = torch.stft(
            source[:, 0].float(), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.window, return_complex=True
        )
        s = torch.cat([spec.real, spec.imag], dim=1).to(mel.dtype)  # [B, n_fft + 2, S / hop + 1]
        x = self.conv_pre(mel)
        k = len(cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, cfg.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](s))
            x = sum(self.resblocks[i * k + j](x) for j in range(k)) / k
        x = self.conv_post(F.leaky_relu(x)).float()
        magnitude = torch.exp(x[:, :n_bins]).clamp(max=1e2)
        phase = torch.sin(x[:, n_bins:])
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        audio = torch.istft(spec, cfg.n_fft, cfg.hop_len, cfg.n_fft, window=self.window)
        return audio.clamp(-cfg.audio_limit, cfg.audio_limit)


@dataclass
class VocoderState:
    """What a vocoder stream carries between pieces of mel."""

    mel_ctx: torch.Tensor | None = None  # [1, 80, <= context] committed frames before the next piece
    src_ctx: torch.Tensor | None = None  # [1, 1, frames * 256] their excitation
    phase: torch.Tensor | None = None  # [1, H] running sine phase (cycles) at the end of the committed mel


class VocoderStream:
    """HiFT over committed mel pieces, with mel/source context and a continuous sine phase.

    HiFT is convolutional with a receptive field of about 12 mel frames each
    side: each piece is vocoded with `context` earlier frames as left context
    and up to `context` provisional frames (`lookahead`) as right context, so
    the audio joins without clicks and matches offline vocoding of the same mel.
    Follows the stream contract (`glm4voice.streaming.Stream`): `flush()` ends
    the utterance (nothing is held back here) and the next push starts anew.
    """

    def __init__(self, hift: HiFT, context: int = 12, seed: int = 0):
        self.hift, self.context, self.seed = hift, context, seed
        self.spf = hift.samples_per_frame
        self.generator = torch.Generator().manual_seed(seed)
        self.state = VocoderState()

    def push(self, mel: torch.Tensor, lookahead: torch.Tensor | None = None) -> torch.Tensor:
        """Audio [n * 256] (CPU float32) for `mel` [1, 80, n] (committed); `lookahead` = provisional frames after it."""
        st, n = self.state, mel.shape[2]
        if n == 0:
            return torch.zeros(0)
        if lookahead is not None:  # HiFT sees ~12 frames ahead: more look-ahead is wasted work
            lookahead = lookahead[:, :, : max(self.context, 1)]
        window = torch.cat([p for p in (st.mel_ctx, mel, lookahead) if p is not None and p.shape[2]], dim=2)
        left = 0 if st.mel_ctx is None else st.mel_ctx.shape[2]
        f0 = self.hift.f0(window)
        if st.phase is None:
            st.phase = self.hift.m_source.start_phase(1, self.generator)
        src_new, st.phase = self.hift.source_from_f0(f0[:, left : left + n], st.phase, self.generator)
        sources = [s for s in (st.src_ctx, src_new) if s is not None]
        if window.shape[2] > left + n:  # provisional excitation for the look-ahead frames
            scratch = torch.Generator().manual_seed(0)
            src_ahead, _ = self.hift.source_from_f0(f0[:, left + n :], st.phase, scratch)
            sources.append(src_ahead)
        audio = self.hift(window, torch.cat(sources, dim=2).to(window.dtype))[0]
        keep = torch.cat([p for p in (st.mel_ctx, mel) if p is not None], dim=2)
        src = torch.cat([s for s in (st.src_ctx, src_new) if s is not None], dim=2)
        k = min(self.context, keep.shape[2])
        st.mel_ctx = keep[:, :, keep.shape[2] - k :]
        st.src_ctx = src[:, :, src.shape[2] - k * self.spf :]
        return audio[left * self.spf : (left + n) * self.spf].float().cpu()

    def flush(self) -> torch.Tensor:
        """Nothing is held back: end the utterance; the next push starts a new one (same seed)."""
        self.generator = torch.Generator().manual_seed(self.seed)
        self.state = VocoderState()
        return torch.zeros(0)
