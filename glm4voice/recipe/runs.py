"""What the recipe's stages share: their rows, their trainers' run folders (where to resume, the last logged
figures), and parts stored in bfloat16 for the bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..data.manifest import first_of_each
from ..jsonl import read_jsonl


def write_rows(path: Path, rows: list[dict]) -> None:
    from ..atomic import write_text

    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def valid_subset(manifest: str | Path, n: int, out: Path) -> Path:
    """A trainer's validation set: up to `n` test questions of each (language, task), audio paths made absolute.
    Every task, checked in minutes rather than the whole test split at every check (the eval stage scores it all)."""
    manifest = Path(manifest)
    questions = [r for _, r in read_jsonl(manifest, "test manifest") if r.get("role") == "question"]
    picked = first_of_each(questions, n, lambda r: (r.get("lang"), r.get("task")))
    write_rows(out, [{**row, "audio": str(manifest.parent.resolve() / row["audio"])} for row in picked])
    return out


def run_figures(run_dir: Path, *keys: str, last: int = 1) -> dict:
    """The figures `keys` (any key holding one of them) of a run's logged steps, each the mean of its `last`
    logged values (a training batch's loss is one batch's: 20 of them say more than one), and its training seconds
    across every resumed run: read from metrics.jsonl, so a stage resumed at its last step still reports them."""
    from ..train.loop import METRICS_FILE

    path = run_dir / METRICS_FILE
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    values: dict[str, list] = {}
    seconds = None
    below = math.inf  # read from the end: a step at or after one already read was logged by a run since resumed
    for line in reversed(lines):  # a run killed mid-write may have left half a line: skipped
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), int) or row["step"] >= below:
            continue
        below = row["step"]
        seconds = row.get("train_seconds") if seconds is None else seconds
        for k, v in row.items():
            if any(key in k for key in keys) and isinstance(v, int | float) and len(values.get(k, ())) < last:
                values.setdefault(k, []).append(v)
    out = {k: v[0] if len(v) == 1 else round(sum(v) / len(v), 5) for k, v in values.items()}
    return {**out, **({"train_seconds": seconds} if seconds is not None else {})}


def resume_point(run_dir: Path, steps: int) -> tuple[Path | None, bool]:
    """A trainer stage's last checkpoint (None: a new run), and whether it is at `steps`: a recipe stopped after
    its trainer's last step but before the stage's marker has nothing left to train, only to finish the stage."""
    from ..train.checkpoint import latest_checkpoint

    last = latest_checkpoint(run_dir)
    return last, last is not None and last.name == f"step-{steps}"


def store_bf16(folder: Path) -> None:
    """Rewrite a part's float weights (safetensors files, flow.pt) in bfloat16: the bundle stays within 40 MB.
    The configs keep naming float32, so every part still computes in float32 on a CPU. HiFT's weight-norm pairs
    stay float32 (1.6 MB): folding them in bfloat16 would lose more than storing does."""
    import io

    import torch
    from safetensors.torch import load_file, save

    from ..atomic import write_bytes

    def half(state: dict) -> dict:
        return {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}

    for path in sorted(folder.glob("*.safetensors")):
        write_bytes(path, save(half(load_file(str(path))), metadata={"format": "pt"}))
    for path in sorted(folder.glob("flow.pt")):
        buffer = io.BytesIO()
        torch.save(half(torch.load(path, map_location="cpu", weights_only=True)), buffer)
        write_bytes(path, buffer.getvalue())


def copy_bf16(source, target: Path) -> None:
    """A part's folder (no trainer state, no LoRA adapter) copied to `target`, its weights stored in bfloat16."""
    import shutil

    shutil.copytree(source, target, ignore=shutil.ignore_patterns("trainer_state.pt", "adapter"))
    store_bf16(target)
