"""The one-line machine description that benchmarks print and eval reports record."""

from __future__ import annotations

import os

import torch

from glm4voice.machine import cpu_info


def test_cpu_info_names_the_cores_flags_and_threads():
    parts = cpu_info().split("; ")
    assert len(parts) == 4 and parts[0]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert parts[1] == f"{cores} cores" and parts[2].startswith("flags: ")
    assert parts[3] == f"torch threads {torch.get_num_threads()}"
