"""The one place a dtype name from a user (CLI flag, API argument) becomes a torch dtype."""

from __future__ import annotations

import torch

from .errors import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(dtype, allow_auto: bool = False) -> torch.dtype | None:
    """A name or torch.dtype -> torch.dtype. With `allow_auto`, None/"auto" -> None
    (the caller decides, e.g. the config's, else the stored one). Unknown names raise CheckpointError."""
    if allow_auto and (dtype is None or dtype == "auto"):
        return None
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        choices = ", ".join(["auto", *DTYPES] if allow_auto else DTYPES)
        raise CheckpointError(f"dtype {dtype!r}: expected one of {choices}")
    return DTYPES[dtype]
