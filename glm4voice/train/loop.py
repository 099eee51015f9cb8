"""The one training loop. A trainer hands it a `Task` (its model, its batches, its loss, how to write the model);
the loop does everything else, once for every trainer:

- AdamW (no weight decay on norms and biases), the warm-up + linear-decay schedule, gradient clipping;
- gradient accumulation over `accumulate` micro-batches (FSDP syncs gradients on the last one only);
- bf16 autocast in one process (under torchrun FSDP's mixed-precision policy does it, see `dist.shard`);
- activation checkpointing of the task's repeated blocks;
- a tqdm progress bar, JSON records to `log` and to `OUT/metrics.jsonl` (rank 0);
- `OUT/step-N` checkpoints, and bit-exact resume: batches, learning rate and the torch seed of every
  step are functions of (seed, step, rank), so a resumed run repeats what the original would have done.

    cfg = RunConfig(steps=1000, lr=1e-4)
    state = open_run(out, resume, cfg)                  # checks the run folder before any expensive work
    model = ...                                          # from `resume` when resuming
    train(Task(model, batch, loss, write_model, blocks=model.layers), cfg, out, Dist(), state)
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import Glm4VoiceError
from ..threads import ThreadsFile
from .checkpoint import check_run_folder, load_trainer_state, planned_saves, restore_optimizer, save_checkpoint
from .config import RunConfig
from .dist import Dist
from .schedule import lr_at, step_seed

METRICS_FILE = "metrics.jsonl"


@dataclass
class Task:
    """What a trainer gives the loop.

    `batch(index)`: micro-batch `index` (= step * accumulate + micro) of this rank, on the device.
    `loss(model, batch)`: (mean loss tensor, metrics as floats). Metrics named in `counts` are summed over
    micro-batches and ranks (ids, frames); the others are averaged.
    `write_model(weights, folder)`: the model's files in its released format.
    `blocks`: the repeated layers (activation checkpointing; the trainer shards the same ones under torchrun).
    `after_step(step)`: work after each optimiser step (e.g. codebook restarts); may return metrics.
    """

    model: torch.nn.Module
    batch: Callable[[int], object]
    loss: Callable[[torch.nn.Module, object], tuple[torch.Tensor, dict]]
    write_model: Callable[[dict, Path], None]
    blocks: Sequence[torch.nn.Module] = ()
    counts: tuple[str, ...] = ()
    after_step: Callable[[int], dict | None] | None = None
    extra_state: Callable[[], dict] | None = None  # more to keep in trainer_state.pt
    param_groups: list[dict] | None = field(default=None)  # default: decay on >= 2-dim tensors only


def open_run(out: str | Path, resume: str | Path | None, cfg: RunConfig, kept: dict | None = None) -> dict | None:
    """Check the run folder and read the resumed trainer state (None for a new run), before any work. `kept`: a
    trainer's own settings that shape its data (stored in its checkpoints by its Task's `extra_state`), held to
    the resumed run's as the schedule is (checkpoints from before one was kept: not checked)."""
    out = Path(out)
    state = load_trainer_state(Path(resume)) if resume is not None else None
    start = int(state["step"]) if state is not None else 0
    if start >= cfg.steps:
        raise Glm4VoiceError(f"{resume} is at step {start}; --steps must be larger to continue")
    now = {**{k: getattr(cfg, k) for k in RunConfig.SCHEDULE}, **(kept or {})}
    saved = {**state.get("config", {}), **{k: state[k] for k in kept or {} if k in state}} if state is not None else {}
    changed = [k for k, v in now.items() if k in saved and saved[k] != v]
    if changed and not cfg.reschedule:
        was = ", ".join(f"--{k.replace('_', '-')} {saved[k]}" for k in changed)
        raise Glm4VoiceError(f"{resume} was trained with {was}: other values change its learning-rate schedule "
                             "or its batches; give the same ones, or add --reschedule to accept the change")
    check_run_folder(out, Path(resume) if resume is not None else None, planned_saves(start, cfg))
    return state


