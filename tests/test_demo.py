import json

import soundfile as sf

from glm4voice import demo


def test_demo_round_trip_speech_to_codes_to_speech(golden, tmp_path, capsys, monkeypatch, no_embedded_default):
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


def test_demo_without_golden_checkpoints_says_so(tmp_path, capsys, no_embedded_default):
    assert demo.main(tmp_path / "out", tmp_path / "nowhere") == 1
    assert "no golden checkpoints" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_demo_asks_a_trained_bundle_held_out_spoken_questions(golden, tmp_path, capsys):
    questions = demo.held_out_questions()
    assert [(q["lang"], q["task"], q["split"]) for q in questions] == [
        ("en", "add", "test"), ("en", "capital", "test"), ("zh", "add", "test"), ("zh", "capital", "test")]
    bundle = demo.make_bundle(tmp_path / "bundle", golden)  # stands in for models/tiny (random LM: any answer)
    assert demo.main(tmp_path / "out", golden, model=bundle, max_new_tokens=30) == 0
    out = capsys.readouterr()
    assert out.out.count("demo: asked") == 4 and "the spoken answers are in" in out.out
    assert out.err.count("first audio") == 4  # each turn's timings
    for n in range(1, 5):
        answer, rate = sf.read(tmp_path / "out" / f"answer-{n}.wav")
        assert rate == 22050 and len(answer) > 0


def test_chat_falls_back_to_the_embedded_default(golden, tmp_path, capsys, monkeypatch):
    from glm4voice.cli import common, main

    monkeypatch.setattr(common, "EMBEDDED_MODEL", tmp_path / "models" / "tiny")
    argv = ["chat", "--text", "hi", "--max-new-tokens", "5", "--flow-steps", "1", "--out", str(tmp_path / "r.wav")]
    assert main(argv) == 2  # no embedded default yet: one clear line saying where it would be
    err = capsys.readouterr().err
    assert "no embedded default in" in err and len(err.strip().splitlines()) == 1
    demo.make_bundle(tmp_path / "models" / "tiny", golden)
    assert main(argv) == 0
    assert "using the embedded default" in capsys.readouterr().err and (tmp_path / "r.wav").exists()


def test_make_demo_on_the_shipped_bundle(tmp_path, capsys):
    """What `make demo` does on a fresh checkout: the embedded default answers held-out spoken questions."""
    import pytest

    from glm4voice.cli.common import embedded_model

    if embedded_model() is None:
        pytest.skip("this checkout has no models/tiny")
    assert demo.main(tmp_path / "out") == 0
    out = capsys.readouterr()
    assert out.out.count("demo: asked") == 4 and out.err.count("first audio") == 4
    for n in range(1, 5):
        answer, rate = sf.read(tmp_path / "out" / f"answer-{n}.wav")
        assert rate == 22050 and len(answer) > rate // 2  # a spoken answer, not a click
