"""The 12.5 Hz supervised speech tokenizer (Whisper encoder + VQ bottleneck).

Loads a `THUDM/glm-4-voice-tokenizer` folder as it is (config.json,
model.safetensors, preprocessor_config.json), in either key layout: the
released one (no prefix) or the ASR-training one (`model.encoder.` prefix plus
tensors inference ignores).

Speech -> 16 kHz Whisper log-mel -> causal convs (100 -> 50 frames/s) ->
block-causal transformer layers -> avg-pool x4 (12.5 frames/s) -> nearest
codebook row = token id. Because every operation only looks back, or within its
own 4 s block, the ids of a finished block are final: `SpeechTokenizer.stream`
uses that to tokenize while audio is still arriving.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F

from .audio import (
    SAMPLES_PER_TOKEN,
    WHISPER_HOP,
    WHISPER_N_FFT,
    WHISPER_N_MELS,
    WHISPER_RATE,
    load_audio,
    whisper_log10_mel,
    whisper_log_mel,
    whisper_normalize,
)
from .dtypes import as_dtype
from .errors import CheckpointError
from .hub import resolve_checkpoint
from .quant import quantize_linear_int8

PIECE_SAMPLES = 30 * WHISPER_RATE  # the encoder's 1500 positions: 30 s per pass


@dataclass(frozen=True)
class TokenizerConfig:
    """What inference needs from the checkpoint's config.json."""

    n_mels: int = 128
    d_model: int = 1280
    n_heads: int = 20
    ffn_dim: int = 5120
    max_positions: int = 1500
    n_layers: int = 16  # layers run: quantize_position
    pooling_position: int = 16
    pooling_kernel: int = 4
    pooling_type: str = "avg"
    block_size: int | None = 200  # attention block in 50 Hz frames (None: full attention)
    codebook_size: int = 16384
    causal_conv: bool = True

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "config.json") -> TokenizerConfig:
        def need(key):
            if key not in cfg:
                raise CheckpointError(f"{source}: missing '{key}'")
            return cfg[key]

        if cfg.get("activation_function", "gelu") != "gelu":
            raise CheckpointError(f"{source}: activation_function {cfg['activation_function']!r} not supported")
        if cfg.get("encoder_causal_attention"):
            raise CheckpointError(f"{source}: encoder_causal_attention=true is not supported")
        if need("quantize_vocab_size") is None:
            raise CheckpointError(f"{source}: no quantize_vocab_size: not a VQ tokenizer checkpoint")
        pooling_type = cfg.get("pooling_type", "avg")
        if pooling_type not in ("avg", "max"):
            raise CheckpointError(f"{source}: pooling_type {pooling_type!r} not supported")
        config = cls(
            n_mels=need("num_mel_bins"),
            d_model=need("d_model"),
            n_heads=need("encoder_attention_heads"),
            ffn_dim=need("encoder_ffn_dim"),
            max_positions=need("max_source_positions"),
            n_layers=need("quantize_position"),
            pooling_position=need("pooling_position"),
            pooling_kernel=cfg.get("pooling_kernel_size") or 1,
            pooling_type=pooling_type,
            block_size=cfg.get("quantize_causal_block_size"),
            codebook_size=cfg["quantize_vocab_size"],
            causal_conv=bool(cfg.get("encoder_causal_convolution", False)),
        )
        if not 0 < config.pooling_position <= config.n_layers:
            raise CheckpointError(f"{source}: pooling_position must lie in 1..quantize_position")
        if config.block_size is not None and config.block_size % config.pooling_kernel:
            raise CheckpointError(f"{source}: quantize_causal_block_size must be a multiple of the pooling kernel")
        return config


# ----------------------------------------------------------------------------- network


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
        """features [B, n_mels, T] (T even), mask [B, T] bool -> (ids [B, T'], id_mask [B, T']).

        With `state`, `features` continue the stream where the last call ended
        (the caller feeds whole attention blocks, except at the very end).
        """
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
                h, mask = self._pool(h, mask)
                rate = cfg.pooling_kernel
        if state is not None:
            state.frames += T
        return self.quantize(h), mask

    def _pool(self, h, mask):
        k = self.cfg.pooling_kernel
        h = h.transpose(1, 2)  # [B, D, T]
        if h.shape[-1] % k:
            h = F.pad(h, (0, k - h.shape[-1] % k))
        h = F.avg_pool1d(h, k) if self.cfg.pooling_type == "avg" else F.max_pool1d(h, k)
        return h.transpose(1, 2), mask[:, ::k]

    def quantize(self, h: torch.Tensor) -> torch.Tensor:
        """Nearest codebook row by squared L2 distance (in fp32): [B, T, D] -> [B, T]."""
        codes = self.codebook.weight.float()
        # ||h||^2 is the same for every code, so it cannot change the argmin.
        scores = (codes * codes).sum(-1) - 2.0 * h.float() @ codes.T
        return scores.argmin(-1)


