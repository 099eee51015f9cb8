"""`glm4voice decode`: token files in, wav out; bad input -> one-line error, exit 2."""

from __future__ import annotations

import json

import pytest
import soundfile as sf

from glm4voice.cli import main
from glm4voice.decoder.codes_file import CodesFileError, read_codes_file

IDS = [5, 17, 300, 42, 8, 8, 120, 511, 0, 33, 71, 9]


def _frames(n):
    return int(n * 441 / 64)


@pytest.mark.parametrize(
    "content",
    [
        json.dumps(IDS),
        json.dumps({"codes": IDS}),
        json.dumps({"tokens": IDS}),  # what earlier versions wrote stays readable
        # `glm4voice tokenize` output: lines are concatenated, error lines skipped.
        "\n".join(
            [
                json.dumps({"file": "a.wav", "seconds": 0.5, "codes": IDS[:7]}),
                json.dumps({"file": "bad.wav", "error": "bad.wav: no such file"}),
                json.dumps({"file": "b.wav", "seconds": 0.4, "codes": IDS[7:]}),
            ]
        ),
    ],
)
def test_token_file_formats(tmp_path, content):
    path = tmp_path / "ids.json"
    path.write_text(content)
    assert read_codes_file(path) == IDS


@pytest.mark.parametrize("content", ["", "[1, 2.5]", '{"ids": [1]}', "{nope", '{"file": "x", "error": "e"}'])
def test_bad_token_files(tmp_path, content):
    path = tmp_path / "ids.json"
    path.write_text(content)
    with pytest.raises(CodesFileError):
        read_codes_file(path)


@pytest.mark.parametrize("stream", [False, True])
def test_decode_round_trip(golden, tmp_path, capsys, stream):
    tokens, out = tmp_path / "ids.json", tmp_path / "reply.wav"
    tokens.write_text(json.dumps(IDS))
    argv = ["decode", "--decoder", str(golden / "decoder"), "--codes", str(tokens), "--out", str(out)]
    assert main(argv + (["--stream"] if stream else [])) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["codes"] == len(IDS) and summary["mode"] == ("stream" if stream else "offline")
    audio, rate = sf.read(out)
    assert rate == 22050 and audio.shape == (_frames(len(IDS)) * 256,)


@pytest.mark.parametrize(
    "content, decoder, message",
    [
        (json.dumps([1, 2, 99999]), None, "out of range"),
        (json.dumps([]), None, "no speech codes"),
        (json.dumps(IDS), "missing", "no such folder"),
        (None, None, "no such file"),
    ],
)
def test_decode_errors(golden, tmp_path, capsys, content, decoder, message):
    tokens = tmp_path / "ids.json"
    if content is not None:
        tokens.write_text(content)
    folder = tmp_path / "nowhere" if decoder == "missing" else golden / "decoder"
    code = main(
        ["decode", "--decoder", str(folder), "--codes", str(tokens), "--out", str(tmp_path / "x.wav")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("glm4voice decode: error:") and message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.wav").exists()


def test_long_inputs_stream_by_default(golden, tmp_path, capsys):
    from glm4voice.cli.inference import OFFLINE_MAX_CODES

    codes, out = tmp_path / "ids.json", tmp_path / "reply.wav"
    many = (IDS * (OFFLINE_MAX_CODES // len(IDS) + 1))[: OFFLINE_MAX_CODES + 1]
    codes.write_text(json.dumps(many))
    argv = ["decode", "--decoder", str(golden / "decoder"), "--codes", str(codes), "--out", str(out)]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mode"] == "stream"
    assert main([*argv[:-1], str(tmp_path / "b.wav"), "--mode", "offline"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mode"] == "offline"
    assert sf.info(out).frames == sf.info(tmp_path / "b.wav").frames == _frames(len(many)) * 256
