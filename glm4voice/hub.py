"""Find a checkpoint folder (a local path, or a Hugging Face hub id) and read its safetensors files.

Local folders never touch the network. Hub ids go through huggingface_hub,
which honours HF_HUB_OFFLINE and its cache. A path that looks local
(`./x`, `models/tok` that names an existing parent, `~/x`) is never sent to the hub.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import CheckpointError


def resolve_checkpoint(path_or_id: str | os.PathLike, required: list[str], what: str) -> Path:
    """Return a local folder holding every file in `required`.

    `what` names the checkpoint kind in error messages ("tokenizer", ...).
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise CheckpointError(f"{what} checkpoint: expected a folder or hub id, got {path_or_id!r}")
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{what} checkpoint {path}: not a folder")
        if not os.access(path, os.R_OK | os.X_OK):
            raise CheckpointError(f"{what} checkpoint {path}: permission denied (cannot list or open the folder)")
    elif _looks_like_hub_id(str(path_or_id)):
        path = _download(str(path_or_id), required, what)
    else:
        raise CheckpointError(f"{what} checkpoint {path_or_id}: no such folder")
    missing = [name for name in required if not (path / name).is_file()]
    if missing:
        raise CheckpointError(f"{what} checkpoint {path}: missing {', '.join(missing)}")
    unreadable = [name for name in required if not os.access(path / name, os.R_OK)]
    if unreadable:
        raise CheckpointError(f"{what} checkpoint {path}: permission denied reading {', '.join(unreadable)}")
    return path


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    if len(parts) != 2 or not all(parts) or text.startswith((".", "/", "~")):
        return False
    return not Path(parts[0]).is_dir()  # `models/tok` with a local models/ folder is a mistyped local path


def _download(repo_id: str, required: list[str], what: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # allow_patterns keeps shards and index files of the LM too.
        folder = snapshot_download(repo_id, allow_patterns=[*required, "*.safetensors", "*.json", "*.model"])
    except Exception as exc:  # network, auth, offline mode: one clear message
        raise CheckpointError(
            f"{what} checkpoint {repo_id}: not a local folder, and the hub download failed "
            f"({type(exc).__name__}: {exc}). Pass a local folder, or unset HF_HUB_OFFLINE."
        ) from exc
    return Path(folder)


def iter_safetensors(path: Path, what: str, keep=None):
    """Yield (name, tensor) of one safetensors file (only names `keep(name)` accepts, when given); a truncated
    or corrupt file is one CheckpointError naming it."""
    from safetensors import safe_open

    def damaged(exc: Exception) -> CheckpointError:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CheckpointError(f"{what} checkpoint {path}: not a readable safetensors file ({detail})")

    if path.is_file() and not os.access(path, os.R_OK):
        raise CheckpointError(f"{what} checkpoint {path}: permission denied (the file exists but cannot be read)")
    try:
        handle = safe_open(str(path), framework="pt", device="cpu")
        names = list(handle.keys())
    except Exception as exc:  # safetensors raises several types for a damaged header
        raise damaged(exc) from None
    for name in names:
        if keep is not None and not keep(name):
            continue
        try:
            tensor = handle.get_tensor(name)
        except MemoryError:
            raise
        except Exception as exc:  # a truncated body
            raise damaged(exc) from None
        yield name, tensor


def check_state(own: dict, state: dict, source: str, optional: frozenset = frozenset()) -> list[str]:
    """One CheckpointError line when the tensors `state` do not fit a module whose state dict is `own`
    (counts, and the first few names, of missing, unexpected and wrongly shaped tensors).

    Returns the names in `optional` that `state` lacks (the caller fills them)."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    hard = [k for k in missing if k not in optional]
    if hard or unexpected or bad:
        parts = []
        if hard:
            parts.append(f"{len(hard)} missing (e.g. {', '.join(hard[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        if bad:
            k = bad[0]
            parts.append(f"{len(bad)} of another shape (e.g. {k}: {tuple(state[k].shape)}, "
                         f"the config says {tuple(own[k].shape)})")  # fmt: skip
        raise CheckpointError(f"{source}: the weights do not match the config: {'; '.join(parts)}")
    return [k for k in missing if k in optional]
