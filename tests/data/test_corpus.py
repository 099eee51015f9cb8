"""The Ray Data pipeline: a corpus with a bad file -> Parquet shards whose codes equal one-by-one tokenization."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from glm4voice.cli import main
from glm4voice.data.corpus import read_manifest
from glm4voice.errors import Glm4VoiceError
from glm4voice.tokenizer import SpeechTokenizer
from tests.conftest import write_wav16


def test_corpus_to_shards(golden, speech_clips, tmp_path, capsys):
    for i, clip in enumerate(speech_clips[:3]):
        write_wav16(tmp_path / f"u{i}.wav", clip)
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    write_wav16(tmp_path / "one-sample.wav", speech_clips[0][:1], rate=48000)  # resamples to no samples at all
    rows = [{"id": f"u{i}", "audio": f"u{i}.wav", "text": f"utterance {i}"} for i in range(3)]
    rows.append({"id": "broken", "audio": str(tmp_path / "bad.wav")})
    rows.append({"id": "tiny", "audio": "one-sample.wav"})
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "shards"
    argv = ["tokenize-corpus", "--speech-tokenizer", str(golden / "tokenizer"), "--manifest", str(manifest),
            "--out", str(out), "--batch-size", "2"]  # fmt: skip
    assert main(argv) == 1  # two files failed: reported, and the others are all there
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["failed"] == 2
    assert sorted(f[0] for f in summary["failures"]) == ["broken", "tiny"]
    table = pq.read_table(out).to_pydict()
    by_id = {i: k for k, i in enumerate(table["id"])}
    tok = SpeechTokenizer.from_pretrained(golden / "tokenizer")
    for i in range(3):
        row = by_id[f"u{i}"]
        assert table["codes"][row] == tok.tokenize(tmp_path / f"u{i}.wav")
        assert table["text"][row] == f"utterance {i}" and table["error"][row] is None
        assert table["seconds"][row] == pytest.approx(len(speech_clips[i]) / 16000)
    broken = by_id["broken"]
    assert table["codes"][broken] == [] and "bad.wav" in table["error"][broken] and table["text"][broken] == ""
    assert "one-sample.wav" in table["error"][by_id["tiny"]] and "no samples" in table["error"][by_id["tiny"]]
    # finished shards are never overwritten; no temporary folder is left behind
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("shards")) == ["shards"]


def test_bad_manifests(tmp_path):
    cases = {
        "not json\n": "not JSON",
        '{"id": "a"}\n': "need",
        '{"id": "a", "audio": "x.wav"}\n{"id": "a", "audio": "y.wav"}\n': "appears twice",
        '{"id": "a", "audio": "x.wav", "text": 3}\n': "text must be a string",
        "\n": "no rows",
    }
    for i, (content, message) in enumerate(cases.items()):
        path = tmp_path / f"m{i}.jsonl"
        path.write_text(content)
        with pytest.raises(Glm4VoiceError, match=message):
            read_manifest(path)