# ----------------------------------------------------------------------------- loading


def load_encoder_weights(folder: Path, cfg: TokenizerConfig) -> dict[str, torch.Tensor]:
    """Read the tensors inference needs, from either checkpoint layout."""
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"tokenizer checkpoint {folder}: no model*.safetensors")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                name = key[len("model.encoder.") :] if key.startswith("model.encoder.") else key
                if key.startswith("model.") and not key.startswith("model.encoder."):
                    continue  # ASR decoder of the training layout
                if name.startswith("layers."):
                    if int(name.split(".")[1]) >= cfg.n_layers:
                        continue  # layers after the quantizer: ASR training only
                elif name.split(".")[0] not in ("conv1", "conv2", "embed_positions", "codebook"):
                    continue  # ema buffers, embed_positions2, final layer_norm
                state[name] = f.get_tensor(key)
    return state


class SpeechTokenizer:
    """Speech -> 12.5 Hz ids. See the module docstring."""

    def __init__(self, model: WhisperVQEncoder, device="cpu", batch_size: int = 8):
        self.model = model.eval()
        self.config = model.cfg
        self.device = torch.device(device)
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls, path_or_id: str | os.PathLike, device="cpu", dtype="float32", int8: bool = False, batch_size: int = 8
    ):
        """Load a tokenizer folder or hub id; `batch_size` is 30 s pieces per forward pass."""
        folder = resolve_checkpoint(path_or_id, ["config.json", "preprocessor_config.json"], "tokenizer")
        cfg = TokenizerConfig.from_dict(_read_json(folder / "config.json"), str(folder / "config.json"))
        _check_preprocessor(_read_json(folder / "preprocessor_config.json"), cfg, folder)
        with torch.device("meta"):
            model = WhisperVQEncoder(cfg)
        state = load_encoder_weights(folder, cfg)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise CheckpointError(f"tokenizer checkpoint {folder}: weights do not match config.json: {exc}") from None
        model = model.to(device=device, dtype=as_dtype(dtype)).eval()
        if int8:
            quantize_linear_int8(model, "tokenization")
        return cls(model, device=device, batch_size=batch_size)

    # -- offline -------------------------------------------------------------------------------

    def tokenize(self, audio, sample_rate: int | None = None) -> list[int]:
        """One input (path, bytes, or array at `sample_rate`, default 16 kHz) -> ids."""
        return self.tokenize_batch([audio], sample_rate=sample_rate)[0]

    @torch.inference_mode()
    def tokenize_batch(self, audios, sample_rate: int | None = None) -> list[list[int]]:
        """Many inputs -> ids each. 30 s pieces of all inputs are batched together;
        each piece's ids do not depend on the batch, so this equals one by one."""
        waves = [self._load(a, sample_rate) for a in audios]
        pieces = [(i, w[s : s + PIECE_SAMPLES]) for i, w in enumerate(waves) for s in range(0, len(w), PIECE_SAMPLES)]
        # Longest first, so batches hold pieces of similar length (less padding work).
        order = sorted(range(len(pieces)), key=lambda k: -len(pieces[k][1]))
        piece_ids: list[list[int]] = [[] for _ in pieces]
        for start in range(0, len(order), self.batch_size):
            group = order[start : start + self.batch_size]
            features, mask = whisper_log_mel([pieces[k][1] for k in group], device=self.device)
            ids, id_mask = self.model(features, mask)
            for row, k in enumerate(group):
                piece_ids[k] = ids[row][id_mask[row]].tolist()
        out: list[list[int]] = [[] for _ in waves]
        for (i, _), ids in zip(pieces, piece_ids):
            out[i].extend(ids)
        return out

    def _load(self, audio, sample_rate):
        if isinstance(audio, (str, os.PathLike, bytes, bytearray)):
            return load_audio(audio)
        return load_audio(audio, sample_rate=sample_rate or WHISPER_RATE)

    # -- streaming -----------------------------------------------------------------------------

    def stream(self) -> TokenizerStream:
        """A stream that tokenizes 16 kHz audio as it arrives (see TokenizerStream)."""
        return TokenizerStream(self)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None


