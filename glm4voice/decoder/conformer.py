"""The flow model's token encoder: a block-causal, relative-position Conformer.

Layout and parameter names follow the released `flow.pt` (`encoder.*`): a
Linear + LayerNorm input layer, ESPnet relative positional encoding (the input
is scaled by sqrt(d); the position table covers relative offsets T-1 .. -(T-1)
and attention adds Transformer-XL terms with `pos_bias_u/v`), pre-norm layers
of self-attention and a SiLU feed-forward (no conv module, no macaron FFN),
and a final LayerNorm.

Token i attends to every j <= i and to its whole block of `block_size` ids, so
an encoder output depends only on ids up to the end of its own block. That is
what lets streaming reuse offline-identical encodings when chunks end on block
boundaries.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import EncoderConfig


def block_causal_mask(length: int, block_size: int, device=None) -> torch.Tensor:
    """[T, T] bool: True where query i may attend key j (j <= i, or same block)."""
    idx = torch.arange(length, device=device)
    causal = idx[None, :] <= idx[:, None]
    same_block = (idx[None, :] // block_size) == (idx[:, None] // block_size)
    return causal | same_block


def relative_position_table(length: int, d_model: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[2T-1, d] sinusoids for relative offsets T-1, T-2, ..., -(T-1) (ESPnet order)."""
    offsets = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)[:, None]
    freqs = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / d_model))
    table = torch.zeros(2 * length - 1, d_model, device=device)
    table[:, 0::2] = torch.sin(offsets * freqs)
    table[:, 1::2] = torch.cos(offsets * freqs)
    return table.to(dtype)


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention with ESPnet/Transformer-XL relative positions."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads, self.d_k = heads, d_model // heads
        self.linear_q = nn.Linear(d_model, d_model)
        self.linear_k = nn.Linear(d_model, d_model)
        self.linear_v = nn.Linear(d_model, d_model)
        self.linear_out = nn.Linear(d_model, d_model)
        self.linear_pos = nn.Linear(d_model, d_model, bias=False)
        self.pos_bias_u = nn.Parameter(torch.zeros(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.zeros(heads, self.d_k))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        # x [B, T, D]; pos [2T-1, D]; allowed [T, T] bool
        b, t, _ = x.shape
        h, dk = self.heads, self.d_k
        q = self.linear_q(x).view(b, t, h, dk)
        k = self.linear_k(x).view(b, t, h, dk).transpose(1, 2)  # [B, H, T, dk]
        v = self.linear_v(x).view(b, t, h, dk).transpose(1, 2)
        p = self.linear_pos(pos).view(-1, h, dk).transpose(0, 1)  # [H, 2T-1, dk]
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))  # [B, H, T, T]
        by_offset = torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))  # [B, H, T, 2T-1]
        # Column k of by_offset is offset T-1-k; score (i, j) needs offset i-j, i.e. k = T-1-i+j.
        idx = torch.arange(t, device=x.device)
        gather = (t - 1 - idx[:, None] + idx[None, :]).expand(b, h, t, t)
        position = torch.gather(by_offset, -1, gather)
        scores = (content + position) / math.sqrt(dk)
        scores = scores.masked_fill(~allowed, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, t, h * dk)
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(d_model, hidden)
        self.w_2 = nn.Linear(hidden, d_model)

    def forward(self, x):
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, d_model: int, heads: int, hidden: int):
        super().__init__()
        self.self_attn = RelPosSelfAttention(d_model, heads)
        self.feed_forward = FeedForward(d_model, hidden)
        self.norm_mha = nn.LayerNorm(d_model, eps=1e-5)
        self.norm_ff = nn.LayerNorm(d_model, eps=1e-5)

    def forward(self, x, pos, allowed):
        x = x + self.self_attn(self.norm_mha(x), pos, allowed)
        return x + self.feed_forward(self.norm_ff(x))


class _InputLayer(nn.Module):
    def __init__(self, d_in: int, d_model: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(d_in, d_model), nn.LayerNorm(d_model, eps=1e-5))


class TokenEncoder(nn.Module):
    """[B, T, input_size] embedded ids -> [B, T, output_size]."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = _InputLayer(cfg.input_size, cfg.output_size)
        self.encoders = nn.ModuleList(
            [ConformerLayer(cfg.output_size, cfg.attention_heads, cfg.linear_units) for _ in range(cfg.num_blocks)]
        )
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = self.embed.out(x) * math.sqrt(self.cfg.output_size)
        pos = relative_position_table(t, self.cfg.output_size, x.device, x.dtype)
        allowed = block_causal_mask(t, self.cfg.block_size, x.device)
        for layer in self.encoders:
            x = layer(x, pos, allowed)
        return self.after_norm(x)