def optimizer(task: Task, cfg: RunConfig) -> torch.optim.AdamW:
    groups = task.param_groups
    if groups is None:
        params = [p for p in task.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # fmt: skip
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def enable_activation_checkpointing(model: torch.nn.Module, blocks: Sequence[torch.nn.Module]) -> None:
    """transformers models use their own switch; other models wrap each block."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return
    if not blocks:
        raise Glm4VoiceError("gradient checkpointing needs the model's repeated blocks")
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

    ids = {id(b) for b in blocks}
    apply_activation_checkpointing(model, check_fn=lambda m: id(m) in ids)


def _print(line: str) -> None:
    print(line, flush=True)  # a log redirected to a file shows each record as it comes


def train(task: Task, cfg: RunConfig, out: str | Path, dist: Dist, state: dict | None = None, log=None) -> list[dict]:
    """Run steps from the resumed one (or 0) to `cfg.steps`; returns the logged records (`log`: default print)."""
    from tqdm import tqdm

    log = log or _print
    out = Path(out)
    model = task.model
    model.train()
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model, task.blocks)
    opt = optimizer(task, cfg)
    start, before = 0, 0.0  # before: training seconds of the runs this one resumes (carried in checkpoints)
    if state is not None:
        restore_optimizer(model, opt, state)
        start, before = int(state["step"]), float(state.get("train_seconds", 0.0))
    began = time.perf_counter()

    def train_seconds() -> float:
        return before + time.perf_counter() - began

    metrics_file = out / METRICS_FILE
    if dist.rank == 0 and metrics_file.is_file() and not metrics_file.read_bytes().endswith(b"\n"):
        with open(metrics_file, "a", encoding="utf-8") as f:  # a run killed mid-write: its half line stays apart
            f.write("\n")
    saves = set(planned_saves(start, cfg))
    params = [p for group in opt.param_groups for p in group["params"]]
    autocast = contextlib.nullcontext
    if cfg.mixed_precision == "bf16" and not dist.sharded:
        def autocast():  # noqa: E306 - one process: bf16 compute under autocast, fp32 weights
            return torch.autocast(dist.device.type, dtype=torch.bfloat16)
    records: list[dict] = []
    bar = tqdm(total=cfg.steps, initial=start, unit="step", disable=True if dist.rank else None, leave=False)
    follow_threads = ThreadsFile().follow if dist.world == 1 else lambda: None  # recipe --jobs: a lane's cores
    try:
        for step in range(start, cfg.steps):
            t0 = time.perf_counter()
            if (changed := follow_threads()) is not None:
                log(json.dumps({"step": step, "threads": changed}))
            torch.manual_seed(step_seed(cfg.seed, step, dist.rank))
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            total_loss, metrics = 0.0, {}
            for micro in range(cfg.accumulate):
                if dist.sharded and hasattr(model, "set_requires_gradient_sync"):
                    model.set_requires_gradient_sync(micro == cfg.accumulate - 1)
                batch = task.batch(step * cfg.accumulate + micro)
                with autocast():
                    loss, extra = task.loss(model, batch)
                if not torch.isfinite(loss):
                    raise Glm4VoiceError(f"step {step + 1}: the loss is {loss.item()}; lower --lr")
                (loss / cfg.accumulate).backward()
                total_loss += loss.item() / cfg.accumulate
                for key, value in extra.items():
                    metrics[key] = metrics.get(key, 0.0) + float(value) / (1 if key in task.counts else cfg.accumulate)
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            after = task.after_step(step + 1) if task.after_step is not None else None
            done = step + 1
            bar.update(1)
            if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1 or after:
                record = {"step": done, "loss": round(dist.mean(total_loss), 5), "lr": lr_at(step, cfg),
                          "grad_norm": round(float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm), 4)}
                for key, value in {**metrics, **(after or {})}.items():
                    mean = dist.mean(value)
                    record[key] = round(mean * dist.world if key in task.counts else mean, 5)
                record["seconds"] = round(time.perf_counter() - t0, 3)
                record["train_seconds"] = round(train_seconds(), 1)
                records.append(record)
                if dist.rank == 0:
                    bar.set_postfix(loss=record["loss"], refresh=False)
                    log(json.dumps(record))
                    with open(metrics_file, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
            if done in saves:
                extra_state = {**(task.extra_state() if task.extra_state is not None else {}),
                               "train_seconds": train_seconds()}  # fmt: skip
                save_checkpoint(model, opt, out, done, cfg, dist, task.write_model, extra_state)
    finally:
        bar.close()
    return records


def finished(records: list[dict]) -> str:
    """A one-line summary for the CLI."""
    if not records:
        return "no steps run"
    first, last = records[0], records[-1]
    drop = "" if math.isclose(first["loss"], 0) else f" ({last['loss'] / first['loss']:.2f}x)"
    return f"step {last['step']}: loss {first['loss']} -> {last['loss']}{drop}"
