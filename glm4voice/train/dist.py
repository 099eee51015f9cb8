"""torchrun's environment (or one process), and FSDP sharding of a model's repeated blocks.

No home-made distribution: the process group is torch.distributed's (gloo on
CPU, NCCL on GPU), sharding is FSDP2's `fully_shard`, one block at a time.
"""

from __future__ import annotations

import os

import torch


class Dist:
    """The rank, world size and device of this process; a single process when not under torchrun."""

    def __init__(self):
        import torch.distributed as dist

        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def sharded(self) -> bool:
        return self.world > 1

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def shard(model: torch.nn.Module, blocks, mixed_precision: str = "none") -> torch.nn.Module:
    """FSDP2: each of `blocks` (the model's repeated layers), then the rest, sharded across the ranks.

    With `mixed_precision` "bf16" compute runs in bf16, while master weights,
    optimizer state and gradient reduction stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model
