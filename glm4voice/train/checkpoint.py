"""Run folders: `OUT/step-N/` checkpoints, written atomically, never overwritten, resumable on any number of ranks.

A checkpoint is the model in its released format (whatever the trainer's
`write_model` writes: `load_lm`, `SpeechTokenizer.from_pretrained`, ... take
it as it is) plus `trainer_state.pt` (step, optimizer, run config). Every
step-N a run will write is checked free before training starts, so a resume
into a used run folder fails at once, not hours later.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import torch

from ..atomic import atomic_path
from ..errors import Glm4VoiceError
from .config import RunConfig
from .dist import Dist

STATE_FILE = "trainer_state.pt"


def planned_saves(start: int, cfg: RunConfig) -> list[int]:
    """The steps after `start` whose checkpoints this run writes."""
    every = cfg.save_every or cfg.steps
    return [s for s in range(start + 1, cfg.steps + 1) if s == cfg.steps or s % every == 0]


def check_run_folder(out: Path, resume: Path | None, saves: list[int]) -> None:
    """A new run needs a folder without checkpoints; a resumed one needs every step-N it will write free."""
    if out.exists() and not out.is_dir():
        raise Glm4VoiceError(f"--out {out} is a file, not a folder")
    if resume is None and out.is_dir() and any(out.glob("step-*")):
        raise Glm4VoiceError(f"{out} already holds checkpoints: pass --resume {out}/step-N, or pick a new --out")
    taken = [out / f"step-{s}" for s in saves if (out / f"step-{s}").exists()]
    if taken:
        raise Glm4VoiceError(f"{taken[0]} already exists: resume into a new --out, or remove it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Glm4VoiceError(f"--out {out}: cannot create the run folder ({exc.strerror})") from None


def latest_checkpoint(out: Path) -> Path | None:
    """The run folder's step-N with the highest N that holds a trainer state (what `--resume` takes), if any."""
    steps = []
    for folder in Path(out).glob("step-*"):
        suffix = folder.name[len("step-") :]
        if suffix.isdigit() and (folder / STATE_FILE).is_file():
            steps.append((int(suffix), folder))
    return max(steps)[1] if steps else None


def load_trainer_state(folder: Path) -> dict:
    """`trainer_state.pt` of a checkpoint folder; any damage is one clear error."""
    try:
        state = torch.load(folder / STATE_FILE, weights_only=True, map_location="cpu")
        state["step"], state["optimizer"]  # noqa: B018 - both must be there
    except Exception as exc:  # a damaged file fails anywhere inside the unpickler
        raise Glm4VoiceError(f"{folder}: no readable {STATE_FILE} ({type(exc).__name__})") from None
    return state


def save_checkpoint(model, opt, out: Path, step: int, cfg: RunConfig, dist: Dist, write_model, extra=None) -> Path:
    """Gather the full weights and optimizer state (every rank takes part), then rank 0 writes `out/step-N`.

    `write_model(weights: dict[str, Tensor], folder: Path)` writes the model's
    files; `extra` (a dict) is stored in trainer_state.pt beside the step.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=full)
    optim = get_optimizer_state_dict(model, opt, options=full)
    final = out / f"step-{step}"
    if dist.rank == 0:
        with atomic_path(final, folder=True, overwrite=False) as tmp:
            write_model(weights, tmp)
            torch.save({"step": step, "optimizer": optim, "config": asdict(cfg), **(extra or {})}, tmp / STATE_FILE)
        if cfg.keep_last:
            prune(out, cfg.keep_last)
    dist.barrier()
    return final


def prune(out: Path, keep_last: int) -> list[Path]:
    """Remove all but the newest `keep_last` step-N folders; returns what was removed."""
    steps = sorted((int(m.group(1)), p) for p in out.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name)))
    removed = [p for _, p in steps[:-keep_last]]
    for path in removed:  # renamed first: a crash mid-delete never leaves a step-N that looks whole
        doomed = path.with_name(f".{path.name}.deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed)
    return removed


def restore_optimizer(model, opt, state: dict) -> None:
    """Load a full (gathered) optimizer state into `opt`, sharded or not.

    A parameter no step had given a gradient when the checkpoint was written (a discriminator before its
    first adversarial step) has no saved state, and must start without one as it did in the original run:
    torch's loader first gives every parameter a state by a zero-gradient step, which is taken back here."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    saved = state["optimizer"].get("state", {})
    set_optimizer_state_dict(model, opt, state["optimizer"], options=StateDictOptions(full_state_dict=True,
                                                                                      strict=False))
    names = {p: _plain_name(n) for n, p in model.named_parameters()}
    if any(n in saved for n in names.values()):  # the names agree with the saved ones: drop the made-up states
        for p in [p for p in opt.state if names.get(p) not in saved]:
            del opt.state[p]


def _plain_name(name: str) -> str:
    """A parameter's name without the wrappers' segments (activation checkpointing, compile), as torch saves it."""
    return ".".join(part for part in name.split(".") if part not in ("_checkpoint_wrapped_module", "_orig_mod",
                                                                      "_fsdp_wrapped_module"))  # fmt: skip
