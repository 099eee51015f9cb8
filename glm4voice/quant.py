"""Opt-in int8 for CPU inference: dynamic-quantized linear layers, shared by every model.

Weights become int8 (per output channel); activations are quantized per call
from their observed range. On this project's 2-core AVX2 test machine, int8
GEMMs run at about 1.6x the fp32 rate; the tokenizer and decoder benchmarks
report speed and agreement with fp32. torch.ao's dynamic quantization is
deprecated in favour of torchao, but ships with the pinned torch and needs no
extra package.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .errors import CheckpointError


def quantize_linear_int8(module: nn.Module, what: str) -> nn.Module:
    """Replace every nn.Linear in `module` (float32, on the CPU) by a dynamic int8 one, in place."""
    from torch.ao.quantization import quantize_dynamic

    for p in module.parameters():
        if p.device.type != "cpu":
            raise CheckpointError(f"int8 {what} runs on the CPU only (got {p.device.type})")
        if p.dtype != torch.float32:
            raise CheckpointError(f"int8 {what} starts from float32 weights (use dtype='float32'), got {p.dtype}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
