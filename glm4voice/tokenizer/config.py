"""The speech tokenizer's settings, read from the checkpoint's config.json (a Whisper config with VQ fields)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CheckpointError
from ..jsonl import positive_int


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

        def count(key, default=None):  # a positive integer
            return positive_int(need(key) if default is None else cfg.get(key) or default, key, source,
                                CheckpointError)  # fmt: skip

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
            n_mels=count("num_mel_bins"),
            d_model=count("d_model"),
            n_heads=count("encoder_attention_heads"),
            ffn_dim=count("encoder_ffn_dim"),
            max_positions=count("max_source_positions"),
            n_layers=count("quantize_position"),
            pooling_position=count("pooling_position"),
            pooling_kernel=count("pooling_kernel_size", 1),
            pooling_type=pooling_type,
            block_size=None if cfg.get("quantize_causal_block_size") is None else count("quantize_causal_block_size"),
            codebook_size=count("quantize_vocab_size"),
            causal_conv=bool(cfg.get("encoder_causal_convolution", False)),
        )
        if config.d_model % config.n_heads:
            raise CheckpointError(f"{source}: encoder_attention_heads ({config.n_heads}) must divide d_model "
                                  f"({config.d_model})")  # fmt: skip
        if not 0 < config.pooling_position <= config.n_layers:
            raise CheckpointError(f"{source}: pooling_position must lie in 1..quantize_position")
        if config.block_size is not None and config.block_size % config.pooling_kernel:
            raise CheckpointError(f"{source}: quantize_causal_block_size must be a multiple of the pooling kernel")
        return config
