"""Learning rate and batch order as pure functions of the step, so a resumed run repeats the original exactly."""

from __future__ import annotations

import functools

import torch

from .config import RunConfig


def lr_at(step: int, cfg: RunConfig) -> float:
    """Linear warm-up to `lr`, then linear decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    done = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr + (cfg.min_lr - cfg.lr) * done


def batch_indices(index: int, rank: int, world: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Sample indices of `rank`'s share of global batch `index` (epochs are seeded permutations of range(n)).

    With gradient accumulation, micro-batch m of step s is batch `s * accumulate + m`.
    """
    per_batch = batch_size * world
    first = index * per_batch + rank * batch_size
    return [_epoch_order(n, seed + k // n)[k % n] for k in range(first, first + batch_size)]


@functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
def _epoch_order(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of one step on one rank: dropout, VQ restarts and crops repeat exactly on resume."""
    return ((seed * 1_000_003 + step) * 1009 + rank) % (2**63)
