import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from glm4voice.errors import CheckpointError
from glm4voice.tokenizer import PIECE_SAMPLES, SpeechTokenizer
from glm4voice.tokenizer.checkpoint import load_training_tensors
from tests.conftest import write_wav16


@pytest.fixture(scope="module")
def tok(golden):
    return SpeechTokenizer.from_pretrained(golden / "tokenizer")


@pytest.fixture(scope="module")
def expected(golden):
    data = json.loads((golden / "tokenizer" / "expected.json").read_text())
    return [golden / "tokenizer" / f for f in data["files"]], data["tokens"]


def match_rate(a, b):
    assert len(a) == len(b)
    return sum(x == y for x, y in zip(a, b)) / len(a)


def test_reproduces_golden_ids(tok, expected):
    files, tokens = expected
    got = tok.tokenize_batch(files)
    rates = [match_rate(g, e) for g, e in zip(got, tokens)]
    print("golden tokenizer match rates:", rates)
    assert [len(g) for g in got] == [48, 50, 389]
    assert min(rates) >= 0.99


def test_training_layout_loads_to_same_ids(tok, golden, tmp_path, expected):
    """model.encoder.* prefix plus layers past the quantizer, final norm and ASR decoder."""
    src = load_file(golden / "tokenizer" / "model.safetensors")
    state = {f"model.encoder.{k}": v for k, v in src.items()}
    d = src["conv1.bias"].shape[0]
    for extra in ["layers.2.fc1.weight", "layers.3.self_attn.q_proj.weight", "layer_norm.weight", "layer_norm.bias"]:
        state[f"model.encoder.{extra}"] = torch.randn(d, d)
    state["model.decoder.embed_tokens.weight"] = torch.randn(10, d)
    state["proj_out.weight"] = torch.randn(10, d)
    folder = tmp_path / "asr"
    folder.mkdir()
    save_file(state, folder / "model.safetensors")
    for name in ["config.json", "preprocessor_config.json"]:
        shutil.copy(golden / "tokenizer" / name, folder / name)
    other = SpeechTokenizer.from_pretrained(folder)
    files, tokens = expected
    assert other.tokenize(files[0]) == tok.tokenize(files[0])
    # training reads everything inference ignores: layers past the quantizer, the final norm, the ASR decoder
    parts = load_training_tensors(folder)
    assert {"layers.2.fc1.weight", "layers.3.self_attn.q_proj.weight", "layer_norm.bias"} <= set(parts["encoder"])
    assert set(parts["encoder"]) >= set(src)
    assert torch.equal(parts["encoder"]["codebook.weight"], src["codebook.weight"])
    assert list(parts["decoder"]) == ["embed_tokens.weight"] and list(parts["other"]) == ["proj_out.weight"]
    released = load_training_tensors(golden / "tokenizer")  # the released layout: no decoder
    assert set(released["encoder"]) == set(src) and not released["decoder"]


def test_batch_equals_one_by_one_and_counts(tok, speech_clips, expected):
    files, _ = expected
    long = np.concatenate(speech_clips * 4)[: PIECE_SAMPLES + 12345]  # > 30 s: two pieces
    inputs = [*speech_clips, long, speech_clips[0][:1281], str(files[1])]
    batched = tok.tokenize_batch(inputs)
    assert batched == [tok.tokenize(x) for x in inputs]
    lengths = [len(x) for x in [*speech_clips, long, speech_clips[0][:1281]]]
    assert [len(ids) for ids in batched[:-1]] == [math.ceil(n / 1280) for n in lengths]


def test_resampled_input(tok, speech_clips):
    import soxr

    wave = speech_clips[0]
    at_8k = soxr.resample(wave, 16000, 8000)
    ids = tok.tokenize(at_8k, sample_rate=8000)
    assert len(ids) == math.ceil(len(at_8k) * 2 / 1280)


def stream_ids(tok, wave, seed=0):
    rng = np.random.default_rng(seed)
    s, out, pos = tok.stream(), [], 0
    while pos < len(wave):
        step = int(rng.integers(100, 20000))
        out += s.push(wave[pos : pos + step])
        pos += step
    return out + s.flush()


