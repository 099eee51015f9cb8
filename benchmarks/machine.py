"""What every benchmark says about the machine it ran on: the CPU and its flags, and measured matmul peaks.

Results are stated as ratios to these peaks (measured in the same run), so figures from machines with and
without AVX-512 / VNNI / bf16 can be compared.
"""

from __future__ import annotations

import time

import torch

from glm4voice.machine import cpu_info  # noqa: F401  (re-exported: every benchmark imports it from here)


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 5,
                shapes: tuple[tuple[int, int, int], ...] = ()) -> float:  # fmt: skip
    """Best FLOP/s of an n^3 matmul and of any (rows, in, out) `shapes` run as nn.Linear runs them,
    whichever is higher (CPU bf16 kernels are far slower on some square shapes than on a model's own)."""
    best = 0.0
    for m, k, o in ((n, n, n), *shapes):
        a = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(o, k, device=device, dtype=dtype)
        torch.nn.functional.linear(a, w)  # warm-up
        sync(device)
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.nn.functional.linear(a, w)
            sync(device)
            best = max(best, 2 * m * k * o / (time.perf_counter() - t0))
    return best


def print_against_peak(results: list[dict], device: str, rate_key: str, share_key: str) -> None:
    """Measure the fp32 peak after the runs (a busy moment lowers it, never raises it), print it, then each
    result with `share_key` = its `rate_key` (GFLOP/s) over the peak, as JSON lines."""
    import json

    peak = max(matmul_peak(device), matmul_peak(device, n=1024))
    print(json.dumps({"fp32_matmul_peak_gflop_s": round(peak / 1e9, 1)}))
    for result in results:
        result[share_key] = round(result[rate_key] * 1e9 / peak, 3)
        print(json.dumps(result), flush=True)


def time_steps(step, steps: int, device: str) -> tuple[float, float]:
    """(best seconds of `steps` calls of `step`, FLOPs of one call): the first call, counted by torch's FLOP
    counter, is also the warm-up."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return min(times), counter.get_total_flops()