def _check_preprocessor(pre: dict, cfg: TokenizerConfig, folder: Path) -> None:
    expected = {"sampling_rate": WHISPER_RATE, "n_fft": WHISPER_N_FFT, "hop_length": WHISPER_HOP,
                "feature_size": WHISPER_N_MELS}
    for key, value in expected.items():
        if pre.get(key, value) != value:
            raise CheckpointError(f"{folder}/preprocessor_config.json: {key}={pre[key]}, only {value} is supported")
    if cfg.n_mels != WHISPER_N_MELS:
        raise CheckpointError(f"{folder}/config.json: num_mel_bins={cfg.n_mels}, only {WHISPER_N_MELS} is supported")


class TokenizerStream:
    """Tokenize while audio arrives: `push(chunk)` returns the ids of every
    attention block (4 s, 50 ids) finished so far; `flush()` the rest.

    A block's ids are final once its audio (plus 40 samples of STFT look-ahead)
    is in, because convs are causal and attention is block-causal. The stream
    restarts at every 30 s piece, exactly as offline tokenization does. The one
    difference from offline: Whisper floors log-mel at (max - 8) over the whole
    input; a stream only knows the maximum so far, so it uses the running max.
    """

    def __init__(self, tokenizer: SpeechTokenizer):
        self.tok = tokenizer
        self.model = tokenizer.model
        cfg = self.model.cfg
        self.block_samples = cfg.block_size * 2 * WHISPER_HOP  # 200 frames @ 50 Hz = 64000 samples
        self._reset_piece()

    def _reset_piece(self):
        self.buffer = np.zeros(0, dtype=np.float32)  # audio of the current 30 s piece
        self.done_samples = 0  # samples of the piece whose ids were returned
        self.running_max = -math.inf
        self.state = self.model.new_state(1)

    @torch.inference_mode()
    def push(self, chunk, sample_rate: int | None = None) -> list[int]:
        """Add audio (array at `sample_rate`, default 16 kHz); returns newly final ids."""
        audio = load_audio(chunk, sample_rate=sample_rate or WHISPER_RATE) if len(chunk) else np.zeros(0, np.float32)
        out: list[int] = []
        while len(audio):
            room = PIECE_SAMPLES - len(self.buffer)
            self.buffer = np.concatenate([self.buffer, audio[:room]])
            audio = audio[room:]
            lookahead = WHISPER_N_FFT // 2 - WHISPER_HOP  # the last frame's window reaches 40 samples on
            while len(self.buffer) >= self.done_samples + self.block_samples + lookahead:
                out += self._encode(self.done_samples, self.done_samples + self.block_samples)
            if len(self.buffer) == PIECE_SAMPLES:
                out += self._finish_piece()
        return out

    @torch.inference_mode()
    def flush(self) -> list[int]:
        """The ids of the audio not yet returned; the stream can then start anew."""
        return self._finish_piece() if len(self.buffer) else []

    def _finish_piece(self) -> list[int]:
        n = len(self.buffer)
        padded = math.ceil(n / SAMPLES_PER_TOKEN) * SAMPLES_PER_TOKEN
        self.buffer = np.pad(self.buffer, (0, padded - n))
        out: list[int] = []
        while self.done_samples < padded:
            end = min(self.done_samples + self.block_samples, padded)
            out += self._encode(self.done_samples, end, real_end=n, at_end=end == padded)
        self._reset_piece()
        return out

    def _encode(self, start: int, end: int, real_end: int | None = None, at_end: bool = False) -> list[int]:
        """Ids for samples [start, end) of the piece: frames start/160 .. end/160."""
        half = WHISPER_N_FFT // 2
        lo, hi = start - half, end - WHISPER_HOP + half  # window span of the frames
        wave = torch.from_numpy(self.buffer[max(lo, 0) : min(hi, len(self.buffer))]).to(self.tok.device)
        left = max(0, -lo)
        right = hi - min(hi, len(self.buffer)) if at_end else 0
        if left or right:  # reflect at the piece's ends, as center=True does offline
            wave = F.pad(wave[None, None], (left, right), mode="reflect")[0, 0]
        log_mel = whisper_log10_mel(wave[None])  # [1, 128, (end - start) / 160]
        self.running_max = max(self.running_max, log_mel.max().item())
        features = whisper_normalize(log_mel, self.running_max)
        frames = torch.arange(start // WHISPER_HOP, end // WHISPER_HOP, device=self.tok.device)
        limit = math.ceil(real_end / WHISPER_HOP) if real_end is not None else end // WHISPER_HOP
        ids, id_mask = self.model(features, (frames < limit)[None], self.state)
        self.done_samples = end
        return ids[0][id_mask[0]].tolist()
