"""The tokenizer's vector-quantized bottleneck as the paper trains it (SPEC §1 and §6).

- Codes: the nearest codebook row by squared L2 distance (fp32), as inference.
- Codebook by EMA, not by gradient: per update, with n_k the frames assigned to
  code k and s_k their sum (padding frames excluded),
      count_k  <- decay * count_k + (1 - decay) * n_k
      count_k  <- (count_k + eps) / (N + K * eps) * N          N = sum_k count_k (Laplace smoothing)
      weight_k <- decay * weight_k + (1 - decay) * s_k
      code_k    = weight_k / count_k
  Under torchrun n and s are summed over the ranks first, so every rank keeps
  the same codebook.
- Restarts: every `restart_every` updates, codes whose count fell below
  decay ** restart_every (unused for about that many updates) restart at random
  unpadded frames of the batch (code = weight = frame, count = 1). With fewer
  frames than dead codes, as many restart as there are frames. Under torchrun
  rank r restarts dead codes r, r + world, ... from its own frames, and a sum
  over the ranks hands every rank all of them.
- Loss: loss_scale * commit * MSE(h, sg(code)) over unpadded frames (0.25 and
  10 in the paper); gradients pass straight through: h + sg(code - h).

The codebook is a buffer, not a parameter: the optimizer never touches it, and
FSDP leaves it whole on every rank. The reference all-reduces unconditionally,
hard-codes CUDA autocast and fails when dead codes outnumber the batch's frames;
none of that here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class VQOutput:
    quantized: torch.Tensor  # [B, T, D]: h + sg(code - h)
    codes: torch.Tensor  # [B, T]
    loss: torch.Tensor  # commitment loss (scaled)
    used: int  # distinct codes among the unpadded frames (of all ranks when updating)


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class VectorQuantizer(nn.Module):
    def __init__(self, codebook_size: int, dim: int, decay: float = 0.99, eps: float = 1e-5,
                 restart_every: int = 100, commit: float = 0.25, loss_scale: float = 10.0):  # fmt: skip
        super().__init__()
        self.decay, self.eps, self.restart_every = decay, eps, restart_every
        self.commit, self.loss_scale = commit, loss_scale
        self.register_buffer("codebook", torch.randn(codebook_size, dim))
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_weight", self.codebook.clone())

    @property
    def size(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, h: torch.Tensor) -> torch.Tensor:
        """Codes of h [..., D] (fp32 distances; ||h||^2 cannot change the argmin)."""
        with torch.autocast(h.device.type, enabled=False):  # bf16 training must pick the codes inference picks
            book = self.codebook.float()
            return ((book * book).sum(-1) - 2.0 * h.float() @ book.T).argmin(-1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, update: bool = False) -> VQOutput:
        """h [B, T, D], mask [B, T] bool. `update`: one EMA step with this batch (training)."""
        codes = self.nearest(h)
        code_vectors = self.codebook[codes].to(h.dtype)
        frames, picked = h.detach().float()[mask], codes[mask]  # [F, D], [F]
        ones = torch.ones_like(picked, dtype=torch.float)
        counts = torch.zeros(self.size, device=h.device).index_add_(0, picked, ones)
        if update:  # only training steps talk to the other ranks (every rank updates, in lockstep)
            counts = _all_reduce(counts)
            sums = torch.zeros_like(self.ema_weight).index_add_(0, picked, frames)
            self.ema_step(counts, _all_reduce(sums))
        weight = mask.to(h.dtype)
        per_frame = ((h - code_vectors.detach()) ** 2).mean(-1)
        loss = self.loss_scale * self.commit * (per_frame * weight).sum() / weight.sum().clamp(min=1)
        quantized = h + (code_vectors - h).detach()
        return VQOutput(quantized, codes, loss, int((counts > 0).sum()))

    @torch.no_grad()
    def ema_step(self, counts: torch.Tensor, sums: torch.Tensor) -> None:
        """One EMA update from per-code frame counts [K] and frame sums [K, D] (already summed over ranks)."""
        d = self.decay
        count = self.ema_count * d + (1 - d) * counts
        total = count.sum()
        self.ema_count.copy_((count + self.eps) / (total + self.size * self.eps) * total)
        self.ema_weight.mul_(d).add_((1 - d) * sums)
        self.codebook.copy_(self.ema_weight / self.ema_count[:, None])

    @torch.no_grad()
    def restart_dead(self, h: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Restart codes whose EMA count fell below decay ** restart_every at random unpadded frames of h.

        Returns how many restarted (on every rank the same).
        """
        rank, world = _rank_world()
        dead = (self.ema_count < self.decay**self.restart_every).nonzero()[:, 0]
        mine = dead[rank::world]
        frames = h.detach().float()[mask]
        n = min(len(mine), len(frames))
        new = torch.zeros_like(self.codebook)
        flag = torch.zeros(self.size, device=h.device)
        if n:
            pick = torch.randperm(len(frames), generator=generator, device="cpu")[:n].to(frames.device)
            new[mine[:n]] = frames[pick]
            flag[mine[:n]] = 1.0
        new, flag = _all_reduce(new), _all_reduce(flag)
        chosen = flag > 0
        self.codebook[chosen] = new[chosen]
        self.ema_weight[chosen] = new[chosen]
        self.ema_count[chosen] = 1.0
        return int(chosen.sum())

    @torch.no_grad()
    def usage(self, codes: torch.Tensor) -> tuple[float, float]:
        """(share of the codebook used, perplexity) of a flat tensor of codes."""
        counts = torch.bincount(codes.reshape(-1), minlength=self.size).float()
        p = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())
        return float((counts > 0).float().mean()), float(perplexity)
