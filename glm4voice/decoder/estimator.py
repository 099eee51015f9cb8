"""The velocity estimator of the flow model: Matcha-TTS's 1-D conditional U-Net.

Parameter names follow the released `flow.pt` (`decoder.estimator.*`). The few
diffusers pieces it used (timestep MLP, `BasicTransformerBlock` with its
`Attention` and GELU feed-forward) are written here in their inference form:
no dropout, no masks. Inference is always one utterance without padding, so
the reference's all-ones masks change nothing (its float mask only adds a
constant to every attention score).

Shapes: x, mu, cond [B, 80, T]; spk [B, 80]; t [B]; output [B, 80, T].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import EstimatorConfig


def timestep_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """[B] -> [B, dim]: sin | cos of scale * t * 10000^(-i / (dim/2 - 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = scale * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimestepMLP(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_out)
        self.linear_2 = nn.Linear(d_out, d_out)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class ConvNormMish(nn.Module):
    """Conv1d(k3) -> GroupNorm(8) -> Mish (Matcha's Block1D)."""

    def __init__(self, d_in: int, d_out: int, groups: int = 8):
        super().__init__()
        self.block = nn.Sequential(nn.Conv1d(d_in, d_out, 3, padding=1), nn.GroupNorm(groups, d_out), nn.Mish())

    def forward(self, x):
        return self.block(x)


class ResnetBlock(nn.Module):
    """Two ConvNormMish with the time embedding added between, plus a 1x1 skip."""

    def __init__(self, d_in: int, d_out: int, d_time: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Mish(), nn.Linear(d_time, d_out))
        self.block1 = ConvNormMish(d_in, d_out)
        self.block2 = ConvNormMish(d_out, d_out)
        self.res_conv = nn.Conv1d(d_in, d_out, 1)

    def forward(self, x, t_emb):
        h = self.block1(x) + self.mlp(t_emb)[:, :, None]
        return self.block2(h) + self.res_conv(x)


class SelfAttention(nn.Module):
    """diffusers `Attention` as used here: bias-free q/k/v, scale 1/sqrt(head_dim)."""

    def __init__(self, d_model: int, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(d_model, inner, bias=False)
        self.to_k = nn.Linear(d_model, inner, bias=False)
        self.to_v = nn.Linear(d_model, inner, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(inner, d_model)])

    def forward(self, x):  # [B, T, C]
        b, t, _ = x.shape
        q, k, v = (
            proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2) for proj in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, hd]
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, -1))


class _GeluProj(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out)

    def forward(self, x):
        return F.gelu(self.proj(x))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, mult: int = 4):
        super().__init__()
        self.net = nn.ModuleList(
            [_GeluProj(d_model, d_model * mult), nn.Identity(), nn.Linear(d_model * mult, d_model)]
        )

    def forward(self, x):
        return self.net[2](self.net[0](x))


class TransformerBlock(nn.Module):
    """diffusers BasicTransformerBlock (self-attention only): pre-norm attn, pre-norm GELU FFN."""

    def __init__(self, d_model: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn1 = SelfAttention(d_model, heads, head_dim)
        self.norm3 = nn.LayerNorm(d_model)
        self.ff = FeedForward(d_model)

    def forward(self, x):  # [B, T, C]
        x = x + self.attn1(self.norm1(x))
        return x + self.ff(self.norm3(x))


class Downsample(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.conv = nn.Conv1d(d, d, 3, 2, 1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(d, d, 4, 2, 1)

    def forward(self, x):
        return self.conv(x)


def _transformers(d: int, cfg: EstimatorConfig) -> nn.ModuleList:
    return nn.ModuleList([TransformerBlock(d, cfg.num_heads, cfg.attention_head_dim) for _ in range(cfg.n_blocks)])


def _run_transformers(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    x = x.transpose(1, 2)  # [B, T, C]
    for block in blocks:
        x = block(x)
    return x.transpose(1, 2)


class Estimator(nn.Module):
    """U-Net over time: down stages (last one keeps the rate), mid stages, up stages with skips."""

    def __init__(self, cfg: EstimatorConfig):
        super().__init__()
        self.cfg = cfg
        ch = tuple(cfg.channels)
        d_time = ch[0] * 4
        self.time_mlp = TimestepMLP(cfg.in_channels, d_time)
        self.down_blocks = nn.ModuleList()
        d_out = cfg.in_channels
        for i, c in enumerate(ch):
            d_in, d_out = d_out, c
            last = i == len(ch) - 1
            sample = nn.Conv1d(d_out, d_out, 3, padding=1) if last else Downsample(d_out)
            self.down_blocks.append(
                nn.ModuleList([ResnetBlock(d_in, d_out, d_time), _transformers(d_out, cfg), sample])
            )
        self.mid_blocks = nn.ModuleList(
            nn.ModuleList([ResnetBlock(ch[-1], ch[-1], d_time), _transformers(ch[-1], cfg)])
            for _ in range(cfg.num_mid_blocks)
        )
        up = ch[::-1] + (ch[0],)
        self.up_blocks = nn.ModuleList()
        for i in range(len(up) - 1):
            d_in, d_out = up[i] * 2, up[i + 1]
            last = i == len(up) - 2
            sample = nn.Conv1d(d_out, d_out, 3, padding=1) if last else Upsample(d_out)
            self.up_blocks.append(nn.ModuleList([ResnetBlock(d_in, d_out, d_time), _transformers(d_out, cfg), sample]))
        self.final_block = ConvNormMish(up[-1], up[-1])
        self.final_proj = nn.Conv1d(up[-1], cfg.out_channels, 1)

    def forward(self, x, mu, t, spk, cond):
        t_emb = self.time_mlp(timestep_embedding(t, self.cfg.in_channels).to(x.dtype))
        h = torch.cat([x, mu, spk[:, :, None].expand(-1, -1, x.shape[-1]), cond], dim=1)
        skips = []
        for resnet, blocks, sample in self.down_blocks:
            h = _run_transformers(blocks, resnet(h, t_emb))
            skips.append(h)
            h = sample(h)
        for resnet, blocks in self.mid_blocks:
            h = _run_transformers(blocks, resnet(h, t_emb))
        for resnet, blocks, sample in self.up_blocks:
            skip = skips.pop()
            h = torch.cat([h[:, :, : skip.shape[-1]], skip], dim=1)
            h = sample(_run_transformers(blocks, resnet(h, t_emb)))
        return self.final_proj(self.final_block(h))
