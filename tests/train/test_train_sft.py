"""Streaming-thoughts fine-tuning: it learns, checkpoints load anywhere, resuming is exact, torchrun + FSDP runs."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from glm4voice.cli import main
from glm4voice.errors import Glm4VoiceError
from glm4voice.lm import load_lm
from glm4voice.lm.tiny import write_tiny_lm
from glm4voice.train.config import RunConfig
from glm4voice.train.schedule import batch_indices, lr_at
from glm4voice.train.sft import train_sft

FAST = dict(lr=3e-3, min_lr=3e-4, log_every=5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    write_tiny_lm(root / "lm", n_audio=512, seed=1)
    rng = random.Random(0)
    rows = []
    for i in range(6):
        question = {"codes": [rng.randrange(512) for _ in range(20)]} if i % 2 else {"text": f"question {i}"}
        rows.append({"question": question, "answer_text": f"answer {i} is here.",
                     "answer_codes": [rng.randrange(512) for _ in range(30)]})  # fmt: skip
    (root / "data.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def weights(folder):
    return load_file(folder / "model.safetensors")


def test_schedule_and_batches():
    cfg = RunConfig(steps=11, lr=1e-5, min_lr=1e-6, warmup_steps=1)
    assert lr_at(0, cfg) == 1e-5 and lr_at(1, cfg) == 1e-5 and abs(lr_at(10, cfg) - 1e-6) < 1e-18
    # two ranks of 2 see exactly the samples one rank of 4 sees, and every sample once per epoch
    one = [batch_indices(s, 0, 1, 4, 6, seed=3) for s in range(3)]
    two = [batch_indices(s, 0, 2, 2, 6, seed=3) + batch_indices(s, 1, 2, 2, 6, seed=3) for s in range(3)]
    assert one == two and sorted(sum(one, [])[:6]) == list(range(6))
    with pytest.raises(Glm4VoiceError):
        RunConfig(min_lr=1.0, lr=0.1)


def test_speech_copies_repeat_the_speech_output_samples_only(setup):
    from glm4voice.data.sft import IGNORE, read_sft_manifest, with_speech_copies
    from glm4voice.lm.text import TextTokenizer

    tokenizer = TextTokenizer.from_pretrained(setup / "lm")
    samples = read_sft_manifest(setup / "data.jsonl", tokenizer)

    def speaks(sample):
        return any(label != IGNORE and tokenizer.is_audio(label) for label in sample.labels)

    assert [speaks(s) for s in samples] == [False, True] * 6  # each turn: its text copy, its speech copy
    tripled = with_speech_copies(samples, tokenizer, 3)
    assert sum(map(speaks, tripled)) == 18 and sum(not speaks(s) for s in tripled) == 6
    assert with_speech_copies(samples, tokenizer, 1) == samples
    with pytest.raises(Glm4VoiceError):
        with_speech_copies(samples, tokenizer, 0)


def test_learns_saves_and_resumes_exactly(setup, tmp_path):
    cfg = RunConfig(steps=20, save_every=10, **FAST)
    records = train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "a", cfg, log=lambda line: None)
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]  # it fits the six turns
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["metrics.jsonl", "step-10", "step-20"]
    logged = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert logged == records  # the JSONL metrics are the records the run returned
    # a checkpoint is a complete LM folder: the chat's loader and tokenizer take it as it is
    lm = load_lm(tmp_path / "a" / "step-20")
    from glm4voice.lm.text import TextTokenizer

    assert TextTokenizer.from_pretrained(tmp_path / "a" / "step-20").n_audio == 512
    assert not torch.equal(lm.lm_head.weight, load_lm(setup / "lm").lm_head.weight)
    # resuming from step 10 reproduces step 20 exactly
    train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "b", RunConfig(steps=20, **FAST),
              resume=tmp_path / "a" / "step-10", log=lambda line: None)  # fmt: skip
    a, b = weights(tmp_path / "a" / "step-20"), weights(tmp_path / "b" / "step-20")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # resuming into the run folder whose step-20 exists is refused before any work, and nothing is touched
    before = (tmp_path / "a" / "step-20" / "model.safetensors").stat().st_mtime_ns
    with pytest.raises(Glm4VoiceError, match="step-20 already exists"):
        train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "a", RunConfig(steps=20, **FAST),
                  resume=tmp_path / "a" / "step-10", log=lambda line: None)  # fmt: skip
    assert (tmp_path / "a" / "step-20" / "model.safetensors").stat().st_mtime_ns == before


def test_refuses_to_overwrite_and_bad_data(setup, tmp_path, capsys):
    run = ["train-sft", "--lm", str(setup / "lm"), "--data", str(setup / "data.jsonl"), "--out", str(tmp_path / "r"),
           "--steps", "2", "--log-every", "1"]  # fmt: skip
    assert main(run) == 0 and (tmp_path / "r" / "step-2" / "trainer_state.pt").exists()
    assert main(run) == 2  # the run folder holds checkpoints: never overwritten
    assert "already holds checkpoints" in capsys.readouterr().err
    (tmp_path / "r" / "step-2" / "trainer_state.pt").write_bytes(b"truncated")
    resume = run[:5] + ["--out", str(tmp_path / "r2"), "--steps", "4", "--resume", str(tmp_path / "r" / "step-2")]
    assert main(resume) == 2 and "no readable trainer_state.pt" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": {"text": "hi"}, "answer_text": "ok", "answer_codes": [1, 2]}\n'
                   '{"question": {"codes": [1, 99999]}, "answer_text": "ok", "answer_codes": [1]}\n')  # fmt: skip
    assert main(["train-sft", "--lm", str(setup / "lm"), "--data", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: speech codes must lie in 0..511" in capsys.readouterr().err
    assert main(["train-sft", "--lm", str(setup / "lm"), "--data", str(setup / "data.jsonl"), "--out",
                 str(tmp_path / "y"), "--max-length", "10"]) == 2  # fmt: skip
    assert "more than max_length 10" in capsys.readouterr().err
    copies = run[:5] + ["--out", str(tmp_path / "z"), "--steps", "2", "--speech-copies"]
    assert main(copies + ["0"]) == 2 and "--speech-copies must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "z").exists() and main(copies + ["5"]) == 0
    # a resume with other copies would change the data under the schedule: refused unless rescheduled
    first = run[:5] + ["--out", str(tmp_path / "c"), "--steps", "3", "--save-every", "2", "--speech-copies", "5"]
    assert main(first) == 0
    onward = first[:-6] + ["--out", str(tmp_path / "c2"), "--steps", "3", "--resume", str(tmp_path / "c" / "step-2")]
    assert main(onward + ["--speech-copies", "1"]) == 2
    assert "was trained with --speech-copies 5: other values change" in capsys.readouterr().err
    assert not (tmp_path / "c2").exists()
    assert main(onward + ["--speech-copies", "5"]) == 0 and (tmp_path / "c2" / "step-3").is_dir()


def torchrun(setup, out, *extra) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "glm4voice", "train-sft",
           "--lm", str(setup / "lm"), "--data", str(setup / "data.jsonl"), "--out", str(out),
           "--batch-size", "2", "--lr", "3e-3", "--min-lr", "3e-4", "--log-every", "1", *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_torchrun_fsdp_two_ranks_then_resume_on_one(setup, tmp_path):
    logged = torchrun(setup, tmp_path / "f", "--steps", "8")
    assert [r["step"] for r in logged] == list(range(1, 9))  # rank 0 logs, once per step
    assert logged[-1]["loss"] < 0.7 * logged[0]["loss"]
    # Rank 0 read the checkpoint and broadcast it into the shards: the first loss is the one-process loss on the
    # same four samples (up to the per-rank averaging of the token mean).
    single = train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "s", RunConfig(steps=1, batch_size=4, **FAST),
                       log=lambda line: None)  # fmt: skip
    assert abs(logged[0]["loss"] - single[0]["loss"]) < 0.01 * single[0]["loss"]
    sharded = weights(tmp_path / "f" / "step-8")  # gathered from both ranks into one full checkpoint
    assert sharded.keys() == load_lm(setup / "lm").state_dict().keys()
    load_lm(tmp_path / "f" / "step-8")
    cfg = RunConfig(steps=10, batch_size=4, reschedule=True, **FAST)  # the 2-rank run continues on 1 rank, longer
    records = train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "g", cfg, resume=tmp_path / "f" / "step-8",
                        log=lambda line: None)  # fmt: skip
    assert records[0]["step"] == 9 and (tmp_path / "g" / "step-10").is_dir()


def test_torchrun_bf16_mixed_precision(setup, tmp_path):
    fp32 = torchrun(setup, tmp_path / "a", "--steps", "2")
    bf16 = torchrun(setup, tmp_path / "b", "--steps", "2", "--mixed-precision", "bf16")
    assert abs(bf16[0]["loss"] - fp32[0]["loss"]) < 0.01 * fp32[0]["loss"]  # bf16 compute, same model
    assert bf16[0]["loss"] != fp32[0]["loss"]  # ... and it really ran in bf16
    assert load_file(tmp_path / "b" / "step-2" / "model.safetensors")["lm_head.weight"].dtype == torch.float32


def test_gradient_checkpointing_changes_memory_not_math(setup, tmp_path, monkeypatch):
    from transformers import GlmForCausalLM

    from glm4voice.lm.checkpoint import load_lm as real_load

    engaged = []
    monkeypatch.setattr("glm4voice.lm.load_lm", lambda *a, **k: engaged.append(real_load(*a, **k)) or engaged[-1])
    plain = train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "a", RunConfig(steps=3, log_every=1, **{
        k: v for k, v in FAST.items() if k != "log_every"}), log=lambda line: None)  # fmt: skip
    ckpt = train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "b", RunConfig(steps=3, log_every=1,
                     gradient_checkpointing=True, lr=3e-3, min_lr=3e-4), log=lambda line: None)  # fmt: skip
    assert [r["loss"] for r in ckpt] == pytest.approx([r["loss"] for r in plain], rel=1e-5)
    assert [m.is_activation_checkpointing for m in engaged] == [False, True]  # the flag really engaged
    assert all(isinstance(m, GlmForCausalLM) for m in engaged)
    a, b = weights(tmp_path / "a" / "step-3"), weights(tmp_path / "b" / "step-3")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_lora_adapters_train_merge_and_resume(setup, tmp_path):
    peft = pytest.importorskip("peft")
    cfg = RunConfig(steps=20, save_every=10, **{**FAST, "lr": 2e-2, "min_lr": 2e-3})
    records = train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "a", cfg, lora=4, log=lambda line: None)
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]  # the adapters alone learn the turns
    step = tmp_path / "a" / "step-20"
    merged, base = load_lm(step, dtype="float32"), load_lm(setup / "lm", dtype="float32")
    # only the adapted projections moved; embeddings, norms and the output layer are the base's
    assert torch.equal(merged.lm_head.weight, base.lm_head.weight)
    assert torch.equal(merged.model.embed_tokens.weight, base.model.embed_tokens.weight)
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight)
    # the adapter folder is PEFT's own: base + adapter gives the merged LM's logits
    adapted = peft.PeftModel.from_pretrained(base, str(step / "adapter"))
    ids = torch.tensor([[5, 40, 99, 7, 300]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-5)
    # resuming a LoRA run: the base again, with the checkpoint's adapter; the same weights at the end
    train_sft(setup / "lm", setup / "data.jsonl", tmp_path / "b", cfg, lora=4, resume=tmp_path / "a" / "step-10",
              log=lambda line: None)  # fmt: skip
    a, b = weights(step), weights(tmp_path / "b" / "step-20")
    assert all(torch.equal(a[k], b[k]) for k in a)
