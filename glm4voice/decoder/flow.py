"""Speech codes -> 80-bin mel by conditional flow matching (CosyVoice `MaskedDiffWithXvec`).

codes -> embedding -> block-causal Conformer -> Linear to 80 -> nearest
interpolation to the mel frame count + conv stack (`length_regulator`) = mu.
Then 10 Euler steps of the ODE dx/dt = v(x, mu, spk, cond, t) from Gaussian
noise over the cosine time grid, with classifier-free guidance
v = (1 + r) v(cond) - r v(uncond) (uncond zeroes mu, spk and cond). `cond`
carries the prompt mel in its first frames. The speaker vector is zero at
inference, so `spk` is the affine layer's bias: one fixed voice.

Parameter names follow the released `flow.pt`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FlowConfig
from .conformer import TokenEncoder
from .estimator import Estimator


class LengthRegulator(nn.Module):
    """Token rate -> frame rate: nearest interpolation, (Conv k3, GroupNorm(1), Mish) x n, Conv 1x1."""

    def __init__(self, channels: int, n_convs: int):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_convs):
            layers += [nn.Conv1d(channels, channels, 3, 1, 1), nn.GroupNorm(1, channels), nn.Mish()]
        layers.append(nn.Conv1d(channels, channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor, n_frames: int) -> torch.Tensor:
        # h [B, N, C] -> [B, C, n_frames]
        h = nn.functional.interpolate(h.transpose(1, 2), size=n_frames, mode="nearest")
        return self.model(h)


class _CFM(nn.Module):
    def __init__(self, estimator: Estimator):
        super().__init__()
        self.estimator = estimator


class FlowModel(nn.Module):
    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.input_embedding = nn.Embedding(cfg.vocab_size, cfg.input_size)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = TokenEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.length_regulator = LengthRegulator(cfg.output_size, len(cfg.sampling_ratios))
        self.decoder = _CFM(Estimator(cfg.estimator))

    def encode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [1, N] -> features [1, N, 80] at the code rate (before length regulation)."""
        x = self.input_embedding(codes.clamp(min=0))
        return self.encoder_proj(self.encoder(x))

    def mu(self, codes: torch.Tensor, n_frames: int) -> torch.Tensor:
        """codes [1, N] -> frame-rate condition mu [1, 80, n_frames]."""
        return self.length_regulator(self.encode(codes), n_frames)

    def speaker(self, dtype, device) -> torch.Tensor:
        """The fixed voice: affine layer of a zero (hence still zero after L2-normalising) x-vector."""
        zero = torch.zeros(1, self.cfg.spk_embed_dim, dtype=dtype, device=device)
        return self.spk_embed_affine_layer(zero)  # [1, 80]

    def time_grid(self, n_steps: int) -> torch.Tensor:
        t = torch.linspace(0, 1, n_steps + 1, dtype=torch.float32)
        if self.cfg.t_scheduler == "cosine":
            t = 1 - torch.cos(t * 0.5 * torch.pi)
        return t

    def solve(self, noise, mu, cond, n_steps: int = 10) -> torch.Tensor:
        """Euler integration with classifier-free guidance; all [B, 80, T] (B streams of the same length
        are solved together, as one would be alone)."""
        est = self.decoder.estimator
        rate = self.cfg.inference_cfg_rate
        b = noise.shape[0]
        spk = self.speaker(mu.dtype, mu.device).expand(b, -1)
        if rate > 0:  # one batched pass: rows [:b] conditioned, rows [b:] unconditioned (zeros)
            mu2, cond2 = torch.cat([mu, torch.zeros_like(mu)]), torch.cat([cond, torch.zeros_like(cond)])
            spk2 = torch.cat([spk, torch.zeros_like(spk)])
        grid = self.time_grid(n_steps)
        x, t, dt = noise, grid[0], grid[1] - grid[0]
        for step in range(1, len(grid)):
            if rate > 0:
                v2 = est(torch.cat([x, x]), mu2, t.expand(2 * b).to(x.device), spk2, cond2)
                v = (1.0 + rate) * v2[:b] - rate * v2[b:]
            else:
                v = est(x, mu, t.expand(b).to(x.device), spk, cond)
            x = x + dt.to(x.dtype) * v
            t = t + dt
            if step < len(grid) - 1:
                dt = grid[step + 1] - t
        return x
