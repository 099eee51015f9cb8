import json

import soundfile as sf

from glm4voice import demo


def test_demo_round_trip_speech_to_codes_to_speech(golden, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo must not depend on where the package lies, only on its arguments
    assert demo.main(tmp_path, golden) == 0
    ids = json.loads((tmp_path / "codes.jsonl").read_text())
    assert abs(len(ids["codes"]) - ids["seconds"] * 12.5) <= 1
    audio, rate = sf.read(tmp_path / "reply.wav")
    assert rate == 22050
    # the decoder makes int(n / 12.5 * 22050 / 256) mel frames of 256 samples
    assert len(audio) == int(len(ids["codes"]) / 12.5 * 22050 / 256) * 256
    out = capsys.readouterr()
    assert "wrote" in out.out
    # then the spoken chat on the demo bundle (golden tokenizer + tiny random LM + golden decoder)
    assert (tmp_path / "bundle" / "lm" / "config.json").exists()
    assert "60 ids" in out.err and "first audio" in out.err
    reply, rate = sf.read(tmp_path / "chat-reply.wav")
    assert rate == 22050 and len(reply) > 0


def test_demo_without_golden_checkpoints_says_so(tmp_path, capsys):
    assert demo.main(tmp_path / "out", tmp_path / "nowhere") == 1
    assert "no golden checkpoints" in capsys.readouterr().err and not (tmp_path / "out").exists()
