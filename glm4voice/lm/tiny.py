"""Tiny random LM folders in the released `glm-4-voice-9b` formats, for tests and demos.

`write_tiny_tokenizer` writes `tokenizer.model` (tiktoken ranks: the 256 bytes
plus a few merges) and `tokenizer_config.json` (`added_tokens_decoder` with the
14 built-ins, the audio/transcription delimiters and `n_audio` `<|audio_N|>`
tokens after a gap, as in the release). `write_tiny_lm` adds a ChatGLM-format
`config.json` and random `model.safetensors` sized to that vocabulary.
The ids mean nothing; they exercise every code path the real files do.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .vocab import write_tokenizer_files

# Each merge joins two earlier tokens, so byte-pair encoding can reach it.
TINY_MERGES = (
    b"he", b"ll", b"llo", b"hello", b" w", b"or", b" wor", b"ld", b" world", b"in", b"ing", b"\n\n",
    b"th", b" th", b" the", b"er", b"ti", b"on", b"tion", b"st", b"re", b"am", b"ream",
)  # fmt: skip
AUDIO_GAP = 7  # unused ids between the delimiters and <|audio_0|> (the release has a gap too)


def tiny_ranks() -> dict[bytes, int]:
    ranks = {bytes([b]): b for b in range(256)}
    for merge in TINY_MERGES:
        ranks[merge] = len(ranks)
    return ranks


def write_tiny_tokenizer(folder: str | Path, n_audio: int = 512, speech: bool = True) -> dict[str, int]:
    """Write the tokenizer files; returns the special-token ids (`speech=False`: a text LM's, no audio)."""
    return write_tokenizer_files(folder, tiny_ranks(), n_audio if speech else 0, speech, AUDIO_GAP)


def write_tiny_lm(
    folder: str | Path,
    n_audio: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    groups: int = 2,
    ffn: int = 96,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    speech: bool = True,
) -> Path:
    """A complete random LM folder (ChatGLM layout + tokenizer files) whose vocab holds the audio ids
    (`speech=False`: a text LM, the start of `extend_vocab`)."""
    folder = Path(folder)
    specials = write_tiny_tokenizer(folder, n_audio, speech)
    vocab = max(specials.values()) + 1
    padded = (vocab + 15) // 16 * 16
    head_dim = hidden // heads
    stop = [specials[n] for n in ("<|endoftext|>", "<|user|>", "<|observation|>")]
    config = {
        "architectures": ["ChatGLMModel"],
        "model_type": "chatglm",
        "add_bias_linear": False,
        "add_qkv_bias": True,
        "apply_residual_connection_post_layernorm": False,
        "eos_token_id": stop,
        "ffn_hidden_size": ffn,
        "hidden_size": hidden,
        "kv_channels": head_dim,
        "layernorm_epsilon": 1.5625e-07,
        "multi_query_attention": True,
        "multi_query_group_num": groups,
        "num_attention_heads": heads,
        "num_layers": layers,
        "original_rope": True,
        "pad_token_id": specials["<|endoftext|>"],
        "padded_vocab_size": padded,
        "post_layer_norm": True,
        "rmsnorm": True,
        "rope_ratio": 1,
        "seq_length": 8192,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "vocab_size": padded,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.02):
        return (torch.randn(*shape, generator=g) * scale).to(dtype)

    qkv = (heads + 2 * groups) * head_dim
    tensors = {
        "transformer.embedding.word_embeddings.weight": rand(padded, hidden, scale=1.0),
        "transformer.encoder.final_layernorm.weight": 1 + rand(hidden, scale=0.1),
        "transformer.output_layer.weight": rand(padded, hidden, scale=0.5),
        "transformer.rotary_pos_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, head_dim // 2, 2) / (head_dim // 2)),
    }
    for i in range(layers):
        p = f"transformer.encoder.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": 1 + rand(hidden, scale=0.1),
            p + "post_attention_layernorm.weight": 1 + rand(hidden, scale=0.1),
            p + "self_attention.query_key_value.weight": rand(qkv, hidden, scale=0.2),
            p + "self_attention.query_key_value.bias": rand(qkv, scale=0.1),
            p + "self_attention.dense.weight": rand(hidden, heads * head_dim, scale=0.2),
            p + "mlp.dense_h_to_4h.weight": rand(2 * ffn, hidden, scale=0.2),
            p + "mlp.dense_4h_to_h.weight": rand(hidden, ffn, scale=0.2),
        })  # fmt: skip
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
