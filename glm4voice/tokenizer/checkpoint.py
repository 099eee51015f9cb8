"""Reading a speech tokenizer folder: config.json, preprocessor_config.json, model*.safetensors.

Two key layouts: the released one (the encoder's own names, no prefix) and the
ASR-training one (`model.encoder.` prefix, plus the layers past the quantizer,
the final `layer_norm`, the Whisper decoder `model.decoder.*` and `proj_out`).
Inference reads only what it runs (`load_encoder_weights`); training reads
everything (`load_training_tensors`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..audio import WHISPER_HOP, WHISPER_N_FFT, WHISPER_N_MELS, WHISPER_RATE
from ..errors import CheckpointError
from ..hub import iter_safetensors
from ..jsonl import read_json_object
from .config import TokenizerConfig

ENCODER_PREFIX = "model.encoder."
DECODER_PREFIX = "model.decoder."


def _files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("model*.safetensors"))
    if not files:
        raise CheckpointError(f"speech tokenizer checkpoint {folder}: no model*.safetensors")
    return files


def split_key(key: str) -> tuple[str, str]:
    """A checkpoint key -> (part, name): part is "encoder", "decoder" (the ASR decoder) or "other" (proj_out)."""
    if key.startswith(ENCODER_PREFIX):
        return "encoder", key[len(ENCODER_PREFIX) :]
    if key.startswith(DECODER_PREFIX):
        return "decoder", key[len(DECODER_PREFIX) :]
    if key.startswith("model.") or key.startswith("proj_out."):
        return "other", key
    return "encoder", key  # the released layout: the encoder's own names


def load_encoder_weights(folder: Path, cfg: TokenizerConfig) -> dict[str, torch.Tensor]:
    """The tensors inference runs, from either layout (layers up to the quantizer, convs, positions, codebook)."""
    def runs(key: str) -> bool:
        part, name = split_key(key)
        if part != "encoder":
            return False  # ASR decoder of the training layout
        if name.startswith("layers."):
            return int(name.split(".")[1]) < cfg.n_layers  # layers after the quantizer: ASR training only
        return name.split(".")[0] in ("conv1", "conv2", "embed_positions", "codebook")  # not EMA, norm, positions2

    state: dict[str, torch.Tensor] = {}
    for file in _files(folder):
        for key, tensor in iter_safetensors(file, "speech tokenizer", keep=runs):
            state[split_key(key)[1]] = tensor
    return state


def load_training_tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Every tensor of the folder, for training: {"encoder": ..., "decoder": ..., "other": ...}.

    "encoder" has all its layers (past the quantizer too), `layer_norm`, the EMA
    buffers (`ema_count`, `ema_weight`) and `embed_positions2`; "decoder" is the
    Whisper decoder that predicts the transcript (names without `model.decoder.`).
    A released folder has an empty "decoder".
    """
    parts: dict[str, dict[str, torch.Tensor]] = {"encoder": {}, "decoder": {}, "other": {}}
    for file in _files(folder):
        for key, tensor in iter_safetensors(file, "speech tokenizer"):
            part, name = split_key(key)
            parts[part][name] = tensor
    return parts


def read_json(path: Path) -> dict:
    """A checkpoint's JSON file (config, preprocessor config): one CheckpointError line when unusable."""
    return read_json_object(path, "speech tokenizer's " + path.name, CheckpointError)


def check_preprocessor(pre: dict, cfg: TokenizerConfig, folder: Path) -> None:
    """The released feature settings are the only ones the front end computes."""
    expected = {"sampling_rate": WHISPER_RATE, "n_fft": WHISPER_N_FFT, "hop_length": WHISPER_HOP,
                "feature_size": WHISPER_N_MELS}
    for key, value in expected.items():
        if pre.get(key, value) != value:
            raise CheckpointError(f"{folder}/preprocessor_config.json: {key}={pre[key]}, only {value} is supported")
    if cfg.n_mels != WHISPER_N_MELS:
        raise CheckpointError(f"{folder}/config.json: num_mel_bins={cfg.n_mels}, only {WHISPER_N_MELS} is supported")
