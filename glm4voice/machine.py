"""The machine a figure was measured on, in one line: benchmarks print it, `glm4voice eval` records it.

Speed and latency figures mean little without it (the same code runs several times faster with AVX-512 than
with AVX2 alone), so every report carries the CPU model, the cores this process may use, the vector flags that
matter for matmul kernels, and torch's thread count.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")


def cpu_info() -> str:
    """'model name; N cores; flags: ...; torch threads T'."""
    import torch

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:  # not Linux: the model from platform, no flags
        pass
    flags = set(info.get("flags", "").split())
    name = info.get("model name") or platform.processor() or "unknown"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    wanted = " ".join(f for f in FLAGS if f in flags) or "none of note"
    return f"{name}; {cores} cores; flags: {wanted}; torch threads {torch.get_num_threads()}"


def machine(device: str = "cpu") -> str:
    """`cpu_info()`, and the GPU's name where `device` is a CUDA one (what computed the figures)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(device))}; {cpu_info()}"
    return cpu_info()
