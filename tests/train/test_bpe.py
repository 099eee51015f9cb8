"""train-bpe: a byte-level BPE whose tiktoken ranks encode exactly as the trainer's own tokenizer does."""

from __future__ import annotations

import json

import pytest

from glm4voice.cli import main
from glm4voice.errors import Glm4VoiceError
from glm4voice.lm.text import BUILTIN_SPECIALS, TextTokenizer
from glm4voice.lm.vocab import write_tokenizer_files
from glm4voice.train.bpe import byte_symbols, hf_bpe, ranks_of

TRAIN = [
    "The quick brown fox jumps over the lazy dog. It's 12:30, isn't it?",
    "What is the capital of France? The capital of France is Paris.",
    "How many legs does a spider have? A spider has eight legs.",
    "今天是星期三，明天是星期四。法国的首都是巴黎。",
    "Streaming speech tokenizers must agree with their offline twins!",
] * 20
HELD_OUT = ["The lazy spider's capital: 1234 legs?!  Tabs\tand\nnew lines, émigré café, 巴黎的星期 🎉", "", " x"]


def test_byte_symbols_are_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    table = byte_symbols()
    assert len(set(table.values())) == 256 and set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_tiktoken_ranks_encode_as_the_trained_tokenizer(tmp_path):
    hf = hf_bpe(TRAIN, 400)
    ranks = ranks_of(hf)
    assert len(ranks) <= 400 and sorted(ranks.values()) == list(range(len(ranks)))
    write_tokenizer_files(tmp_path, ranks, speech=False)
    tok = TextTokenizer.from_pretrained(tmp_path)
    to_byte = {c: b for b, c in byte_symbols().items()}
    for text in [*TRAIN[:5], *HELD_OUT]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text  # byte-level: every text round-trips
        theirs = [bytes(to_byte[c] for c in piece) for piece in hf.encode(text).tokens]
        assert [tok.token_bytes(i) for i in ids] == theirs  # the same merges, in the same order
    assert len(tok.encode(TRAIN[1])) < len(TRAIN[1].encode()) / 3  # it learned the corpus's words
    assert tok.n_audio == 0 and tok.token_id("<|endoftext|>") == len(ranks)
    assert [tok.token_id(s) for s in BUILTIN_SPECIALS] == list(range(len(ranks), len(ranks) + 14))


def test_cli_reads_jsonl_parquet_and_plain_text(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n"
                                              for i, t in enumerate(TRAIN[:5])))  # fmt: skip
    (tmp_path / "b.txt").write_text("\n\n".join(TRAIN[:5]))
    assert main(["data", "text-corpus", "--no-fortunes", str(tmp_path / "a.jsonl"), "--out",
                 str(tmp_path / "c.parquet")]) == 0  # fmt: skip
    capsys.readouterr()
    argv = ["train-bpe", "--corpus", str(tmp_path / "a.jsonl"), str(tmp_path / "b.txt"), str(tmp_path / "c.parquet"),
            "--vocab-size", "300"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "bpe")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents"] == 15 and report["ranks"] == 300
    assert TextTokenizer.from_pretrained(tmp_path / "bpe").vocab_size == 314
    assert main([*argv, "--out", str(tmp_path / "bpe")]) == 2  # not over a finished folder
    assert main([*argv[:-1], "100", "--out", str(tmp_path / "x")]) == 2
    (tmp_path / "bad.parquet").write_text("not parquet")
    assert main(["train-bpe", "--corpus", str(tmp_path / "bad.parquet"), "--vocab-size", "300", "--out",
                 str(tmp_path / "y")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert "not an empty folder" in err[0] and "at least 257" in err[1] and "cannot read the columns" in err[2]
    with pytest.raises(Glm4VoiceError, match="no merges"):
        ranks_of(hf_bpe(["a"], 300))
