"""benchmarks/train_decoder.py builds one real training step per stage and precision: the step must run (a
change to the trainers' loss modules once broke it unnoticed). Not a timing: one tiny step each."""

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    """The script as a module (it puts the repository root on sys.path itself, for `benchmarks.machine`)."""
    spec = importlib.util.spec_from_file_location("bench_train_decoder", ROOT / "benchmarks" / "train_decoder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stage", ["flow", "hift"])
@pytest.mark.parametrize("precision", ["none", "bf16"])
def test_one_training_step_runs_and_trains(stage, precision):
    bench = _benchmark()
    step, seconds, params = bench.stage_step(bench.config("tiny"), stage, 1, 4, 16, "cpu", precision)
    assert seconds > 0 and params > 0
    before = {name: w.detach().clone() for name, w in step.model.named_parameters()}
    step()  # forward, backward, AdamW
    after = dict(step.model.named_parameters())
    assert all(torch.isfinite(w).all() for w in after.values())
    assert any(not torch.equal(before[name], w) for name, w in after.items())