def test_stream_matches_offline_on_speech(tok, speech_clips):
    """The running-max floor is the stream's only approximation; measure its effect."""
    waves = [np.concatenate(speech_clips * 3), *speech_clips]  # the first is > 30 s
    same = total = 0
    for i, wave in enumerate(waves):
        offline, streamed = tok.tokenize(wave), stream_ids(tok, wave, seed=i)
        assert len(streamed) == len(offline)
        same += sum(a == b for a, b in zip(offline, streamed))
        total += len(offline)
    print(f"stream vs offline: {same}/{total} ids identical ({same / total:.2%})")
    assert same / total >= 0.98


def test_stream_is_exact_when_the_max_is_known(tok, speech_clips):
    wave = np.concatenate(speech_clips * 2)
    wave[:400] = 0.99 * np.sign(np.sin(np.arange(400)))  # loudest frame first: running max = global max
    assert stream_ids(tok, wave) == tok.tokenize(wave)


def test_stream_returns_final_blocks_early(tok, speech_clips):
    wave = np.concatenate(speech_clips * 2)
    s = tok.stream()
    assert s.push(wave[:64000]) == []  # the block needs 40 samples of STFT look-ahead
    first = s.push(wave[64000:64040])
    assert len(first) == 50  # one 4 s block
    assert s.push(np.zeros(0, np.float32)) == []


def test_bad_checkpoints(golden, tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        SpeechTokenizer.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="dtype 'fp8': expected one of float32"):
        SpeechTokenizer.from_pretrained(golden / "tokenizer", dtype="fp8")
    folder = tmp_path / "tok"
    shutil.copytree(golden / "tokenizer", folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(CheckpointError, match="missing preprocessor_config.json"):
        SpeechTokenizer.from_pretrained(folder)
    shutil.copy(golden / "tokenizer" / "preprocessor_config.json", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantize_position"] = 3  # the checkpoint has only 2 layers
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="do not match"):
        SpeechTokenizer.from_pretrained(folder)
    cfg["pooling_type"] = "median"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="pooling_type"):
        SpeechTokenizer.from_pretrained(folder)


def test_bfloat16_and_int8_paths_agree_mostly(golden, speech_clips):
    wave = np.concatenate(speech_clips)
    ref = SpeechTokenizer.from_pretrained(golden / "tokenizer").tokenize(wave)
    for kwargs in [{"dtype": "bfloat16"}, {"int8": True}]:
        ids = SpeechTokenizer.from_pretrained(golden / "tokenizer", **kwargs).tokenize(wave)
        rate = match_rate(ids, ref)
        print(kwargs, f"agreement with fp32: {rate:.2%}")
        assert rate >= 0.95  # full-size figures in benchmarks/tokenizer.py


def test_cli_tokenize(golden, tmp_path, speech_clips, expected):
    files, tokens = expected
    bad = tmp_path / "bad.wav"
    bad.write_text("not audio")
    good = write_wav16(tmp_path / "good.wav", speech_clips[0])
    cmd = [sys.executable, "-m", "glm4voice", "tokenize", "--speech-tokenizer", str(golden / "tokenizer"),
           str(files[0]), str(bad), str(good)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    by_file = {line["file"]: line for line in lines}
    assert by_file[str(files[0])]["codes"] == tokens[0]
    assert by_file[str(files[0])]["seconds"] == pytest.approx(60680 / 16000, abs=1e-3)
    assert "not readable as audio" in by_file[str(bad)]["error"]
    assert len(by_file[str(good)]["codes"]) == math.ceil(len(speech_clips[0]) / 1280)
    assert "1 of 3 files failed" in run.stderr and "Traceback" not in run.stderr
    one_by_one = subprocess.run([*cmd, "--batch-size", "1"], capture_output=True, text=True)
    assert one_by_one.stdout == run.stdout  # pieces per forward pass never change the ids
    zero = subprocess.run([*cmd, "--batch-size", "0"], capture_output=True, text=True)
    assert zero.returncode == 2 and "--batch-size must be at least 1" in zero.stderr
    missing = subprocess.run([*cmd[:5], str(tmp_path / "none"), str(good)], capture_output=True, text=True)
    assert missing.returncode == 2 and "error: speech tokenizer checkpoint" in missing.stderr
    assert "Traceback" not in missing.stderr
