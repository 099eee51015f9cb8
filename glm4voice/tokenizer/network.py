"""The tokenizer network: causal convs, block-causal Whisper encoder layers, pooling, nearest-codebook lookup.

Parameter names follow the checkpoint (conv1, layers.N..., codebook), so the
released weights load with `load_state_dict` as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError
from .config import TokenizerConfig


@dataclass
class EncoderState:
    """What a stream carries between blocks: conv left context, KV caches, position."""

    conv1_tail: torch.Tensor  # [B, n_mels, 2] last mel frames (zeros at start: causal padding)
    conv2_tail: torch.Tensor  # [B, D, 2] last conv1 outputs
    keys: list = field(default_factory=list)  # per layer [B, H, S, hd]
    values: list = field(default_factory=list)
    frames: int = 0  # 50 Hz frames consumed so far


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, key_mask, block, past=None):
        # x [B, T, D]; key_mask [B, S] marks real keys; past: (k, v) [B, H, S - T, hd] or None
        B, T, D = x.shape

        def heads(t):
            return t.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        return self.out_proj(block_causal_attention(q, k, v, key_mask, block)), (k, v)


def block_causal_attention(q, k, v, key_mask, block: int | None):
    """Query i sees key j when j <= i or both share a block, i.e. every key up to
    the end of i's block; padding keys never. Computed block by block, so no
    [T, S] mask is built and the masked-out half of the scores is never computed.

    q [B, H, T, hd] are the last T of S positions (T starts on a block boundary);
    k, v [B, H, S, hd]; key_mask [B, S] bool. Returns [B, T, H * hd].
    """
    B, H, T, hd = q.shape
    S = k.shape[2]
    step = block or S
    if (S - T) % step:
        raise ValueError("queries must start on an attention block boundary")
    out = q.new_empty(B, T, H, hd)
    for start in range(S - T, S, step):
        end = min(start + step, S)
        visible = key_mask[:, :end]
        mask = None if bool(visible.all()) else visible[:, None, None, :]
        rows = slice(start - (S - T), end - (S - T))
        block_out = F.scaled_dot_product_attention(q[:, :, rows], k[:, :, :end], v[:, :, :end], attn_mask=mask)
        out[:, rows] = block_out.transpose(1, 2)
    return out.view(B, T, H * hd)


class EncoderLayer(nn.Module):
    """Pre-LN Whisper encoder layer."""

    def __init__(self, d: int, n_heads: int, ffn: int):
        super().__init__()
        self.self_attn = Attention(d, n_heads)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, ffn)
        self.fc2 = nn.Linear(ffn, d)
        self.final_layer_norm = nn.LayerNorm(d)

    def forward(self, x, key_mask, block, past=None):
        attn, kv = self.self_attn(self.self_attn_layer_norm(x), key_mask, block, past)
        x = x + attn
        x = x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        return x, kv


class WhisperVQEncoder(nn.Module):
    """The tokenizer network, named as in the checkpoint (conv1, layers.N..., codebook)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        pad = 0 if cfg.causal_conv else 1  # causal: we left-pad by hand
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=pad)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=pad)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.layers = nn.ModuleList(EncoderLayer(cfg.d_model, cfg.n_heads, cfg.ffn_dim) for _ in range(cfg.n_layers))
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.d_model)

    def new_state(self, batch: int = 1) -> EncoderState:
        if not self.cfg.causal_conv or self.cfg.block_size is None:
            raise CheckpointError("streaming needs causal convolutions and block-causal attention")
        p = self.conv1.weight
        return EncoderState(
            conv1_tail=p.new_zeros(batch, self.cfg.n_mels, 2), conv2_tail=p.new_zeros(batch, self.cfg.d_model, 2)
        )

    def forward(self, features: torch.Tensor, mask: torch.Tensor, state: EncoderState | None = None):
        """features [B, n_mels, T] (T even), mask [B, T] bool -> (codes [B, T'], code_mask [B, T']).

        With `state`, `features` continue the stream where the last call ended
        (the caller feeds whole attention blocks, except at the very end).
        """
        h, mask = self.encode(features, mask, state)
        return self.quantize(h), mask

    def encode(self, features: torch.Tensor, mask: torch.Tensor, state: EncoderState | None = None,
               pre_pool: list | None = None):  # fmt: skip
        """The hidden states the quantizer sees: (h [B, T', D] at 12.5 Hz, mask [B, T']). Training starts here.

        `pre_pool`: a list that receives (h [B, T, D], mask [B, T]) as the pooling reads them (50 Hz): what
        training's intermediate CTC head hears."""
        cfg = self.cfg
        x = features.to(self.conv1.weight.dtype)
        if cfg.causal_conv:
            tail1 = state.conv1_tail if state is not None else x.new_zeros(x.shape[0], x.shape[1], 2)
            x = torch.cat([tail1, x], dim=2)
            h1 = F.gelu(self.conv1(x))  # [B, D, T]
            tail2 = state.conv2_tail if state is not None else h1.new_zeros(h1.shape[0], h1.shape[1], 2)
            h1 = torch.cat([tail2, h1], dim=2)
            if state is not None:
                state.conv1_tail, state.conv2_tail = x[:, :, -2:], h1[:, :, -2:]
        else:
            h1 = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(h1)).transpose(1, 2)  # [B, T/2, D]
        T = h.shape[1]
        start = state.frames if state is not None else 0
        if start + T > cfg.max_positions:
            raise ValueError(f"at most {cfg.max_positions} encoder frames per pass, got {start + T}")
        h = h + self.embed_positions.weight[start : start + T]
        mask = mask[:, ::2]
        rate = 1  # pooling factor applied so far
        for idx, layer in enumerate(self.layers):
            past = None
            if state is not None and idx < len(state.keys):
                past = (state.keys[idx], state.values[idx])
            key_mask = mask
            if past is not None:  # cached keys are earlier, real frames
                key_mask = torch.cat([mask.new_ones(mask.shape[0], past[0].shape[2]), mask], dim=1)
            block = cfg.block_size // rate if cfg.block_size else None
            h, kv = layer(h, key_mask, block, past)
            if state is not None:
                if idx < len(state.keys):
                    state.keys[idx], state.values[idx] = kv
                else:
                    state.keys.append(kv[0])
                    state.values.append(kv[1])
            if idx + 1 == cfg.pooling_position and cfg.pooling_kernel > 1:
                if pre_pool is not None:
                    pre_pool.append((h, mask))
                h, mask = self._pool(h, mask)
                rate = cfg.pooling_kernel
        if state is not None:
            state.frames += T
        return h, mask

    def _pool(self, h, mask):
        k = self.cfg.pooling_kernel
        h = h.transpose(1, 2)  # [B, D, T]
        if h.shape[-1] % k:
            h = F.pad(h, (0, k - h.shape[-1] % k))
        h = F.avg_pool1d(h, k) if self.cfg.pooling_type == "avg" else F.max_pool1d(h, k)
        return h.transpose(1, 2), mask[:, ::k]

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """Nearest codebook row by squared L2 distance (in fp32): [B, T, D] -> codes [B, T]."""
        codes = self.codebook.weight.float()
        # ||h||^2 is the same for every code, so it cannot change the argmin.
        scores = (codes * codes).sum(-1) - 2.0 * h.float() @ codes.T
        return scores.argmin(-1)
