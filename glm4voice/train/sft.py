"""Streaming-thoughts fine-tuning of the speech LM: one process on a laptop CPU, or torchrun + FSDP on a cluster.

    glm4voice train-sft --lm LM_DIR --data sft.jsonl --out runs/sft [--steps 1000] [--batch-size 8]
    torchrun --nproc_per_node 8 -m glm4voice train-sft ...   # each decoder layer sharded across the ranks

Recipe defaults follow the paper (SPEC §4):
- AdamW with β (0.9, 0.95) and weight decay 0.1 (none on norms and biases);
- learning rate 1e-5 decaying linearly to 1e-6;
- gradient clipping at 1.0.

Data is `glm4voice.data.sft` samples read from a JSONL manifest. Batches are a
pure function of (seed, step): each epoch is one seeded permutation, and rank r
takes its slice of every global batch. A resumed run therefore sees exactly
the batches the original would have.

Checkpoints: `OUT/step-N/` is a complete LM folder (`load_lm`, `chat` and
`serve` take it as it is) plus `trainer_state.pt` (step, optimizer, config).
A checkpoint is written to a temporary folder and renamed, so a crash never
leaves half of one. `--resume OUT/step-N` continues from it, on any number of
ranks.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data.sft import collate, read_sft_manifest
from ..errors import Glm4VoiceError


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 4  # samples per step on each rank
    lr: float = 1e-5
    min_lr: float = 1e-6
    warmup_steps: int = 0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    save_every: int = 0  # 0: only at the end
    log_every: int = 10
    seed: int = 0
    max_length: int = 8192  # ids per sample: a longer one is an error, never silently cut
    mixed_precision: str = "none"  # or "bf16": FSDP computes in bf16 (torchrun runs only; fp32 master weights)
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward: less memory, ~30% more time

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.warmup_steps < 0 or self.save_every < 0:
            raise Glm4VoiceError("steps and batch_size must be >= 1, warmup_steps and save_every >= 0")
        if not 0 < self.min_lr <= self.lr or self.grad_clip <= 0 or self.log_every < 1:
            raise Glm4VoiceError("need 0 < min_lr <= lr, grad_clip > 0 and log_every >= 1")
        if self.mixed_precision not in ("none", "bf16"):
            raise Glm4VoiceError(f"mixed_precision is none or bf16, got {self.mixed_precision!r}")


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to `lr`, then linear decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - 1 - cfg.warmup_steps)
    done = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr + (cfg.min_lr - cfg.lr) * done


class _Dist:
    """torchrun's environment, or a single process."""

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

    def mean(self, value: float) -> float:
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.item() / self.world

    def close(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def batch_indices(step: int, rank: int, world: int, batch_size: int, n: int, seed: int) -> list[int]:
    """Sample indices of `rank`'s share of global batch `step` (epochs are seeded permutations of range(n))."""
    per_step = batch_size * world
    first = step * per_step + rank * batch_size
    return [_epoch_order(n, seed + k // n)[k % n] for k in range(first, first + batch_size)]


@functools.lru_cache(maxsize=2)  # a batch spans at most two epochs
def _epoch_order(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def train_sft(lm: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, cfg: TrainConfig,
              resume: str | os.PathLike | None = None, log=print) -> list[dict]:  # fmt: skip
    """Fine-tune; returns the logged records. Checkpoints land in `out/step-N`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    from ..lm import load_lm
    from ..lm.text import TextTokenizer

    out = Path(out)
    if resume is None and out.is_dir() and any(out.glob("step-*")):
        raise Glm4VoiceError(f"{out} already holds checkpoints: pass --resume {out}/step-N, or pick a new --out")
    dist = _Dist()
    source = Path(resume) if resume is not None else Path(lm)
    tok = TextTokenizer.from_pretrained(source)
    samples = read_sft_manifest(data, tok)
    longest = max(len(s.input_ids) for s in samples)
    if longest > cfg.max_length:
        raise Glm4VoiceError(f"{data}: a sample has {longest} ids, more than max_length {cfg.max_length}")
    state = None
    if resume is not None:
        try:
            state = torch.load(source / "trainer_state.pt", weights_only=True, map_location="cpu")
            state["step"], state["optimizer"]  # noqa: B018 - both must be there
        except Exception as exc:  # a damaged file fails anywhere inside the unpickler
            raise Glm4VoiceError(f"{source}: no readable trainer_state.pt ({type(exc).__name__}: {exc})") from None

    start = int(state["step"]) if state is not None else 0
    if start >= cfg.steps:
        raise Glm4VoiceError(f"{source} is at step {start}; --steps must be larger to continue")
    every = cfg.save_every or cfg.steps
    saves = {s for s in range(start + 1, cfg.steps + 1) if s == cfg.steps or s % every == 0}
    taken = [out / f"step-{s}" for s in sorted(saves) if (out / f"step-{s}").exists()]
    if taken:  # checked before any work, on every rank: never overwrite, never fail mid-run
        raise Glm4VoiceError(f"{taken[0]} already exists: resume into a new --out, or remove it")

    try:
        torch.manual_seed(cfg.seed)
        if dist.world > 1:
            model = _sharded_lm(source, dist, cfg)
        else:
            model = load_lm(source, device=dist.device, dtype="float32")
        model.train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))  # fmt: skip
        if state is not None:
            set_optimizer_state_dict(model, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True))

        records: list[dict] = []
        pad = tok.token_id("<|endoftext|>")
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            picked = batch_indices(step, dist.rank, dist.world, cfg.batch_size, len(samples), cfg.seed)
            batch = {k: v.to(dist.device) for k, v in collate([samples[i] for i in picked], pad).items()}
            loss = model(**batch).loss
            if not torch.isfinite(loss):
                raise Glm4VoiceError(f"step {step + 1}: the loss is {loss.item()}; lower --lr")
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1:
                record = {"step": done, "loss": round(dist.mean(loss.item()), 5), "lr": lr_at(step, cfg),
                          "grad_norm": round(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm), 4),
                          "ids": int(dist.mean(float(batch["attention_mask"].sum())) * dist.world),
                          "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
                records.append(record)
                if dist.rank == 0:
                    log(json.dumps(record))
            if done in saves:
                _save(model, opt, source, out, done, cfg, dist)
    finally:
        dist.close()
    return records


def _sharded_lm(source: Path, dist: _Dist, cfg: TrainConfig):
    """The LM with each decoder layer sharded by FSDP, without a full copy on any accelerator.

    Every rank builds the model on the meta device and shards it; only rank 0
    reads the checkpoint (into CPU memory), and its tensors are broadcast
    straight into the other ranks' shards. With `mixed_precision` "bf16",
    compute runs in bf16, while master weights, optimizer state and gradient
    reduction stay fp32.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    from ..lm import load_lm
    from ..lm.checkpoint import meta_lm, rebuild_rotary

    model = meta_lm(source)
    policy = MixedPrecisionPolicy()
    if cfg.mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    model.to_empty(device=dist.device)
    rebuild_rotary(model, dist.device)
    full = load_lm(source, device="cpu", dtype="float32").state_dict() if dist.rank == 0 else {}
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    model.name_or_path = str(source)
    return model


def _save(model, opt, source: Path, out: Path, step: int, cfg: TrainConfig, dist: _Dist) -> None:
    """out/step-N: the LM folder + trainer_state.pt, written beside and renamed into place."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    from ..lm.checkpoint import write_glm_folder

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=full)  # every rank takes part; rank 0 receives
    optim = get_optimizer_state_dict(model, opt, options=full)
    if dist.rank == 0:
        final, tmp = out / f"step-{step}", out / f".step-{step}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_glm_folder(weights.items(), model.config, torch.float32, tmp, tokenizer_from=source)
        torch.save({"step": step, "optimizer": optim, "config": asdict(cfg)}, tmp / "trainer_state.pt")
        os.replace(tmp, final)  # `final` was checked free before training started
    dist.barrier()


def finished(records: list[dict]) -> str:
    """A one-line summary for the CLI."""
    if not records:
        return "no steps run"
    first, last = records[0], records[-1]
    drop = "" if math.isclose(first["loss"], 0) else f" ({last['loss'] / first['loss']:.2f}x)"
    return f"step {last['step']}: loss {first['loss']} -> {last['loss']}{drop}"
