"""The text-to-token model: it trains on (text, units) pairs, its units come back, its guards hold."""

from __future__ import annotations

import json

import pytest
import torch

from glm4voice.cli import main
from glm4voice.errors import Glm4VoiceError
from glm4voice.lm.t2t import T2TConfig, TextToToken, t2t_sample_ids
from glm4voice.lm.text import TextTokenizer
from glm4voice.lm.tiny import write_tiny_lm
from glm4voice.train.config import RunConfig
from glm4voice.train.t2t import train_t2t

PAIRS = [("hello world", [3, 17, 25, 9, 30, 2, 11, 5]), ("the stream", [20, 4, 28, 13, 7, 1, 22]),
         ("in the ring", [6, 31, 15, 26, 0, 18, 12, 29, 8])]  # fmt: skip
TINY_GLM = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256}  # fmt: skip
EXACT = T2TConfig(temperature=0.0, repeat_share=1.0)  # greedy, and the repetition guard only for 10 in a row


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    root = tmp_path_factory.mktemp("t2t")
    lm = write_tiny_lm(root / "lm", n_audio=32)
    (root / "shards").mkdir()
    pq.write_table(pa.table({"id": [str(i) for i in range(len(PAIRS))], "text": [t for t, _ in PAIRS],
                             "codes": pa.array([c for _, c in PAIRS], pa.list_(pa.int32()))}),
                   root / "shards" / "part-0.parquet")  # fmt: skip
    (root / "glm.json").write_text(json.dumps(TINY_GLM))
    cfg = RunConfig(steps=120, batch_size=2, lr=1e-2, min_lr=1e-3, warmup_steps=5, weight_decay=0.0, log_every=20)
    records = train_t2t(root / "shards", root / "run", cfg, config=root / "glm.json", text_tokenizer=lm, seq_length=64,
                        log=lambda line: None)  # fmt: skip
    return root, lm, records


def test_training_sample_has_loss_on_units_and_end_only(trained):
    _, lm, _ = trained
    tok = TextTokenizer.from_pretrained(lm)
    ids, labels = t2t_sample_ids(tok, "hello", [1, 2])
    prompt = tok.encode("hello") + [tok.token_id("<|endoftext|>"), tok.token_id("<|begin_of_audio|>")]
    assert ids == prompt + tok.audio_ids([1, 2]) + [tok.token_id("<|end_of_audio|>")]
    assert labels == [-100] * len(prompt) + ids[len(prompt) :]


def test_overfits_pairs_and_gives_their_units_back(trained):
    root, _, records = trained
    assert records[-1]["loss"] < 0.05 * records[0]["loss"], (records[0], records[-1])
    t2t = TextToToken.from_pretrained(root / "run" / "step-120")
    units = t2t.generate([t for t, _ in PAIRS], EXACT)  # one batch, rows of different lengths
    assert units == [c for _, c in PAIRS]
    assert t2t.generate([PAIRS[1][0]], EXACT) == [PAIRS[1][1]]  # alone, the same as in the batch


def test_guards_hold_for_any_sampling(trained):
    root, _, _ = trained
    t2t = TextToToken.from_pretrained(root / "run" / "step-120")
    text = "in the ring"
    chars = len("".join(text.split()))
    wild = T2TConfig(temperature=5.0, top_p=1.0, top_k=0, min_codes_per_char=1.0, max_codes_per_char=2.0, seed=3)
    for seed in range(5):
        (units,) = t2t.generate([text], T2TConfig(**{**wild.__dict__, "seed": seed}))
        assert chars <= len(units) <= 2 * chars and all(0 <= u < 32 for u in units)
    assert t2t.generate([text], wild) == t2t.generate([text], wild)  # the seed fixes the output
    with pytest.raises(Glm4VoiceError, match="non-empty"):
        t2t.generate(["ok", " "])


def test_cli_units_decode_and_errors(trained, tmp_path, capsys):
    root, lm, _ = trained
    assert main(["t2t", "--t2t", str(root / "run" / "step-120"), "--text", PAIRS[0][0], "--text", PAIRS[2][0],
                 "--temperature", "0"]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in lines] == [PAIRS[0][0], PAIRS[2][0]] and all(r["codes"] for r in lines)
    assert main(["t2t", "--t2t", str(tmp_path / "missing"), "--text", "x"]) == 2
    assert main(["train-t2t", "--data", str(tmp_path / "nope"), "--lm", str(lm), "--out", str(tmp_path / "r")]) == 2
    text_only = write_tiny_lm(tmp_path / "text", speech=False)
    argv = ["train-t2t", "--data", str(root / "shards"), "--lm", str(text_only), "--out", str(tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and "no such file" in err[1] and "no audio ids" in err[2], err
    with pytest.raises(Glm4VoiceError, match="needs audio ids"):
        TextToToken(torch.nn.Linear(1, 1), TextTokenizer.from_pretrained(text_only))
