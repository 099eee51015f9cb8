"""extend-vocab: a text LM gains the speech vocabulary; on text it gives exactly the old logits."""

from __future__ import annotations

import pytest
import torch

from glm4voice.cli import main
from glm4voice.errors import CheckpointError
from glm4voice.lm import convert_lm, load_lm
from glm4voice.lm.text import TextTokenizer
from glm4voice.lm.tiny import write_tiny_lm
from glm4voice.lm.vocab import SPEECH_SPECIALS, extend_vocab


@pytest.fixture(scope="module")
def text_lm(tmp_path_factory):
    return write_tiny_lm(tmp_path_factory.mktemp("lm") / "text", speech=False)


@pytest.mark.parametrize("layout", ["chatglm", "glm"])
def test_old_ids_keep_their_logits_and_the_speech_ids_exist(text_lm, tmp_path, layout):
    source = text_lm if layout == "chatglm" else convert_lm(text_lm, tmp_path / "glm")
    report = extend_vocab(source, 100, tmp_path / "speech")
    old_tok, new_tok = TextTokenizer.from_pretrained(text_lm), TextTokenizer.from_pretrained(tmp_path / "speech")
    assert old_tok.n_audio == 0 and new_tok.n_audio == 100
    assert new_tok.audio_offset == report["first_audio_id"] == old_tok.vocab_size + len(SPEECH_SPECIALS)
    assert all(new_tok.token_id(s) >= old_tok.vocab_size for s in SPEECH_SPECIALS)
    text = "hello world, the stream is in the ream"
    ids = old_tok.encode(text)
    assert new_tok.encode(text) == ids and new_tok.decode(ids) == text
    old, new = load_lm(text_lm, dtype="float32"), load_lm(tmp_path / "speech", dtype="float32")
    assert new.config.vocab_size == report["rows"] >= new_tok.vocab_size and report["rows"] % 16 == 0
    with torch.no_grad():
        a = old(torch.tensor([ids])).logits
        b = new(torch.tensor([ids])).logits
    keep = old_tok.vocab_size
    assert torch.allclose(a[..., :keep], b[..., :keep], rtol=0, atol=1e-5)
    # new rows look like old ones: drawn from their per-dimension mean and spread
    emb = new.model.embed_tokens.weight
    old_rows, new_rows = emb[:keep], emb[keep : new_tok.vocab_size]
    assert torch.equal(old_rows, old.model.embed_tokens.weight[:keep])
    assert (new_rows.mean(0) - old_rows.mean(0)).abs().mean() < 0.5 * old_rows.std(0).mean()
    assert 0.7 < float(new_rows.std(0).mean() / old_rows.std(0).mean()) < 1.3


def test_a_tokenizer_alone_gains_the_speech_ids(tmp_path):
    from glm4voice.lm.tiny import write_tiny_tokenizer

    write_tiny_tokenizer(tmp_path / "bpe", speech=False)
    report = extend_vocab(tmp_path / "bpe", 16, tmp_path / "speech")
    assert sorted(p.name for p in (tmp_path / "speech").iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    tok = TextTokenizer.from_pretrained(tmp_path / "speech")
    assert tok.n_audio == 16 and tok.audio_offset == report["first_audio_id"] and "rows" not in report


def test_bad_requests_are_one_line(text_lm, tmp_path, capsys):
    extend_vocab(text_lm, 8, tmp_path / "a")
    with pytest.raises(CheckpointError, match="already has 8 audio tokens"):
        extend_vocab(tmp_path / "a", 8, tmp_path / "b")
    with pytest.raises(CheckpointError, match="not an empty folder"):
        extend_vocab(text_lm, 8, tmp_path / "a")
    assert main(["extend-vocab", "--lm", str(text_lm), "--n-audio", "0", "--out", str(tmp_path / "c")]) == 2
    assert main(["extend-vocab", "--lm", str(tmp_path / "nope"), "--n-audio", "4", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--n-audio must be a positive integer" in err[0] and "Traceback" not in err[1]
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
