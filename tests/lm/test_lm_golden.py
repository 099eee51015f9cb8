"""The speech LM loader against the golden ChatGLM-format checkpoint (tests/golden/lm)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from glm4voice.errors import CheckpointError
from glm4voice.lm import convert_lm, load_lm
from glm4voice.lm.generate import Sampler, SamplingConfig, sample_ids


@pytest.fixture(scope="module")
def cases(golden):
    return torch.load(golden / "lm" / "cases.pt", weights_only=True)


@pytest.fixture(scope="module")
def lm(golden):
    return load_lm(golden / "lm")


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits


def _greedy(model, prefix, n=12):
    from transformers import DynamicCache

    sampler = Sampler(SamplingConfig(temperature=0))
    return list(sample_ids(model, prefix[0].tolist(), DynamicCache(config=model.config), sampler, n, ()))


def test_golden_logits(lm, cases):
    from transformers import GlmForCausalLM

    assert isinstance(lm, GlmForCausalLM) and not lm.training
    assert lm.config.num_key_value_heads == 2 and lm.config.head_dim == 16
    assert torch.allclose(_logits(lm, cases["input_ids"]), cases["logits"], atol=1e-4, rtol=0)


def test_golden_greedy_ids(lm, cases):
    assert _greedy(lm, cases["greedy_prefix"]) == cases["greedy"][0].tolist()
    out = lm.generate(cases["greedy_prefix"], max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert out[0, 20:].tolist() == cases["greedy"][0].tolist()


def _split_into_shards(src, dst, n=2):
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    with safe_open(str(src / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        tensors = {k: f.get_tensor(k) for k in names}
    weight_map = {}
    for i in range(n):
        part = names[i::n]
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, str(dst / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in part})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dst


def test_sharded_checkpoint(golden, cases, tmp_path):
    folder = _split_into_shards(golden / "lm", tmp_path / "sharded")
    model = load_lm(folder)
    assert torch.allclose(_logits(model, cases["input_ids"]), cases["logits"], atol=1e-4, rtol=0)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing shard"):
        load_lm(folder)


def test_bf16_load(golden, cases):
    model = load_lm(golden / "lm", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert all(p.device.type == "cpu" for p in model.parameters())
    logits = _logits(model, cases["input_ids"]).float()
    assert (logits - cases["logits"]).abs().max() < 0.2  # bf16 rounding only


def test_auto_dtype_is_the_one_the_config_names(golden, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "lm"
    shutil.copytree(golden / "lm", folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v.to(torch.bfloat16) for k, v in weights.items()}, folder / "model.safetensors")
    assert load_lm(folder).dtype == torch.float32  # stored bf16 (the tiny bundle), the config names float32
    config = json.loads((folder / "config.json").read_text())
    del config["torch_dtype"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_lm(folder).dtype == torch.bfloat16  # named nowhere: the stored dtype


def test_convert_lm_roundtrip(golden, cases, tmp_path):
    from transformers import GlmForCausalLM

    out = convert_lm(golden / "lm", tmp_path / "glm", max_shard_bytes=200_000)
    assert (out / "model.safetensors.index.json").is_file()  # small shards: several files
    assert json.loads((out / "config.json").read_text())["model_type"] == "glm"
    # our loader reads the transformers layout too, and so does transformers itself
    for model in (load_lm(out), GlmForCausalLM.from_pretrained(out)):
        assert torch.allclose(_logits(model.eval(), cases["input_ids"]), cases["logits"], atol=1e-4, rtol=0)
    with pytest.raises(CheckpointError, match="not an empty folder"):
        convert_lm(golden / "lm", out)


def test_convert_lm_cli(golden, cases, tmp_path, capsys):
    from glm4voice.cli import main

    assert main(["convert-lm", str(golden / "lm"), str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert main(["convert-lm", str(tmp_path / "nope"), str(tmp_path / "out2")]) == 2
    assert "error" in capsys.readouterr().err


def test_bad_checkpoints(golden, tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        load_lm(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="model_type"):
        load_lm(bad)
    shutil.copy(golden / "lm" / "config.json", bad / "config.json")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_lm(bad)
    # a tensor missing from the checkpoint
    with safe_open(str(golden / "lm" / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if "layers.1.mlp" not in k}
    save_file(tensors, str(bad / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing 2 tensor"):
        load_lm(bad)
    # shapes that disagree with the config
    cfg = json.loads((golden / "lm" / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "ffn_hidden_size": 80}))
    shutil.copy(golden / "lm" / "model.safetensors", bad / "model.safetensors")
    with pytest.raises(CheckpointError, match="do not match"):
        load_lm(bad)


def test_convert_lm_copies_tokenizer_files(tmp_path):
    from glm4voice.lm.text import TextTokenizer
    from glm4voice.lm.tiny import write_tiny_lm

    src = write_tiny_lm(tmp_path / "src", n_audio=32)
    out = convert_lm(src, tmp_path / "out", dtype="bfloat16")
    assert TextTokenizer.from_pretrained(out).n_audio == 32
    ids = torch.tensor([[1, 2, 3, 300]])
    a, b = _logits(load_lm(src, dtype="bfloat16"), ids), _logits(load_lm(out), ids)
    assert load_lm(out).dtype == torch.bfloat16 and torch.equal(a, b)


def test_convert_lm_crash_leaves_nothing(golden, tmp_path, monkeypatch):
    """A failure mid-write (here: the third shard) leaves no half folder at the destination."""
    import glm4voice.lm.checkpoint as ckpt

    real, calls = ckpt.save_file, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", failing)
    with pytest.raises(OSError):
        convert_lm(golden / "lm", tmp_path / "glm", max_shard_bytes=200_000)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == []
