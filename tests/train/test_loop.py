"""The shared training loop on a small model: accumulation, exact resume with randomness, pruning, bf16, metrics."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from glm4voice.errors import Glm4VoiceError
from glm4voice.train.config import RunConfig
from glm4voice.train.dist import Dist
from glm4voice.train.loop import Task, open_run, train
from glm4voice.train.schedule import batch_indices

X = torch.randn(24, 8, generator=torch.Generator().manual_seed(0))
Y = X @ torch.randn(8, 1, generator=torch.Generator().manual_seed(1))


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()) for _ in range(2))
        self.drop = torch.nn.Dropout(0.1)  # randomness inside the step: resume must still be exact
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.drop(x))


def run(out, cfg: RunConfig, resume=None, log=None) -> tuple[list[dict], Net]:
    state = open_run(out, resume, cfg)
    net = Net()
    if resume is not None:
        net.load_state_dict(load_file(resume / "model.safetensors"))

    def batch(index):
        picked = batch_indices(index, 0, 1, cfg.batch_size, len(X), cfg.seed)
        return X[picked], Y[picked]

    def loss(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x).float(), y), {"samples": float(len(x)), "scale": 2.0}

    def write_model(weights, folder):
        save_file({k: v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")

    task = Task(net, batch, loss, write_model, blocks=list(net.blocks), counts=("samples",))
    return train(task, cfg, out, Dist(), state, log=log or (lambda line: None)), net


FAST = dict(lr=1e-2, min_lr=1e-3, log_every=1, weight_decay=0.0)


def test_accumulation_equals_a_bigger_batch(tmp_path):
    big, a = run(tmp_path / "a", RunConfig(steps=3, batch_size=4, **FAST))
    acc, b = run(tmp_path / "b", RunConfig(steps=3, batch_size=2, accumulate=2, **FAST))
    b.eval(), a.eval()
    assert [r["samples"] for r in acc] == [4.0] * 3 and [r["scale"] for r in acc] == [2.0] * 3  # summed / averaged
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))
    # dropout masks differ between one batch of 4 and two of 2, so losses are close, not equal
    assert acc[0]["loss"] == pytest.approx(big[0]["loss"], rel=0.3)


def test_the_loop_takes_the_threads_its_lane_is_given(tmp_path, monkeypatch):
    """`recipe --jobs`: a stage's share of the cores, rewritten while it runs, is taken between steps."""
    from glm4voice.threads import ENV, write_threads

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    write_threads(tmp_path / "threads", other)
    monkeypatch.setenv(ENV, str(tmp_path / "threads"))
    lines = []
    try:
        run(tmp_path / "run", RunConfig(steps=2, batch_size=2, **FAST), log=lines.append)
        assert torch.get_num_threads() == other
        assert [json.loads(line) for line in lines if "threads" in line] == [{"step": 0, "threads": other}]
    finally:
        torch.set_num_threads(before)


def test_resume_is_exact_and_pruning_keeps_the_last(tmp_path):
    cfg = RunConfig(steps=6, batch_size=3, save_every=2, keep_last=2, **FAST)
    records, _ = run(tmp_path / "a", cfg)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.jsonl", "step-4", "step-6"]  # 2 pruned
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert logged == records and [r["step"] for r in records] == list(range(1, 7))
    resumed, _ = run(tmp_path / "d", cfg, resume=tmp_path / "a" / "step-4")
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records[4:]]
    # training seconds carry across the resume (the recipe's stage times of a run stopped and continued)
    saved = torch.load(tmp_path / "a" / "step-4" / "trainer_state.pt", weights_only=True)["train_seconds"]
    assert saved > 0 and resumed[0]["train_seconds"] >= round(saved, 1)
    assert [r["train_seconds"] for r in records] == sorted(r["train_seconds"] for r in records)
    # a run killed mid-write left half a line: the resumed run's records start on a line of their own
    import shutil

    shutil.copytree(tmp_path / "a" / "step-4", tmp_path / "e" / "step-4")
    (tmp_path / "e" / "metrics.jsonl").write_text('{"step": 4, "lo')
    run(tmp_path / "e", cfg, resume=tmp_path / "e" / "step-4")
    lines = (tmp_path / "e" / "metrics.jsonl").read_text().splitlines()
    assert lines[0] == '{"step": 4, "lo' and [json.loads(line)["step"] for line in lines[1:]] == [5, 6]
    a = load_file(tmp_path / "a" / "step-6" / "model.safetensors")
    d = load_file(tmp_path / "d" / "step-6" / "model.safetensors")
    assert all(torch.equal(a[k], d[k]) for k in a)


def test_bf16_autocast_in_one_process(tmp_path):
    fp32, _ = run(tmp_path / "a", RunConfig(steps=2, batch_size=4, **FAST))
    bf16, net = run(tmp_path / "b", RunConfig(steps=2, batch_size=4, mixed_precision="bf16", **FAST))
    assert bf16[0]["loss"] != fp32[0]["loss"] and bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.05)
    assert all(p.dtype == torch.float32 for p in net.parameters())  # master weights stay fp32


def test_gradient_checkpointing_wraps_the_blocks(tmp_path):
    plain, _ = run(tmp_path / "a", RunConfig(steps=2, batch_size=4, **FAST))
    ckpt, net = run(tmp_path / "b", RunConfig(steps=2, batch_size=4, gradient_checkpointing=True, **FAST))
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], rel=1e-6)
    assert sum("checkpoint_wrapped_module" in name for name, _ in net.named_modules()) >= 2  # both blocks


def test_run_folder_checks_come_first(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(Glm4VoiceError, match="is a file"):
        open_run(tmp_path / "file", None, RunConfig())
    run(tmp_path / "a", RunConfig(steps=2, batch_size=2, **FAST))
    with pytest.raises(Glm4VoiceError, match="already holds checkpoints"):
        open_run(tmp_path / "a", None, RunConfig(steps=2))
    with pytest.raises(Glm4VoiceError, match="--steps must be larger"):
        open_run(tmp_path / "b", tmp_path / "a" / "step-2", RunConfig(steps=2))
    for bad in (dict(beta1=2.0), dict(lr=float("nan")), dict(steps=2.5), dict(accumulate=0)):
        with pytest.raises(Glm4VoiceError):
            RunConfig(**bad)


def test_resume_with_another_schedule_is_refused_unless_asked(tmp_path):
    cfg = RunConfig(steps=4, batch_size=2, save_every=2, **FAST)
    run(tmp_path / "a", cfg)
    longer = RunConfig(steps=8, batch_size=2, save_every=2, **FAST)
    with pytest.raises(Glm4VoiceError, match="--steps 4: other values change its learning-rate schedule"):
        open_run(tmp_path / "b", tmp_path / "a" / "step-2", longer)
    with pytest.raises(Glm4VoiceError, match="--lr"):
        open_run(tmp_path / "b", tmp_path / "a" / "step-2", RunConfig(**{**vars(cfg), "lr": cfg.lr * 2}))
    again = RunConfig(**{**vars(longer), "reschedule": True})
    records, _ = run(tmp_path / "b", again, resume=tmp_path / "a" / "step-2")
    assert [r["step"] for r in records] == list(range(3, 9))
