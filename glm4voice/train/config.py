"""The run settings every trainer shares: optimiser, schedule, batches, checkpoints, precision.

A trainer adds its own settings beside these (e.g. `train-sft`'s max_length);
the CLI turns every field into a flag with the field's default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import Glm4VoiceError


@dataclass
class RunConfig:
    steps: int = 100
    batch_size: int = 4  # samples per micro-batch on each rank
    accumulate: int = 1  # micro-batches per optimiser step (gradient accumulation)
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.1  # not on norms and biases (tensors of fewer than 2 dims)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    save_every: int = 0  # 0: only at the end
    keep_last: int = 0  # checkpoints kept in the run folder (0: all)
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "none"  # or "bf16": compute in bf16, fp32 master weights
    gradient_checkpointing: bool = False  # recompute each block's activations in backward: less memory, more time
    reschedule: bool = False  # --resume with other steps/lr/...: accept the changed schedule (refused otherwise)

    SCHEDULE = ("steps", "lr", "min_lr", "warmup_steps", "batch_size", "accumulate", "seed")  # a resume keeps them

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise Glm4VoiceError(f"{f.name} must be an integer, got {value!r}")
            if f.type == "float" and not (isinstance(value, (int, float)) and math.isfinite(value)):
                raise Glm4VoiceError(f"{f.name} must be a finite number, got {value!r}")
        if self.steps < 1 or self.batch_size < 1 or self.accumulate < 1 or self.log_every < 1:
            raise Glm4VoiceError("steps, batch_size, accumulate and log_every must be >= 1")
        if self.warmup_steps < 0 or self.save_every < 0 or self.keep_last < 0 or self.seed < 0:
            raise Glm4VoiceError("warmup_steps, save_every, keep_last and seed must be >= 0")
        if not 0 < self.min_lr <= self.lr or self.grad_clip <= 0 or self.weight_decay < 0:
            raise Glm4VoiceError("need 0 < min_lr <= lr, grad_clip > 0 and weight_decay >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise Glm4VoiceError(f"beta1 and beta2 must lie in [0, 1), got {self.beta1} and {self.beta2}")
        if self.mixed_precision not in ("none", "bf16"):
            raise Glm4VoiceError(f"mixed_precision is none or bf16, got {self.mixed_precision!r}")


def native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 in hardware (AVX-512 bf16 or AMX): where it does not, bf16
    autocast is emulated and far slower than float32 (the tiny flow: 3.9 s a step, 0.30 s in float32, on an
    AVX2 EPYC)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
