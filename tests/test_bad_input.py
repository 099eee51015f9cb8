"""Bad input is one clear line, and finished work is never lost (issue 16's worst cases, first part)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from glm4voice.audio import load_audio
from glm4voice.cli import main
from glm4voice.errors import AudioError


def run(*argv):
    done = subprocess.run([sys.executable, "-m", "glm4voice", *argv], capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_audio_that_resamples_to_nothing(tmp_path):
    for rate in (44100, 48000):
        with pytest.raises(AudioError, match="no samples at 16000 Hz"):
            load_audio(np.zeros(1, np.float32), sample_rate=rate)
    tiny = tmp_path / "one-sample.wav"
    sf.write(tiny, np.zeros(1, np.float32), 44100)
    with pytest.raises(AudioError, match=str(tiny)):
        load_audio(tiny)


def test_tokenize_names_the_file_that_resamples_to_nothing(golden, tmp_path, speech_clips):
    good, tiny = tmp_path / "good.wav", tmp_path / "tiny.wav"
    sf.write(good, speech_clips[0], 16000)
    sf.write(tiny, np.zeros(1, np.float32), 48000)
    code, out, err = run("tokenize", "--speech-tokenizer", str(golden / "tokenizer"), str(tiny), str(good))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and "Traceback" not in err
    assert lines[0]["file"] == str(tiny) and "no samples" in lines[0]["error"] and lines[1]["codes"]


@pytest.mark.parametrize("part", ["tokenizer", "lm"])
def test_truncated_safetensors_is_one_line(golden, tmp_path, part):
    folder = tmp_path / part
    shutil.copytree(golden / part, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    if part == "tokenizer":
        code, _, err = run("tokenize", "--speech-tokenizer", str(folder), str(golden / "tokenizer" / "in0.wav"))
    else:
        code, _, err = run("chat", "--lm", str(folder), "--text", "hi", "--out", str(tmp_path / "r.wav"))
    assert code == 2 and "not a readable safetensors file" in err and len(err.strip().splitlines()) == 1


def test_a_mistyped_local_path_is_not_sent_to_the_hub(tmp_path, monkeypatch, capsys):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("glm4voice.hub._download", lambda *a: pytest.fail("a local path went to the hub"))
    assert main(["tokenize", "--speech-tokenizer", "models/tok", "x.wav"]) == 2
    assert "models/tok: no such folder" in capsys.readouterr().err


def test_chat_checks_its_output_before_any_work(golden, tmp_path, capsys):
    (tmp_path / "a-folder").mkdir()
    argv = ["chat", "--lm", str(tmp_path / "no-lm-needed-yet"), "--text", "hi"]
    assert main([*argv, "--out", str(tmp_path / "a-folder")]) == 2
    assert "is a folder" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main([*argv, "--out", str(locked / "r.wav")]) == 2
        assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "--device cuda"),
    (["--device", "bogus"], "not a torch device"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--seed", str(2**63)], "seed must lie in"),
])  # fmt: skip
def test_chat_options(golden, tmp_path, capsys, argv, message):
    from glm4voice.lm.tiny import write_tiny_lm

    if not (tmp_path / "lm").exists():
        write_tiny_lm(tmp_path / "lm", n_audio=16, seed=0)
    if "--device" in argv and "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    code = main(["chat", "--lm", str(tmp_path / "lm"), "--text", "hi", "--out", str(tmp_path / "r.wav"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["nan", "0", "-1"])
def test_convert_lm_shard_size(golden, tmp_path, capsys, value):
    assert main(["convert-lm", str(golden / "lm"), str(tmp_path / "out"), f"--max-shard-gb={value}"]) == 2
    assert "--max-shard-gb must be a positive number" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_closed_pipe_is_no_traceback(golden):
    cmd = f"{sys.executable} -m glm4voice tokenize --speech-tokenizer {golden / 'tokenizer'} "
    cmd += " ".join(str(golden / "tokenizer" / f) for f in ["in0.wav", "in1.wav", "in0.wav", "in1.wav"] * 3)
    done = subprocess.run(cmd + " | head -c 1", shell=True, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


# --- the Python API: a Glm4VoiceError (or a ValueError naming the argument), never a crash deep inside ---------


@pytest.mark.parametrize("rate", [float("nan"), 1.5, 1e12, 0, -16000, "16000"])
def test_load_audio_sample_rates(rate):
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio(np.zeros(1600, np.float32), sample_rate=rate)


def test_load_audio_values():
    with pytest.raises(AudioError, match="int16 values"):
        load_audio(np.full(1600, 12000.0, np.float32), sample_rate=16000)
    with pytest.raises(AudioError, match="complex"):
        load_audio(np.zeros(1600, np.complex64), sample_rate=16000)
    assert load_audio(np.full(1600, 1.2, np.float32), sample_rate=16000).shape == (1600,)  # a little clipping is fine


def test_api_arguments(golden):
    import torch

    from glm4voice.decoder import SpeechDecoder
    from glm4voice.errors import CheckpointError, Glm4VoiceError
    from glm4voice.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_pretrained(golden / "tokenizer")
    stream = tok.stream()
    for bad in (dict(chunk=None), dict(chunk=np.zeros(160, np.float32), sample_rate=0)):
        with pytest.raises(AudioError):
            stream.push(**bad)
    with pytest.raises(ValueError, match="batch_size"):
        SpeechTokenizer.from_pretrained(golden / "tokenizer", batch_size=0)
    with pytest.raises(CheckpointError, match="expected a folder or hub id"):
        SpeechTokenizer.from_pretrained(None)
    dec = SpeechDecoder.from_pretrained(golden / "decoder")
    with pytest.raises(Glm4VoiceError, match="no frames"):
        dec.vocode(torch.zeros(1, 80, 0))
    with pytest.raises(Glm4VoiceError, match="n_steps"):
        dec.flow_mel([1, 2, 3], n_steps=1.5)
    with pytest.raises(Glm4VoiceError, match="prompt_codes"):
        dec.flow_mel([1, 2], prompt_mel=torch.zeros(1, 80, 3))
    with pytest.raises(Glm4VoiceError):
        dec.decode([2**70])


def test_chat_turn_arguments(tmp_path):
    from glm4voice.chat import VoiceChat
    from glm4voice.errors import Glm4VoiceError
    from glm4voice.lm import load_lm
    from glm4voice.lm.tiny import write_tiny_lm

    write_tiny_lm(tmp_path / "lm", n_audio=16, seed=0)
    chat = VoiceChat(None, load_lm(tmp_path / "lm"))
    for bad in (dict(codes=["a"]), dict(codes=[1.7]), dict(text=123), dict(text=""), dict(text="  ")):
        with pytest.raises(Glm4VoiceError):
            chat.reply(**bad)
    assert chat.history == ""  # nothing half-added


def test_outputs_checked_before_work(golden, tmp_path, capsys):
    (tmp_path / "codes.json").write_text("[1, 2, 3]")
    argv = ["decode", "--decoder", str(golden / "decoder"), "--codes", str(tmp_path / "codes.json")]
    assert main([*argv, "--out", str(tmp_path / "x.mp3")]) == 2 and "not .mp3" in capsys.readouterr().err
    assert not (tmp_path / "x.mp3").exists()
    assert main(["chat", "--lm", str(tmp_path), "--text", "", "--out", str(tmp_path / "r.wav")]) == 2


# --- config files, damaged checkpoints, cluster addresses (issue 16, second part) --------------------------------


def _tiny_lm(folder):
    from glm4voice.lm.tiny import write_tiny_lm

    write_tiny_lm(folder, n_audio=16, seed=0)
    return folder


def _edit_json(path, change):
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


CONFIG_DEFECTS = {
    "not-utf8": lambda path, key: path.write_bytes(b"\xff\xfe" + path.read_bytes()),
    "list": lambda path, key: path.write_text("[1, 2]"),
    "string-number": lambda path, key: _edit_json(path, lambda d: d.update({key[0]: "64"})),
    "heads-do-not-divide": lambda path, key: _edit_json(path, lambda d: d.update({key[1]: 7})),
    "zero-heads": lambda path, key: _edit_json(path, lambda d: d.update({key[1]: 0})),
}


@pytest.mark.parametrize("defect", sorted(CONFIG_DEFECTS))
@pytest.mark.parametrize("part", ["tokenizer", "lm"])
def test_config_json_defects_are_one_line(golden, tmp_path, capsys, part, defect):
    if part == "tokenizer":
        folder = tmp_path / "tok"
        shutil.copytree(golden / "tokenizer", folder)
        CONFIG_DEFECTS[defect](folder / "config.json", ("d_model", "encoder_attention_heads"))
        argv = ["tokenize", "--speech-tokenizer", str(folder), str(golden / "tokenizer" / "in0.wav")]
    else:
        folder = _tiny_lm(tmp_path / "lm")
        CONFIG_DEFECTS[defect](folder / "config.json", ("hidden_size", "num_attention_heads"))
        argv = ["chat", "--lm", str(folder), "--text", "hi", "--out", str(tmp_path / "r.wav")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder / "config.json") in err, err


@pytest.mark.parametrize("defect, message", [
    ("\xff", "cannot read"),
    ("- a\n- b\n", "expected a mapping"),
    ("flow: {input_size: [1,\n", "not valid YAML"),
    ("attention_heads: 4 -> 0", "attention_heads=0 must be a positive integer"),
    ("attention_heads: 4 -> 7", "must divide output_size"),
    ("output_size: 32 -> abc", "output_size='abc' must be a positive integer"),
])  # fmt: skip
def test_decoder_yaml_defects_are_one_line(golden, tmp_path, capsys, defect, message):
    folder = tmp_path / "decoder"
    shutil.copytree(golden / "decoder", folder)
    config = folder / "config.yaml"
    if " -> " in defect:
        old, new = defect.split(" -> ")
        config.write_text(config.read_text().replace(old, old.split(":")[0] + ": " + new, 1))
    elif defect == "\xff":
        config.write_bytes(b"\xff" + config.read_bytes())
    else:
        config.write_text(defect)
    (tmp_path / "codes.json").write_text("[1, 2, 3]")
    argv = ["decode", "--decoder", str(folder), "--codes", str(tmp_path / "codes.json"),
            "--out", str(tmp_path / "o.wav")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(config) in err, err


def test_damaged_decoder_weights_are_short_and_safe(golden, tmp_path, capsys):
    import torch

    folder = tmp_path / "decoder"
    shutil.copytree(golden / "decoder", folder)
    (tmp_path / "codes.json").write_text("[1, 2, 3]")
    argv = ["decode", "--decoder", str(folder), "--codes", str(tmp_path / "codes.json"),
            "--out", str(tmp_path / "o.wav")]  # fmt: skip
    (folder / "flow.pt").write_bytes(b"not a torch file, not a zip" * 40)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "flow.pt" in err
    assert "weights_only=False" not in err and "\x1b" not in err  # never the advice to unpickle anything
    torch.save({"x": torch.zeros(2)}, folder / "flow.pt")  # a state dict of another model
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and len(err) < 400 and "missing" in err and "unexpected" in err, err


def test_unreadable_weights_say_permission_denied(golden, tmp_path, capsys, monkeypatch):
    """(Simulated: root, who runs CI, reads any file.)"""
    import os as real_os

    folder = tmp_path / "tok"
    shutil.copytree(golden / "tokenizer", folder)
    weights = folder / "model.safetensors"
    access = real_os.access
    monkeypatch.setattr("glm4voice.hub.os.access", lambda p, mode: False if str(p) == str(weights) else access(p, mode))
    assert main(["tokenize", "--speech-tokenizer", str(folder), str(golden / "tokenizer" / "in0.wav")]) == 2
    assert "permission denied" in capsys.readouterr().err
    monkeypatch.setattr("glm4voice.hub.os.access", lambda p, mode: False if str(p) == str(folder) else access(p, mode))
    assert main(["tokenize", "--speech-tokenizer", str(folder), str(golden / "tokenizer" / "in0.wav")]) == 2
    assert "permission denied (cannot list or open the folder)" in capsys.readouterr().err


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "no Ray cluster answers there"),
    ("nonsense", "expected auto, host:port or ray://host:port"),
    ("auto", "--ray-address auto"),
])  # fmt: skip
def test_ray_address_fails_at_once(golden, tmp_path, capsys, monkeypatch, address, message):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # `auto` finds any Ray on the machine, even the remains of an earlier test's killed run: this test means none
    import ray._private.services as services
    import ray._private.utils as ray_utils

    @functools.lru_cache  # Ray clears these caches itself
    def no_address(*args, **kwargs):
        return None

    @functools.lru_cache
    def no_clusters():
        return []

    monkeypatch.setattr(services, "find_gcs_addresses", no_clusters)
    monkeypatch.setattr(ray_utils, "read_ray_address", no_address)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "a", "audio": str(golden / "tokenizer" / "in0.wav")}) + "\n")
    argv = ["tokenize-corpus", "--speech-tokenizer", str(golden / "tokenizer"), "--manifest", str(manifest),
            "--out", str(tmp_path / "out"), "--ray-address", address]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "out").exists(), err


def test_tokenize_prints_in_argument_order(golden, tmp_path):
    good = str(golden / "tokenizer" / "in0.wav")
    code, out, _ = run("tokenize", "--speech-tokenizer", str(golden / "tokenizer"), "--batch-size", "2",
                       good, str(tmp_path / "missing.wav"), good)  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and [("codes" in r, "error" in r) for r in rows] == [(True, False), (False, True), (True, False)]
    assert rows[0]["codes"] == rows[2]["codes"]


def test_a_huge_code_is_a_codes_file_error(golden, tmp_path, capsys):
    (tmp_path / "codes.json").write_text("[1, 1e26]")
    argv = ["decode", "--decoder", str(golden / "decoder"), "--codes", str(tmp_path / "codes.json"),
            "--out", str(tmp_path / "o.wav")]  # fmt: skip
    assert main(argv) == 2 and "integer codes" in capsys.readouterr().err
