"""train-lm: the mixture (token shares, epochs, loss masks per kind), packing that keeps samples apart,
overfitting a tiny mixture from scratch, bit-exact resume, and bad mixtures as one line."""

from __future__ import annotations

import json

import pytest
import torch

from glm4voice.cli import main
from glm4voice.data.mixture import Mixture, PackedStream, Source, load_samples, read_mixture
from glm4voice.data.sft import IGNORE
from glm4voice.errors import Glm4VoiceError
from glm4voice.lm import load_lm
from glm4voice.lm.text import TextTokenizer
from glm4voice.lm.tiny import write_tiny_lm
from glm4voice.train.config import RunConfig
from glm4voice.train.lm import train_lm

TINY_GLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 256}  # fmt: skip
TEXTS = ["hello world", "the stream is in the ream", "hello the world of streams", "in the ring", "tion on st"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("mix")
    lm = write_tiny_lm(root / "lm", n_audio=32)
    rows = [json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(TEXTS)]
    (root / "texts.jsonl").write_text("".join(rows))
    (root / "shards").mkdir()
    table = pa.table({"id": ["a", "b", "c"], "text": ["hello", "world", None], "seconds": [1.0, 1.0, 1.0],
                      "codes": pa.array([[1, 2, 3], [4, 5, 6, 7], [8]], pa.list_(pa.int32())),
                      "error": [None, None, None]})  # fmt: skip
    pq.write_table(table, root / "shards" / "part-0.parquet")
    mixture = {"seq_length": 24, "sources": [{"kind": "text", "path": "texts.jsonl", "weight": 0.5},
                                             {"kind": "asr", "path": "shards", "weight": 0.25},
                                             {"kind": "tts", "path": "shards", "weight": 0.25}]}  # fmt: skip
    (root / "mix.json").write_text(json.dumps(mixture))
    (root / "glm.json").write_text(json.dumps(TINY_GLM))
    return root, lm


def test_loss_masks_per_kind(data):
    root, lm = data
    tok = TextTokenizer.from_pretrained(lm)
    boa, eoa, eos = (tok.token_id(n) for n in ("<|begin_of_audio|>", "<|end_of_audio|>", "<|endoftext|>"))
    speech = [boa, *tok.audio_ids([1, 2, 3]), eoa]
    text = tok.encode("hello") + [eos]
    shards = [root / "shards"]
    asr = load_samples(Source("asr", shards, 1.0), tok)
    tts = load_samples(Source("tts", shards, 1.0), tok)
    only = load_samples(Source("speech", shards, 1.0), tok)
    assert len(asr) == len(tts) == 2 and len(only) == 3  # the row without a transcript: speech only
    assert asr[0].input_ids == speech + text and asr[0].labels == [IGNORE] * len(speech) + text
    assert tts[0].input_ids == text + speech and tts[0].labels == [IGNORE] * len(text) + speech
    assert only[0].input_ids == only[0].labels == speech
    plain = load_samples(Source("text", [root / "texts.jsonl"], 1.0), tok)
    assert plain[0].input_ids == plain[0].labels == tok.encode(TEXTS[0]) + [eos]


def test_packed_samples_give_the_same_logits_as_alone(data):
    _, lm = data
    model = load_lm(lm, dtype="float32")
    a, b = [5, 9, 33, 41, 7, 12, 90], [17, 3, 250, 8, 60]
    pad = 4
    ids = torch.tensor([a + b + [0] * pad])
    positions = torch.tensor([[*range(len(a)), *range(len(b)), *range(pad)]])
    with torch.no_grad():
        packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
        alone_a = model(input_ids=torch.tensor([a]), use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
    assert torch.allclose(packed[: len(a)], alone_a, atol=1e-5)
    assert torch.allclose(packed[len(a) : len(a) + len(b)], alone_b, atol=1e-5)  # b never saw a


def test_token_shares_epochs_and_packing(data):
    root, lm = data
    tok = TextTokenizer.from_pretrained(lm)
    long_docs = [t * 3 for t in TEXTS]
    (root / "long.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                             for i, t in enumerate(long_docs)))  # fmt: skip
    mix = Mixture([Source("text", [root / "texts.jsonl"], 3.0), Source("text", [root / "long.jsonl"], 1.0)], 40)
    samples = [load_samples(s, tok) for s in mix.sources]
    stream = PackedStream(mix, samples, seed=1)
    tokens = [0, 0]
    first_epoch = [p.sample for g in range(3) for p in stream[g].pieces if p.source == 0][: len(TEXTS)]
    assert sorted(first_epoch) == list(range(len(TEXTS)))  # every sample once per epoch
    for g in range(300):
        seq = stream[g]
        assert seq.length <= 40
        for p in seq.pieces:
            tokens[p.source] += p.stop - p.start
    assert tokens[0] / sum(tokens) == pytest.approx(0.75, abs=0.02)
    again = PackedStream(mix, samples, seed=1)
    assert [again[g] for g in (299, 5, 0)] == [stream[g] for g in (299, 5, 0)]  # a pure function of g
    batch = stream.batch(0, 2, pad_id=0)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (2, 40)
    first = stream[0].pieces[0]
    assert batch["labels"][0, 0] == IGNORE and batch["position_ids"][0, first.stop - first.start] == 0


def test_overfits_a_tiny_mixture_from_scratch_and_resumes_exactly(data, tmp_path):
    root, lm = data
    cfg = RunConfig(steps=60, batch_size=2, lr=1e-2, min_lr=1e-3, warmup_steps=2, weight_decay=0.0, log_every=5,
                    save_every=30)  # fmt: skip
    kwargs = dict(config=root / "glm.json", text_tokenizer=lm, log=lambda line: None)
    records = train_lm(root / "mix.json", tmp_path / "a", cfg, **kwargs)
    assert records[-1]["loss"] < 0.1 * records[0]["loss"], (records[0], records[-1])  # 5.8 -> 0.18
    model = load_lm(tmp_path / "a" / "step-60")  # a complete LM folder
    assert model.config.vocab_size == -(-TextTokenizer.from_pretrained(lm).vocab_size // 16) * 16
    resumed = train_lm(root / "mix.json", tmp_path / "b", cfg, resume=tmp_path / "a" / "step-30", log=lambda l: None)
    original = {r["step"]: r["loss"] for r in records}
    assert [r["loss"] for r in resumed if r["step"] in original] == [original[s] for s in original if s > 30]
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / x / "step-60" / "model.safetensors") for x in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mixture, message", [
    ({"sources": []}, "non-empty list"),
    ({"sources": [{"kind": "video", "path": "texts.jsonl"}]}, "kind 'video'"),
    ({"sources": [{"kind": "text", "path": "texts.jsonl", "weight": -1}]}, "positive number"),
    ({"sources": [{"kind": "text", "path": "nope.jsonl"}]}, "no such file"),
    ({"seq_length": 0, "sources": [{"kind": "text", "path": "texts.jsonl"}]}, "seq_length"),
    ({"sources": [{"kind": "speech", "path": "texts.jsonl"}]}, "cannot read the columns"),
    ({"sources": [{"kind": "interleaved", "path": "empty"}]}, "no .parquet shards"),
])  # fmt: skip
def test_bad_mixtures_are_one_line(data, tmp_path, capsys, mixture, message):
    root, lm = data
    (root / "empty").mkdir(exist_ok=True)
    path = root / f"bad-{abs(hash(message))}.json"
    path.write_text(json.dumps(mixture))
    assert main(["train-lm", "--mixture", str(path), "--lm", str(lm), "--out", str(tmp_path / "r"),
                 "--steps", "1"]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    with pytest.raises(Glm4VoiceError, match="--text-tokenizer"):
        train_lm(root / "mix.json", tmp_path / "s", RunConfig(steps=1), config=root / "glm.json")
    assert read_mixture(root / "mix.json").seq_length == 24


def test_torchrun_two_ranks_from_scratch(data, tmp_path):
    """FSDP over two ranks from a config: the same random start on both, one record per step, a full checkpoint;
    its first loss is one process's on the same four sequences (ranks read disjoint slices of the stream)."""
    import os
    import subprocess
    import sys

    root, lm = data
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--mixture", str(root / "mix.json"), "--config", str(root / "glm.json"), "--text-tokenizer", str(lm),
              "--lr", "1e-2", "--min-lr", "1e-3", "--log-every", "1"]  # fmt: skip
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "glm4voice", "train-lm",
           *common, "--out", str(tmp_path / "f"), "--steps", "3", "--batch-size", "2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    logged = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["step"] for r in logged] == [1, 2, 3]
    load_lm(tmp_path / "f" / "step-3")
    single = train_lm(root / "mix.json", tmp_path / "s", RunConfig(steps=1, batch_size=4, lr=1e-2, min_lr=1e-3),
                      config=root / "glm.json", text_tokenizer=lm, log=lambda line: None)  # fmt: skip
    assert abs(logged[0]["loss"] - single[0]["loss"]) < 0.02 * single[0]["loss"]
